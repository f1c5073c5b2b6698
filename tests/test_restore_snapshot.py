"""replay --snapshot ID (restore one backup, or replay from it) and verify --snapshot ID, against a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from conftest import capture_to_now, one_line_error, run_pgtape, run_sql
from pgtape.snapshots import catalog
from pgtape.snapshots.format import table_file_name
from pgtape.tape.archive import Archive


def _rows(dsn: str, relation: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(f"SELECT id, v, n FROM {relation} ORDER BY id").fetchall()


def _snapshot(cli: list[str], *extra: str) -> str:
    r = run_pgtape("snapshot", *cli, *extra, "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["id"])


@pytest.fixture
def archive_with_snapshot(dsn: str, tmp_path: Path) -> tuple[list[str], Path, str, dict[str, list[tuple[Any, ...]]]]:
    """An archive of a and b; a snapshot `sid` whose tables' rows, read right after it and before any
    further write, are `at_snapshot`; then a and b changed again, and all of it captured."""
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive)]
    run_sql(dsn, "CREATE TABLE a (id int PRIMARY KEY, v text, n numeric)",
            "CREATE TABLE b (id int PRIMARY KEY, v text, n numeric)",
            "INSERT INTO a SELECT g, 'a' || g, g * 1.5 FROM generate_series(1, 40) g",
            "INSERT INTO b SELECT g, 'b' || g, NULL FROM generate_series(1, 30) g")
    capture_to_now(dsn, archive, tables="a,b")
    run_sql(dsn, "UPDATE a SET v = 'changed' WHERE id % 3 = 0", "DELETE FROM b WHERE id > 25",
            "INSERT INTO a VALUES (100, E'tab\\there', NULL)")
    capture_to_now(dsn, archive, tables="a,b")
    sid = _snapshot(cli)
    at_snapshot = {t: _rows(dsn, t) for t in ("a", "b")}
    run_sql(dsn, "UPDATE a SET n = -1", "DELETE FROM a WHERE id < 10", "INSERT INTO b VALUES (99, 'late', 7)",
            "TRUNCATE b")
    capture_to_now(dsn, archive, tables="a,b")
    return cli, archive, sid, at_snapshot


def test_replay_snapshot_restores_it_exactly(dsn: str, archive_with_snapshot: Any) -> None:
    cli, _, sid, at_snapshot = archive_with_snapshot
    r = run_pgtape("replay", *cli, "--snapshot", sid, "--schema", "restored", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["base"]["id"] == sid and result["transactions"] == 0
    assert result["target"].startswith(f"snapshot {sid}")
    assert {t: _rows(dsn, f"restored.{t}") for t in ("a", "b")} == at_snapshot
    assert _rows(dsn, "a") != at_snapshot["a"]  # (the live table moved on)

    # Into files; a subset; and a dry run names the differences from live.
    out = archive_with_snapshot[1].parent / "out"
    r = run_pgtape("replay", *cli, "--snapshot", sid, "--output", str(out), "--format", "jsonl", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == {"public.a": len(at_snapshot["a"]), "public.b": len(at_snapshot["b"])}
    r = run_pgtape("replay", *cli, "--snapshot", sid, "--tables", "b", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert list(result["tables"]) == ["public.b"] and result["tables"]["public.b"]["insert"] == 25


def test_replay_snapshot_with_a_later_target_uses_it_as_the_base(dsn: str, archive_with_snapshot: Any) -> None:
    cli, _, sid, _ = archive_with_snapshot
    r = run_pgtape("replay", *cli, "--snapshot", sid, "--latest", "--schema", "latest", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["base"]["id"] == sid and set(result["bases"].values()) == {sid}
    assert result["transactions"] == 4
    assert {t: _rows(dsn, f"latest.{t}") for t in ("a", "b")} == {t: _rows(dsn, t) for t in ("a", "b")}


def test_replay_snapshot_refusals(dsn: str, archive_with_snapshot: Any) -> None:
    cli, archive, sid, _ = archive_with_snapshot
    one_line_error(run_pgtape("replay", *cli, "--snapshot", "nope"), 2, "no snapshot 'nope'", sid,
                   "pgtape snapshots")
    b_only = _snapshot(cli, "--tables", "b")
    one_line_error(run_pgtape("replay", *cli, "--snapshot", b_only, "--tables", "a"), 2,
                   f"snapshot {b_only} does not hold public.a", "it holds public.b")
    # A target before the snapshot.
    first = json.loads(run_pgtape("snapshots", *cli, "--json", check=True).stdout)[0]
    one_line_error(run_pgtape("replay", *cli, "--snapshot", sid, "--target-lsn", first["as_of_lsn"]), 3,
                   f"snapshot {sid} is as of", "after the target")
    # A failed and a running snapshot; a snapshot of another generation.
    a = Archive(archive)
    record = next(r for r in catalog.load_all(a) if r.id == sid)
    for status, error, needle in ((catalog.FAILED, "out of disk", "is failed: out of disk"),
                                  (catalog.RUNNING, None, "is running")):
        bad = msgspec.structs.replace(record, id=f"x-{status}", status=status, error=error, host="elsewhere")
        catalog.save(a, bad)
        one_line_error(run_pgtape("replay", *cli, "--snapshot", bad.id), 3, needle, "only a completed snapshot")
    other = msgspec.structs.replace(record, id="x-gen", generation=7)
    catalog.save(a, other)
    one_line_error(run_pgtape("replay", *cli, "--snapshot", "x-gen"), 3, "belongs to generation 7")
    one_line_error(run_pgtape("replay", *cli), 2, "give a target", "--snapshot ID")


def test_verify_snapshot_good_and_damaged(dsn: str, archive_with_snapshot: Any) -> None:
    cli, archive, sid, _ = archive_with_snapshot
    r = run_pgtape("verify", *cli, "--snapshot", sid, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["snapshots"] == 1 and report["segments"] == 0 and report["bytes"] > 0
    one_line_error(run_pgtape("verify", *cli, "--snapshot", "nope"), 2, "no snapshot 'nope'")

    path = catalog.snapshot_dir(Archive(archive), 1, sid) / table_file_name("public.a")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = run_pgtape("verify", *cli, "--snapshot", sid, "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert not report["ok"] and any(str(path) in p for p in report["problems"]), report
    r = run_pgtape("verify", *cli, "--snapshot", sid)
    assert r.returncode == 1 and f"FAILED: snapshot {sid}" in r.stdout, r.stdout + r.stderr
