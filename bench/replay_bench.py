"""`pgtape replay --target-time` against PostgreSQL's own point-in-time recovery, from the same base.

    python -m bench.replay_bench              # >= 1,000,000 captured row changes (about 6-8 minutes)
    python -m bench.replay_bench --quick      # >= 50,000 (well under a minute)
    python -m bench.replay_bench --profile    # also cProfile one more pgtape replay (not timed)

One throwaway testkit.cluster.EmbeddedPostgres with wal_level=logical, archive_mode=on and an
archive_command copying every WAL segment into a directory (always stopped, with everything else
this starts):
  1. the Temba schema, `pgtape init` (the initial base: the tables are empty), `pgtape capture`
     in the background;
  2. `pg_basebackup -X none -c fast` right after, before any traffic: both methods start from a
     base of the same state;
  3. the Temba workload (`run_workload`, flat out, `--workers` connections with different seeds)
     until the target number of row changes; then every worker pauses between two transactions
     and the target time T is read from the server clock (`clock_timestamp()`); a little more
     traffic runs (`--after`, 3 % of the changes by default), so T lies inside the tape and the
     WAL; then the bench waits until the tape is durable past the server's final WAL position
     (`pgtape status --json`), stops capture (SIGTERM), forces a WAL switch and waits until the
     archiver has archived that segment;
  4. ours: `pgtape replay --target-time T --schema bench_recovered --json` into the same cluster,
     wall time spawn to exit, CPU and peak RSS of that process (os.wait4);
  5. native: the base backup copied to a new data directory (not timed), recovery.signal and
     restore_command (cp from the archive), recovery_target_time = T, recovery_target_action =
     promote, another port; timed from `pg_ctl start` until `SELECT pg_is_in_recovery()` returns
     false (polled every 10 ms), then stopped;
  6. both results compared: md5 of `COPY (SELECT * FROM t ORDER BY id) TO STDOUT` per table, with
     the same session settings, bench_recovered.t on the cluster vs public.t on the recovered one.
With --base-orders (a base that dominates), two more references and where our time goes, in the same
interleaved runs:
  7. load the base once with PostgreSQL's own tools, independent of pgtape's code: `pg_dump -Fc` of the
     three tables right after pg_basebackup (the same state; not timed), then per run `pg_restore` of
     their definitions, data and primary keys (the TOC without the secondary indexes and foreign keys
     a recovery schema does not have) into a fresh database, without and with `-j 2`, timed; and the
     least SQL can do: the tables' rows written to files by the server with the base (COPY TO), then
     per table on its own connection, all at once, CREATE TABLE, COPY FREEZE from the file, ADD
     PRIMARY KEY, COMMIT (no client in the data path), timed;
  8. two more replays through bench/replay_phases.py (pgtape's main with timers around the fold, and
     per table the COPY, the primary key and the commit, with the server process's CPU): with the
     default replay.sinks.schema.PARALLEL and with PARALLEL = 1, the speed-up of loading tables at once.
  Each of these loads writes hundreds of MiB of WAL: the next starts once the archiver has copied it.
It prints a table and writes JSON to bench/out/ (replay-<mode>-<stamp>.json, replay-latest-<mode>.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any

import psycopg

from bench.measure import ROOT, chown_tree, clean_env, load_profile, save_results, scalar, timed, work_dir
from examples.temba.workload import WorkloadStats, apply_schema, bulk_load, run_workload
from testkit.cluster import EmbeddedPostgres, free_port
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import PINNED_SETTINGS

TABLES = ("public.payments", "public.orders", "public.tickets")
DBNAME = "temba"
SCHEMA = "bench_recovered"
TARGET_RATIO = 1.5  # ours / native wall time: at most (aim: 1.0)
SESSION_OPTIONS = " ".join(f"-c {k}={v}" for k, v in PINNED_SETTINGS.items())


@dataclass(frozen=True)
class Sizes:
    name: str
    changes: int  # row changes before the target time
    after: float  # more traffic after it, as a fraction of `changes`
    timeout: float  # per measured process


FULL = Sizes("full", changes=1_000_000, after=0.03, timeout=900)
QUICK = Sizes("quick", changes=50_000, after=0.05, timeout=300)


def log(msg: str) -> None:
    print(f"replay_bench: {msg}", file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------------
class Background:
    """A long-running child (pgtape capture) logging to files; stopped with SIGTERM, killed if stuck."""

    def __init__(self, cmd: list[str], log_dir: Path, name: str) -> None:
        self.out = log_dir / f"{name}.stdout"
        self.err = log_dir / f"{name}.stderr"
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=clean_env(), cwd=ROOT)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"capture exited {self.proc.returncode}: {self.err.read_text()[-3000:]}")

    def stop(self, timeout: float = 120) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# -- workload with a target time between two transactions ------------------------------------
class _Stop(Exception):
    pass


class Traffic:
    """`workers` run_workload threads (seeds 1..n). When `changes` row changes are committed, every
    worker waits at a barrier between two of its transactions, T is read from the server clock,
    and they go on until `changes * (1 + after)`."""

    def __init__(self, dsn: str, workers: int, changes: int, after: float) -> None:
        self.dsn, self.workers, self.changes = dsn, workers, changes
        self.stop_at = changes + max(1, int(changes * after))
        self.lock = threading.Lock()
        self.total = 0
        self.pause = threading.Event()
        self.abort = threading.Event()  # set when the bench is interrupted: workers stop after their transaction
        self.barrier = threading.Barrier(workers, action=self._take_target)
        self.target: dict[str, Any] | None = None
        self.stats: list[WorkloadStats | None] = [None] * workers
        self.errors: list[BaseException] = []
        self.started = self.ended = 0.0

    def _take_target(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, options=SESSION_OPTIONS) as c:
            time.sleep(0.005)  # commit timestamps have µs resolution: keep clear of the last one
            row = c.execute("select clock_timestamp(), pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            time.sleep(0.005)
        t = row[0].astimezone(timezone.utc)
        self.target = {"time": t.isoformat(), "wal_lsn": row[1], "row_changes_before": self.total,
                       "seconds_into_workload": round(time.monotonic() - self.started, 2)}

    def _worker(self, i: int) -> None:
        last = 0
        paused = False

        def progress(s: WorkloadStats) -> None:
            nonlocal last, paused
            self.stats[i] = s
            with self.lock:
                self.total += s.row_changes - last
                last = s.row_changes
                if self.total >= self.changes:
                    self.pause.set()
                total = self.total
            if self.pause.is_set() and not paused:
                paused = True
                self.barrier.wait(timeout=120)
            if (total >= self.stop_at and paused) or self.abort.is_set():
                raise _Stop

        try:
            run_workload(self.dsn, rate=None, duration=3600, transactions=None, seed=i + 1, progress=progress)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - reported by run()
            if not self.abort.is_set():
                self.errors.append(e)
            self.barrier.abort()

    def run(self, capture: Background) -> None:
        self.started = time.monotonic()
        threads = [threading.Thread(target=self._worker, args=(i,), name=f"temba-{i}", daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        next_log = time.monotonic() + 15
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.5)
                if time.monotonic() >= next_log:
                    next_log += 15
                    el = time.monotonic() - self.started
                    log(f"workload: {self.total:,} row changes in {el:.0f}s ({self.total / el:,.0f}/s)")
                capture.check_alive()
        finally:
            self.abort.set()
            self.barrier.abort()
            for t in threads:
                t.join(30)
        self.ended = time.monotonic()
        if self.errors:
            raise RuntimeError(f"workload failed: {self.errors[0]!r}")
        if self.target is None:
            raise RuntimeError("the workload ended without a target time")

    def summary(self) -> dict[str, Any]:
        stats = [s for s in self.stats if s is not None]
        tx = sum(s.transactions for s in stats)
        rc = sum(s.row_changes for s in stats)
        el = self.ended - self.started
        return {"workers": self.workers, "transactions": tx, "row_changes": rc,
                "inserts": sum(s.inserts for s in stats), "updates": sum(s.updates for s in stats),
                "deletes": sum(s.deletes for s in stats), "large_receipts": sum(s.large_receipts for s in stats),
                "seconds": round(el, 2), "row_changes_per_s": round(rc / el) if el else None}


# -- helpers ----------------------------------------------------------------------------------


def _as_pg(pg: EmbeddedPostgres, *cmd: str) -> list[str]:
    """A server binary, run as the server's user when we are root."""
    full = [str(pg.bindir / cmd[0]), *cmd[1:]]
    return ["runuser", "-u", "postgres", "--", *full] if os.geteuid() == 0 else full


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def table_md5(dsn: str, schema: str) -> dict[str, dict[str, Any]]:
    """Per table: rows and md5 of its COPY text, ordered by primary key, canonical settings."""
    out: dict[str, dict[str, Any]] = {}
    with psycopg.connect(dsn, autocommit=True, options=SESSION_OPTIONS) as c:
        for t in TABLES:
            name = t.split(".")[1]
            h = hashlib.md5()
            rows = 0
            with c.cursor().copy(f'COPY (SELECT * FROM "{schema}"."{name}" ORDER BY id) TO STDOUT') as cp:
                for block in cp:
                    h.update(block)
                    rows += bytes(block).count(b"\n")
            out[name] = {"rows": rows, "md5": h.hexdigest()}
    return out


def wait_until_durable(pgtape: list[str], common: list[str], wal_lsn: int, capture: Background,
                       timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        capture.check_alive()
        st = json.loads(timed([*pgtape, "status", *common, "--json"], timeout=60, what="pgtape status").stdout)
        if parse_lsn(st["end_lsn"]) >= wal_lsn:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"capture not durable past {format_lsn(wal_lsn)} after {timeout}s: {st}")
        time.sleep(0.5)


def wait_archived(pg: EmbeddedPostgres, dsn: str, archive_dir: Path, timeout: float = 120) -> str:
    """Force a WAL switch; wait until the archiver has archived the segment it completes."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("select pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        segment = row[0]
        deadline = time.monotonic() + timeout
        while True:
            row = c.execute("select last_archived_wal, failed_count, last_failed_wal from pg_stat_archiver").fetchone()
            assert row is not None
            if row[0] is not None and row[0] >= segment and (archive_dir / segment).exists():
                return segment
            if time.monotonic() > deadline:
                raise RuntimeError(f"WAL segment {segment} not archived after {timeout}s (pg_stat_archiver {row})")
            time.sleep(0.1)


# -- the two recoveries -----------------------------------------------------------------------
def run_ours(pgtape: list[str], common: list[str], dsn: str, target: str, timeout: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:  # not timed: a fresh, absent schema each run
        c.execute(f"drop schema if exists {SCHEMA} cascade")
        c.execute("checkpoint")
    r = timed([*pgtape, "replay", *common, "--target-time", target, "--schema", SCHEMA, "--json"],
              timeout=timeout, what="pgtape replay")
    summary = json.loads(r.stdout)
    return {"wall": r.wall, "user": r.user, "sys": r.sys, "cpu": r.cpu, "max_rss": r.max_rss,
            "transactions": summary["transactions"], "changes": summary["changes"],
            "changes_per_s": summary["changes"] / r.wall, "rows": summary["rows"],
            "resolved_lsn": summary["resolved_lsn"], "resolved_commit_time": summary["resolved_commit_time"],
            "base": summary["base"]}


_STOP_RE = re.compile(r"recovery stopping before commit of transaction (\d+), time (.+)")
_LAST_RE = re.compile(r"last completed transaction was at log time (.+)")


def run_native(pg: EmbeddedPostgres, work: Path, base: Path, archive_dir: Path, target: str, run: int,
               timeout: float) -> dict[str, Any]:
    """Copy the base backup, configure recovery to T, start, time until promoted. Returns the
    timings and the md5 of the three tables, and always stops the server."""
    root = work / f"pitr-{run}"
    data, sock, logfile = root / "data", root / "sock", root / "server.log"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    sock.mkdir()
    started = time.perf_counter()
    shutil.copytree(base, data, symlinks=True)
    copy_s = time.perf_counter() - started
    port = free_port()
    (data / "recovery.signal").write_text("")
    with open(data / "postgresql.auto.conf", "a") as f:
        f.write(f"port = {port}\n"
                f"unix_socket_directories = '{sock}'\n"
                "archive_mode = off\n"
                f"restore_command = 'cp {archive_dir}/%f %p'\n"
                f"recovery_target_time = '{target}'\n"
                "recovery_target_action = 'promote'\n")
    logfile.touch()
    if os.geteuid() == 0:
        chown_tree(root, "postgres")
    os.chmod(data, 0o700)
    dsn = f"host=127.0.0.1 port={port} dbname={DBNAME} user=postgres"
    try:
        start = time.perf_counter()
        r = subprocess.run(_as_pg(pg, "pg_ctl", "-D", str(data), "-l", str(logfile), "-W", "start"),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr} {logfile.read_text()[-3000:]}")
        connected_at = None
        promoted = None
        deadline = start + timeout
        conn = None
        while promoted is None:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"recovery not finished after {timeout}s: {logfile.read_text()[-3000:]}")
            try:
                if conn is None:
                    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
                    connected_at = time.perf_counter()
                row = conn.execute("select pg_is_in_recovery()").fetchone()
                if row is not None and row[0] is False:
                    promoted = time.perf_counter()
                    break
            except psycopg.OperationalError:
                if conn is not None:
                    conn.close()
                    conn = None
            if time.perf_counter() - start > 2 and not (data / "postmaster.pid").exists():
                raise RuntimeError(f"the recovering server exited: {logfile.read_text()[-3000:]}")
            time.sleep(0.01)
        if conn is not None:
            conn.close()
        wall = promoted - start
        text = logfile.read_text(errors="replace")
        stop = _STOP_RE.search(text)
        last = _LAST_RE.search(text)
        restored = len(re.findall(r'restored log file "', text))
        log(f"native PITR run {run + 1}: promoted after {wall:.2f}s ({restored} WAL segments restored)")
        md5 = table_md5(dsn, "public")
        return {"wall": wall, "copy_base_seconds": copy_s,
                "until_connectable": (connected_at - start) if connected_at else None,
                "stopped_before_xid": int(stop.group(1)) if stop else None,
                "stopped_before_commit_time": stop.group(2).strip() if stop else None,
                "last_completed_commit_time": last.group(1).strip() if last else None,
                "wal_segments_restored": restored, "tables": md5}
    finally:
        subprocess.run(_as_pg(pg, "pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop"),
                       capture_output=True, text=True)
        shutil.rmtree(root, ignore_errors=True)


def dump_base(pg: EmbeddedPostgres, dsn: str, work: Path) -> dict[str, Any]:
    """pg_dump -Fc of the three tables now, and the TOC list pg_restore -L loads: the tables, their
    data and primary keys (what a recovery schema holds)."""
    dump, toc = work / "base.dump", work / "base.toc"
    started = time.perf_counter()
    r = subprocess.run([str(pg.bindir / "pg_dump"), "-Fc", "-d", dsn, *(a for t in TABLES for a in ("-t", t)),
                        "-f", str(dump)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {r.stderr}")
    seconds = time.perf_counter() - started
    r = subprocess.run([str(pg.bindir / "pg_restore"), "-l", str(dump)], capture_output=True, text=True, check=True)
    keep = [line for line in r.stdout.splitlines() if re.search(r" (TABLE|TABLE DATA) public ", line)
            or re.search(r" CONSTRAINT public \S+ \S+_pkey ", line)]
    toc.write_text("\n".join(keep) + "\n")
    return {"path": str(dump), "toc": str(toc), "bytes": dump.stat().st_size, "seconds": round(seconds, 2),
            "entries": keep}


COPY_FORMATS = ("text", "binary")


def export_base(dsn: str, work: Path) -> dict[str, dict[str, str]]:
    """Each table's rows now, in COPY files (text and binary) the server writes and run_copy_floor reads back."""
    files: dict[str, dict[str, str]] = {f: {} for f in COPY_FORMATS}
    with psycopg.connect(dsn, autocommit=True) as c:
        for fmt in COPY_FORMATS:
            for t in TABLES:
                files[fmt][t] = str(work / f"base-{t}.{fmt}")
                c.execute(f"copy {t} to '{files[fmt][t]}' with (format {fmt})")
    return files


def run_copy_floor(dsn: str, files: dict[str, str], rows: int, fmt: str = "text") -> dict[str, Any]:
    """The least SQL can do to load the base: per table, on its own connection and all at once, CREATE
    TABLE, COPY FREEZE from the server-side file (no client in the path), ADD PRIMARY KEY, COMMIT; into a
    fresh schema (dropped untimed). Wall time of the slowest. Binary files spare the server the types'
    text input functions (uuid, timestamptz, numeric): the floor for any format a base could be kept in."""
    schema = "bench_copy_floor"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"drop schema if exists {schema} cascade")
        c.execute(f"create schema {schema}")
        c.execute("checkpoint")
    errors: list[BaseException] = []

    def load(t: str) -> None:
        try:
            with psycopg.connect(dsn) as c:  # one transaction: FREEZE needs the table created in it
                name = f"{schema}.{t.split('.')[1]}"
                c.execute(f"create table {name} (like {t})")
                c.execute(f"copy {name} from '{files[t]}' with (freeze, format {fmt})")
                c.execute(f"alter table {name} add primary key (id)")
        except BaseException as e:  # noqa: BLE001 - raised below
            errors.append(e)

    threads = [threading.Thread(target=load, args=(t,)) for t in TABLES]
    started = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - started
    try:
        if errors:
            raise RuntimeError(f"COPY FREEZE floor failed: {errors[0]!r}")
        with psycopg.connect(dsn, autocommit=True) as c:
            got = sum(int(scalar(c.execute(f"select count(*) from {schema}.{t.split('.')[1]}"))) for t in TABLES)
        if got != rows:
            raise RuntimeError(f"COPY FREEZE floor loaded {got} rows, the base has {rows}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"drop schema if exists {schema} cascade")
    log(f"COPY FREEZE from server files ({fmt}): {wall:.2f}s")
    return {"wall": wall}


def run_restore(pg: EmbeddedPostgres, dump: dict[str, Any], jobs: int, rows: int) -> dict[str, Any]:
    """pg_restore of the base into a fresh database (created and dropped untimed), timed; its row
    count must be the base's."""
    db = f"bench_restore_{jobs}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"drop database if exists {db}")
        c.execute(f"create database {db}")
        c.execute("checkpoint")
    try:
        r = timed([str(pg.bindir / "pg_restore"), "-j", str(jobs), "-L", dump["toc"], "-d", pg.dsn(db), dump["path"]],
                  timeout=900, what=f"pg_restore -j {jobs}")
        with psycopg.connect(pg.dsn(db), autocommit=True) as c:
            got = sum(int(scalar(c.execute(f"select count(*) from {t}"))) for t in TABLES)
        if got != rows:
            raise RuntimeError(f"pg_restore -j {jobs} loaded {got} rows, the base has {rows}")
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute(f"drop database if exists {db}")
    log(f"pg_restore -j {jobs}: {r.wall:.2f}s ({rows:,} rows)")
    return {"jobs": jobs, "wall": r.wall, "cpu": r.cpu, "rows": rows}


def run_phases(common: list[str], dsn: str, target: str, work: Path, parallel: int | None,
               timeout: float) -> dict[str, Any]:
    """One more replay through bench/replay_phases.py; its phases, with its wall time and CPU."""
    out = work / "phases.json"
    wrapper = [sys.executable, "-m", "bench.replay_phases", "--out", str(out),
               *(["--parallel", str(parallel)] if parallel else []), "--"]
    o = run_ours(wrapper, common, dsn, target, timeout)
    phases = json.loads(out.read_text())
    log(f"pgtape replay, PARALLEL={phases['parallel']}, phases timed: {o['wall']:.2f}s; {phases}")
    return {"wall": o["wall"], "cpu": o["cpu"], **phases}


def profile_replay(pgtape: list[str], common: list[str], dsn: str, target: str, work: Path,
                   timeout: float) -> list[str]:
    """cProfile one more replay (into another schema, dropped after); the top functions by self time
    and the two phases (reading/folding the tape, loading the schema) by cumulative time."""
    prof = work / "replay.prof"
    schema = SCHEMA + "_profile"
    try:
        timed([sys.executable, "-m", "cProfile", "-o", str(prof), *pgtape[1:], "replay", *common, "--target-time",
               target, "--schema", schema, "--force"], timeout=timeout * 3, what="cProfile pgtape replay")
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"drop schema if exists {schema} cascade")
    total_tt, raw = load_profile(prof)
    lines = [f"total {total_tt:.2f}s (under cProfile)", "phases (cumulative):"]
    for (file, line, fn), (_, ncalls, _tt, ct, _) in raw.items():
        if (fn == "prepare" and file.endswith("replay/engine.py")) or \
                (fn == "to_schema" and file.endswith("replay/sinks/schema.py")) or \
                (fn == "_load" and file.endswith("replay/sinks/schema.py")) or \
                (fn == "rows" and file.endswith("replay/fold.py")):
            lines.append(f"  {ct:7.2f}s cum {100 * ct / total_tt:5.1f}%  {ncalls:>9} calls  "
                         f"{Path(file).name}:{line}({fn})")
    lines.append("top by self time:")
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:18]
    for (file, line, fn), (_, ncalls, tt, ct, _) in top:
        where = f"{Path(file).name}:{line}({fn})" if line else fn
        lines.append(f"  {tt:7.2f}s self {100 * tt / total_tt:5.1f}%  {ct:7.2f}s cum  {ncalls:>9} calls  {where}")
    return lines


# -- the benchmark ----------------------------------------------------------------------------
def run_bench(sizes: Sizes, workers: int, runs: int, profile: bool, base_orders: int, work: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    archive_dir = work / "wal_archive"
    archive_dir.mkdir()
    logs = work / "logs"
    logs.mkdir()
    if os.geteuid() == 0:
        chown_tree(archive_dir, "postgres")
    settings = {"wal_level": "logical", "archive_mode": "on",
                "archive_command": f"'cp %p {archive_dir}/%f'"}
    result: dict[str, Any] = {"mode": sizes.name, "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "loadavg_at_start": os.getloadavg()}
    capture: Background | None = None
    with EmbeddedPostgres(base_dir=work / "primary", settings=settings) as pg:
        result["server_settings"] = pg.settings
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute(f"create database {DBNAME}")
            result["postgresql"] = scalar(c.execute("show server_version"))
        dsn = pg.dsn(DBNAME)
        tape = work / "tape"
        common = ["--dsn", dsn, "--archive", str(tape), "--tables", ",".join(TABLES)]
        pgtape = [sys.executable, "-m", "pgtape"]
        try:
            # 1. schema, initial base, capture
            with psycopg.connect(dsn, autocommit=True) as c:
                apply_schema(c)
                if base_orders:
                    bulk_load(c, base_orders, seed=1000)
                    c.execute("vacuum analyze")
            init = json.loads(timed([*pgtape, "init", *common, "--json"], timeout=600, what="pgtape init").stdout)
            snaps = json.loads(timed([*pgtape, "snapshots", *common, "--json"], timeout=60,
                                     what="pgtape snapshots").stdout)
            base_snap = next(s for s in snaps if s["id"] == init["base"])
            capture = Background([*pgtape, "capture", *common], logs, "capture")
            # 2. the native base, at the same state (no traffic in between)
            basebackup = work / "basebackup"
            bb_start = time.time()
            r = subprocess.run(_as_pg(pg, "pg_basebackup", "-d", pg.dsn(), "-D", str(basebackup), "-X", "none",
                                      "-c", "fast", "--no-sync"), capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"pg_basebackup failed: {r.stderr}")
            label = (basebackup / "backup_label").read_text()
            result["bases"] = {
                "pgtape": {"id": base_snap["id"], "as_of_lsn": base_snap["as_of_lsn"],
                           "as_of_time": base_snap["as_of_time"], "rows": base_snap["rows"]},
                "pg_basebackup": {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(bb_start)) + "Z",
                                  "seconds": round(time.time() - bb_start, 2), "bytes": _dir_size(basebackup),
                                  "label": dict(line.split(": ", 1) for line in label.splitlines() if ": " in line)},
            }
            log(f"bases: pgtape {base_snap['id']} as of {base_snap['as_of_time']}; pg_basebackup "
                f"{result['bases']['pg_basebackup']['label'].get('START WAL LOCATION')}")
            dump = None
            if base_orders:  # the same state: no traffic yet
                dump = dump_base(pg, dsn, work)
                copy_files = export_base(dsn, work)
                result["bases"]["pg_dump"] = {k: dump[k] for k in ("bytes", "seconds", "entries")}
                base_rows = sum(base_snap["rows"].values())
            # 3. traffic, target time in it, more traffic; everything durable and archived
            traffic = Traffic(dsn, workers, sizes.changes, sizes.after)
            traffic.run(capture)
            assert traffic.target is not None
            target = traffic.target["time"]
            result["workload"] = traffic.summary()
            result["target"] = traffic.target
            log(f"workload: {result['workload']}; target time {target}")
            with psycopg.connect(dsn, autocommit=True) as c:
                end_lsn = parse_lsn(scalar(c.execute("select pg_current_wal_lsn()::text")))
            waited = time.monotonic()
            status = wait_until_durable(pgtape, common, end_lsn, capture, timeout=sizes.timeout)
            result["capture_catch_up_seconds"] = round(time.monotonic() - waited, 2)
            capture.stop()
            capture_rc = capture.proc.returncode
            capture = None
            if capture_rc != 0:
                raise RuntimeError(f"capture exited {capture_rc}")
            segment = wait_archived(pg, dsn, archive_dir)
            result["tape"] = {k: status[k] for k in ("end_lsn", "segments", "bytes", "transactions", "changes")}
            result["wal"] = {"end_lsn": format_lsn(end_lsn), "last_segment": segment,
                             "archived_segments": len([p for p in archive_dir.iterdir() if p.name[:8].isalnum()
                                                       and len(p.name) == 24]),
                             "archive_bytes": _dir_size(archive_dir)}
            log(f"tape {status['changes']:,} changes, {status['bytes'] / 2**20:.1f} MiB; "
                f"WAL {result['wal']['archive_bytes'] / 2**20:.0f} MiB archived up to {segment}")

            # 4./5. alternate: ours, native (each `runs` times)
            ours_runs: list[dict[str, Any]] = []
            native_runs: list[dict[str, Any]] = []
            restore_runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            floor_runs: list[dict[str, Any]] = []
            binary_floor_runs: list[dict[str, Any]] = []
            phase_runs: dict[str, list[dict[str, Any]]] = {"default": [], "serial": []}
            for i in range(runs):
                if dump is not None:  # first: the plain replay below leaves the schema compared after the runs
                    for key, parallel in (("default", None), ("serial", 1)):
                        wait_archived(pg, dsn, archive_dir)  # the last load's WAL: archived before the next
                        phase_runs[key].append(run_phases(common, dsn, target, work, parallel, sizes.timeout))
                wait_archived(pg, dsn, archive_dir)
                o = run_ours(pgtape, common, dsn, target, sizes.timeout)
                log(f"pgtape replay run {i + 1}: {o['wall']:.2f}s, {o['changes']:,} changes "
                    f"({o['changes_per_s']:,.0f}/s), peak RSS {o['max_rss'] / 2**20:.0f} MiB")
                ours_runs.append(o)
                native_runs.append(run_native(pg, work, basebackup, archive_dir, target, i, sizes.timeout))
                if dump is not None:
                    for jobs in (1, 2):
                        wait_archived(pg, dsn, archive_dir)
                        restore_runs[jobs].append(run_restore(pg, dump, jobs, base_rows))
                    wait_archived(pg, dsn, archive_dir)
                    floor_runs.append(run_copy_floor(dsn, copy_files["text"], base_rows))
                    wait_archived(pg, dsn, archive_dir)
                    binary_floor_runs.append(run_copy_floor(dsn, copy_files["binary"], base_rows, "binary"))
            # 6. equality (the last replay is still in bench_recovered)
            ours_md5 = table_md5(dsn, SCHEMA)
            native_md5 = native_runs[-1]["tables"]
            equal = ours_md5 == native_md5 and all(n["tables"] == native_md5 for n in native_runs)
            result["compare"] = {"equal": equal, "pgtape": ours_md5, "native": native_md5}
            log(f"results {'EQUAL' if equal else 'DIFFER'}: {ours_md5} vs {native_md5}")
            if profile:
                result["profile"] = profile_replay(pgtape, common, dsn, target, work, sizes.timeout)
            result["ours_runs"] = ours_runs
            result["native_runs"] = native_runs
            if dump is not None:
                result["restore_runs"] = {str(j): r for j, r in restore_runs.items()}
                result["copy_floor_runs"] = floor_runs
                result["copy_floor_binary_runs"] = binary_floor_runs
                result["phase_runs"] = phase_runs
        finally:
            if capture is not None:
                capture.stop()
    best_o = min(ours_runs, key=lambda r: r["wall"])
    best_n = min(native_runs, key=lambda r: r["wall"])
    if "restore_runs" in result:
        best_r = {j: min(rs, key=lambda r: r["wall"]) for j, rs in result["restore_runs"].items()}
        best_p = {k: min(rs, key=lambda r: r["wall"]) for k, rs in result["phase_runs"].items()}
        best_f = min(result["copy_floor_runs"], key=lambda r: r["wall"])
        best_b = min(result["copy_floor_binary_runs"], key=lambda r: r["wall"])
        result.update(copy_floor=best_f, copy_floor_ratio=best_o["wall"] / best_f["wall"],
                      copy_floor_binary=best_b, copy_floor_binary_ratio=best_o["wall"] / best_b["wall"],
                      copy_floor_binary_native_ratio=best_b["wall"] / best_n["wall"])
        result.update(restore=best_r, restore_ratio={j: best_o["wall"] / r["wall"] for j, r in best_r.items()},
                      phases=best_p, parallel_speedup=best_p["serial"]["wall"] / best_p["default"]["wall"])
    result.update(ours=best_o, native=best_n, ratio=best_o["wall"] / best_n["wall"], target_ratio=TARGET_RATIO,
                  runs=runs, loadavg_at_end=os.getloadavg(), seconds=round(time.monotonic() - t0, 1),
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    return result


def table(res: dict[str, Any]) -> str:
    o, n = res["ours"], res["native"]
    mib = 1 << 20
    w = res["workload"]
    lines = [
        f"{res['mode']} run: {w['row_changes']:,} row changes by {w['transactions']:,} Temba transactions "
        f"({w['workers']} connections, {w['row_changes_per_s']:,}/s, {w['seconds']}s); target "
        f"{res['target']['time']} after {res['target']['row_changes_before']:,} of them; "
        f"tape {res['tape']['bytes'] / mib:.1f} MiB, WAL archived {res['wal']['archive_bytes'] / mib:.0f} MiB "
        f"({res['wal']['archived_segments']} segments); PostgreSQL {res['postgresql']}; {res['machine']}; "
        f"best of {res['runs']} interleaved run(s); load average {res['loadavg_at_start'][0]:.1f} at start, "
        f"{res['loadavg_at_end'][0]:.1f} at end.",
        "",
        "| | pgtape replay (3 tables) | PostgreSQL PITR (whole cluster) | ours / native |",
        "|---|---:|---:|---:|",
        f"| wall time to recovered | {o['wall']:.2f} s | {n['wall']:.2f} s | **{res['ratio']:.2f}** |",
        f"| changes replayed | {o['changes']:,} in {o['transactions']:,} transactions | "
        f"WAL from {res['bases']['pg_basebackup']['label'].get('START WAL LOCATION', '?').split(' ')[0]}, "
        f"{n['wal_segments_restored']} segments restored | |",
        f"| changes / s | {o['changes_per_s']:,.0f} | {o['changes'] / n['wall']:,.0f} (same changes / its time) | |",
        f"| process CPU (user+sys) | {o['cpu']:.2f} s | (server processes, not measured) | |",
        f"| peak RSS | {o['max_rss'] / mib:.0f} MiB "
        f"| (server: shared_buffers {res['server_settings']['shared_buffers']}) | |",
        f"| last transaction applied (commit time) | {o['resolved_commit_time']} "
        f"| {n['last_completed_commit_time']} | |",
        f"| result, md5 per table | {'**equal**' if res['compare']['equal'] else '**DIFFERENT**'}: "
        + ", ".join(f"{t} {v['rows']:,} rows" for t, v in res["compare"]["pgtape"].items()) + " | | |",
        "",
        "All runs (wall s): " + ", ".join(f"ours {a['wall']:.2f} / native {b['wall']:.2f}"
                                         for a, b in zip(res["ours_runs"], res["native_runs"]))
        + f"; native base copy (not timed) {n['copy_base_seconds']:.2f}s; capture catch-up after the "
          f"workload {res['capture_catch_up_seconds']}s.",
        f"Target ours/native <= {res['target_ratio']}: "
        f"**{'met' if res['ratio'] <= res['target_ratio'] else 'MISSED'}**.",
    ]
    if res.get("restore"):
        lines += ["", *base_table(res)]
    if res.get("profile"):
        lines += ["", "cProfile of one more `pgtape replay` (same target):", "", "```", *res["profile"], "```"]
    return "\n".join(lines)


def base_table(res: dict[str, Any]) -> list[str]:
    """--base-orders: ours against loading the base once with pg_restore, and where our time goes."""
    o, r, p = res["ours"], res["restore"], res["phases"]
    rows = sum(res["bases"]["pgtape"]["rows"].values())
    lines = [
        f"The base ({rows:,} rows) loaded once with PostgreSQL's own tools: pg_restore of a `pg_dump -Fc` "
        f"({res['bases']['pg_dump']['bytes'] / (1 << 20):.0f} MiB) of the three tables taken with the base, "
        "their definitions, data and primary keys, into a fresh database; and the least SQL can do: per table on its "
        "own connection, all at once, CREATE TABLE, COPY FREEZE from a file the server wrote with the base, "
        "ADD PRIMARY KEY, from text files and from binary ones (no text input functions: the least any base "
        "format could cost the server):",
        "",
        "| | pgtape replay | pg_restore | pg_restore -j 2 | COPY FREEZE from server files | the same, binary |",
        "|---|---:|---:|---:|---:|---:|",
        f"| wall time | {o['wall']:.2f} s | {r['1']['wall']:.2f} s | {r['2']['wall']:.2f} s "
        f"| {res['copy_floor']['wall']:.2f} s | {res['copy_floor_binary']['wall']:.2f} s |",
        f"| ours / it | | **{res['restore_ratio']['1']:.2f}** | **{res['restore_ratio']['2']:.2f}** "
        f"| **{res['copy_floor_ratio']:.2f}** | **{res['copy_floor_binary_ratio']:.2f}** |",
        f"| it / native PITR | {res['ratio']:.2f} | {r['1']['wall'] / res['native']['wall']:.2f} "
        f"| {r['2']['wall'] / res['native']['wall']:.2f} | {res['copy_floor']['wall'] / res['native']['wall']:.2f} "
        f"| **{res['copy_floor_binary_native_ratio']:.2f}** |",
        f"| process CPU (client) | {o['cpu']:.2f} s | {r['1']['cpu']:.2f} s | {r['2']['cpu']:.2f} s | | |",
        "",
        "All runs (wall s): " + ", ".join(
            f"pg_restore {a['wall']:.2f} / -j 2 {b['wall']:.2f} / COPY FREEZE {c['wall']:.2f} / binary {d['wall']:.2f}"
            for a, b, c, d in zip(res["restore_runs"]["1"], res["restore_runs"]["2"], res["copy_floor_runs"],
                                  res["copy_floor_binary_runs"])) + ".",
        "",
        "Where a replay's time goes (bench/replay_phases.py: wall s; server CPU s of the process doing it), "
        f"best of {res['runs']}; tables loading at once: PARALLEL = {p['default']['parallel']} (default) vs 1, "
        f"speed-up **{res['parallel_speedup']:.2f}x**:",
        "",
        "| PARALLEL | wall | fold (tape) | load (all tables) | table: COPY (server CPU) + primary key (server CPU) "
        "+ commit | publish | process CPU |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for k in ("default", "serial"):
        ph = p[k]
        per = "; ".join(f"{t.split('.')[-1]} {v.get('copy', 0):.2f} ({v.get('copy_server_cpu', 0):.2f}) + "
                        f"{v.get('primary_key', 0):.2f} ({v.get('primary_key_server_cpu', 0):.2f}) + "
                        f"{v.get('commit', 0):.2f}" for t, v in ph["tables"].items())
        lines.append(f"| {ph['parallel']} | {ph['wall']:.2f} s | {ph.get('fold', 0):.2f} s | {ph.get('load', 0):.2f} s "
                     f"| {per} | {ph.get('publish', 0):.2f} s | {ph['cpu']:.2f} s |")
    lines += ["", "All runs (wall s): " + ", ".join(
        f"PARALLEL={a['parallel']} {a['wall']:.2f} / PARALLEL=1 {b['wall']:.2f}"
        for a, b in zip(res["phase_runs"]["default"], res["phase_runs"]["serial"])) + "."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay_bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK.changes:,} row changes instead of {FULL.changes:,}")
    p.add_argument("--changes", type=int, help="row changes before the target time")
    p.add_argument("--workers", type=int, default=2, help="workload connections (default 2)")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs of each recovery, the best counts (default 3)")
    p.add_argument("--base-orders", type=int, default=0,
                   help="bulk-load this many orders before the base (default 0: the base is the empty schema)")
    p.add_argument("--profile", action="store_true", help="also cProfile one more pgtape replay (not timed)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (for inspection)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.changes:
        sizes = Sizes(sizes.name, args.changes, sizes.after, sizes.timeout)
    runs = max(1, args.runs)
    with work_dir("pgtape-replaybench-", args.keep) as work:  # SIGTERM stops capture and the servers
        res = run_bench(sizes, args.workers, runs, args.profile, args.base_orders, work)
    save_results("replay", res)
    print(table(res))
    return 0 if res["compare"]["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
