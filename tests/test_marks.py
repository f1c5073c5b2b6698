"""Recovery points against a real PostgreSQL: time marks (mark --at), marks emitted from SQL (as
create_recovery_point does) that capture lists in the catalog, and marks found on the tape alone."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg

from conftest import capture_to_now, one_line_error, run_pgtape, run_sql, scalar
from pgtape.tape.archive import Archive
from pgtape.tape.marks import Mark, load_mark, mark_key
from pgtape import metadata


def _ids(dsn: str, relation: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return [r[0] for r in c.execute(f"SELECT id FROM {relation} ORDER BY id").fetchall()]


def _server_now(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as c:
        return str(scalar(c.execute("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                                    "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")))


def _setup(dsn: str, tmp_path: Path) -> tuple[list[str], Path]:
    archive = tmp_path / "archive"
    run_sql(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    capture_to_now(dsn, archive, tables="t")
    return ["--dsn", dsn, "--archive", str(archive)], archive


def test_a_time_mark_replays_as_its_time(dsn: str, tmp_path: Path) -> None:
    cli, archive = _setup(dsn, tmp_path)
    run_sql(dsn, "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)")
    at = _server_now(dsn)
    time.sleep(0.01)
    run_sql(dsn, "INSERT INTO t VALUES (3)", "DELETE FROM t WHERE id = 1")
    r = run_pgtape("mark", "before-3", "--at", at, "--description", "before the bad deploy", *cli, "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["name"] == "before-3" and made["description"] == "before the bad deploy"
    assert made["at"].replace(" ", "T") == at
    capture_to_now(dsn, archive, tables="t")

    r = run_pgtape("replay", *cli, "--target-name", "before-3", "--schema", "by_name", "--json")
    assert r.returncode == 0, r.stderr
    by_name = json.loads(r.stdout)
    assert "recovery point 'before-3'" in by_name["target"]
    r = run_pgtape("replay", *cli, "--target-time", at, "--schema", "by_time", "--json")
    assert r.returncode == 0, r.stderr
    by_time = json.loads(r.stdout)
    assert _ids(dsn, "by_name.t") == _ids(dsn, "by_time.t") == [1, 2]
    assert by_name["resolved_lsn"] == by_time["resolved_lsn"]
    assert load_mark(Archive(archive), "before-3").description == "before the bad deploy"

    # Refusals: the future, before the generation began, a name taken, a bad time.
    one_line_error(run_pgtape("mark", "later", "--at", "2999-01-01T00:00:00Z", *cli), 2, "in the future")
    one_line_error(run_pgtape("mark", "early", "--at", "2001-01-01T00:00:00Z", *cli), 2,
                   "before the archive's current generation began")
    one_line_error(run_pgtape("mark", "before-3", "--at", at, *cli), 2, "already exists")
    one_line_error(run_pgtape("mark", "x", "--at", "yesterday", *cli), 2, "invalid --at")


def _emit(dsn: str, content: dict[str, Any], insert: int) -> None:
    """A transaction that changes t and carries a mark message, as create_recovery_point emits it."""
    with psycopg.connect(dsn) as c:  # one transaction, committed on leaving
        c.execute("INSERT INTO t VALUES (%s)", (insert,))
        c.execute("SELECT pg_logical_emit_message(true, 'pgtape', %s)", (json.dumps(content),))


def test_a_mark_emitted_from_sql_is_listed_by_capture_and_replays_to_its_transaction(dsn: str, tmp_path: Path) -> None:
    cli, archive = _setup(dsn, tmp_path)
    run_sql(dsn, "INSERT INTO t VALUES (1)")
    _emit(dsn, {"name": "sqlmark", "description": "from SQL", "at": None}, 2)
    run_sql(dsn, "INSERT INTO t VALUES (3)")
    at = _server_now(dsn)
    time.sleep(0.01)
    run_sql(dsn, "INSERT INTO t VALUES (4)")
    _emit(dsn, {"name": "sql-timemark", "description": None, "at": at}, 5)
    _emit(dsn, {"name": "sqlmark", "description": "a second one of the name", "at": None}, 6)
    _emit(dsn, {"name": "../bad", "description": None, "at": None}, 7)
    capture_to_now(dsn, archive, tables="t")

    a = Archive(archive)
    listed = metadata.read(a.storage, mark_key("sqlmark"), Mark)  # capture listed it (the first of the name)
    assert listed.description == "from SQL" and listed.at is None and listed.generation == 1
    assert metadata.read(a.storage, mark_key("sql-timemark"), Mark).at is not None
    assert sorted(p.name for p in (archive / "catalog" / "marks").iterdir()) == ["sql-timemark.json",
                                                                                 "sqlmark.json"]

    r = run_pgtape("replay", *cli, "--target-name", "sqlmark", "--schema", "at_mark")
    assert r.returncode == 0, r.stderr
    assert _ids(dsn, "at_mark.t") == [1, 2]  # right after its own transaction
    r = run_pgtape("replay", *cli, "--target-name", "sql-timemark", "--schema", "at_time")
    assert r.returncode == 0, r.stderr
    assert _ids(dsn, "at_time.t") == [1, 2, 3]

    # A tape written by a capture that did not list marks: replay finds them on the tape.
    for p in (archive / "catalog" / "marks").iterdir():
        p.unlink()
    r = run_pgtape("replay", *cli, "--target-name", "sqlmark", "--schema", "from_tape")
    assert r.returncode == 0, r.stderr
    assert _ids(dsn, "from_tape.t") == [1, 2]
    r = run_pgtape("replay", *cli, "--target-name", "sql-timemark", "--schema", "from_tape_time")
    assert r.returncode == 0, r.stderr
    assert _ids(dsn, "from_tape_time.t") == [1, 2, 3]
    one_line_error(run_pgtape("replay", *cli, "--target-name", "nope", "--dry-run"), 3,
                   "no recovery point named 'nope'")


def test_pgtape_mark_still_marks_the_current_position(dsn: str, tmp_path: Path) -> None:
    cli, archive = _setup(dsn, tmp_path)
    run_sql(dsn, "INSERT INTO t VALUES (1)")
    r = run_pgtape("mark", "now", "--description", "d", *cli, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["at"] is None
    run_sql(dsn, "INSERT INTO t VALUES (2)")
    capture_to_now(dsn, archive, tables="t")
    r = run_pgtape("replay", *cli, "--target-name", "now", "--schema", "at_now")
    assert r.returncode == 0, r.stderr
    assert _ids(dsn, "at_now.t") == [1]
    assert load_mark(Archive(archive), "now").description == "d"


def test_create_recovery_point_from_sql_end_to_end(dsn: str, tmp_path: Path) -> None:
    """The function `pgtape sql install` creates, called as the old guide did, is a recovery point
    replay reaches by name: now() at its transaction, an earlier ts as that time."""
    cli, archive = _setup(dsn, tmp_path)
    run_pgtape("sql", "install", "--dsn", dsn, check=True)
    run_sql(dsn, "INSERT INTO t VALUES (1)")
    earlier = _server_now(dsn)
    time.sleep(0.01)
    with psycopg.connect(dsn) as c:  # one transaction: its row and its recovery point
        c.execute("INSERT INTO t VALUES (2)")
        c.execute("SELECT pgtape.create_recovery_point('before-release-42', 'deploy 42')")
    run_sql(dsn, "INSERT INTO t VALUES (3)",
            f"SELECT pgtape.create_recovery_point('nightly-close', NULL, '{earlier}'::timestamptz)")
    with psycopg.connect(dsn) as c:  # rolled back: no recovery point
        c.execute("SELECT pgtape.create_recovery_point('rolled-back')")
        c.rollback()
    capture_to_now(dsn, archive, tables="t")
    assert run_pgtape("replay", *cli, "--target-name", "before-release-42", "--schema", "rp").returncode == 0
    assert _ids(dsn, "rp.t") == [1, 2]
    assert run_pgtape("replay", *cli, "--target-name", "nightly-close", "--schema", "rp_time").returncode == 0
    assert _ids(dsn, "rp_time.t") == [1]
    one_line_error(run_pgtape("replay", *cli, "--target-name", "rolled-back", "--dry-run"), 3,
                   "no recovery point named 'rolled-back'")
