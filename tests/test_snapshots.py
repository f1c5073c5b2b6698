"""Snapshots against a real PostgreSQL: exactness at the as-of LSN, the base/tape seam, kill -9,
corruption, subsets and refusals, the snapshot lock, bounded memory, scheduled snapshots.

Randomised tests print their seed; PGTAPE_TEST_SEED=<seed> repeats a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import zstandard

from conftest import (ROOT, capture_to_now, clean_env, confirmed_flush, one_line_error, process_alive, run_pgtape,
                      scalar, spawn_pgtape, stop_process, wait_until)
from testkit.cluster import EmbeddedPostgres
from pgtape.lsn import parse_lsn
from pgtape.pg import connect
from pgtape.tape.archive import Archive
from pgtape.tape.frames import KIND_DATA, read_frame
from pgtape.tape.reader import RowChange, iter_changes
from pgtape.tape.segment import SegmentError
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.snapshots.format import TableReader, table_file_name
from pgtape.storage import local_file
from replay_oracle import seed_for

Row = dict[str, str | None]

ACCOUNTS = "create table accounts (id int primary key, balance numeric(12,2) not null, note text)"
INITIAL_ACCOUNTS = 200


# -- helpers ----------------------------------------------------------------------------------
def _records(archive: Path) -> list[dict]:
    """The catalog as the user sees it: `pgtape snapshots --json`."""
    r = run_pgtape("snapshots", "--archive", str(archive), "--json", check=True)
    return json.loads(r.stdout)


def _snap_file(archive: Path, rec: SnapshotRecord | dict, table: str) -> Path:
    gen, sid = (rec.generation, rec.id) if isinstance(rec, SnapshotRecord) else (rec["generation"], rec["id"])
    schema, name = table.split(".")
    return catalog.snapshot_dir(Archive(archive), gen, sid) / table_file_name(f"{schema}.{name}")


def _parse_copy(text: str, columns: list[str]) -> Iterator[Row]:
    """COPY text rows (no escapes in these tests' values): tab-separated, \\N is NULL."""
    assert text.endswith("\n"), "a chunk must hold whole rows"
    for line in text[:-1].split("\n"):
        values = line.split("\t")
        assert len(values) == len(columns), line
        yield {c: (None if v == "\\N" else v) for c, v in zip(columns, values)}


def _id(row: Row) -> str:
    """A row's key: these tests' tables have a NOT NULL id."""
    key = row["id"]
    assert key is not None, row
    return key


def _read_table(path: Path) -> tuple[list[str], dict[str, Row]]:
    """A snapshot table file's rows keyed by id, verified to the footer."""
    reader = TableReader(*local_file(path))
    rows: dict[str, Row] = {}
    for chunk in reader.chunks():
        for row in _parse_copy(chunk.decode(), reader.header.columns):
            assert _id(row) not in rows, f"id {row['id']} twice in {path}"
            rows[_id(row)] = row
    assert reader.footer is not None and reader.footer.rows == len(rows)
    return reader.header.columns, rows


def _live_rows(dsn: str, table: str, columns: list[str]) -> dict[str, Row]:
    """The table now, through COPY under pgtape's pinned session settings."""
    with connect(dsn) as c:
        data = bytearray()
        with c.cursor().copy(f"COPY (SELECT {', '.join(columns)} FROM {table}) TO STDOUT") as copy:
            for piece in copy:
                data += piece
    return {_id(r): r for r in _parse_copy(data.decode(), columns)} if data else {}


def _initial_base(archive: Path) -> SnapshotRecord:
    bases = [r for r in catalog.load_all(Archive(archive)) if r.kind == "initial"]
    assert len(bases) == 1 and bases[0].status == catalog.COMPLETED, bases
    return bases[0]


def _transactions(archive: Path, generation: int) -> list[tuple[int, list[RowChange]]]:
    """The tape as (end_lsn, changes) per transaction, in commit order."""
    txns: list[tuple[int, list[RowChange]]] = []
    for ch in iter_changes(Archive(archive), generation):
        if not txns or txns[-1][0] != ch.txn.end_lsn:
            assert not txns or ch.txn.end_lsn > txns[-1][0], "tape transactions out of commit order"
            txns.append((ch.txn.end_lsn, []))
        txns[-1][1].append(ch)
    return txns


def _apply(rows: dict[str, Row], changes: list[RowChange]) -> None:
    """Apply one transaction's changes of a table keyed by `id` (the independent oracle)."""
    for ch in changes:
        if ch.op == "I":
            assert ch.new is not None and ch.new["id"] not in rows, ch
            rows[_id(ch.new)] = dict(ch.new)
        elif ch.op == "U":
            assert ch.new is not None
            prev = rows.pop(_id(ch.old or ch.new))
            row = {c: prev[c] for c in ch.absent}
            row.update(ch.new)
            rows[_id(ch.new)] = row
        elif ch.op == "D":
            assert ch.old is not None
            del rows[_id(ch.old)]
        elif ch.op == "T":
            rows.clear()
        else:
            raise AssertionError(f"unexpected change {ch.op} on the tape")


class AccountsWorkload(threading.Thread):
    """Transactions of 1..5 random inserts/updates/deletes on accounts. No row is touched twice in
    one transaction and every update changes the balance, so every transaction changes the table."""

    def __init__(self, dsn: str, seed: int, ids: set[int], next_id: int, pause: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.dsn, self.rng, self.ids, self.next_id, self.pause = dsn, random.Random(seed), set(ids), next_id, pause
        self.stopping = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="accounts-workload") as c:
                while not self.stopping.is_set():
                    self._transaction(c)
                    time.sleep(self.rng.uniform(0, self.pause))
        except BaseException as e:  # re-raised by stop()
            self.error = e

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), "workload thread did not stop"
        if self.error is not None:
            raise self.error

    def _note(self, i: int) -> str | None:
        return None if self.rng.random() < 0.2 else f"note {i} v{self.rng.randrange(1000)}"

    def _transaction(self, c: psycopg.Connection) -> None:
        n = self.rng.randint(1, 5)
        existing = self.rng.sample(sorted(self.ids), min(n, len(self.ids)))
        added: set[int] = set()
        removed: set[int] = set()
        with c.transaction():
            for _ in range(n):
                op = self.rng.choices("IUD", weights=(4, 4, 2))[0]
                if op != "I" and not existing:
                    op = "I"
                if op == "I":
                    i = self.next_id
                    self.next_id += 1
                    c.execute("insert into accounts values (%s, %s, %s)",
                              (i, Decimal(self.rng.randrange(-10**8, 10**8)) / 100, self._note(i)))
                    added.add(i)
                elif op == "U":
                    i = existing.pop()
                    delta = Decimal(self.rng.randrange(1, 10**6)) / 100 * self.rng.choice((1, -1))
                    c.execute("update accounts set balance = balance + %s, note = %s where id = %s",
                              (delta, self._note(i), i))
                else:
                    i = existing.pop()
                    c.execute("delete from accounts where id = %s", (i,))
                    removed.add(i)
        self.ids = (self.ids | added) - removed
        self.transactions += 1


def _accounts(dsn: str, extra: str | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(ACCOUNTS)
        c.execute("insert into accounts select g, g * 1.25, 'initial ' || g from generate_series(1, %s) g",
                  (INITIAL_ACCOUNTS,))
        if extra:
            c.execute(extra)


# -- 1. exactness -----------------------------------------------------------------------------
def test_snapshot_is_exactly_the_state_at_its_as_of_lsn(dsn: str, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    seed = seed_for(request)
    archive = tmp_path / "archive"
    common = ("--dsn", dsn, "--archive", str(archive), "--tables", "public.accounts")
    _accounts(dsn)
    run_pgtape("init", *common, check=True)
    # Flat out: commits every ~1 ms, so an as-of even one transaction off shows.
    work = AccountsWorkload(dsn, seed, set(range(1, INITIAL_ACCOUNTS + 1)), INITIAL_ACCOUNTS + 1, pause=0.0)
    capture = spawn_pgtape("capture", *common, log=tmp_path / "capture.log")
    try:
        work.start()
        time.sleep(1.0)
        snap = run_pgtape("snapshot", *common, "--json", check=True)
        time.sleep(1.0)
        work.stop()
    finally:
        work.stopping.set()
        stop_process(capture)
    assert capture.returncode == 0, (tmp_path / "capture.log").read_text()
    capture_to_now(dsn, archive, tables="public.accounts")

    info = json.loads(snap.stdout)
    as_of = parse_lsn(info["as_of_lsn"])
    base = _initial_base(archive)
    gen = Archive(archive).generation(base.generation)
    assert base.as_of_lsn == gen.start_lsn
    columns, rows = _read_table(_snap_file(archive, base, "public.accounts"))
    assert columns == ["id", "balance", "note"] and len(rows) == INITIAL_ACCOUNTS
    snap_rec = next(r for r in catalog.load_all(Archive(archive)) if r.id == info["id"])
    assert snap_rec.status == catalog.COMPLETED and snap_rec.as_of_lsn == as_of
    _, snap_rows = _read_table(_snap_file(archive, snap_rec, "public.accounts"))
    assert TableReader(*local_file(_snap_file(archive, snap_rec, "public.accounts"))).header.as_of_lsn == as_of

    txns = _transactions(archive, gen.id)
    assert len(txns) == work.transactions, "every workload transaction is on the tape exactly once"
    assert all(end > gen.start_lsn for end, _ in txns)
    k = sum(1 for end, _ in txns if end <= as_of)
    assert 0 < k < len(txns), f"the snapshot must fall mid-workload ({k} of {len(txns)} transactions before it)"

    for _, changes in txns[:k - 1]:
        _apply(rows, changes)
    one_short = {i: dict(r) for i, r in rows.items()}
    _apply(rows, txns[k - 1][1])
    assert rows == snap_rows, f"snapshot as of {info['as_of_lsn']} differs from base + tape up to it"
    assert one_short != snap_rows, "the last transaction before as-of must be in the snapshot"
    _apply(rows, txns[k][1])
    assert rows != snap_rows, "the first transaction after as-of must not be in the snapshot"
    for _, changes in txns[k + 1:]:
        _apply(rows, changes)
    assert rows == _live_rows(dsn, "accounts", columns), "oracle check: base + whole tape = the table now"


# -- 2. the seam between initial base and tape -----------------------------------------------
class SeamWriter(threading.Thread):
    """Inserts ids writer*10^7 + 1, 2, ... in transactions of 1..4 rows; records what committed."""

    def __init__(self, dsn: str, writer: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.writer, self.rng = dsn, writer, random.Random(seed * 31 + writer)
        self.stopping = threading.Event()
        self.batches: list[list[int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            nxt = self.writer * 10**7 + 1
            with psycopg.connect(self.dsn, autocommit=True) as c:
                while not self.stopping.is_set():
                    batch = list(range(nxt, nxt + self.rng.randint(1, 4)))
                    with c.transaction():
                        for i in batch:
                            c.execute("insert into seam values (%s, %s)", (i, self.writer))
                    self.batches.append(batch)
                    nxt = batch[-1] + 1
                    time.sleep(self.rng.uniform(0, 0.003))
        except BaseException as e:
            self.error = e


def test_initial_base_and_tape_meet_exactly_at_the_seam(dsn: str, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    seed = seed_for(request)
    archive = tmp_path / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table seam (id bigint primary key, writer int not null)")
    writers = [SeamWriter(dsn, w, seed) for w in range(1, 4)]
    try:
        for w in writers:
            w.start()
        time.sleep(0.5)
        run_pgtape("init", "--dsn", dsn, "--archive", str(archive), "--tables", "public.seam", check=True)
        time.sleep(0.5)
    finally:
        for w in writers:
            w.stopping.set()
        for w in writers:
            w.join(30)
    for w in writers:
        assert not w.is_alive() and w.error is None, w.error
    capture_to_now(dsn, archive, tables="public.seam")

    base = _initial_base(archive)
    _, base_rows = _read_table(_snap_file(archive, base, "public.seam"))
    in_base = {int(i) for i in base_rows}
    in_tape: list[int] = []
    for ch in iter_changes(Archive(archive), base.generation):
        assert ch.op == "I" and ch.new is not None, ch
        in_tape.append(int(_id(ch.new)))
    tape = set(in_tape)
    assert len(tape) == len(in_tape), "a row is twice on the tape"
    both = in_base & tape
    assert not both, f"{len(both)} rows both in the base and on the tape, e.g. {sorted(both)[:5]}"
    committed = {i for w in writers for b in w.batches for i in b}
    neither = committed - in_base - tape
    assert not neither, f"{len(neither)} committed rows neither in the base nor on the tape, e.g. {sorted(neither)[:5]}"
    assert in_base | tape == committed, "rows that were never committed"
    for w in writers:
        sides = [{i in in_base for i in b} for b in w.batches]
        assert all(len(s) == 1 for s in sides), f"writer {w.writer}: a transaction split across the seam"
        flags = [s.pop() for s in sides]
        # One writer commits in order: the base holds a prefix of its transactions, the tape the rest.
        assert flags == sorted(flags, reverse=True), f"writer {w.writer}: base is not a prefix of its commits"
        assert flags[0] and not flags[-1], f"writer {w.writer} wrote only on one side of init: not a seam test"


# -- a big table for kill -9 and memory --------------------------------------------------------
BIG_ROWS = 600_000  # x ~650 bytes: ~390 MB in PostgreSQL, ~2.5 s of COPY
MEMORY_LIMIT = 150 << 20


@pytest.fixture(scope="module")
def big(pg: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A database with one wide table of ~390 MB and an archive initialised while it was empty
    (so init copies nothing). UNLOGGED only to load it fast: COPY reads it like any table."""
    name = "snapshots_big"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"create database {name}")
    dsn = pg.dsn(name)
    try:
        archive = tmp_path_factory.mktemp("big") / "archive"
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("create unlogged table big (id int primary key, pad text not null)")
            run_pgtape("init", "--dsn", dsn, "--archive", str(archive), "--tables", "public.big",
                       "--slot", "pgtape_big", check=True)
            c.execute("insert into big select g, repeat(chr(97 + g %% 26), 600) || g from generate_series(1, %s) g",
                      (BIG_ROWS,))
        yield dsn, archive
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s",
                      (name,))
            c.execute(f"drop database {name} with (force)")


def _big_args(big: tuple[str, Path]) -> tuple[str, ...]:
    return ("--dsn", big[0], "--archive", str(big[1]), "--tables", "public.big")


# -- 3. kill -9 mid-snapshot -----------------------------------------------------------------
def test_kill_9_during_a_snapshot_is_recorded_as_interrupted(big: tuple[str, Path], tmp_path: Path) -> None:
    archive = Archive(big[1])
    before = {r.id for r in catalog.load_all(archive)}

    def copying() -> SnapshotRecord | None:
        new = [r for r in catalog.load_all(archive) if r.id not in before]
        if new and new[0].as_of_lsn is not None:
            partial = catalog.snapshot_dir(archive, new[0].generation, new[0].id + ".partial")
            if partial.is_dir():
                return new[0]
        assert proc.poll() is None, f"snapshot ended early: {(tmp_path / 'snap.log').read_text()}"
        return None

    proc = spawn_pgtape("snapshot", *_big_args(big), log=tmp_path / "snap.log")
    try:
        rec = wait_until("the snapshot to start copying", copying, 30)
        time.sleep(0.5)
        assert proc.poll() is None, "the snapshot completed within 0.5 s: the table is too small for this test"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    listed = {r["id"]: r for r in _records(big[1])}
    assert listed[rec.id]["status"] == "failed", listed[rec.id]
    assert "interrupted" in listed[rec.id]["error"]
    assert not catalog.snapshot_dir(archive, rec.generation, rec.id).exists(), "a killed snapshot was published"
    newest = catalog.newest_completed(archive, rec.generation)
    assert newest is not None and newest.kind == "initial"

    r = run_pgtape("snapshot", *_big_args(big), "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["rows"] == {"public.big": BIG_ROWS}
    listed = {x["id"]: x for x in _records(big[1])}
    assert listed[done["id"]]["status"] == "completed" and listed[rec.id]["status"] == "failed"
    assert _snap_file(big[1], listed[done["id"]], "public.big").is_file()


# -- 7. memory ------------------------------------------------------------------------------
WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def test_snapshot_memory_does_not_grow_with_the_table(big: tuple[str, Path]) -> None:
    with psycopg.connect(big[0], autocommit=True) as c:
        size = scalar(c.execute("select pg_table_size('big')"))
    assert size > 2 * MEMORY_LIMIT, f"table of {size >> 20} MiB: too small to show bounded memory"
    r = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "pgtape", "snapshot",
                        *_big_args(big), "--json"], capture_output=True, text=True, env=clean_env(), cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert json.loads(out[0])["rows"] == {"public.big": BIG_ROWS}
    peak = int(out[-1]) * 1024
    print(f"snapshot of a {size >> 20} MiB table: peak RSS {peak >> 20} MiB")
    assert peak < MEMORY_LIMIT, f"peak RSS {peak >> 20} MiB for a {size >> 20} MiB table"


# -- 4. corruption ----------------------------------------------------------------------------
def test_a_flipped_byte_in_a_snapshot_chunk_is_detected(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table notes (id int primary key, body text)")
        # ~9 MB of COPY text, little of it compressible: several data frames.
        c.execute("insert into notes select g, md5(g::text) || md5((g + 1)::text) || md5((g * 7)::text) "
                  "from generate_series(1, 90000) g")
    run_pgtape("init", "--dsn", dsn, "--archive", str(archive), "--tables", "public.notes", check=True)
    path = _snap_file(archive, _initial_base(archive), "public.notes")
    assert len(_read_table(path)[1]) == 90000  # intact, it reads

    frames = []
    with open(path, "rb") as f:
        dec = zstandard.ZstdDecompressor()
        offset = 0
        while (frame := read_frame(f, offset, dec)) is not None:
            frames.append(frame)
            offset = frame.end
    assert sum(fr.kind == KIND_DATA for fr in frames) >= 2
    middle = path.stat().st_size // 2
    hit = next(fr for fr in frames if fr.offset <= middle < fr.end)
    assert hit.kind == KIND_DATA and middle >= hit.offset + 20, "the middle byte must lie in a chunk's payload"
    data = bytearray(path.read_bytes())
    data[middle] ^= 0x10
    path.write_bytes(bytes(data))

    with pytest.raises(SegmentError) as err:
        for _ in TableReader(*local_file(path)).chunks():
            pass
    assert err.value.path == str(path) and err.value.offset == hit.offset, str(err.value)
    assert str(path) in str(err.value) and f"offset {hit.offset}" in str(err.value)


# -- 5. subsets and refusals ------------------------------------------------------------------
def test_subset_snapshots_and_refused_tables(dsn: str, tmp_path: Path) -> None:
    from examples.temba.workload import apply_schema, bulk_load

    archive = tmp_path / "archive"
    all_tables = "public.payments,public.orders,public.tickets"
    with psycopg.connect(dsn, autocommit=True) as c:
        apply_schema(c)
        bulk_load(c, 300, seed=5)
        payments = scalar(c.execute("select count(*) from payments"))
    run_pgtape("init", "--dsn", dsn, "--archive", str(archive), "--tables", all_tables, check=True)

    r = run_pgtape("snapshot", "--dsn", dsn, "--archive", str(archive), "--tables", "payments", "--json")
    assert r.returncode == 0, r.stderr
    sub = json.loads(r.stdout)
    assert sub["rows"] == {"public.payments": payments}
    rec = {x["id"]: x for x in _records(archive)}[sub["id"]]
    assert rec["tables"] == ["public.payments"] and rec["status"] == "completed"
    d = _snap_file(archive, rec, "public.payments").parent
    assert sorted(p.name for p in d.iterdir()) == ["public.payments.snap"]
    assert len(_read_table(d / "public.payments.snap")[1]) == payments

    count = len(_records(archive))
    r = run_pgtape("snapshot", "--dsn", dsn, "--archive", str(archive), "--tables", "public.nosuch")
    line = one_line_error(r, 2, after_logs=True)
    assert "public.nosuch" in line and "not captured" in line
    assert len(_records(archive)) == count, "a refused snapshot left a record"

    capture_to_now(dsn, archive, tables=all_tables)  # capture has started and run
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop table tickets")
    r = run_pgtape("snapshot", "--dsn", dsn, "--archive", str(archive), "--tables", all_tables)
    line = one_line_error(r, 3, after_logs=True)
    assert "public.tickets does not exist" in line, line
    failed = [x for x in _records(archive)[count:]]
    assert len(failed) == 1 and failed[0]["status"] == "failed", failed
    assert "public.tickets does not exist" in failed[0]["error"] and failed[0]["error"] in line
    snap_dir = catalog.snapshot_dir(Archive(archive), failed[0]["generation"], failed[0]["id"])
    assert not snap_dir.exists() and not snap_dir.with_name(snap_dir.name + ".partial").exists()


# -- 6. one snapshot at a time -----------------------------------------------------------------
def test_a_second_snapshot_is_refused_while_one_runs(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    args = ("--dsn", dsn, "--archive", str(archive), "--tables", "public.accounts")
    _accounts(dsn, "create table other (x int)")
    run_pgtape("init", *args, check=True)
    # An open transaction with an xid holds the first snapshot in CREATE_REPLICATION_SLOT (which
    # waits for it), with the snapshot lock held: a deterministic "snapshot running".
    blocker = psycopg.connect(dsn)
    first = None
    try:
        blocker.execute("insert into other values (1)")
        before = {r.id for r in catalog.load_all(Archive(archive))}
        first = spawn_pgtape("snapshot", *args, log=tmp_path / "first.log")
        rec = wait_until("the first snapshot to be running", lambda: [
            r for r in catalog.load_all(Archive(archive)) if r.id not in before and r.status == catalog.RUNNING], 30)
        second = run_pgtape("snapshot", *args, timeout=30)
        assert first.poll() is None, "the first snapshot must still be running"
        one_line_error(second, 3, "another snapshot is running", after_logs=True)
        blocker.commit()
        assert first.wait(60) == 0, (tmp_path / "first.log").read_text()
    finally:
        blocker.close()
        if first is not None:
            stop_process(first)
    records = [r for r in _records(archive) if r["id"] not in before]
    assert [(r["id"], r["status"]) for r in records] == [(rec[0].id, "completed")], records


# -- 8. scheduled snapshots -----------------------------------------------------------------------
def test_capture_takes_scheduled_snapshots_and_keeps_confirming(dsn: str, tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    seed = seed_for(request)
    archive = tmp_path / "archive"
    config = tmp_path / "pgtape.toml"
    config.write_text('[capture]\nsnapshot_every = "2s"\n')
    args = ("--config", str(config), "--dsn", dsn, "--archive", str(archive), "--tables", "public.accounts")
    _accounts(dsn, "create table other (x int)")
    run_pgtape("init", *args, check=True)
    work = AccountsWorkload(dsn, seed, set(range(1, INITIAL_ACCOUNTS + 1)), INITIAL_ACCOUNTS + 1, pause=0.02)
    # Holds the scheduled snapshot in slot creation for as long as we like (see the test above),
    # so "capture confirms while a snapshot runs" is observed, not left to timing.
    blocker = psycopg.connect(dsn)
    blocker.execute("insert into other values (1)")
    capture = spawn_pgtape("capture", *args, log=tmp_path / "capture.log")
    try:
        work.start()

        def scheduled() -> list[SnapshotRecord]:
            assert capture.poll() is None, (tmp_path / "capture.log").read_text()
            return [r for r in catalog.load_all(Archive(archive)) if r.kind == "scheduled"]
        rec = wait_until("a scheduled snapshot", scheduled, 15)[0]
        assert rec.status == catalog.RUNNING
        lsn0 = confirmed_flush(dsn)
        lsn1 = wait_until("capture to confirm new changes while a scheduled snapshot runs",
                          lambda: (lsn := confirmed_flush(dsn)) > lsn0 and lsn, 20)
        assert next(r for r in scheduled() if r.id == rec.id).status == catalog.RUNNING  # held by `blocker`
        blocker.commit()
        done = wait_until("the scheduled snapshot to complete", lambda: [
            r for r in scheduled() if r.id == rec.id and r.status != catalog.RUNNING], 20)[0]
        assert done.status == catalog.COMPLETED, done.error
        assert done.rows == {"public.accounts": len(_read_table(_snap_file(archive, done, "public.accounts"))[1])}
        wait_until("capture to confirm new changes after the snapshot", lambda: confirmed_flush(dsn) > lsn1,
                   20)
        assert capture.poll() is None, (tmp_path / "capture.log").read_text()
        work.stop()
    finally:
        work.stopping.set()
        blocker.close()
        stop_process(capture)
        # A scheduled snapshot capture started may outlive it ("it continues on its own"): wait for it.
        for r in catalog.load_all(Archive(archive)):
            if r.status == catalog.RUNNING:
                try:
                    wait_until(f"scheduled snapshot {r.id}", lambda: r.pid and not process_alive(r.pid), 30, 0.1)
                except AssertionError:
                    os.kill(r.pid, signal.SIGKILL)
    assert capture.returncode == 0, (tmp_path / "capture.log").read_text()
    kinds = [r["kind"] for r in _records(archive) if r["status"] == "completed"]
    assert kinds[0] == "initial" and "scheduled" in kinds
