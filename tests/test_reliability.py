"""Faults an operator meets: each ends in one clear line and a non-zero exit, never in a traceback,
a silent fallback or a silent loss. Each test here failed before its fix."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from conftest import (capture_to_now, one_line_error, run_pgtape, scalar, spawn_pgtape, stop_process,
                      wait_until)
from replay_oracle import lsn_int, lsn_text, oracle_connect
from testkit.cluster import EmbeddedPostgres


@pytest.mark.parametrize("args", [
    ["replay", "--target-time", ""], ["replay", "--target-lsn", " "], ["replay", "--target-name", ""],
    ["diff", "--target-time", ""], ["log", "--since", ""], ["log", "--to-lsn", ""], ["log", "--table", ""],
    ["replay", "--latest", "--archive", ""], ["replay", "--latest", "--dsn", ""],
    ["replay", "--latest", "--output", ""],
    ["capture", "--until-lsn", ""], ["mark", ""], ["verify", ""], ["snapshot", "--tables", " "],
])
def test_an_empty_value_is_a_usage_error(args: list[str]) -> None:
    """An unset shell variable (`--target-time "$T"`) must not mean the latest state, the current
    directory or libpq's environment."""
    option = next((a for a in args if a.startswith("--") and args[args.index(a) + 1].strip() == ""), None)
    line = one_line_error(run_pgtape(*args), 2)
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
    line = one_line_error(run_pgtape("status", "--config", str(conf)), 2)
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
    line = one_line_error(run_pgtape("replay", *cli, "--latest", "--dry-run"), 3)
    assert line == (f"pgtape: {record} fails its checksum: it was changed or damaged after pgtape wrote it "
                    "(run pgtape verify)"), line
    # A later expiry, to keep a snapshot past its retention: the same.
    record.write_bytes(good)
    _edit(record, '"expires_at":', '"expires_at":9')
    assert "fails its checksum" in run_pgtape("verify", *cli).stdout
    # Not JSON at all (a torn or foreign file): named, one line, for every command that reads it.
    record.write_text('{"id": ')
    for args in (["replay", "--latest", "--dry-run"], ["status"], ["snapshots"]):
        assert f"{record} is damaged" in one_line_error(run_pgtape(*args, *cli), 3), args
    r = run_pgtape("verify", *cli)
    assert r.returncode == 1 and f"problem: {record} is damaged" in r.stdout and "Traceback" not in r.stderr
    record.write_bytes(good)

    # ARCHIVE.json with another system id: the archive would pass for another database's.
    ident = archive / "ARCHIVE.json"
    system_id = json.loads(ident.read_bytes())["doc"]["system_id"]
    _edit(ident, system_id, str(int(system_id) + 1))
    for args in (["verify"], ["status"], ["capture", "--until-lsn", "0/1"]):
        code = 1 if args == ["verify"] else 3  # damage is what verify looks for; elsewhere a failure
        assert f"{ident} fails its checksum" in one_line_error(run_pgtape(*args, *cli), code), args


def test_capture_on_an_open_segment_with_a_damaged_header_says_so(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _archive_with_a_tape(dsn, archive)
    [segment] = list(archive.glob("generations/0001/tape/*.tape.open"))
    data = bytearray(segment.read_bytes())
    data[30] ^= 0xFF  # inside the header frame's payload: its checksum fails
    segment.write_bytes(bytes(data))
    line = one_line_error(run_pgtape("capture", "--dsn", dsn, "--archive", str(archive), "--until-lsn", "0/1"), 3)
    assert line.startswith("pgtape: damaged archive file: ") and str(segment) in line and \
        "segment header is missing or damaged" in line, line


# -- clear errors ------------------------------------------------------------------------------------
def test_an_archive_path_that_is_a_file(dsn: str, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    for args in (["init"], ["capture"], ["status"], ["replay", "--latest"]):
        line = one_line_error(run_pgtape(*args, "--dsn", dsn, "--archive", str(a_file), "--tables", "t"), 3)
        assert line == f"pgtape: archive path {a_file} exists but is not a directory: choose another --archive", args


def test_a_malformed_dsn_never_shows_any_part_of_it(tmp_path: Path) -> None:
    for dsn in ("host=db password -Pw_zq81", "host=db password='unterminated -Pw_zq81", "dbname=x p@ss=-Pw_zq81"):
        for args in (["check"], ["init"]):
            r = run_pgtape(*args, "--dsn", dsn, "--archive", str(tmp_path / "a"), "--tables", "t")
            assert "-Pw_zq81" not in r.stdout + r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr
            assert "cannot be parsed; it is not shown" in r.stdout + r.stderr, (dsn, args)
            assert r.returncode == (1 if args == ["check"] else 3), (dsn, args)


def test_log_refuses_an_unknown_key_column(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _archive_with_a_tape(dsn, archive)
    cli = ["--dsn", dsn, "--archive", str(archive)]
    assert run_pgtape("log", *cli, "--key", "id=2").stdout.count("INSERT") == 1
    assert run_pgtape("log", *cli, "--key", "id=99").stdout == ""  # a real column, no such value: no error
    line = one_line_error(run_pgtape("log", *cli, "--key", "nosuchcol=1"), 2)
    assert line == "pgtape: --key: no change looked at has a column nosuchcol (columns: id, v)", line


def test_replay_names_the_missing_grant_and_diff_every_missing_table(pg: EmbeddedPostgres, dbname: str, role: str,
                                                                     tmp_path: Path) -> None:
    dsn = pg.dsn(dbname)
    archive = tmp_path / "archive"
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE a (id int PRIMARY KEY)")
        c.execute("CREATE TABLE b (id int PRIMARY KEY)")
        c.execute(f"GRANT SELECT ON a, b TO {role}")
        c.execute(f"REVOKE CREATE ON DATABASE {dbname} FROM PUBLIC")
        capture_to_now(dsn, archive, tables="a,b")
    cli = ["--dsn", pg.dsn(dbname, user=role), "--archive", str(archive)]
    line = one_line_error(run_pgtape("replay", *cli, "--latest", "--schema", "rec"), 3)
    assert line == (f"pgtape: role {role} may not create schemas in database {dbname}: GRANT CREATE ON DATABASE "
                    f"{dbname} TO {role} (as its owner or a superuser), or replay --output DIR, or --into a database "
                    "where it may"), line
    cli = ["--dsn", dsn, "--archive", str(archive)]
    run_pgtape("replay", *cli, "--latest", "--schema", "rec", "--tables", "a", check=True)
    line = one_line_error(run_pgtape("diff", *cli, "--schema", "rec", "--against", "schema:nope"), 3)
    assert line == "pgtape: not found: rec.b, nope.a, nope.b (a replay of only some tables? name them with --tables)"


def test_two_forced_replays_into_one_schema_take_turns(dsn: str, tmp_path: Path) -> None:
    """Concurrent replays into one new schema: publishing is serialized (the advisory lock replays
    take on the schema's name, held here until all four wait for it), so none fails with "schema
    already exists" and the last one's schema stays."""
    archive = tmp_path / "archive"
    _archive_with_a_tape(dsn, archive)
    cli = ["--dsn", dsn, "--archive", str(archive), "--latest", "--schema", "rec", "--force"]
    with oracle_connect(dsn) as holder, oracle_connect(dsn) as c:
        holder.execute("SELECT pg_advisory_lock(hashtext('pgtape replay schema ' || 'rec'))")
        procs = [spawn_pgtape("replay", *cli, log=tmp_path / f"replay-{i}.log") for i in range(4)]
        try:
            wait_until("four replays waiting to publish", lambda: scalar(c.execute(
                "SELECT count(*) = 4 FROM pg_stat_activity WHERE application_name = 'pgtape replay' "
                "AND wait_event = 'advisory'")), 60)
            holder.execute("SELECT pg_advisory_unlock_all()")
            for p in procs:
                p.wait(120)
        finally:
            for p in procs:
                stop_process(p)
        logs = [(tmp_path / f"replay-{i}.log").read_text() for i in range(4)]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], logs
        assert c.execute("SELECT count(*) FROM rec.t").fetchone() == (2,)
        assert c.execute("SELECT count(*) FROM pg_namespace "
                         "WHERE nspname LIKE 'pgtape_incomplete_%'").fetchone() == (0,)


# -- the gap rule ------------------------------------------------------------------------------------
def test_a_tape_that_lost_its_last_writes_is_refused_and_reported(dsn: str, tmp_path: Path) -> None:
    """Acknowledged transactions cut off the open segment (a disk that lost its last writes, an
    archive restored from an older copy): capture does not resume across the gap, status and
    verify name it."""
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive)]
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        capture_to_now(dsn, archive, tables="t")
        for i in range(20):
            c.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
        capture_to_now(dsn, archive, tables="t")
    assert run_pgtape("verify", *cli).returncode == 0
    [segment] = list(archive.glob("generations/0001/tape/*.tape.open"))
    with open(segment, "r+b") as f:
        f.truncate(segment.stat().st_size - 37)
    r = run_pgtape("verify", *cli)
    assert r.returncode == 1 and "the tape lost its last writes in (" in r.stdout, r.stdout
    line = one_line_error(run_pgtape("capture", *cli, "--until-lsn", "FF/0"), 3)
    assert "has confirmed up to" in line and "pgtape init --restart" in line, line
    r = run_pgtape("status", *cli)
    assert r.returncode == 1 and "GAP                replication slot pgtape has confirmed up to" in r.stdout, r.stdout


def test_capture_stops_acknowledging_when_its_archive_is_deleted(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "t"]
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        run_pgtape("init", *cli, check=True)
        capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture.log")
        try:
            c.execute("INSERT INTO t VALUES (1)")
            wait_until("capture to confirm the first change", lambda: _confirmed(c) >= _now(c), 30)
            shutil.rmtree(archive)
            c.execute("INSERT INTO t VALUES (2)")  # exists nowhere but in the server's WAL, for the slot to keep
            after = _now(c)
            capture.wait(30)
        finally:
            stop_process(capture)
        log = (tmp_path / "capture.log").read_text()
        assert capture.returncode == 3 and "Traceback" not in log, log
        assert f"pgtape: the archive at {archive} is no longer the one capture opened" in log.splitlines()[-1], log
        assert _confirmed(c) < after  # nothing acknowledged after the deletion


def _confirmed(c: psycopg.Connection) -> int:
    return lsn_int(scalar(c.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = "
                                    "'pgtape'")))


def _now(c: psycopg.Connection) -> int:
    return lsn_int(scalar(c.execute("SELECT pg_current_wal_lsn()::text")))


# -- a full disk -------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for the test and unmounted after (needs root's mount)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_makes_capture_wait_and_resume_without_loss(dsn: str, tmp_path: Path, small_disk: Path) -> None:
    archive = small_disk / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "t"]
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        run_pgtape("init", *cli, check=True)
        capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture.log")
        filler = small_disk / "filler"
        try:
            free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
            filler.write_bytes(b"\0" * (free - 64 * 1024))  # 64 KiB left
            confirmed = _confirmed(c)
            for i in range(8):  # incompressible: about 1 MiB on the tape
                c.execute("INSERT INTO t VALUES (%s, %s)", (i, os.urandom(64 * 1024).hex()))
            wait_until("capture to meet the full disk",
                       lambda: "no space left for the tape" in (tmp_path / "capture.log").read_text(), 60)
            # waiting: it retries (0.5 s, then 1 s backoff), acknowledges nothing, and stays up
            wait_until("capture to retry twice on the full disk", lambda: capture.poll() is not None or (
                tmp_path / "capture.log").read_text().count("no space left for the tape") >= 3, 60)
            assert capture.poll() is None and _confirmed(c) < _now(c)
            assert _confirmed(c) >= confirmed
            filler.unlink()
            end = _now(c)
            wait_until("capture to confirm everything", lambda: _confirmed(c) >= end, 60)
        finally:
            stop_process(capture)
        log = (tmp_path / "capture.log").read_text()
        assert capture.returncode == 0 and "Traceback" not in log, log
        line = next(x for x in log.splitlines() if "no space left for the tape" in x)
        assert str(small_disk) in line and "MiB free; it needs at least 4 MiB" in line, line
        # Nothing lost: the tape replays to exactly the table.
        out = tmp_path / "out"
        run_pgtape("replay", *cli, "--latest", "--output", str(out), check=True)
        assert len((out / "public.t.csv").read_text().splitlines()) == 9
        assert run_pgtape("verify", *cli).returncode == 0


# -- in place, with writers ------------------------------------------------------------------------
class _Writers:
    """Threads that update their own keys as fast as they can, each write a unique token; `last`
    holds, per key, the token of its last committed write."""

    def __init__(self, dsn: str, keys: range, threads: int = 4) -> None:
        self.stop = threading.Event()
        self.last: dict[int, str] = {}
        self.writes = 0
        self.threads = [threading.Thread(target=self._run, args=(dsn, list(keys)[i::threads], i), daemon=True)
                        for i in range(threads)]

    def _run(self, dsn: str, keys: list[int], n: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for seq in itertools.count():
                if self.stop.is_set():
                    return
                k = keys[seq % len(keys)]
                token = f"w{n}-{seq}"
                c.execute("UPDATE t SET v = %s WHERE id = %s", (token, k))
                self.last[k] = token
                self.writes += 1

    def __enter__(self) -> _Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_in_place_under_concurrent_writes_loses_no_write(dsn: str, tmp_path: Path) -> None:
    """Every key's last write is in the restored table (it waited for the restore, then applied) or in
    the backup schema (the restore overwrote it): never in neither."""
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "t"]
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'target' FROM generate_series(1, 50000) g")
        capture_to_now(dsn, archive, tables="t")
        target = lsn_text(_now(c))
        c.execute("UPDATE t SET v = 'after target'")
        capture_to_now(dsn, archive, tables="t")
        with _Writers(dsn, range(1, 50001, 50)) as w:  # 1,000 keys spread over the table
            wait_until("the writers to write", lambda: w.writes > 200, 30)
            r = run_pgtape("replay", *cli, "--target-lsn", target, "--in-place", "--yes", "--json")
            during = w.writes
            wait_until("writes after the restore", lambda: w.writes > during + 200, 30)
        assert r.returncode == 0, r.stderr
        backup = json.loads(r.stdout)["backup_schema"]
        final: dict[int, str] = dict(c.execute("SELECT id, v FROM t").fetchall())
        saved = {(k, v) for k, v in c.execute(f"SELECT id, v FROM {backup}.t").fetchall()}
        lost = [k for k, token in w.last.items() if final[k] != token and (k, token) not in saved]
        assert lost == [], f"{len(lost)} keys lost their last write, e.g. {lost[:5]}"
        assert "locked      public.t against writes while restoring" in run_pgtape(
            "replay", *cli, "--target-lsn", target, "--in-place", "--yes").stdout


def test_in_place_waits_for_the_lock_at_most_lock_timeout(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "t"]
    with oracle_connect(dsn) as c, oracle_connect(dsn) as holder:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        capture_to_now(dsn, archive, tables="t")
        c.execute("INSERT INTO t VALUES (1, 'x')")
        holder.execute("BEGIN")
        holder.execute("UPDATE t SET v = 'held' WHERE id = 1")  # an open writer's lock
        line = one_line_error(run_pgtape("replay", *cli, "--latest", "--in-place", "--yes", "--lock-timeout", "1"), 3)
        holder.execute("ROLLBACK")
        assert line == ("pgtape: could not lock public.t against writes within 1s: other sessions hold locks on them "
                        "(see pg_locks); nothing was changed; retry, or wait longer with --lock-timeout"), line
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgtape_backup_%'").fetchone() == (0,)


def test_a_snapshot_without_select_names_the_grant(pg: EmbeddedPostgres, dbname: str, role: str,
                                                   tmp_path: Path) -> None:
    dsn = pg.dsn(dbname)
    archive = tmp_path / "archive"
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        capture_to_now(dsn, archive, tables="t")
    r = run_pgtape("snapshot", "--dsn", pg.dsn(dbname, user=role), "--archive", str(archive))
    # (after the progress line that names the snapshot)
    one_line_error(r, 3, "permission denied for table t: the role needs SELECT on every captured table (GRANT "
                   "SELECT ON", after_logs=True)
