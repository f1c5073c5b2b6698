"""Tables without a primary key (REPLICA IDENTITY FULL) replay exactly, their rows as a multiset.

Duplicate rows are legal: a DELETE removes one of them, an UPDATE changes one of them. A seeded
random history (the seed is printed; PGTAPE_TEST_SEED repeats it) is replayed to every step and
compared with the oracle's dumps; in place, diff and verify --live treat the rows the same way.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import capture_to_now, run_pgtape, spawn_pgtape, stop_process
from pgtape.tape.archive import Archive
from pgtape.tape.reader import iter_changes
from pgtape.replay.engine import prepare
from pgtape.replay.target import Target
from replay_oracle import History, compare, lsn_text, seed_for, table_state

TABLE = "public.lines"
DDL = ["CREATE TABLE lines (account text, amount numeric(12,2), memo text, big text)",
       "ALTER TABLE lines REPLICA IDENTITY FULL",
       "ALTER TABLE lines ALTER COLUMN big SET STORAGE EXTERNAL",  # out of line, so UPDATEs leave it out
       "INSERT INTO lines VALUES ('a', 1.00, 'dup', NULL), ('a', 1.00, 'dup', NULL), ('b', NULL, NULL, NULL)"]
ONE_ROW = "(SELECT ctid FROM lines WHERE {} LIMIT 1)"


def _big(rng: random.Random) -> str:
    return "".join(f"{rng.getrandbits(32):08x}" for _ in range(rng.randint(400, 700)))


def _txn(rng: random.Random, h: History) -> None:
    rows = h.conn.execute("SELECT account, memo FROM lines").fetchall()
    kind = rng.choice(["dup", "insert", "update", "update_big", "delete", "delete"] if rows else ["insert"])
    account = rng.choice(["a", "b", "c"])
    if kind == "dup" and rows:  # an exact copy of an existing row
        h.txn(kind, ["INSERT INTO lines SELECT * FROM lines WHERE ctid = " + ONE_ROW.format("true")])
    elif kind in ("insert", "dup"):
        h.txn(kind, [("INSERT INTO lines VALUES (%s, %s, %s, %s)",
                      [account, rng.choice([None, "1.00", "2.50"]), rng.choice([None, "dup", "x\ty"]),
                       rng.choice([None, _big(rng)])])])
    elif kind == "update":  # one copy of a duplicated row; the big (TOASTed) value is left out
        acc, memo = rng.choice(rows)
        where = "account = %s AND memo IS NOT DISTINCT FROM %s"
        h.txn(kind, [(f"UPDATE lines SET amount = amount + 1, memo = %s WHERE ctid = {ONE_ROW.format(where)}",
                      [rng.choice(["dup", "changed", None]), acc, memo])])
    elif kind == "update_big":
        h.txn(kind, [("UPDATE lines SET big = %s WHERE ctid = " + ONE_ROW.format("true"), [_big(rng)])])
    else:
        acc, memo = rng.choice(rows)
        one = ONE_ROW.format('account = %s AND memo IS NOT DISTINCT FROM %s')
        h.txn(kind, [(f"DELETE FROM lines WHERE ctid = {one}", [acc, memo])])


def test_random_history_replays_at_every_step(dsn: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rng = random.Random(seed_for(request))
    archive = tmp_path / "archive"
    h = History(dsn, [TABLE])
    try:
        for s in DDL:
            h.conn.execute(s)
        capture_to_now(dsn, archive, tables=TABLE)
        h.observe("base")
        big = _big(rng)
        h.txn("big", [("INSERT INTO lines VALUES ('big', 1.00, 'dup', %s), ('big', 1.00, 'dup', %s)", [big, big])])
        h.txn("update beside big", ["UPDATE lines SET memo = 'one' WHERE ctid = " + ONE_ROW.format("account = 'big'")])
        for i in range(60):
            if i == 40:
                h.txn("truncate", ["TRUNCATE lines", "INSERT INTO lines VALUES ('t', 9.99, 'dup', NULL), "
                                                     "('t', 9.99, 'dup', NULL)"])
            _txn(rng, h)
        capture_to_now(dsn, archive, tables=TABLE)
        assert any(len(set(s.state[TABLE].lines)) < len(s.state[TABLE].lines) for s in h.steps[1:])  # duplicates
        assert any(c.op == "U" and c.absent == ["big"] for c in iter_changes(Archive(archive), 1))  # TOAST left out
        for step in h.steps:
            plan = prepare(Archive(archive), [TABLE], Target("lsn", lsn=step.post_lsn))
            fold = plan.folds[TABLE]
            problem = compare(TABLE, fold.columns, fold.types, plan.rows(TABLE), step.state[TABLE])
            assert problem is None, f"after {step.label}: {problem}"
    finally:
        h.close()


def test_in_place_diff_and_verify_live_count_copies(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", TABLE]
    h = History(dsn, [TABLE])
    try:
        for s in DDL:
            h.conn.execute(s)
        capture_to_now(dsn, archive, tables=TABLE)
        target = h.txn("more copies", ["INSERT INTO lines SELECT * FROM lines WHERE memo = 'dup'",
                                       "INSERT INTO lines VALUES ('c', 3.00, 'new', NULL)"])  # a: 4 copies
        h.txn("fewer", ["DELETE FROM lines WHERE ctid IN (SELECT ctid FROM lines WHERE memo = 'dup' LIMIT 3)",
                        "UPDATE lines SET memo = 'edited' WHERE account = 'c'",
                        "INSERT INTO lines VALUES ('d', 0, '', NULL)"])
        capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture.log")
        try:
            r = run_pgtape("verify", "--live", *cli, "--timeout", "30")
        finally:
            stop_process(capture)
        assert r.returncode == 0 and f"{TABLE}: equal" in r.stdout, r.stdout + r.stderr

        # Live: a x1, b, c edited, d.  Target: a x4, b, c new.
        r = run_pgtape("diff", *cli, "--target-lsn", lsn_text(target.post_lsn), "--json")
        assert r.returncode == 1, r.stderr
        t = json.loads(r.stdout)["tables"][0]
        assert (t["missing"], t["extra"], t["different"]) == (2, 4, 0), t
        r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(target.post_lsn), "--in-place", "--yes", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["tables"][TABLE] == {"rows": 6, "insert": 4, "update": 0, "delete": 2}
        got = table_state(h.conn, TABLE)
        assert compare(TABLE, got.columns, got.types, got.lines, target.state[TABLE]) is None
        backup = table_state(h.conn, f"{out['backup_schema']}.lines")
        assert backup.lines == (b"c\t3.00\tedited\t\\N", b"d\t0.00\t\t\\N")
    finally:
        h.close()
