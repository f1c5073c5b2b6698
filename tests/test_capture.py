"""Capture against a real PostgreSQL: values, operations, resume, rotation, memory, bad input."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from conftest import (ROOT, capture_to_now, confirmed_flush, one_line_error, one_row, run_pgtape, scalar, spawn_pgtape,
                      stop_process, wait_until)
from pgtape.lsn import parse_lsn
from pgtape.pg import connect
from pgtape.tape.archive import Archive
from pgtape.tape.reader import RowChange, iter_changes
from pgtape.tape.records import Change
from pgtape.storage import local_file
from pgtape.tape.segment import SegmentReader

TYPES_TABLE = """
create table payments (
    id uuid primary key, amount numeric(12,2), exact numeric, ratio float8, paid boolean,
    meta jsonb, tags text[], counts int[], raw bytea, at timestamptz, day date, span interval, note text)
"""


def _tape(archive: Path) -> list[RowChange]:
    return list(iter_changes(Archive(archive), 1))


def _new_ids(archive: Path) -> list[int]:
    """The id of each change's new row, in tape order."""
    return [int(v) for x in _tape(archive) if x.new and (v := x.new["id"]) is not None]


def _setup(dsn: str, *ddl: str) -> psycopg.Connection:
    c = psycopg.connect(dsn, autocommit=True)
    for stmt in ddl:
        c.execute(stmt)
    return c


def test_values_are_postgres_text_exactly(dsn: str, tmp_path: Path) -> None:
    c = _setup(dsn, TYPES_TABLE)
    archive = tmp_path / "archive"
    capture_to_now(dsn, archive, tables="public.payments")  # creates the slot: the tape starts here
    c.execute("""insert into payments values
        ('6f1c1a8e-0000-4000-8000-000000000001', 9999999999.99, 123456789012345678901234567890.000000000000000001,
         0.1, true, '{"b": 1, "a": [1, 2.50]}', '{"x y", "q\\"z"}', '{1,NULL,3}', '\\xdeadbeef00',
         '2026-11-25 14:02:59.123456+01', '2026-02-28', '1 day 02:03:04', 'Ünïcode ✓'),
        ('6f1c1a8e-0000-4000-8000-000000000002', 0.10, -0.5, 1e100, false, 'null', '{}', null, '\\x',
         'infinity', null, null, '')""")
    capture_to_now(dsn, archive, tables="public.payments")
    changes = _tape(archive)
    assert [ch.op for ch in changes] == ["I", "I"]
    # Independent oracle: PostgreSQL's own text output under the same pinned settings.
    with connect(dsn) as oracle:
        cur = oracle.execute("select * from payments order by id")
        assert cur.description is not None
        names = [d.name for d in cur.description]
        # boolean::text says true/false, but the type's output function (COPY, wal2json) says t/f.
        exprs = [f"{n}::text" if n != "paid" else "(case when paid then 't' when not paid then 'f' end)" for n in names]
        expected = [dict(zip(names, row)) for row in oracle.execute(
            f"select {', '.join(exprs)} from payments order by id").fetchall()]
    assert [ch.new for ch in changes] == expected
    assert [ch.new["amount"] for ch in changes if ch.new] == ["9999999999.99", "0.10"]
    assert changes[0].types["amount"] == "numeric(12,2)" and changes[0].key == ["id"]


def test_tape_rows_are_copy_to_lines_byte_for_byte(dsn: str, tmp_path: Path) -> None:
    """Format 2 stores a row as a COPY text line: it must equal what COPY TO writes for that row,
    escapes of control characters and backslashes included (replay matches keys byte for byte)."""
    c = _setup(dsn, TYPES_TABLE)
    archive = tmp_path / "archive"
    capture_to_now(dsn, archive, tables="public.payments")
    nasty = "tab\tnl\ncr\rbs\\ bell\b ff\f vt\v soh\x01 nbsp\u00a0 \\N ."
    c.execute("insert into payments (id, note, raw, tags, meta) values "
              "('6f1c1a8e-0000-4000-8000-000000000003', %s, '\\x5c09', %s, %s)",
              (nasty, [nasty, None], '{"k": "a\\tb"}'))
    c.execute("update payments set amount = 1.50 where note = %s", (nasty,))
    capture_to_now(dsn, archive, tables="public.payments")
    rows = [r.row for seg in Archive(archive).segments(1) for r in SegmentReader(*local_file(seg.path)).records()
            if isinstance(r, Change)]
    with connect(dsn) as oracle:
        buf = bytearray()
        with oracle.cursor().copy("COPY payments TO STDOUT") as copy:
            for chunk in copy:
                buf += chunk
    assert len(rows) == 2 and rows[1] == bytes(buf).rstrip(b"\n")
    assert b"\\b" in rows[1] and b"\\t" in rows[1] and b"\x01" in rows[1]  # escaped as COPY does; SOH raw


def test_every_operation(dsn: str, tmp_path: Path) -> None:
    c = _setup(dsn, "create table orders (id int primary key, status text, receipt text)",
               "create table tickets (id int primary key, seat text)", "create table other (id int)")
    archive = tmp_path / "archive"
    capture_to_now(dsn, archive, tables="orders,tickets")
    big = "".join(f"{i:08x}" for i in range(1000))  # 8 kB, incompressible enough to be TOASTed out of line
    c.execute("alter table orders alter column receipt set storage external")
    c.execute("insert into orders values (1, 'pending', %s), (2, 'pending', null)", (big,))
    c.execute("update orders set status = 'paid' where id = 1")  # receipt unchanged: absent, not NULL
    c.execute("update orders set id = 20, status = null where id = 2")  # key change, NULL
    c.execute("delete from orders where id = 1")
    c.execute("insert into other values (1)")  # not captured: no transaction on the tape
    c.execute("insert into tickets values (1, 'A1')")
    c.execute("truncate tickets")
    capture_to_now(dsn, archive, tables="orders,tickets")
    ch = _tape(archive)
    assert [(x.op, x.table) for x in ch] == [("I", "orders"), ("I", "orders"), ("U", "orders"), ("U", "orders"),
                                            ("D", "orders"), ("I", "tickets"), ("T", "tickets")]
    assert ch[0].new == {"id": "1", "status": "pending", "receipt": big}
    assert ch[2].new == {"id": "1", "status": "paid"} and ch[2].absent == ["receipt"]
    assert ch[3].old == {"id": "2"} and ch[3].new == {"id": "20", "status": None, "receipt": None}
    assert ch[4].old == {"id": "1"} and ch[4].new is None
    assert len({x.txn.xid for x in ch}) == 6  # the two inserts share one transaction
    assert [x.txn.end_lsn for x in ch] == sorted(x.txn.end_lsn for x in ch)


def test_resume_and_idle_tables(dsn: str, tmp_path: Path) -> None:
    c = _setup(dsn, "create table payments (id int primary key)", "create table noise (id int)")
    archive = tmp_path / "archive"
    capture_to_now(dsn, archive, tables="payments")
    with psycopg.connect(dsn) as probe:
        assert probe.execute("select plugin from pg_replication_slots "
                             "where slot_name = 'pgtape'").fetchone() == ("wal2json",)
    for round_ in range(3):
        for i in range(20):
            c.execute("insert into payments values (%s)", (round_ * 100 + i,))
            c.execute("insert into noise values (1)")
        capture_to_now(dsn, archive, tables="payments")
    ids = _new_ids(archive)
    assert ids == [r * 100 + i for r in range(3) for i in range(20)]
    # Only the noise table is busy now: the slot must still advance (WAL is released).
    before = one_row(c.execute("select confirmed_flush_lsn from pg_replication_slots where slot_name = 'pgtape'"))
    c.execute("insert into noise select generate_series(1, 1000)")
    capture_to_now(dsn, archive, tables="payments")
    after = one_row(c.execute("select confirmed_flush_lsn from pg_replication_slots where slot_name = 'pgtape'"))
    assert after > before
    assert len(_tape(archive)) == 60


def test_segments_rotate_at_commit_boundaries(dsn: str, tmp_path: Path) -> None:
    c = _setup(dsn, "create table payments (id int primary key, note text)")
    archive = tmp_path / "archive"
    conf = tmp_path / "pgtape.toml"
    conf.write_text('[capture]\nsegment_size = "8kB"\nfsync_interval = "10ms"\n')
    capture_to_now(dsn, archive, "--config", str(conf), tables="payments")
    for batch in range(4):  # random notes: incompressible, so each batch overfills an 8 kB segment
        for i in range(batch * 150, batch * 150 + 150):
            c.execute("insert into payments values (%s, md5(random()::text) || md5(random()::text))", (i,))
        capture_to_now(dsn, archive, "--config", str(conf), tables="payments")
    a = Archive(archive)
    segs = a.segments(1)
    assert len(segs) >= 3 and all(not s.is_open for s in segs[:-1])
    assert a.continuity_problems(1) == []
    assert _new_ids(archive) == list(range(600))


def test_large_transaction_memory_is_bounded(dsn: str, tmp_path: Path) -> None:
    c = _setup(dsn, "create table tickets (id int primary key, seat text, price numeric(12,2))")
    archive = tmp_path / "archive"
    capture_to_now(dsn, archive, tables="tickets")
    rows = 200_000
    c.execute("insert into tickets select g, 'seat-' || g, (g %% 1000) / 100.0 from generate_series(1, %s) g", (rows,))
    lsn = scalar(c.execute("select pg_current_wal_lsn()::text"))
    # Peak RSS of the capture process alone, measured by a parent that waits for it.
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "pgtape", "capture", "--dsn", dsn,
                        "--archive", str(archive), "--tables", "tickets", "--until-lsn", lsn],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    peak_mb = int(r.stdout.split()[-1]) / 1024
    print(f"capture peak RSS {peak_mb:.0f} MB for a {rows}-row transaction")
    changes = _tape(archive)
    assert len(changes) == rows and changes[-1].new == {"id": str(rows), "seat": f"seat-{rows}", "price": "0.00"}
    # The transaction alone is ~40 MB of wal2json text; it was spilled in frames, not held.
    assert peak_mb < 120, f"capture peaked at {peak_mb:.0f} MB for a {rows}-row transaction"


@pytest.mark.parametrize("args, message", [
    (["--until-lsn", "nonsense"], "invalid LSN 'nonsense'"),
    (["--tables", "bad name!"], "invalid table name"),
    (["--slot", "Bad-Slot"], "invalid slot name"),
])
def test_bad_input_is_one_line(dsn: str, tmp_path: Path, args: list[str], message: str) -> None:
    one_line_error(run_pgtape("capture", "--dsn", dsn, "--archive", str(tmp_path / "a"), *args), 2, message)


def test_missing_table_and_missing_archive_option(dsn: str, tmp_path: Path) -> None:
    r = run_pgtape("capture", "--dsn", dsn, "--archive", str(tmp_path / "a"), "--tables", "nope")
    assert r.returncode == 3 and "public.nope does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_pgtape("capture", "--dsn", dsn)
    assert r.returncode == 2 and "no archive configured" in r.stderr


def test_log_filters_and_json(dsn: str, tmp_path: Path) -> None:
    import json
    c = _setup(dsn, "create table payments (id int primary key, amount numeric(12,2))")
    archive = tmp_path / "archive"
    capture_to_now(dsn, archive, tables="payments")
    c.execute("insert into payments values (1, 10.00), (2, 20.00)")
    c.execute("update payments set amount = 10.01 where id = 1")
    c.execute("delete from payments where id = 2")
    capture_to_now(dsn, archive, tables="payments")
    base = ["--dsn", dsn, "--archive", str(archive), "--tables", "payments"]
    r = run_pgtape("log", *base, "--key", "id=1", "--json", check=True)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["op"], x["new"]) for x in rows] == [("INSERT", {"id": "1", "amount": "10.00"}),
                                                   ("UPDATE", {"id": "1", "amount": "10.01"})]
    r = run_pgtape("log", *base, "--table", "payments", check=True)
    assert len(r.stdout.splitlines()) == 4 and "DELETE" in r.stdout.splitlines()[-1]
    r = run_pgtape("log", *base, "--since", "2026-01-01 00:00:00")
    assert r.returncode == 2 and "no time zone" in r.stderr
    r = run_pgtape("status", *base, "--json", check=True)
    status = json.loads(r.stdout)
    assert status["transactions"] == 3 and status["changes"] == 4 and status["server"]["slot_exists"]
    # Background WAL (e.g. running-xacts records) may follow, so lag is only known to be small.
    assert status["end_lsn"] == status["server"]["slot_confirmed_lsn"] and 0 <= status["lag_bytes"] < 1 << 20


@pytest.mark.parametrize("mode", ["adaptive", "timer"])
def test_group_commit_flushes_when_the_stream_is_drained(dsn: str, tmp_path: Path, mode: str) -> None:
    """Rule A1. With an fsync_interval of an hour, adaptive group commit still confirms each commit of a quiet
    system at once (nothing more to read: flush), while busy uncaptured tables (idle progress, Rule A3)
    cost no fsync; the timer confirms nothing until its interval (or the stop). Status reports the latency."""
    import json
    c = _setup(dsn, "create table payments (id int primary key)", "create table noise (id int)")
    archive = tmp_path / "archive"
    conf = tmp_path / "pgtape.toml"
    conf.write_text(f'[capture]\nfsync_interval = "1h"\ngroup_commit = "{mode}"\n')
    base = ["--config", str(conf), "--dsn", dsn, "--archive", str(archive), "--tables", "payments"]
    capture_to_now(dsn, archive, *base[:2], tables="payments")
    proc = spawn_pgtape("capture", *base, "--json", log=tmp_path / "capture.log")
    try:
        wait_until("capture streaming", lambda: scalar(c.execute(
            "select active from pg_replication_slots where slot_name = 'pgtape'")), 60)
        for i in range(5):
            before = parse_lsn(scalar(c.execute("select pg_current_wal_insert_lsn()::text")))
            c.execute("insert into payments values (%s)", (i,))
            for _ in range(20):
                c.execute("insert into noise values (1)")
            if mode == "adaptive":
                wait_until(f"commit {i} confirmed", lambda: confirmed_flush(dsn) > before, 30)
        if mode == "timer":
            time.sleep(1)  # (several status intervals: an early flush would show)
            assert confirmed_flush(dsn) <= before
    finally:
        stop_process(proc)
    assert proc.returncode == 0, (tmp_path / "capture.log").read_text()
    summary = json.loads((tmp_path / "capture.log").read_text().strip().splitlines()[-1])
    assert summary["transactions"] == 5 and _new_ids(archive) == [0, 1, 2, 3, 4]
    # One fsync per payment at most (adaptive), the timer's one at the stop; plus a Position or two.
    assert summary["fsyncs"] <= (5 if mode == "adaptive" else 1) + 2, summary
    status = json.loads(run_pgtape("status", *base, "--json", check=True).stdout)["commit_to_durable"]
    assert 1 <= status["transactions"] <= 5 and 0 < status["p50_ms"] <= status["p99_ms"] <= status["max_ms"]
    assert status["fsyncs"] >= 1 and status["first_durable"] <= status["last_durable"]
