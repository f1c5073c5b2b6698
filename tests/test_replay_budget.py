"""Replay within a memory budget (issue 16): a budget small enough to spill the folded state to several
sorted runs gives, row for row, what an unbounded replay gives and what the live tables hold.

The history updates the same keys across runs, deletes keys and inserts them again, changes primary
keys, leaves TOASTed columns out of UPDATEs, truncates a table mid-way, and runs a keyless table
(REPLICA IDENTITY FULL) with duplicate rows beside it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import psycopg

from conftest import (capture_to_now, current_lsn, run_pgtape, run_sql, scalar, spawn_pgtape, stop_process,
                      wait_until)

KEYED, BAG = "public.acct", "public.lines"
TABLES = f"{KEYED},{BAG}"


def _history(dsn: str, archive: Path) -> str:
    """The history; returns an LSN after all of it that the tape holds."""
    run_sql(dsn,
            "CREATE TABLE acct (id bigint PRIMARY KEY, v text, n integer, big text)",
            "ALTER TABLE acct ALTER COLUMN big SET STORAGE EXTERNAL",  # out of line: UPDATEs leave it out
            "CREATE TABLE lines (account text, amount numeric(12,2), memo text)",
            "ALTER TABLE lines REPLICA IDENTITY FULL",
            "INSERT INTO acct SELECT g, repeat('base', 20) || g, 0, CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 80) "
            "END FROM generate_series(1, 6000) g",
            "INSERT INTO lines SELECT 'a' || (g % 7), g % 3, 'dup' || repeat('-', 60) || (g % 1500) "
            "FROM generate_series(1, 3000) g")  # each row twice
    capture_to_now(dsn, archive, tables=TABLES)  # the base
    statements = []
    for r in range(1, 7):
        statements += [
            f"UPDATE acct SET v = repeat('round{r}', 15) || id, n = n + 1",  # every key, every round
            "UPDATE acct SET n = n + 100 WHERE id % 50 = 0",  # big (TOASTed) left out of the change
            f"DELETE FROM acct WHERE id % 11 = {r}",
            f"INSERT INTO acct SELECT g, 'again{r}', -1, NULL FROM generate_series(1, 6000) g "
            f"WHERE g % 11 = {r} AND g % 2 = 0",  # deleted, then back with other values
            f"UPDATE acct SET id = id + 100000 * {r} WHERE id % 97 = {r}",  # a primary key change
            f"UPDATE acct SET id = id + 1000000, v = 'moved' WHERE id % 50 = 0 AND id < 6000 AND {r} = 3",
            f"UPDATE lines SET amount = amount + 1 WHERE ctid IN (SELECT ctid FROM lines WHERE account = 'a{r}' "
            "LIMIT 200)",
            "DELETE FROM lines WHERE ctid IN (SELECT ctid FROM lines WHERE memo LIKE 'dup%' LIMIT 150)",
            f"INSERT INTO lines SELECT 'n{r}', g % 4, 'dup' || repeat('+', 60) || (g % 300) FROM "
            "generate_series(1, 600) g",
        ]
        if r == 4:
            statements += ["TRUNCATE lines", "INSERT INTO lines SELECT 'after', g % 5, 'dup' FROM "
                                             "generate_series(1, 900) g"]
    run_sql(dsn, *statements)
    end = current_lsn(dsn)
    capture_to_now(dsn, archive, tables=TABLES)
    return end


def _dump(conn: psycopg.Connection, relation: str) -> list[tuple[object, ...]]:
    return conn.execute(f"SELECT * FROM {relation} ORDER BY 1, 2, 3").fetchall()


def test_small_budget_spills_runs_and_equals_unbounded_and_live(dsn: str, tmp_path: Path) -> None:
    archive, work = tmp_path / "archive", tmp_path / "work"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", TABLES]
    end = _history(dsn, archive)

    r = run_pgtape("replay", *cli, "--latest", "--dry-run", "--memory", "1MiB", "--json")
    assert r.returncode == 0, r.stderr
    assert "spilling needs up to" in r.stderr  # said before the tape was read
    estimate = json.loads(r.stdout)["memory"]
    assert estimate["may_spill"] and estimate["estimated_disk_bytes"] > 0, estimate

    r = run_pgtape("replay", *cli, "--latest", "--memory", "1MiB", "--work-dir", str(work), "--schema", "bounded",
                   "--json")
    assert r.returncode == 0, r.stderr
    memory = json.loads(r.stdout)["memory"]
    print(memory)
    assert memory["runs"] >= 6, memory
    assert memory["spilled_tables"] == sorted([BAG, KEYED]), memory
    assert list(work.iterdir()) == [], "spill files left behind"
    assert stat.S_IMODE(os.stat(work).st_mode) == 0o700

    r = run_pgtape("replay", *cli, "--latest", "--memory", "4GiB", "--schema", "unbounded", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["memory"]["runs"] == 0

    with psycopg.connect(dsn) as conn:
        for table in ("acct", "lines"):
            live = _dump(conn, f"public.{table}")
            assert _dump(conn, f"bounded.{table}") == live, table
            assert _dump(conn, f"unbounded.{table}") == live, table
        assert scalar(conn.execute("SELECT count(*) FROM bounded.acct WHERE big IS NOT NULL")) > 50  # TOAST kept

    for against in ("live", "schema:unbounded"):
        r = run_pgtape("diff", *cli, "--schema", "bounded", "--against", against)
        assert r.returncode == 0, r.stdout + r.stderr
    # diff replaying itself within the budget
    r = run_pgtape("diff", *cli, "--target-lsn", end, "--memory", "1MiB", "--work-dir", str(work))
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(work.iterdir()) == []


def test_spill_files_removed_on_error(dsn: str, tmp_path: Path) -> None:
    archive, work = tmp_path / "archive", tmp_path / "work"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", TABLES]
    _history(dsn, archive)
    run_sql(dsn, "CREATE SCHEMA taken", "CREATE TABLE taken.x ()")  # a recovery schema that is not empty
    r = run_pgtape("replay", *cli, "--latest", "--memory", "1MiB", "--work-dir", str(work), "--schema", "taken")
    assert r.returncode != 0 and "not empty" in r.stderr, r.stderr
    assert list(work.iterdir()) == []


def test_sigterm_mid_replay_removes_spill_files(dsn: str, tmp_path: Path) -> None:
    """The service stops a job with SIGTERM: the spill files (row values) go with it."""
    archive, work = tmp_path / "archive", tmp_path / "work"
    _history(dsn, archive)
    proc = spawn_pgtape("replay", "--dsn", dsn, "--archive", str(archive), "--tables", TABLES, "--latest",
                        "--memory", "1MiB", "--work-dir", str(work), "--output", str(tmp_path / "out"),
                        log=tmp_path / "replay.log")
    try:
        wait_until("a spill file", lambda: next(work.glob("pgtape-spill-*/*.spill"), None), timeout=60, interval=0.005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130, (tmp_path / "replay.log").read_text()
    finally:
        stop_process(proc)
    assert "interrupted" in (tmp_path / "replay.log").read_text()
    assert list(work.iterdir()) == []
