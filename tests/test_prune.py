"""pgtape prune against a real PostgreSQL: what goes, what always stays, and crash safety.

1. Expired snapshots go; the newest completed base (and the newest completed snapshot) stay even
   when expired; running ones are never touched; the tape before the oldest remaining base goes;
   verify passes and replay --latest gives the same rows; older targets are refused with the window.
2. --dry-run deletes nothing and lists the same; --json parses; nothing expired: nothing deleted.
3. A segment missing from the middle of the tape is still a gap (before and after a prune).
4. An interruption between any two steps (and inside the segment step) leaves an archive verify
   accepts and replay uses, and a re-run finishes the job.
5. An older generation whose snapshots all expired goes entirely.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import msgspec
import psycopg

from conftest import capture_to_now, one_line_error, process_alive, run_pgtape, spawn_pgtape, stop_process, wait_until
from pgtape import metadata
from pgtape.storage import LocalStorage
from pgtape.tape import FORMAT_VERSION
from pgtape.tape.archive import Archive, ArchiveIdentity
from pgtape.timefmt import format_time
from pgtape.replay.engine import prepare
from pgtape.replay.target import Target
from pgtape.replay.verify import verify_archive
from replay_oracle import TableState, compare, iso, lsn_text, oracle_connect, table_state
from pgtape.snapshots import catalog, prune
from pgtape.snapshots.catalog import SnapshotRecord

CONF = '[capture]\nsegment_size = "8kB"\nfsync_interval = "10ms"\n'
TABLES = "public.payments,public.orders"


class Built:
    def __init__(self, dsn: str, tmp_path: Path) -> None:
        self.dsn, self.archive = dsn, tmp_path / "archive"
        self.conf = tmp_path / "pgtape.toml"
        self.conf.write_text(CONF)
        self.cli = ["--dsn", dsn, "--archive", str(self.archive), "--config", str(self.conf)]
        self.batches = 0

    def batch(self, c: psycopg.Connection) -> None:
        """Incompressible rows: each batch overfills an 8 kB segment."""
        lo = 10_000 + self.batches * 300
        c.execute("INSERT INTO payments SELECT g, md5(random()::text) || md5(random()::text) "
                  "FROM generate_series(%s::int, %s::int) g", (lo, lo + 299))
        c.execute("UPDATE orders SET total = total + 1 WHERE id %% 5 = %s", (self.batches % 5,))
        c.execute("DELETE FROM payments WHERE id = %s", (self.batches + 1,))
        self.batches += 1
        capture_to_now(self.dsn, self.archive, "--config", str(self.conf), tables=TABLES)

    def snapshot(self, *extra: str) -> SnapshotRecord:
        out = json.loads(run_pgtape("snapshot", *self.cli, "--tables", TABLES, *extra, "--json", check=True).stdout)
        [rec] = [r for r in catalog.load_all(Archive(self.archive)) if r.id == out["id"]]
        return rec

    def live(self, c: psycopg.Connection) -> dict[str, TableState]:
        return {t: table_state(c, t) for t in TABLES.split(",")}


def _setup(b: Built, c: psycopg.Connection) -> None:
    c.execute("CREATE TABLE payments (id int PRIMARY KEY, note text)")
    c.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric(12,2))")
    c.execute("INSERT INTO payments SELECT g, md5(g::text) FROM generate_series(1, 300) g")
    c.execute("INSERT INTO orders SELECT g, g * 1.10 FROM generate_series(1, 50) g")
    run_pgtape("init", *b.cli, "--tables", TABLES, check=True)


def _build_full(b: Built, c: psycopg.Connection) -> list[SnapshotRecord]:
    """init (S0), 2 batches, S1, 2 batches, S2, S3 (orders only, the newest), 4 batches."""
    _setup(b, c)
    [s0] = catalog.load_all(Archive(b.archive))
    for _ in range(2):
        b.batch(c)
    s1 = b.snapshot()
    for _ in range(2):
        b.batch(c)
    s2 = b.snapshot()
    s3 = b.snapshot("--tables", "public.orders")
    for _ in range(4):
        b.batch(c)
    return [s0, s1, s2, s3]


def _expire(archive: Path, ids: set[str]) -> None:
    """Rewrite expires_at through the catalog, as if the retention had passed."""
    a = Archive(archive)
    past = time.time_ns() // 1000 - 1_000_000
    for r in catalog.load_all(a):
        if r.id in ids:
            catalog.save(a, msgspec.structs.replace(r, expires_at=past))


def _fake_record(archive: Path, sid: str, status: str, pid: int, expired: bool) -> SnapshotRecord:
    now = time.time_ns() // 1000
    r = SnapshotRecord(sid, 1, "manual", TABLES.split(","), status, now - 10**7,
                       now - 1_000_000 if expired else now + 10**9, pid, os.uname().nodename)
    catalog.save(Archive(archive), r)
    return r


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _tree(path: Path) -> dict[str, int]:
    """The archive's files (locks and the audit trail, which every command adds a line to, aside)."""
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()
            and not p.name.endswith(".lock") and p.parent.name != "audit"}


def _verify_ok(archive: Path) -> None:
    r = run_pgtape("verify", "--archive", str(archive))
    assert r.returncode == 0 and r.stdout.startswith("ok: "), r.stdout + r.stderr


def _replay_latest(b: Built, c: psycopg.Connection, schema: str, expected: dict[str, TableState]) -> None:
    r = run_pgtape("replay", *b.cli, "--latest", "--schema", schema)
    assert r.returncode == 0, r.stderr
    for t, st in expected.items():
        got = table_state(c, f'"{schema}".{t.split(".")[1]}')
        assert compare(t, got.columns, got.types, got.lines, st) is None, schema


# -- 1 + 2 -------------------------------------------------------------------------------------------
def test_prune_deletes_expired_keeps_bases_and_replay_is_unchanged(dsn: str, tmp_path: Path) -> None:
    b = Built(dsn, tmp_path)
    with oracle_connect(dsn) as c:
        s0, s1, s2, s3 = _build_full(b, c)
        live = b.live(c)
        _replay_latest(b, c, "before", live)
        gone = _fake_record(b.archive, "20000101T000000.000000Z-1", catalog.RUNNING, _dead_pid(), expired=True)
        failed = _fake_record(b.archive, "20000101T000000.000001Z-2", catalog.FAILED, 2, expired=False)
        running = _fake_record(b.archive, "20000101T000000.000002Z-3", catalog.RUNNING, os.getpid(), expired=True)
        _expire(b.archive, {s0.id, s1.id, s2.id, s3.id})
        segs = Archive(b.archive).segments(1)
        assert s2.as_of_lsn is not None and s2.as_of_time is not None
        doomed = [s for s in segs[:-1] if s.end_lsn is not None and s.end_lsn <= s2.as_of_lsn]
        assert len(doomed) >= 2 and len(segs) - len(doomed) >= 4, [s.path.name for s in segs]

        # --dry-run: lists, deletes nothing
        before = _tree(b.archive)
        r = run_pgtape("prune", *b.cli, "--dry-run")
        assert r.returncode == 0, r.stderr
        assert _tree(b.archive) == before
        for sid in (s0.id, s1.id, gone.id):
            assert f"would delete snapshot {sid}" in r.stdout, r.stdout
        for sid in (s2.id, s3.id, failed.id, running.id):
            assert sid not in r.stdout, r.stdout
        for s in doomed:
            assert f"would delete segment {s.path.name} (generation 1, {lsn_text(s.start_lsn)} .. " \
                   f"{lsn_text(s.end_lsn or 0)}" in r.stdout, r.stdout
        assert f"recoverable window: {format_time(s2.as_of_time)} ({lsn_text(s2.as_of_lsn)})" in r.stdout, r.stdout
        dry = json.loads(run_pgtape("prune", *b.cli, "--dry-run", "--json", check=True).stdout)
        assert _tree(b.archive) == before

        # the real thing: the same list
        r = run_pgtape("prune", *b.cli, "--json")
        assert r.returncode == 0, r.stderr
        done = json.loads(r.stdout)
        assert {**dry, "dry_run": False} == done
        assert {s["id"] for s in done["snapshots"]} == {s0.id, s1.id, gone.id}
        assert [s["file"] for s in done["segments"]] == [s.path.name for s in doomed]
        assert done["bytes_freed"] == sum(before[k] for k in before if k.startswith("generations/0001/tape/")
                                          and k.split("/")[-1] in {s.path.name for s in doomed}) \
            + sum(before[k] for k in before for sid in (s0.id, s1.id) if f"/{sid}/" in k)
        assert done["window"]["from_lsn"] == lsn_text(s2.as_of_lsn)

        a = Archive(b.archive)
        left = {r.id: r for r in catalog.load_all(a)}
        assert set(left) == {s2.id, s3.id, failed.id, running.id}
        assert left[running.id].status == catalog.RUNNING
        for sid in (s0.id, s1.id):
            assert not catalog.snapshot_dir(a, 1, sid).exists()
        remaining = a.segments(1)
        assert [s.path for s in remaining] == [s.path for s in segs[len(doomed):]]
        assert remaining[0].start_lsn <= s2.as_of_lsn < (remaining[0].end_lsn or 1 << 64)
        assert a.pruned().tape_start_lsn == {1: remaining[0].start_lsn}

        _verify_ok(b.archive)
        _replay_latest(b, c, "after", live)
        # a target before the new window start: refused, with the window printed
        assert s1.as_of_time is not None
        one_line_error(run_pgtape("replay", *b.cli, "--target-time", iso(s1.as_of_time), "--dry-run"), 3,
                        "before the oldest base", done["window"]["text"])
        one_line_error(run_pgtape("replay", *b.cli, "--target-lsn", lsn_text(s1.as_of_lsn or 0), "--dry-run"), 3,
                        "before the oldest base", done["window"]["text"])

        # a second run: nothing left to do
        r = run_pgtape("prune", *b.cli)
        assert r.returncode == 0 and "nothing to prune" in r.stdout, r.stdout + r.stderr


def test_nothing_expired_nothing_deleted(dsn: str, tmp_path: Path) -> None:
    b = Built(dsn, tmp_path)
    with oracle_connect(dsn) as c:
        _setup(b, c)
        for _ in range(3):
            b.batch(c)
        b.snapshot()
        b.batch(c)
    assert len(Archive(b.archive).segments(1)) >= 3
    before = _tree(b.archive)
    r = run_pgtape("prune", *b.cli)
    assert r.returncode == 0, r.stderr
    assert "nothing to prune" in r.stdout and "recoverable window: " in r.stdout, r.stdout
    out = json.loads(run_pgtape("prune", *b.cli, "--json", check=True).stdout)
    assert out["nothing_to_prune"] and out["bytes_freed"] == 0 and out["snapshots"] == out["segments"] == []
    assert _tree(b.archive) == before
    _verify_ok(b.archive)
    # errors: one line, no traceback
    one_line_error(run_pgtape("prune", "--archive", str(tmp_path / "nope")), 3, "does not exist")


# -- 3 ------------------------------------------------------------------------------------------------
def test_a_segment_missing_from_the_middle_is_still_a_gap(dsn: str, tmp_path: Path) -> None:
    b = Built(dsn, tmp_path)
    with oracle_connect(dsn) as c:
        snaps = _build_full(b, c)
    _expire(b.archive, {s.id for s in snaps})

    # removed by hand before a prune: prune refuses and deletes nothing; verify names the gap
    copy = tmp_path / "holed"
    shutil.copytree(b.archive, copy)
    segs = Archive(copy).segments(1)
    segs[1].path.unlink()
    before = _tree(copy)
    one_line_error(run_pgtape("prune", "--archive", str(copy)), 3, "gap", segs[2].path.name)
    assert _tree(copy) == before
    problems = verify_archive(Archive(copy)).problems
    assert len(problems) == 1 and "gap" in problems[0] and lsn_text(segs[1].start_lsn) in problems[0], problems

    # removed by hand after a prune: the pruned start is no excuse for a hole further on
    run_pgtape("prune", *b.cli, check=True)
    _verify_ok(b.archive)
    segs = Archive(b.archive).segments(1)
    assert len(segs) >= 4
    middle = segs[2]
    middle.path.unlink()
    r = run_pgtape("verify", "--archive", str(b.archive))
    assert r.returncode == 1, r.stdout
    gaps = [line for line in r.stdout.splitlines() if line.startswith("problem: ")]
    assert len(gaps) == 1 and "gap" in gaps[0] and lsn_text(middle.start_lsn) in gaps[0] \
        and lsn_text(middle.end_lsn or 0) in gaps[0], gaps
    # and the first remaining segment gone too: a gap, not a prune
    segs[0].path.unlink()
    assert any("gap" in p and segs[1].path.name in p for p in verify_archive(Archive(b.archive)).problems)


# -- 4 ------------------------------------------------------------------------------------------------
def test_interrupted_prune_leaves_a_valid_archive_and_a_rerun_finishes(dsn: str, tmp_path: Path) -> None:
    b = Built(dsn, tmp_path)
    with oracle_connect(dsn) as c:
        snaps = _build_full(b, c)
        live = b.live(c)
    _expire(b.archive, {s.id for s in snaps})
    reference = tmp_path / "reference"
    shutil.copytree(b.archive, reference)
    run_pgtape("prune", "--archive", str(reference), check=True)
    finished = _tree(reference)
    tables = TABLES.split(",")

    # stop after each step, and in the middle of the segment step (one segment deleted)
    cuts: list[tuple[int, int | None]] = [(k, None) for k in range(len(prune.STEPS))] + [(3, 1)]
    for k, segments in cuts:
        copy = tmp_path / f"cut-{k}-{segments}"
        shutil.copytree(b.archive, copy)
        a = Archive(copy)
        p = prune.plan(a)
        assert p.snapshots and len(p.segments) >= 2
        for step in prune.STEPS[:k]:
            step(a, p)
        if segments is not None:
            p.segments = p.segments[:segments]
            prune.STEPS[k](a, p)
        report = verify_archive(a)
        assert report.ok, (k, segments, report.problems)
        assert prepare(a, tables, Target("latest")).base.id == snaps[2].id
        r = run_pgtape("prune", "--archive", str(copy))
        assert r.returncode == 0, r.stderr
        assert _tree(copy) == finished, (k, segments)
        _verify_ok(copy)
    with oracle_connect(dsn) as c:
        b.archive = copy
        b.cli[b.cli.index("--archive") + 1] = str(copy)
        _replay_latest(b, c, "after_crash", live)


# -- 5 ------------------------------------------------------------------------------------------------
def test_an_old_generation_whose_snapshots_all_expired_goes_entirely(dsn: str, tmp_path: Path) -> None:
    b = Built(dsn, tmp_path)
    with oracle_connect(dsn) as c:
        _setup(b, c)
        b.batch(c)
        b.snapshot()
        b.batch(c)
        run_pgtape("init", *b.cli, "--tables", TABLES, "--restart", check=True)
        b.batch(c)
        live = b.live(c)
        a = Archive(b.archive)
        assert a.identity().generation == 2
        _expire(b.archive, {r.id for r in catalog.load_all(a)})  # generation 2's only base too
        r = run_pgtape("prune", *b.cli)
        assert r.returncode == 0, r.stderr
        assert "deleted generation 1" in r.stdout, r.stdout
        assert not a.generation_dir(1).exists() and a.generation_dir(2).is_dir()
        assert a.pruned().deleted_generations == [1]
        [kept] = catalog.load_all(a)
        assert kept.generation == 2 and kept.kind == "initial"
        _verify_ok(b.archive)
        _replay_latest(b, c, "gen2", live)


def test_prune_is_refused_while_a_snapshot_holds_the_lock(tmp_path: Path) -> None:
    import fcntl

    archive = tmp_path / "archive"
    archive.mkdir()
    metadata.write(LocalStorage(archive), "ARCHIVE.json", ArchiveIdentity(FORMAT_VERSION, "1", "d", "s", 1, 0))
    fd = os.open(archive / "snapshot.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        one_line_error(run_pgtape("prune", "--archive", str(archive)), 3, "is running", "when it ends")
    finally:
        os.close(fd)


# -- 6 ------------------------------------------------------------------------------------------------
def test_snapshot_prune_applies_the_retention_after_the_new_base(dsn: str, tmp_path: Path) -> None:
    b = Built(dsn, tmp_path)
    with oracle_connect(dsn) as c:
        _setup(b, c)
        b.batch(c)
        s1 = b.snapshot()
        b.batch(c)
        live = b.live(c)
        a = Archive(b.archive)
        old = {r.id for r in catalog.load_all(a)}
        _expire(b.archive, old)  # S0 and S1: the new base makes both unneeded
        out = json.loads(run_pgtape("snapshot", *b.cli, "--prune", "--json", check=True).stdout)
        assert {s["id"] for s in out["prune"]["snapshots"]} == old, out
        assert [r.id for r in catalog.load_all(a)] == [out["id"]]
        assert out["prune"]["segments"] and all(s.start_lsn >= (s1.as_of_lsn or 0) for s in a.segments(1)[1:])
        _verify_ok(b.archive)
        _replay_latest(b, c, "after_snapshot_prune", live)
        # Human form: the snapshot line, then what prune did (here: nothing left to do).
        r = run_pgtape("snapshot", *b.cli, "--prune")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("snapshot ") and "nothing to prune" in r.stdout, r.stdout


def test_scheduled_snapshots_apply_the_retention(dsn: str, tmp_path: Path) -> None:
    b = Built(dsn, tmp_path)
    with oracle_connect(dsn) as c:
        _setup(b, c)
        b.batch(c)
        a = Archive(b.archive)
        [s0] = catalog.load_all(a)
        _expire(b.archive, {s0.id})
        # Only now: the batch's own capture run, slow on a loaded machine, must not take one already.
        b.conf.write_text(CONF + 'snapshot_every = "1s"\n')
        capture = spawn_pgtape("capture", *b.cli, "--tables", TABLES, log=tmp_path / "capture.log")
        try:
            def s0_gone() -> bool:
                assert capture.poll() is None, (tmp_path / "capture.log").read_text()
                recs = catalog.load_all(a)
                return any(r.kind == "scheduled" and r.status == catalog.COMPLETED for r in recs) and \
                    all(r.id != s0.id for r in recs)
            wait_until("a scheduled snapshot, then S0 pruned", s0_gone, 30)
        finally:
            stop_process(capture)
            # A scheduled snapshot (and its prune) may outlive capture: wait for any still running.
            for r in catalog.load_all(a):
                if r.status == catalog.RUNNING and r.pid:
                    wait_until(f"scheduled snapshot {r.id} to end", lambda: not process_alive(r.pid), 30, 0.1)
        assert not catalog.snapshot_dir(a, 1, s0.id).exists()
        _verify_ok(b.archive)
