"""One identity per table: names that need quoting, other schemas, two tables of one name.

Each table is named as a user types it in SQL; capture, replay (recovery schema, files, in place),
log, diff and verify --live all find the same table, checked against states the oracle recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import capture_to_now, run_pgtape, spawn_pgtape, stop_process
from pgtape.names import parse_table
from replay_oracle import History, compare, lsn_text, parse_pg_csv, table_state

LEDGER = '"Billing"."Ledger Entries"'
ODD = 'public."Mixed.Case, Table"'
TABLES = f'{LEDGER}, {ODD}, public.dup, other.dup, Payments'
CANONICAL = [LEDGER, ODD, "public.dup", "other.dup", "public.payments"]
SETUP = [
    'CREATE SCHEMA "Billing"', "CREATE SCHEMA other",
    f'CREATE TABLE {LEDGER} ("Entry Id" int PRIMARY KEY, "Amount" numeric(12,2), memo text)',
    f'CREATE TABLE {ODD} (id int PRIMARY KEY, "v.w" text)',
    "CREATE TABLE public.dup (id int PRIMARY KEY, side text)",
    "CREATE TABLE other.dup (id int PRIMARY KEY, side text, n int)",
    "CREATE TABLE payments (id int PRIMARY KEY, amount numeric(12,2))",
    f"INSERT INTO {LEDGER} VALUES (1, 10.00, 'base'), (2, 20.00, 'base')",
    f"INSERT INTO {ODD} VALUES (1, 'base')", "INSERT INTO public.dup VALUES (1, 'public')",
    "INSERT INTO other.dup VALUES (1, 'other', 1)", "INSERT INTO payments VALUES (1, 1.00)",
]
CHANGES = [
    [f"UPDATE {LEDGER} SET \"Amount\" = 11.50, memo = 'first' WHERE \"Entry Id\" = 1",
     f"INSERT INTO {LEDGER} VALUES (3, 30.00, 'new')", f"UPDATE {ODD} SET \"v.w\" = 'changed' WHERE id = 1",
     "UPDATE public.dup SET side = 'public 2'", "INSERT INTO other.dup VALUES (2, 'other 2', 2)",
     "UPDATE payments SET amount = 2.00"],
    [f"DELETE FROM {LEDGER} WHERE \"Entry Id\" = 2", f"UPDATE {LEDGER} SET \"Entry Id\" = 4 WHERE \"Entry Id\" = 3",
     f"INSERT INTO {ODD} VALUES (2, 'two')", "DELETE FROM other.dup WHERE id = 1",
     "INSERT INTO public.dup VALUES (2, 'public 3')"],
]


def _setup(dsn: str, archive: Path) -> tuple[History, list[int]]:
    h = History(dsn, CANONICAL)
    for s in SETUP:
        h.conn.execute(s)
    capture_to_now(dsn, archive, tables=TABLES)  # init: slot and base
    targets = []
    for i, stmts in enumerate(CHANGES):
        targets.append(h.txn(f"step {i}", stmts).post_lsn)
    capture_to_now(dsn, archive, tables=TABLES)
    return h, targets


def _cli(dsn: str, archive: Path) -> list[str]:
    return ["--dsn", dsn, "--archive", str(archive)]


def test_quoted_names_replay_log_and_files(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    h, targets = _setup(dsn, archive)
    try:
        step = h.steps[0]
        assert parse_table("Payments") == "public.payments"
        # A recovery schema: every table, the two dup tables side by side under schema-qualified names.
        r = run_pgtape("replay", *_cli(dsn, archive), "--target-lsn", lsn_text(targets[0]), "--schema", "rec",
                       "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["relations"] == {LEDGER: 'rec."Ledger Entries"', ODD: 'rec."Mixed.Case, Table"',
                                    "public.dup": 'rec."public.dup"', "other.dup": 'rec."other.dup"',
                                    "public.payments": "rec.payments"}
        for table, relation in out["relations"].items():
            got = table_state(h.conn, relation)
            assert compare(table, got.columns, got.types, got.lines, step.state[table]) is None, table
        # Files: named schema.table with what a file name cannot hold percent-encoded.
        outdir = tmp_path / "files"
        r = run_pgtape("replay", *_cli(dsn, archive), "--target-lsn", lsn_text(targets[1]), "--output", str(outdir),
                       "--tables", LEDGER)
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in outdir.iterdir()) == ["Billing.Ledger%20Entries.csv"]
        rows = parse_pg_csv((outdir / "Billing.Ledger%20Entries.csv").read_text())
        assert rows[0] == ["Entry Id", "Amount", "memo"]
        assert sorted(rows[1:]) == [["1", "11.50", "first"], ["4", "30.00", "new"]]

        # log --table, as typed in SQL
        r = run_pgtape("log", *_cli(dsn, archive), "--table", LEDGER, "--json")
        assert r.returncode == 0, r.stderr
        changes = [json.loads(line) for line in r.stdout.splitlines()]
        assert [(c["op"], c["table"]) for c in changes] == [("UPDATE", LEDGER), ("INSERT", LEDGER),
                                                           ("DELETE", LEDGER), ("UPDATE", LEDGER)]
        r = run_pgtape("log", *_cli(dsn, archive), "--table", "dup")
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 2 and "other.dup" not in r.stdout, r.stdout
    finally:
        h.close()


def test_unknown_tables_are_errors_that_list_the_captured_ones(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    h, targets = _setup(dsn, archive)
    h.close()
    captured = ", ".join(CANONICAL)
    for args, option in [(["log", "--table", "ledger"], "--table"),
                         (["replay", "--latest", "--dry-run", "--tables", "Billing.\"Ledger Entries\""], "--tables"),
                         (["diff", "--target-lsn", lsn_text(targets[0]), "--tables", "nope"], "--tables"),
                         (["snapshot", "--tables", "other.nope"], "--tables")]:
        r = run_pgtape(*args, *_cli(dsn, archive))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"pgtape: {option}: table ") and r.stderr.rstrip().endswith(
            f"is not captured (captured: {captured})"), r.stderr
    r = run_pgtape("log", *_cli(dsn, archive), "--table", 'public."unterminated')
    assert r.returncode == 2 and "invalid table name" in r.stderr, r.stderr


def test_in_place_diff_and_verify_live_find_the_quoted_table(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    h, targets = _setup(dsn, archive)
    try:
        cli = [*_cli(dsn, archive), "--tables", f"{LEDGER},{ODD}"]
        capture = spawn_pgtape("capture", *_cli(dsn, archive), log=tmp_path / "capture.log")
        try:
            r = run_pgtape("verify", "--live", *_cli(dsn, archive), "--timeout", "30")
        finally:
            stop_process(capture)
        assert r.returncode == 0, r.stdout + r.stderr
        assert sum(f"{t}: equal" in r.stdout for t in CANONICAL) == 5, r.stdout
        r = run_pgtape("diff", *cli, "--target-lsn", lsn_text(targets[0]), "--json")
        assert r.returncode == 1, r.stderr  # the second step changed both tables since
        # (missing from the replay, extra in it, different): live has 1, 4 and 1, 2; the replay 1, 2, 3 and 1
        assert {t["table"]: (t["missing"], t["extra"], t["different"]) for t in json.loads(r.stdout)["tables"]} == {
            LEDGER: (1, 2, 0), ODD: (1, 0, 0)}
        r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(targets[0]), "--in-place", "--yes", "--json")
        assert r.returncode == 0, r.stderr
        backup = json.loads(r.stdout)["backup_schema"]
        for table in (LEDGER, ODD):
            got = table_state(h.conn, table)
            assert compare(table, got.columns, got.types, got.lines, h.steps[0].state[table]) is None
        r = run_pgtape("diff", *cli, "--target-lsn", lsn_text(targets[0]))
        assert r.returncode == 0, r.stdout + r.stderr
        # The backup holds exactly the live rows the restore deleted or overwrote.
        assert table_state(h.conn, f'{backup}."Ledger Entries"').lines == (b"4\t30.00\tnew",)
        assert table_state(h.conn, f'{backup}."Mixed.Case, Table"').lines == (b"2\ttwo",)
    finally:
        h.close()
