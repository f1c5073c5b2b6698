"""Faults an operator meets: each ends in one clear line and a non-zero exit, never in a traceback,
a silent fallback or a silent loss. Each test here failed before its fix (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import capture_to_now, run_pgtape
from replay_oracle import oracle_connect


def one_line(r, code: int = 2) -> str:  # type: ignore[no-untyped-def]
    """The refusal: exit `code`, exactly one line on stderr, no traceback; that line."""
    assert r.returncode == code and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, \
        (r.returncode, r.stderr)
    return r.stderr.strip()


@pytest.mark.parametrize("args", [
    ["replay", "--target-time", ""], ["replay", "--target-lsn", " "], ["replay", "--target-name", ""],
    ["diff", "--target-time", ""], ["log", "--since", ""], ["log", "--to-lsn", ""], ["log", "--table", ""],
    ["replay", "--latest", "--archive", ""], ["replay", "--latest", "--dsn", ""], ["replay", "--latest", "--output", ""],
    ["capture", "--until-lsn", ""], ["mark", ""], ["verify", ""], ["snapshot", "--tables", " "],
])
def test_an_empty_value_is_a_usage_error(args: list[str]) -> None:
    """An unset shell variable (`--target-time "$T"`) must not mean the latest state, the current
    directory or libpq's environment."""
    option = next((a for a in args if a.startswith("--") and args[args.index(a) + 1].strip() == ""), None)
    line = one_line(run_pgtape(*args))
    assert "must not be empty" in line and (option is None or f"argument {option}:" in line), line


@pytest.mark.parametrize("body, message", [
    ('[archive]\npath = ["a"]', '[archive] path must be a string, e.g. "...", not list [\'a\']'),
    ("[source]\ndsn = 5", '[source] dsn must be a string, e.g. "...", not int 5'),
    ('[source]\ndsn = ""', "[source] dsn is empty: give a value or remove the line"),
    ("[capture]\nfsync_interval = true", "[capture] fsync_interval must be a duration, e.g. \"200ms\", \"24h\" or a "
                                         "number of seconds, not bool True"),
    ('[source]\ntables = ["public.a", 3]', "[source] tables must be a string or a list of strings"),
    ("[source]\ntables = []", "[source] tables is empty: give a value or remove the line"),
])
def test_a_config_value_of_the_wrong_type_is_refused_as_such(tmp_path: Path, body: str, message: str) -> None:
    conf = tmp_path / "pgtape.toml"
    conf.write_text(body + "\n")
    line = one_line(run_pgtape("status", "--config", str(conf)))
    assert line.startswith(f"pgtape: {conf} {message}"), line


# -- damaged and edited metadata -------------------------------------------------------------------
def _archive_with_a_tape(dsn: str, archive: Path) -> None:
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t VALUES (1, 'a')")
        capture_to_now(dsn, archive, tables="t")
        c.execute("INSERT INTO t VALUES (2, 'b')")
        capture_to_now(dsn, archive, tables="t")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, text)
    path.write_text(text.replace(old, new, 1))


def test_edited_or_damaged_metadata_fails_its_checksum(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _archive_with_a_tape(dsn, archive)
    cli = ["--dsn", dsn, "--archive", str(archive)]
    assert run_pgtape("verify", *cli).returncode == 0
    [record] = list((archive / "catalog" / "snapshots").glob("*.json"))
    good = record.read_bytes()

    # An edited as_of_lsn: verify names the file, replay refuses the base instead of using it.
    doc = json.loads(good)["doc"]
    _edit(record, f'"as_of_lsn":{doc["as_of_lsn"]}', f'"as_of_lsn":{doc["as_of_lsn"] + 8}')
    r = run_pgtape("verify", *cli)
    assert r.returncode == 1 and f"problem: {record} fails its checksum" in r.stdout, r.stdout
    line = one_line(run_pgtape("replay", *cli, "--latest", "--dry-run"), 1)
    assert line == (f"pgtape: {record} fails its checksum: it was changed or damaged after pgtape wrote it "
                    "(run pgtape verify)"), line
    # A later expiry, to keep a snapshot past its retention: the same.
    record.write_bytes(good)
    _edit(record, '"expires_at":', '"expires_at":9')
    assert "fails its checksum" in run_pgtape("verify", *cli).stdout
    # Not JSON at all (a torn or foreign file): named, one line, for every command that reads it.
    record.write_text('{"id": ')
    for args in (["replay", "--latest", "--dry-run"], ["status"], ["snapshots"]):
        assert f"{record} is damaged" in one_line(run_pgtape(*args, *cli), 1), args
    r = run_pgtape("verify", *cli)
    assert r.returncode == 1 and f"problem: {record} is damaged" in r.stdout and "Traceback" not in r.stderr
    record.write_bytes(good)

    # ARCHIVE.json with another system id: the archive would pass for another database's.
    ident = archive / "ARCHIVE.json"
    system_id = json.loads(ident.read_bytes())["doc"]["system_id"]
    _edit(ident, system_id, str(int(system_id) + 1))
    for args in (["verify"], ["status"], ["capture", "--until-lsn", "0/1"]):
        assert f"{ident} fails its checksum" in one_line(run_pgtape(*args, *cli), 1), args


def test_capture_on_an_open_segment_with_a_damaged_header_says_so(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _archive_with_a_tape(dsn, archive)
    [segment] = list(archive.glob("generations/0001/tape/*.tape.open"))
    data = bytearray(segment.read_bytes())
    data[30] ^= 0xFF  # inside the header frame's payload: its checksum fails
    segment.write_bytes(bytes(data))
    line = one_line(run_pgtape("capture", "--dsn", dsn, "--archive", str(archive), "--until-lsn", "0/1"), 1)
    assert line.startswith("pgtape: damaged archive file: ") and str(segment) in line and \
        "segment header is missing or damaged" in line, line
