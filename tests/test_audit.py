"""The audit trail against a real PostgreSQL and the real command line.

1. init, snapshot, replay --dry-run, a failing replay, mark, prune, verify, log each leave exactly one
   line, with the OS user or PGTAPE_ACTOR as actor, the options given, the result, and no password
   anywhere (the DSN has one); pgtape audit prints and filters them and is not audited itself.
2. verify names a flipped byte in the audit log (exit 1), and a torn last line as torn.
3. A data-changing command whose audit line cannot be written exits 3 in one line; a reading one warns.
4. Two processes appending 200 lines each at once leave 400 intact lines.
5. On an offsite copy (the suite's SeaweedFS): each command leaves an entry object of its own, which
   pgtape audit merges with audit.log by time, from the bucket or a pulled archive; push and prune leave
   them be; a flipped byte in one is named; a read-only credential fails replay --in-place (exit 3,
   naming s3:PutObject) and only warns a verify.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from conftest import ROOT, capture_to_now, one_line_error, run_pgtape
from pgtape.storage.s3 import S3Storage
from pgtape.tape import audit
from pgtape.tape.archive import Archive
from testkit.seaweed import SeaweedS3

PASSWORD = "s3cret-audit-pw"


def _setup(dsn: str, tmp_path: Path) -> tuple[str, list[str]]:
    secret_dsn = f"{dsn} password={PASSWORD}"  # trust auth ignores it; it must never reach the log
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20) g")
    cli = ["--dsn", secret_dsn, "--archive", str(tmp_path / "archive")]
    run_pgtape("init", *cli, "--tables", "public.t", check=True)
    return secret_dsn, cli


def _entries(archive: Path) -> list[audit.Entry]:
    entries, problems = audit.read(Archive(archive))
    assert problems == []
    return entries


def test_each_operation_leaves_one_line(dsn: str, tmp_path: Path) -> None:
    secret_dsn, cli = _setup(dsn, tmp_path)
    archive = tmp_path / "archive"
    api = {"PGTAPE_ACTOR": "api:ops"}
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE t SET v = 'x' WHERE id < 5")
    capture_to_now(secret_dsn, archive)  # capture is not audited (the service's own lines cover it)
    run_pgtape("snapshot", *cli, check=True)
    run_pgtape("replay", *cli, "--latest", "--dry-run", env=api, check=True)
    one_line_error(run_pgtape("replay", *cli, "--target-time", "2001-01-01T00:00:00Z", "--dry-run"), 3)
    run_pgtape("mark", *cli, "before-change", "--description", "checkpoint", check=True)
    run_pgtape("prune", *cli, env=api, check=True)
    run_pgtape("verify", *cli, check=True)
    run_pgtape("log", *cli, "--table", "public.t", check=True)
    run_pgtape("snapshots", *cli, check=True)  # not an audited command

    entries = _entries(archive)
    me = getpass.getuser()
    assert [(e.operation, e.actor, e.result["exit_code"]) for e in entries] == [
        ("init", me, 0), ("snapshot", me, 0), ("replay", "api:ops", 0), ("replay", me, 3), ("mark", me, 0),
        ("prune", "api:ops", 0), ("verify", me, 0), ("log", me, 0)]
    by_op = {e.operation: e for e in entries}
    assert by_op["init"].arguments == {"archive": str(archive), "tables": "public.t"}
    assert entries[2].arguments == {"archive": str(archive), "latest": True, "dry_run": True}
    assert entries[2].result == {"exit_code": 0, "outcome": "ok"}
    assert entries[3].arguments["target_time"] == "2001-01-01T00:00:00Z"
    assert "before" in entries[3].result["outcome"] or "window" in entries[3].result["outcome"]
    assert by_op["mark"].arguments == {"archive": str(archive), "name": "before-change", "description": "checkpoint"}
    assert by_op["log"].arguments == {"archive": str(archive), "table": ["public.t"]}
    text = (archive / audit.KEY).read_text()
    assert PASSWORD not in text and "dsn" not in text.lower() and "host=" not in text

    # pgtape audit: every entry, filters, JSON lines; reading the trail leaves no line of its own.
    out = run_pgtape("audit", "--archive", str(archive), check=True).stdout.splitlines()
    assert len(out) == 8 and "api:ops  prune" in out[5] and "-> exit 0: ok" in out[5]
    by_api = run_pgtape("audit", "--archive", str(archive), "--json", "--actor", "api:ops", check=True).stdout
    docs = [json.loads(line) for line in by_api.splitlines()]
    assert [d["operation"] for d in docs] == ["replay", "prune"]
    assert set(docs[0]) == {"time", "actor", "operation", "arguments", "result", "line"}
    marks = run_pgtape("audit", "--archive", str(archive), "--operation", "mark", "--json", check=True).stdout
    assert [json.loads(line)["line"] for line in marks.splitlines()] == [5]
    since = entries[4].time
    later = run_pgtape("audit", "--archive", str(archive), "--since", since, "--until", entries[6].time, "--json",
                       check=True).stdout.splitlines()
    assert [json.loads(line)["operation"] for line in later] == ["mark", "prune", "verify"]
    assert run_pgtape("audit", "--archive", str(archive), "--since", "2999-01-01T00:00:00Z", check=True).stdout == ""
    one_line_error(run_pgtape("audit", "--archive", str(archive), "--since", "yesterday"), 2, "--since")
    assert len(_entries(archive)) == 8


def test_verify_names_a_damaged_or_torn_audit_line(dsn: str, tmp_path: Path) -> None:
    _, cli = _setup(dsn, tmp_path)
    log = tmp_path / "archive" / audit.KEY
    run_pgtape("verify", *cli, check=True)  # lines 1 (init) and 2 (verify)
    data = bytearray(log.read_bytes())
    data[data.index(b'"verify"') + 3] ^= 0x01
    log.write_bytes(bytes(data))
    r = run_pgtape("verify", *cli)
    assert r.returncode == 1, r.stderr
    assert f"problem: {log} line 2: damaged" in r.stdout
    r = run_pgtape("audit", *cli)
    assert r.returncode == 1 and f"problem: {log} line 2: damaged" in r.stderr
    assert [line.split()[2] for line in r.stdout.splitlines()] == ["init", "verify"]  # lines 1 and 3

    log.write_bytes(b"".join(audit.encode(audit.now(), "a", "init", {}, {"exit_code": 0, "outcome": "ok"})
                             for _ in range(2)) + b'{"time":"2026-')
    r = run_pgtape("verify", *cli)
    assert r.returncode == 1 and f"problem: {log} line 3: torn last line" in r.stdout
    assert ": damaged" not in r.stdout
    # That verify's own line replaced the torn one (with a warning): the trail is whole again.
    assert "removed a torn last line" in r.stderr
    run_pgtape("verify", *cli, check=True)


def test_an_unwritable_audit_log_fails_a_change_and_warns_a_read(dsn: str, tmp_path: Path) -> None:
    _, cli = _setup(dsn, tmp_path)
    log = tmp_path / "archive" / audit.KEY
    log.unlink()
    log.mkdir()  # cannot be opened for appending (even by root)
    line = one_line_error(run_pgtape("mark", *cli, "m1"), 3, "could not write the audit trail", "the mark itself "
                          "completed")
    assert "Traceback" not in line
    r = run_pgtape("log", *cli)
    assert r.returncode == 0 and "warning" in r.stderr and "could not write the audit trail" in r.stderr
    # No archive at all: exits as before, and no audit line is attempted anywhere.
    r = run_pgtape("log", "--archive", str(tmp_path / "nowhere"))
    one_line_error(r, 3, "does not exist")
    assert not (tmp_path / "nowhere").exists()


_WRITER = """
import sys
from pathlib import Path
from pgtape.tape import audit
from pgtape.tape.archive import Archive
archive = Archive(Path(sys.argv[1]))
for i in range(200):
    audit.append(archive, sys.argv[2], "snapshot", {"i": i, "pad": "x" * 3000}, {"exit_code": 0, "outcome": "ok"})
"""


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    # Lines larger than a pipe buffer and many of them: interleaving would show as damaged lines.
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(archive), who], cwd=ROOT) for who in ("a", "b")]
    for p in procs:
        assert p.wait(120) == 0
    entries = _entries(archive)
    assert len(entries) == 400
    for who in ("a", "b"):
        assert [e.arguments["i"] for e in entries if e.actor == who] == list(range(200))


def _offsite_entries(url: str) -> dict[str, bytes]:
    s = S3Storage(url)
    return {k: s.read(k) for k in s.list_tree(audit.OFFSITE_PREFIX)}


def test_commands_on_an_offsite_copy_leave_an_entry_object_each(dsn: str, tmp_path: Path, s3_url: str) -> None:
    secret_dsn, cli = _setup(dsn, tmp_path)
    archive = tmp_path / "archive"
    capture_to_now(secret_dsn, archive)
    offsite = ["--config", str(tmp_path / "pgtape.toml")]
    (tmp_path / "pgtape.toml").write_text(f'[offsite]\nurl = "{s3_url}"\n')
    run_pgtape("push", *offsite, *cli, check=True)
    remote = ["--dsn", secret_dsn, "--archive", s3_url]
    run_pgtape("verify", *remote, check=True)
    run_pgtape("log", *remote, "--table", "public.t", check=True)
    run_pgtape("replay", *remote, "--latest", "--dry-run", check=True)
    objects = _offsite_entries(s3_url)
    assert len(objects) == 3, objects
    for data in objects.values():  # each the same line as audit.log's, with its checksum
        assert data.count(b"\n") == 1 and audit.decode(data[:-1]) is not None
        assert PASSWORD.encode() not in data
    out = run_pgtape("audit", "--archive", s3_url, "--json", check=True).stdout  # merged with audit.log, by time
    docs = [json.loads(line) for line in out.splitlines()]
    assert [(d["operation"], d["arguments"]["archive"]) for d in docs] == [
        ("init", str(archive)), ("verify", s3_url), ("log", s3_url), ("replay", s3_url)]

    # Neither the uploader nor prune deletes or replaces them; pull brings them back.
    run_pgtape("verify", *cli, check=True)
    run_pgtape("prune", *offsite, *cli, check=True)
    run_pgtape("push", *offsite, *cli, check=True)
    assert _offsite_entries(s3_url) == objects
    pulled = tmp_path / "pulled"
    run_pgtape("pull", s3_url, str(pulled), check=True)
    out = run_pgtape("audit", "--archive", str(pulled), "--json", check=True).stdout
    assert [json.loads(line)["operation"] for line in out.splitlines()] == [
        "init", "verify", "log", "replay", "verify", "prune"]
    run_pgtape("push", *offsite, *cli, "--archive", str(pulled), check=True)  # the pulled copy pushed back
    assert _offsite_entries(s3_url) == objects

    # A flipped byte in one is named by verify and audit.
    key = sorted(objects)[1]
    flipped = bytearray(objects[key])
    flipped[flipped.index(b'"log"') + 2] ^= 0x01
    S3Storage(s3_url).write_atomic(key, bytes(flipped))
    r = run_pgtape("audit", "--archive", s3_url)
    assert r.returncode == 1 and f"problem: {s3_url}/{key}: damaged" in r.stderr, r.stderr
    assert [line.split()[2] for line in r.stdout.splitlines()] == ["init", "verify", "replay", "verify", "prune"]
    r = run_pgtape("verify", *remote)
    assert r.returncode == 1 and f"{s3_url}/{key}: damaged" in r.stdout, r.stdout + r.stderr


def test_a_read_only_credential_fails_a_change_and_warns_a_read(dsn: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    server = SeaweedS3(tmp_path / "weed", with_reader=True)
    try:
        server.start()
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        server.create_bucket("readonly")
        url = "s3://readonly/a"
        secret_dsn, cli = _setup(dsn, tmp_path)
        capture_to_now(secret_dsn, tmp_path / "archive")
        (tmp_path / "pgtape.toml").write_text(f'[offsite]\nurl = "{url}"\n')
        run_pgtape("push", "--config", str(tmp_path / "pgtape.toml"), *cli, check=True)
        reader = server.env(reader=True)
        remote = ["--dsn", secret_dsn, "--archive", url]
        r = run_pgtape("verify", *remote, env=reader)
        assert r.returncode == 0 and "warning" in r.stderr and "s3:PutObject" in r.stderr, r.stderr
        r = run_pgtape("replay", *remote, "--latest", "--in-place", "--yes", env=reader)
        one_line_error(r, 3, "could not write the audit trail", f"s3:PutObject on {url}/audit/offsite/*",
                       "the replay itself completed", after_logs=True)
        assert _offsite_entries(url) == {}
    finally:
        server.stop()
