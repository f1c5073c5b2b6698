"""The audit log's lines: format, per-line checksum, damaged and torn lines; the CLI's secret-free arguments."""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import pytest

from pgtape.cli import _arguments, build_parser
from pgtape.tape import audit
from pgtape.tape.archive import Archive


def _archive(tmp_path: Path) -> Archive:
    (tmp_path / "archive").mkdir()
    return Archive(tmp_path / "archive")


def test_line_is_json_with_its_checksum() -> None:
    line = audit.encode("2026-12-02T16:30:00.000001Z", "alice", "replay", {"dry_run": True, "tables": "public.t"},
                        {"exit_code": 0, "outcome": "ok"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    doc = json.loads(line)
    assert list(doc) == ["time", "actor", "operation", "arguments", "result", "crc32"]
    e = audit.decode(line[:-1])
    assert e is not None and (e.actor, e.operation, e.arguments, e.result) == (
        "alice", "replay", {"dry_run": True, "tables": "public.t"}, {"exit_code": 0, "outcome": "ok"})


def test_every_flipped_byte_is_detected() -> None:
    line = audit.encode("2026-12-02T16:30:00.000001Z", "bob", "prune", {}, {"exit_code": 0, "outcome": "ok"})[:-1]
    for i in range(len(line)):
        for bit in (0x01, 0x20):
            damaged = line[:i] + bytes([line[i] ^ bit]) + line[i + 1:]
            assert audit.decode(damaged) is None, (i, damaged)


def test_a_valid_checksum_over_a_wrong_entry_is_refused() -> None:
    # Checksummed, but not an entry (no actor; a time --since cannot compare): damaged, not trusted.
    for body in (b'{"time":"2026-12-02T16:30:00Z","operation":"x","arguments":{},"result":{}}',
                 b'{"time":"yesterday","actor":"a","operation":"x","arguments":{},"result":{}}'):
        line = body[:-1] + b',"crc32":"%08x"}' % zlib.crc32(body)
        assert audit.decode(line) is None


def test_append_and_read(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    assert audit.read(archive) == ([], [])  # no log yet: nothing, no problem
    for i in range(3):
        audit.append(archive, "alice", "mark", {"name": f"p{i}"}, {"exit_code": 0, "outcome": "ok"})
    entries, problems = audit.read(archive)
    assert problems == []
    assert [(e.line, e.arguments["name"]) for e in entries] == [(1, "p0"), (2, "p1"), (3, "p2")]
    assert all(e.time.endswith("Z") for e in entries)
    assert (archive.path / audit.KEY).read_bytes().count(b"\n") == 3


def test_damaged_line_is_named_and_the_others_still_read(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    for op in ("snapshot", "replay", "prune"):
        audit.append(archive, "alice", op, {}, {"exit_code": 0, "outcome": "ok"})
    path = archive.path / audit.KEY
    data = bytearray(path.read_bytes())
    data[data.index(b"replay")] ^= 0x01  # replay -> seplay
    path.write_bytes(bytes(data))
    entries, problems = audit.read(archive)
    assert [e.operation for e in entries] == ["snapshot", "prune"]
    [p] = problems
    assert "line 2: damaged" in p and str(path) in p
    assert audit.check(archive) == problems


def test_torn_last_line_is_reported_as_torn_and_removed_by_the_next_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = _archive(tmp_path)
    audit.append(archive, "alice", "snapshot", {}, {"exit_code": 0, "outcome": "ok"})
    path = archive.path / audit.KEY
    whole = audit.encode(audit.now(), "alice", "prune", {}, {"exit_code": 0, "outcome": "ok"})
    with open(path, "ab") as f:  # a crash after part of the write() reached the disk
        f.write(whole[:25])
    entries, problems = audit.read(archive)
    assert [e.operation for e in entries] == ["snapshot"]
    [p] = problems
    assert "line 2: torn last line (25 bytes" in p and "crash" in p and "damaged" not in p
    with caplog.at_level(logging.WARNING, logger="pgtape"):
        audit.append(archive, "bob", "verify", {}, {"exit_code": 0, "outcome": "ok"})
    assert "removed a torn last line (25 bytes" in caplog.text
    entries, problems = audit.read(archive)
    assert problems == [] and [e.operation for e in entries] == ["snapshot", "verify"]


def test_a_log_that_is_only_a_torn_line(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    (archive.path / "audit").mkdir()
    (archive.path / audit.KEY).write_bytes(b'{"time":"20')
    assert "line 1: torn last line" in audit.read(archive)[1][0]
    audit.append(archive, "a", "log", {}, {"exit_code": 0, "outcome": "ok"})
    assert [e.line for e in audit.read(archive)[0]] == [1] and audit.read(archive)[1] == []


def test_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGTAPE_ACTOR", "api:ops")
    assert audit.actor() == "api:ops"
    monkeypatch.delenv("PGTAPE_ACTOR")
    monkeypatch.setenv("USER", "someone")
    monkeypatch.setenv("LOGNAME", "someone")
    assert audit.actor() == "someone"
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    assert audit.actor()  # the passwd name, or the uid


def test_arguments_leave_out_connection_strings_and_passwords() -> None:
    args = build_parser().parse_args([
        "replay", "--dsn", "host=h password=hunter2 dbname=d", "--archive", "/a", "--tables", "public.t",
        "--target-name", "before password=hunter2 x", "--into", "postgresql://u:hunter2@h/db", "--schema", "rec",
        "--sql-dsn", "host=h password=hunter2"])
    got = _arguments(args)
    assert "hunter2" not in json.dumps(got)
    assert got == {"archive": "/a", "tables": "public.t", "target_name": "before password=*** x", "schema": "rec"}
    dry = _arguments(build_parser().parse_args(["replay", "--target-time", "2026-01-01T00:00:00Z", "--dry-run"]))
    assert dry == {"target_time": "2026-01-01T00:00:00Z", "dry_run": True}


def test_entry_objects_merge_with_the_log_by_time(tmp_path: Path) -> None:
    # A directory pulled from a bucket: audit.log and the entry objects of commands run on the bucket.
    archive = _archive(tmp_path)
    ok = {"exit_code": 0, "outcome": "ok"}
    audit.append(archive, "a", "init", {}, ok)
    earlier = "2000-01-01T00:00:00.000001Z"
    line = audit.encode(earlier, "b", "verify", {}, ok)
    archive.storage.write_atomic(audit.object_key(earlier), line)
    damaged = audit.object_key(earlier)
    archive.storage.write_atomic(damaged, line.replace(b'"b"', b'"c"'))
    entries, problems = audit.read(archive)
    assert [(e.operation, e.actor) for e in entries] == [("verify", "b"), ("init", "a")]
    assert problems == [f"{archive.storage.where(damaged)}: damaged (checksum or content does not match): "
                        "the audit entry was altered or its store corrupted it"]
    assert damaged.startswith("audit/offsite/2000-01-01T000000.000001Z-") and damaged.endswith(".json")
