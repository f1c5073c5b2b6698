"""verify and diff against a real PostgreSQL: exact differences, named damage, the live check.

1. `pgtape diff --schema X --against live`: injected differences are counted and named exactly,
   representation-only differences (numeric scale, json key order) are not differences.
2. `pgtape verify`: a sound archive passes; each kind of damage (flipped byte in a sealed segment
   or in a snapshot chunk, a missing middle segment, a truncated file) fails naming the file and
   where; `verify FILE` checks one file.
3. `pgtape verify --live`: passes while capture and a writer run; fails naming table, key and
   column after a row changed behind pgtape's back; says so when capture is not running.
4. `pgtape diff --target-name M --against schema:<recovery schema>` after replaying to M.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path


import psycopg
import pytest
import zstandard

from conftest import capture_to_now, one_line_error, run_pgtape, scalar, spawn_pgtape, stop_process, wait_until
from pgtape.tape.archive import Archive
from pgtape.tape.frames import HEADER_SIZE, KIND_DATA, Frame, read_frame
from pgtape.snapshots import catalog
from pgtape.snapshots.format import table_file_name


SEGMENT_CONF = '[capture]\nsegment_size = "8kB"\nfsync_interval = "10ms"\n'


# -- helpers ----------------------------------------------------------------------------------







def _no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr + r.stdout


def _frames(path: Path) -> list[Frame]:
    out = []
    with open(path, "rb") as f:
        dec = zstandard.ZstdDecompressor()
        offset = 0
        while (frame := read_frame(f, offset, dec)) is not None:
            out.append(frame)
            offset = frame.end
    return out


def _flip_in_data_frame(path: Path, which: int = 0) -> Frame:
    """Flip one bit in the payload of the `which`-th data frame; returns that frame."""
    frame = [fr for fr in _frames(path) if fr.kind == KIND_DATA][which]
    pos = frame.offset + HEADER_SIZE + (frame.size - HEADER_SIZE) // 2
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x04
    path.write_bytes(bytes(data))
    return frame


def _table(result: dict, name: str) -> dict:
    [t] = [t for t in result["tables"] if t["table"] == name]
    return t


# -- 1. diff: injected differences, named exactly -------------------------------------------
LEDGER = "create table t (id int primary key, amount numeric(12,2), status text, meta jsonb, note text)"


def test_diff_names_injected_differences_exactly(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(LEDGER)
        c.execute("""insert into t select g, g * 10, case when g % 3 = 0 then 'paid' else 'pending' end,
                     jsonb_build_object('a', g, 'b', 'x' || g, 'c', jsonb_build_array(g, 2.50)),
                     case when g % 5 = 0 then null else 'note ' || g end
                     from generate_series(1, 1000) g""")
        c.execute("update t set note = null where id = 40")  # the row whose note becomes ''
        run_pgtape("init", "--dsn", dsn, "--archive", str(archive), "--tables", "public.t", check=True)
        c.execute("create schema x")
        c.execute("create table x.t as select * from public.t")
        c.execute("alter table x.t add primary key (id)")
        # Representation only, not differences: a wider numeric type (10.0000 vs 10.00), json
        # (text kept as written) instead of jsonb, one row's keys reordered and spaced differently.
        c.execute("alter table x.t alter column amount type numeric(14,4)")
        c.execute("alter table x.t alter column meta type json using meta::json")
        c.execute("""update x.t set meta = '{"c":[7, 2.50],   "b" : "x7", "a":7}' where id = 7""")
        # Differences.
        c.execute("delete from x.t where id = 13")  # missing from x
        c.execute("insert into x.t values (5000, 1.00, 'pending', '{}', 'extra')")  # extra in x
        c.execute("update x.t set amount = amount + 0.01 where id = 22")  # 220.00 -> 220.01
        c.execute("update x.t set status = 'refunded' where id = 30")  # paid -> refunded
        c.execute("update x.t set note = '' where id = 40")  # NULL -> ''
        # The live side really holds what the test claims.
        assert c.execute("select amount::text, status, note from t where id = 22").fetchone() == ("220.00", "pending",
                                                                                                 "note 22")
        assert c.execute("select amount::text from x.t where id = 10").fetchone() == ("100.0000",)
        assert c.execute("select note from t where id = 40").fetchone() == (None,)

    base = ["--dsn", dsn, "--archive", str(archive), "--tables", "public.t", "--schema", "x", "--against", "live"]
    r = run_pgtape("diff", *base, "--json")
    _no_traceback(r)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["expected"] == "live" and out["actual"] == "schema x"
    t = _table(out, "public.t")
    assert (t["missing"], t["extra"], t["different"]) == (1, 1, 3), t
    assert (t["rows_expected"], t["rows_actual"], t["equal"]) == (1000, 1000, 996), t
    assert t["columns_only_expected"] == [] and t["columns_only_actual"] == []
    assert [s["id"] for s in t["samples_missing"]] == ["13"]
    assert t["samples_missing"][0]["status"] == "pending" and t["samples_missing"][0]["amount"] == "130"
    assert [s["id"] for s in t["samples_extra"]] == ["5000"]
    assert t["samples_extra"][0]["note"] == "extra"
    different = {s["key"]["id"]: s["columns"] for s in t["samples_different"]}
    assert different == {
        "22": {"amount": {"live": "220", "schema x": "220.01"}},
        "30": {"status": {"live": "paid", "schema x": "refunded"}},
        "40": {"note": {"live": None, "schema x": ""}},
    }, different

    r = run_pgtape("diff", *base)
    _no_traceback(r)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("public.t: DIFFERENT") and "996 equal, 1 missing from schema x, 1 extra in schema x, " \
        "3 different" in lines[0], r.stdout
    assert "  missing  id=13" in lines and "  extra    id=5000" in lines, r.stdout
    assert "  differs  id=22  amount: '220' -> '220.01'" in lines, r.stdout
    assert "  differs  id=30  status: 'paid' -> 'refunded'" in lines, r.stdout
    assert "  differs  id=40  note: None -> ''" in lines, r.stdout

    # Undo the differences: only representation is left, and that is equal.
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("insert into x.t select * from public.t where id = 13")
        c.execute("delete from x.t where id = 5000")
        c.execute("update x.t set (amount, status, note) = (select amount, status, note from public.t "
                  "where public.t.id = x.t.id) where id in (22, 30, 40)")
    r = run_pgtape("diff", *base, "--json")
    _no_traceback(r)
    t = _table(json.loads(r.stdout), "public.t")
    assert r.returncode == 0 and t["ok"] and t["equal"] == 1000, t



def _diff_schema_x(dsn: str, archive: Path) -> dict:
    r = run_pgtape("diff", "--dsn", dsn, "--archive", str(archive), "--tables", "public.m", "--schema", "x",
                   "--against", "live", "--json")
    _no_traceback(r)
    assert r.returncode in (0, 1), r.stderr
    return _table(json.loads(r.stdout), "public.m")


def test_diff_sees_a_one_ulp_change_in_a_double(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table m (id int primary key, ratio float8)")
        c.execute("insert into m values (1, 0.1), (2, 123456789.123456789)")
        run_pgtape("init", "--dsn", dsn, "--archive", str(archive), "--tables", "public.m", check=True)
        c.execute("create schema x")
        c.execute("create table x.m as select * from public.m")
        c.execute("alter table x.m add primary key (id)")
        c.execute("update x.m set ratio = 0.10000000000000002 where id = 1")  # the next double after 0.1
        c.execute("update x.m set ratio = 123456789.1234568 where id = 2")  # next after 123456789.12345679
        assert c.execute("select count(*) from public.m l join x.m r using (id) where l.ratio <> r.ratio"
                         ).fetchone() == (2,)
    t = _diff_schema_x(dsn, archive)
    assert t["different"] == 2, t


def test_diff_timestamptz_precision_is_representation_only(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table m (id int primary key, at timestamptz)")
        c.execute("insert into m values (1, '2026-11-25 14:02:59.123+01'), (2, null)")
        run_pgtape("init", "--dsn", dsn, "--archive", str(archive), "--tables", "public.m", check=True)
        c.execute("create schema x")
        c.execute("create table x.m as select * from public.m")
        c.execute("alter table x.m add primary key (id)")
        c.execute("alter table x.m alter column at type timestamptz(3)")  # same values, narrower type
        assert c.execute("select count(*) from public.m l join x.m r using (id) where l.at = r.at").fetchone() == (1,)
    t = _diff_schema_x(dsn, archive)
    assert t["ok"] and t["equal"] == 2, json.dumps(t)


# -- 2. verify: a sound archive passes, each damage is named -------------------------------------
@pytest.fixture
def sealed_archive(dsn: str, tmp_path: Path) -> Path:
    """An archive with an initial base holding rows and a tape of several sealed 8 kB segments."""
    archive = tmp_path / "archive"
    conf = tmp_path / "pgtape.toml"
    conf.write_text(SEGMENT_CONF)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table payments (id int primary key, note text)")
        c.execute("insert into payments select g, md5(g::text) from generate_series(1, 500) g")
        capture_to_now(dsn, archive, "--config", str(conf), tables="public.payments")
        for batch in range(3):  # random notes: incompressible, so each batch overfills an 8 kB segment
            for i in range(1000 + batch * 150, 1000 + batch * 150 + 150):
                c.execute("insert into payments values (%s, md5(random()::text) || md5(random()::text))", (i,))
            capture_to_now(dsn, archive, "--config", str(conf), tables="public.payments")
    segs = Archive(archive).segments(1)
    assert len([s for s in segs if not s.is_open]) >= 3, [s.path.name for s in segs]
    return archive


def _verify(archive: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    r = run_pgtape("verify", "--archive", str(archive), *extra)
    _no_traceback(r)
    return r


def _problems(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert r.returncode == 1, f"verify exited {r.returncode}: {r.stdout}{r.stderr}"
    assert r.stdout.splitlines()[-1].startswith("FAILED: "), r.stdout
    return [line for line in r.stdout.splitlines() if line.startswith("problem: ")]


def _damaged_copy(archive: Path, name: str) -> tuple[Path, list, Path]:
    """A copy of the archive to damage: (its path, its segments, its initial base's table file)."""
    copy = archive.parent / f"damaged-{name}"
    shutil.copytree(archive, copy)
    a = Archive(copy)
    [base] = [r for r in catalog.load_all(a) if r.kind == "initial"]
    return copy, a.segments(1), catalog.snapshot_dir(a, 1, base.id) / table_file_name("public.payments")


def test_verify_names_every_kind_of_damage(sealed_archive: Path) -> None:
    from pgtape.lsn import format_lsn

    r = _verify(sealed_archive)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: ") and "problem" not in r.stdout, r.stdout
    ok = json.loads(_verify(sealed_archive, "--json").stdout)
    assert ok["ok"] and ok["problems"] == [] and ok["segments"] >= 4 and ok["snapshots"] == 1
    assert ok["transactions"] == 450 and ok["changes"] == 450, ok

    # A flipped byte in a data frame of the second sealed segment: that file, that frame's offset.
    copy, segs, _ = _damaged_copy(sealed_archive, "segment-byte")
    victim = segs[1].path
    frame = _flip_in_data_frame(victim)
    assert _problems(_verify(copy)) == [f"problem: {victim} at offset {frame.offset}: checksum mismatch"]

    # A flipped byte in a chunk of the snapshot file.
    copy, _, snap = _damaged_copy(sealed_archive, "snapshot-byte")
    frame = _flip_in_data_frame(snap)
    assert _problems(_verify(copy)) == [f"problem: {snap} at offset {frame.offset}: checksum mismatch"]

    # A middle segment deleted: a gap from its start to its end, naming the segment after it.
    copy, segs, _ = _damaged_copy(sealed_archive, "gap")
    gone, after = segs[1], segs[2]
    gone.path.unlink()
    problems = _problems(_verify(copy))
    assert len(problems) == 1, problems
    assert "gap" in problems[0] and format_lsn(gone.start_lsn) in problems[0] \
        and format_lsn(gone.end_lsn) in problems[0] and after.path.name in problems[0], problems

    # The newest segments deleted (the open one and the last sealed one): no gap is left to see,
    # but the archive remembers how far sealing had gone.
    copy, segs, _ = _damaged_copy(sealed_archive, "newest-gone")
    sealed = [s for s in segs if not s.is_open]
    for s in segs[len(sealed) - 1:]:
        s.path.unlink()
    problems = _problems(_verify(copy))
    assert len(problems) == 1 and "newest segments are missing" in problems[0] \
        and format_lsn(sealed[-1].end_lsn) in problems[0], problems

    # A sealed segment cut inside its footer, another cut right after its last data frame.
    copy, segs, _ = _damaged_copy(sealed_archive, "truncated-segment")
    cut_in_footer, cut_footer = segs[0].path, segs[2].path
    with open(cut_in_footer, "r+b") as f:
        f.truncate(cut_in_footer.stat().st_size - 5)
    footer = _frames(cut_footer)[-1]
    with open(cut_footer, "r+b") as f:
        f.truncate(footer.offset)
    problems = _problems(_verify(copy))
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"problem: {cut_in_footer} at offset ") and "truncated" in problems[0], problems
    assert problems[1] == f"problem: {cut_footer} at offset {footer.offset}: sealed segment ends without a footer " \
        "(truncated?)", problems

    # A truncated snapshot file (its footer gone, the catalog's byte count no longer matches).
    copy, _, snap = _damaged_copy(sealed_archive, "truncated-snapshot")
    footer = _frames(snap)[-1]
    with open(snap, "r+b") as f:
        f.truncate(footer.offset)
    problems = _problems(_verify(copy))
    assert problems and problems[0] == f"problem: {snap} at offset {footer.offset}: snapshot file ends without " \
        "a footer (truncated?)", problems
    assert all(str(snap) in p or "snapshot" in p for p in problems), problems


def test_verify_one_file(sealed_archive: Path) -> None:
    segs = Archive(sealed_archive).segments(1)
    a = Archive(sealed_archive)
    [base] = catalog.load_all(a)
    snap = catalog.snapshot_dir(a, 1, base.id) / table_file_name("public.payments")
    for good in (segs[0].path, segs[-1].path, snap):  # sealed, open, snapshot
        r = run_pgtape("verify", str(good))
        _no_traceback(r)
        assert r.returncode == 0 and r.stdout.startswith("ok: "), r.stdout + r.stderr

    frame = _flip_in_data_frame(segs[1].path)
    r = run_pgtape("verify", str(segs[1].path))
    _no_traceback(r)
    assert r.returncode == 1
    assert f"problem: {segs[1].path} at offset {frame.offset}: checksum mismatch" in r.stdout.splitlines(), r.stdout

    with open(snap, "r+b") as f:
        f.truncate(snap.stat().st_size - 3)
    r = run_pgtape("verify", str(snap), "--json")
    _no_traceback(r)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and not out["ok"] and len(out["problems"]) == 1, out
    assert out["problems"][0].startswith(f"{snap} at offset ") and "truncated" in out["problems"][0], out

    r = run_pgtape("verify", str(sealed_archive / "no-such-file.tape"))
    _no_traceback(r)
    assert r.returncode == 2 and "is not a file" in r.stderr, r.stderr


# -- 3. verify --live ---------------------------------------------------------------------------
class Writer(threading.Thread):
    """Small transactions on accounts: inserts and updates (balance and note), until stopped."""

    def __init__(self, dsn: str, first_id: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.next_id = dsn, first_id
        self.stopping = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="verify-writer") as c:
                while not self.stopping.is_set():
                    with c.transaction():
                        c.execute("insert into accounts values (%s, %s, %s)",
                                  (self.next_id, self.next_id % 997 + 0.25, f"new {self.next_id}"))
                        c.execute("update accounts set balance = balance + 0.01, note = 'updated ' || %s "
                                  "where id = %s", (self.transactions, self.next_id % 200 + 1))
                    self.next_id += 1
                    self.transactions += 1
                    time.sleep(0.003)
        except BaseException as e:  # re-raised by stop()
            self.error = e

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), "writer thread did not stop"
        if self.error is not None:
            raise self.error


def _slot_active(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("select active from pg_replication_slots where slot_name = 'pgtape'").fetchone()
    return bool(row and row[0])


def test_verify_live_during_a_workload_and_after_a_change_behind_its_back(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "public.accounts"]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table accounts (id int primary key, balance numeric(12,2) not null, note text)")
        c.execute("insert into accounts select g, g * 1.25, 'initial ' || g from generate_series(1, 200) g")
    run_pgtape("init", *cli, check=True)
    capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture-1.log")
    writer = Writer(dsn, 1000)
    try:
        wait_until("capture to stream", lambda: _slot_active(dsn), 30)
        writer.start()
        wait_until("the writer to commit", lambda: writer.transactions >= 50, 30)
        before_verify = writer.transactions
        r = run_pgtape("verify", "--live", *cli, "--timeout", "30")
        during_verify = writer.transactions - before_verify
        print(r.stdout)
        _no_traceback(r)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines()[-1] == "ok: the replay equals the live tables", r.stdout
        assert "public.accounts: equal" in r.stdout, r.stdout
        writer.stop()
        assert during_verify >= 10, f"the writer must have been writing while verify ran ({during_verify})"
        # Nothing may be left of verify's temporary slot.
        with psycopg.connect(dsn, autocommit=True) as c:
            assert c.execute("select slot_name from pg_replication_slots").fetchall() == [("pgtape",)]

        # A change capture never sees: made while it is stopped, then the slot is moved past it.
        stop_process(capture)
        assert capture.returncode == 0, (tmp_path / "capture-1.log").read_text()
        r = run_pgtape("verify", "--live", *cli, "--timeout", "2")
        _no_traceback(r)
        one_line_error(r, 3, "capture is not running")
        assert r.stdout == "", r.stdout
        print(r.stderr)

        # The gap rule: the slot now confirms a change the tape never got. Capture refuses to go on,
        # and verify --live and status say so, naming the range.
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("update accounts set balance = 123456.78 where id = 77")
            moved = scalar(c.execute("select pg_replication_slot_advance('pgtape', pg_current_wal_lsn())::text"))
        end = json.loads(run_pgtape("status", *cli, "--json").stdout)["end_lsn"]
        gap = (f"replication slot pgtape has confirmed up to {moved.split(',')[-1].rstrip(')')}, but the tape ends at "
               f"{end}")
        r = run_pgtape("capture", *cli, "--until-lsn", "FF/0", timeout=60)
        _no_traceback(r)
        assert r.returncode == 3 and r.stderr.splitlines()[-1].startswith(f"pgtape: {gap}"), r.stderr
        assert "pgtape init --restart" in r.stderr
        for args in (["verify", "--live", "--timeout", "5"], ["status"]):
            r = run_pgtape(*args, *cli)
            _no_traceback(r)
            assert r.returncode == 1 and gap in r.stdout + r.stderr, (args, r.stdout, r.stderr)
    finally:
        writer.stopping.set()
        stop_process(capture)


# -- 4. diff a replay to a mark against the recovery schema made from it -------------------------
def test_diff_replay_at_mark_against_its_recovery_schema(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "public.accounts"]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table accounts (id int primary key, balance numeric(12,2) not null, note text)")
        c.execute("insert into accounts select g, g * 1.25, 'initial ' || g from generate_series(1, 100) g")
        capture_to_now(dsn, archive, tables="public.accounts")
        c.execute("update accounts set balance = balance + 1, note = null where id <= 10")
        c.execute("delete from accounts where id between 91 and 95")
        c.execute("insert into accounts values (101, 0.10, ''), (102, 0.01, 'x')")
        run_pgtape("mark", "m", *cli, check=True)
        c.execute("update accounts set balance = balance - 0.01 where id in (1, 2, 3)")  # after the mark
        c.execute("delete from accounts where id = 50")
        c.execute("insert into accounts values (103, 5, 'after')")
        capture_to_now(dsn, archive, tables="public.accounts")
    run_pgtape("replay", "--target-name", "m", *cli, check=True)

    r = run_pgtape("diff", "--target-name", "m", "--against", "schema:pgtape_recovered_m", *cli, "--json")
    _no_traceback(r)
    assert r.returncode == 0, r.stdout + r.stderr
    t = _table(json.loads(r.stdout), "public.accounts")
    assert t["ok"] and (t["rows_expected"], t["rows_actual"], t["equal"]) == (97, 97, 97), t

    # The same replay against the live tables sees exactly what happened after the mark.
    r = run_pgtape("diff", "--target-name", "m", *cli, "--json")
    _no_traceback(r)
    assert r.returncode == 1, r.stdout + r.stderr
    t = _table(json.loads(r.stdout), "public.accounts")
    assert (t["missing"], t["extra"], t["different"]) == (1, 1, 3), t  # 103 live only, 50 replay only
    assert [s["id"] for s in t["samples_missing"]] == ["103"] and [s["id"] for s in t["samples_extra"]] == ["50"]
    assert sorted(s["key"]["id"] for s in t["samples_different"]) == ["1", "2", "3"]

    # And a recovery schema changed by hand is no longer equal to the replay.
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("update pgtape_recovered_m.accounts set note = 'changed' where id = 101")
    r = run_pgtape("diff", "--target-name", "m", "--against", "schema:pgtape_recovered_m", *cli)
    _no_traceback(r)
    assert r.returncode == 1 and "  differs  id=101  note: 'changed' -> ''" in r.stdout.splitlines(), r.stdout
