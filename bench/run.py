"""pgtape capture benchmarks, side by side with pg_recvlogical: `make bench` or `python -m bench.run`.

On a throwaway embedded PostgreSQL cluster (always stopped at the end) this measures
  1. throughput: row changes/s of `pgtape capture --until-lsn` vs `pg_recvlogical --endpos` over the
     same stream (copied slots, same wal2json options, same session settings), one after the other;
  2. tape bytes vs the WAL bytes the workload generated (and pg_recvlogical's output size);
  3. commit-to-durable latency p50/p99 under a sustained, paced Temba workload;
  4. peak RSS of capture (and of pg_recvlogical) over one 1,000,000-row transaction.
It prints a table and writes the full results as JSON to bench/out/. Method: BENCHMARKS.md.
`--quick` shrinks every size for a smoke run of about a minute.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psycopg

from bench.measure import Child, ProcResult, SlotPoller, clean_env, machine_info, percentile, run, scalar
from pgtape.capture import wal2json
from examples.temba.workload import WorkloadStats, apply_schema, large_transaction, run_workload
from pgtape.config import DEFAULT_TABLES, parse_tables
from testkit.cluster import EmbeddedPostgres
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import PINNED_SETTINGS
from pgtape.tape.archive import Archive
from pgtape.tape.reader import iter_changes

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
TABLES = parse_tables(DEFAULT_TABLES)  # the Temba tables
DBNAME = "temba"

# Targets (see BENCHMARKS.md).
TARGET_THROUGHPUT_RATIO = 0.9  # ours / pg_recvlogical, changes per second: at least
TARGET_TAPE_WAL_RATIO = 0.2  # tape bytes / WAL bytes: at most
TARGET_P99_LATENCY = 1.0  # seconds, commit to durable on the tape: at most
TARGET_PEAK_RSS = 200_000_000  # bytes (200 MB, decimal): at most


@dataclass(frozen=True)
class Sizes:
    name: str
    changes: int  # throughput workload: at least this many row changes
    workers: int  # parallel workload processes generating them (different seeds)
    rounds: int  # capture / pg_recvlogical timings, alternating, each on its own copy of the stream
    latency_rate: float  # transactions per second
    latency_duration: float  # seconds
    big_rows: int  # rows changed by the one large transaction
    timeout: float  # per consumer run


FULL = Sizes("full", changes=250_000, workers=2, rounds=3, latency_rate=200, latency_duration=20,
             big_rows=1_000_000, timeout=600)
QUICK = Sizes("quick", changes=20_000, workers=2, rounds=1, latency_rate=100, latency_duration=5,
              big_rows=100_000, timeout=180)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- helpers ----------------------------------------------------------------------------------
class Bench:
    def __init__(self, pg: EmbeddedPostgres, work: Path, sizes: Sizes, *, out: Path, stamp: str,
                 profile: bool = False, keep: bool = False) -> None:
        self.pg = pg
        self.keep = keep
        self.out = out
        self.stamp = stamp
        self.profile = profile
        self.work = work
        self.sizes = sizes
        self.dsn = pg.dsn(DBNAME)
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.recv_bin = pg.bindir / "pg_recvlogical"
        self.env = clean_env()
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), self.env.get("PYTHONPATH")]))
        self.conn = psycopg.connect(self.dsn, autocommit=True, application_name="bench")

    def close(self) -> None:
        self.conn.close()

    def sql(self, query: str) -> Any:
        row = self.conn.execute(query).fetchone()
        return row[0] if row else None

    def wait_streaming(self, slot: str, child: Child, timeout: float = 60) -> None:
        """Until capture (`child`) streams from `slot`; its stderr if it dies or never does."""
        deadline = time.monotonic() + timeout
        while not self.sql(f"select active from pg_replication_slots where slot_name = '{slot}'"):
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"capture did not start streaming: {child.wait(10).stderr[-2000:]}")
            time.sleep(0.05)

    def wal_lsn(self) -> int:
        return parse_lsn(self.sql("select pg_current_wal_lsn()::text"))

    def wal_diff(self, end: int, start: int) -> int:
        return int(self.sql(f"select pg_wal_lsn_diff('{format_lsn(end)}', '{format_lsn(start)}')"))

    # pgtape capture through its real command line
    def capture_cmd(self, archive: Path, slot: str, until: int | None) -> list[str]:
        cmd = [sys.executable, "-m", "pgtape", "capture", "--dsn", self.dsn, "--archive", str(archive),
               "--tables", ",".join(TABLES), "--slot", slot, "--json"]
        if until is not None:
            cmd += ["--until-lsn", format_lsn(until)]
        return cmd

    def capture(self, archive: Path, slot: str, until: int, name: str) -> ProcResult:
        return run(self.capture_cmd(archive, slot, until), env=self.env, cwd=ROOT, log_dir=self.logs,
                   name=name, timeout=self.sizes.timeout).check(f"pgtape capture ({name})")

    def new_archive(self, name: str, slot: str) -> tuple[Path, int]:
        """Create slot and archive by a capture that stops at once (the slot's start is past now).

        Returns the archive and an LSN it is already durable up to (for a capture that only starts)."""
        archive = self.work / name
        now = self.wal_lsn()
        self.capture(archive, slot, now, f"{name}-create")
        return archive, now

    # pg_recvlogical with the same plugin options and the same rendering settings
    def recvlogical(self, slot: str, until: int, out: Path, name: str) -> ProcResult:
        cmd = [str(self.recv_bin), "-d", self.dsn, "--slot", slot, "--start", "--endpos", format_lsn(until),
               "--no-loop", "-f", str(out)]
        for k, v in wal2json.plugin_options(list(TABLES)).items():
            cmd += ["-o", f"{k}={v}"]
        env = dict(self.env)
        env["PGOPTIONS"] = " ".join(f"-c {k}={v}" for k, v in PINNED_SETTINGS.items())
        return run(cmd, env=env, cwd=ROOT, log_dir=self.logs, name=name,
                   timeout=self.sizes.timeout).check(f"pg_recvlogical ({name})")

    def copy_slot(self, src: str, dst: str) -> None:
        self.sql(f"select pg_copy_logical_replication_slot('{src}', '{dst}')")

    def drop_slot(self, slot: str) -> None:
        self.sql(f"select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '{slot}'")


def tape_bytes(archive: Path) -> int:
    """The segments' bytes (not capture's work file beside the open one, which sealing publishes)."""
    return sum(p.stat().st_size for p in archive.glob("generations/*/tape/*") if p.name.endswith((".tape", ".open")))


def count_recv_changes(path: Path) -> int:
    """Row changes (I/U/D) and truncates in pg_recvlogical's wal2json output, one message a line."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line[:14] in (b'{"action":"I",', b'{"action":"U",', b'{"action":"D",', b'{"action":"T",'):
                n += 1
    return n


def capture_summary(result: ProcResult) -> dict[str, Any]:
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def generate_workload(bench: Bench, target_changes: int, workers: int, first_seed: int) -> dict[str, Any]:
    """Run the Temba workload flat out in `workers` processes until `target_changes` row changes."""
    totals: dict[str, Any] = {"transactions": 0, "row_changes": 0, "inserts": 0, "updates": 0, "deletes": 0,
                              "large_receipts": 0}
    seed = first_seed
    per_txn = 3.0  # row changes per transaction, refined after the first batch
    start = time.perf_counter()
    while totals["row_changes"] < target_changes:
        missing = target_changes - totals["row_changes"]
        each = max(50, math.ceil(missing / per_txn / workers * 1.02))
        children = []
        for _ in range(workers):
            cmd = [sys.executable, "-m", "examples.temba.workload", "--dsn", bench.dsn, "--rate", "max",
                   "--transactions", str(each), "--seed", str(seed), "--json"]
            children.append(Child(cmd, env=bench.env, cwd=ROOT, log_dir=bench.logs, name=f"workload-{seed}"))
            seed += 1
        for child in children:
            r = child.wait(3600).check("temba workload")
            stats = json.loads(r.stdout.strip().splitlines()[-1])
            for k in totals:
                totals[k] += stats[k]
        per_txn = totals["row_changes"] / max(1, totals["transactions"])
    totals["seconds"] = round(time.perf_counter() - start, 2)
    totals["workers"] = workers
    return totals


# -- 1 + 2: throughput and tape size ----------------------------------------------------------
def bench_throughput(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    rounds = sizes.rounds + (1 if bench.profile else 0)  # the profiled round is extra and untimed
    log(f"throughput: creating {rounds} capture archive(s) and slot copies for pg_recvlogical")
    capture_slots = ["pgtape" if i == 0 else f"pgtape_{i + 1}" for i in range(rounds)]
    created = [bench.new_archive(f"tput-archive-{i + 1}", slot) for i, slot in enumerate(capture_slots)]
    archives = [a for a, _ in created]
    recv_slots = [f"bench_recv_{i + 1}" for i in range(sizes.rounds)]
    for slot in recv_slots:
        bench.copy_slot("pgtape", slot)
    start = bench.wal_lsn()
    log(f"throughput: generating the Temba workload (>= {sizes.changes} row changes, "
        f"{sizes.workers} processes, flat out)")
    workload = generate_workload(bench, sizes.changes, sizes.workers, first_seed=1000)
    end = bench.wal_lsn()
    wal_bytes = bench.wal_diff(end, start)
    log(f"throughput: {workload['row_changes']} row changes in {workload['transactions']} transactions, "
        f"{wal_bytes / 1e6:.1f} MB of WAL ({format_lsn(start)}..{format_lsn(end)})")

    # Fixed cost of any capture run (interpreter, imports, connecting, slot and archive checks):
    # a capture whose --until-lsn is already durable on a fresh archive exits right after starting.
    startup = bench.capture(archives[0], capture_slots[0], created[0][1], "tput-capture-startup")

    runs: list[dict[str, Any]] = []
    recv_out = [bench.work / f"recv-{i + 1}.json" for i in range(sizes.rounds)]
    for i in range(sizes.rounds):
        # Alternate the order so neither tool always goes first.
        order = ["capture", "recv"] if i % 2 == 0 else ["recv", "capture"]
        for tool in order:
            load = os.getloadavg()[0]  # other work on the machine shows up here
            if tool == "capture":
                r = bench.capture(archives[i], capture_slots[i], end, f"tput-capture-{i + 1}")
                changes = int(capture_summary(r).get("changes", 0))
            else:
                r = bench.recvlogical(recv_slots[i], end, recv_out[i], f"tput-recv-{i + 1}")
                changes = count_recv_changes(recv_out[i])
            entry = {"tool": tool, "round": i + 1, "changes": changes, "wall": r.wall, "cpu": r.cpu,
                     "user": r.user, "sys": r.sys, "max_rss": r.max_rss, "changes_per_s": changes / r.wall,
                     "loadavg_1m_before": load}
            runs.append(entry)
            log(f"throughput round {i + 1}: {tool}: {changes} changes in {r.wall:.2f}s "
                f"({changes / r.wall:,.0f}/s, CPU {r.cpu:.2f}s, peak RSS {r.max_rss / 1e6:.0f} MB)")
    # A restart on the same archive: capture reopens (and re-reads) the open segment it left.
    open_segment = max((p.stat().st_size for p in archives[0].glob("generations/*/tape/*.tape.open")), default=0)
    restart = bench.capture(archives[0], capture_slots[0], end, "tput-capture-restart")
    profile = profile_capture(bench, archives[-1], capture_slots[-1], end) if bench.profile else None

    def best(tool: str) -> dict[str, Any]:
        return max((r for r in runs if r["tool"] == tool), key=lambda r: r["changes_per_s"])

    ours, theirs = best("capture"), best("recv")
    tape = tape_bytes(archives[0])
    recv_size = recv_out[0].stat().st_size
    if not bench.keep:  # --keep leaves them for bench.capture_cpu
        for p in recv_out:
            p.unlink(missing_ok=True)
    for slot in recv_slots:
        bench.drop_slot(slot)
    return {
        "workload": workload,
        "wal_start": format_lsn(start), "wal_end": format_lsn(end), "wal_bytes": wal_bytes,
        "runs": runs,
        "capture_startup_seconds": startup.wall,
        "capture_restart_seconds": restart.wall,
        "capture_restart_open_segment_bytes": open_segment,
        "ours_changes_per_s": ours["changes_per_s"],
        "ours_changes_per_s_without_startup": ours["changes"] / max(1e-9, ours["wall"] - startup.wall),
        "theirs_changes_per_s": theirs["changes_per_s"],
        "ratio": ours["changes_per_s"] / theirs["changes_per_s"],
        "ours_cpu_us_per_change": ours["cpu"] / max(1, ours["changes"]) * 1e6,
        "theirs_cpu_us_per_change": theirs["cpu"] / max(1, theirs["changes"]) * 1e6,
        "changes_agree": len({r["changes"] for r in runs} | {workload["row_changes"]}) == 1,
        "tape_bytes": tape,
        "recvlogical_output_bytes": recv_size,
        "tape_wal_ratio": tape / wal_bytes,
        "recv_wal_ratio": recv_size / wal_bytes,
        "tape_bytes_per_change": tape / max(1, ours["changes"]),
        "profile": profile,
    }


def profile_capture(bench: Bench, archive: Path, slot: str, until: int) -> dict[str, Any] | None:
    """One more (untimed) capture of the same stream under py-spy; folded stacks go to bench/out/."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        log("profile: py-spy not found (pip install py-spy); skipped")
        return None
    bench.out.mkdir(parents=True, exist_ok=True)
    raw = bench.out / f"capture-profile-{bench.stamp}.txt"
    cmd = [py_spy, "record", "--rate", "250", "--format", "raw", "--output", str(raw), "--",
           *bench.capture_cmd(archive, slot, until)]
    log("profile: capture under py-spy")
    run(cmd, env=bench.env, cwd=ROOT, log_dir=bench.logs, name="tput-capture-profile",
        timeout=bench.sizes.timeout).check("py-spy record")
    return {"raw": str(raw), **summarize_profile(raw)}


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's folded (raw) output."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        # "func (file.py:line)" -> "func (file.py)": lines of one function add up
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "self_percent": share(own) if total else [],
            "inclusive_percent": share(incl) if total else []}


# -- 3: commit-to-durable latency -------------------------------------------------------------
def bench_latency(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    slot = "bench_lat"
    archive = bench.work / "lat-archive"
    log(f"latency: capture running; Temba workload at {sizes.latency_rate:g} tx/s for {sizes.latency_duration:g}s")
    child = Child(bench.capture_cmd(archive, slot, None), env=bench.env, cwd=ROOT, log_dir=bench.logs,
                  name="lat-capture")
    poller: SlotPoller | None = None
    side = psycopg.connect(bench.dsn, autocommit=True, application_name="bench-lsn")
    try:
        bench.wait_streaming(slot, child)
        poller = SlotPoller(bench.dsn, slot, interval=0.01)
        poller.start()
        time.sleep(0.5)  # let the poller settle

        commits: list[tuple[float, int]] = []  # (client time right after COMMIT returned, insert LSN then)
        lsn_query = "select pg_current_wal_insert_lsn()::text"

        def on_commit(_: WorkloadStats) -> None:
            t = time.time()
            row = side.execute(lsn_query).fetchone()
            assert row is not None
            commits.append((t, parse_lsn(row[0])))

        stats = run_workload(bench.dsn, rate=sizes.latency_rate, duration=sizes.latency_duration,
                             transactions=None, seed=2000, progress=on_commit)
        # Wait until the last transaction is confirmed (or give up after 30 s: reported as missing).
        last = commits[-1][1] if commits else 0
        deadline = time.monotonic() + 30
        while poller.latest() < last and time.monotonic() < deadline and poller.error is None:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        if poller is not None:
            poller.stop()
        side.close()
        result = child.terminate()
    if poller is not None and poller.error is not None:
        raise RuntimeError(f"slot poller failed: {poller.error}")
    result.check("pgtape capture (latency)")
    assert poller is not None

    # Each transaction's commit end LSN from the tape: the workload is one serial connection, so
    # its commit is the last one on the tape at or before the insert LSN read right after it, and
    # after the one read right after the previous transaction.
    arch = Archive(archive)
    tape_ends: list[int] = []
    tape_times: dict[int, int] = {}
    for change in iter_changes(arch, arch.identity().generation):
        if not tape_ends or tape_ends[-1] != change.txn.end_lsn:
            tape_ends.append(change.txn.end_lsn)
            tape_times[change.txn.end_lsn] = change.txn.commit_time
    latencies: list[float] = []
    server_side: list[float] = []  # from the server's commit timestamp instead of the client clock
    unmatched = not_durable = 0
    prev_lsn = 0
    for t, lsn in commits:
        i = bisect.bisect_right(tape_ends, lsn) - 1
        end = tape_ends[i] if i >= 0 else None
        if end is None or end <= prev_lsn:
            unmatched += 1
        else:
            durable = poller.first_time_at_or_after(end)
            if durable is None:
                not_durable += 1
            else:
                latencies.append(durable - t)
                server_side.append(durable - tape_times[end] / 1e6)
        prev_lsn = lsn
    if not latencies:
        raise RuntimeError("latency: no transaction could be matched to the tape")

    def dist(values: list[float]) -> dict[str, float]:
        return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
                "max": max(values), "mean": sum(values) / len(values)}

    return {
        "rate": sizes.latency_rate, "duration": sizes.latency_duration,
        "workload": stats.to_dict(),
        "transactions_recorded": len(commits), "transactions_measured": len(latencies),
        "unmatched": unmatched, "not_durable_within_window": not_durable,
        "tape_transactions": len(tape_ends),
        "poll_interval_mean": poller.mean_interval(), "poll_samples": len(poller.times),
        "latency": dist(latencies),
        "latency_from_server_commit_timestamp": dist(server_side),
        "capture": result.to_dict(),
    }


# -- 4: peak RSS over one large transaction ---------------------------------------------------
def bench_big_transaction(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    archive, _ = bench.new_archive("big-archive", "bench_big")
    bench.copy_slot("bench_big", "bench_big_recv")
    start = bench.wal_lsn()
    log(f"large transaction: {sizes.big_rows:,} rows in one transaction")
    t0 = time.perf_counter()
    large_transaction(bench.conn, sizes.big_rows)
    load_seconds = time.perf_counter() - t0
    end = bench.wal_lsn()
    wal_bytes = bench.wal_diff(end, start)
    log(f"large transaction: committed in {load_seconds:.1f}s, {wal_bytes / 1e6:.1f} MB of WAL; capturing")
    load_before = os.getloadavg()[0]
    ours = bench.capture(archive, "bench_big", end, "big-capture")
    changes = int(capture_summary(ours).get("changes", 0))
    log(f"large transaction: capture {changes} changes in {ours.wall:.1f}s, peak RSS {ours.max_rss / 1e6:.0f} MB")
    out = bench.work / "big-recv.json"
    theirs = bench.recvlogical("bench_big_recv", end, out, "big-recv")
    recv_changes = count_recv_changes(out)
    recv_size = out.stat().st_size
    out.unlink()
    log(f"large transaction: pg_recvlogical {recv_changes} changes in {theirs.wall:.1f}s, "
        f"peak RSS {theirs.max_rss / 1e6:.0f} MB")
    bench.drop_slot("bench_big_recv")
    return {
        "rows": sizes.big_rows, "load_seconds": load_seconds, "wal_bytes": wal_bytes,
        "loadavg_1m_before": load_before,
        "ours": {"changes": changes, "wall": ours.wall, "cpu": ours.cpu, "max_rss": ours.max_rss,
                 "changes_per_s": changes / ours.wall},
        "theirs": {"changes": recv_changes, "wall": theirs.wall, "cpu": theirs.cpu, "max_rss": theirs.max_rss,
                   "changes_per_s": recv_changes / theirs.wall, "output_bytes": recv_size},
        "tape_bytes": tape_bytes(archive),
    }


# -- report -----------------------------------------------------------------------------------
def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str]] = []
    t = results.get("throughput")
    if t:
        rows.append(("throughput (row changes/s)", f"{t['ours_changes_per_s']:,.0f}",
                     f"{t['theirs_changes_per_s']:,.0f}",
                     f"ratio {t['ratio']:.2f} (target >= {TARGET_THROUGHPUT_RATIO})",
                     _met(t["ratio"] >= TARGET_THROUGHPUT_RATIO)))
        rows.append(("bytes kept / WAL bytes", f"{t['tape_bytes'] / 1e6:.1f} MB tape",
                     f"{t['recvlogical_output_bytes'] / 1e6:.1f} MB json",
                     f"tape/WAL {t['tape_wal_ratio']:.3f} of {t['wal_bytes'] / 1e6:.1f} MB "
                     f"(target <= {TARGET_TAPE_WAL_RATIO})",
                     _met(t["tape_wal_ratio"] <= TARGET_TAPE_WAL_RATIO)))
    lat = results.get("latency")
    if lat:
        d = lat["latency"]
        rows.append((f"commit->durable latency @ {lat['rate']:g} tx/s",
                     f"p50 {d['p50'] * 1000:.0f} ms, p99 {d['p99'] * 1000:.0f} ms", "-",
                     f"p99 target <= {TARGET_P99_LATENCY * 1000:.0f} ms",
                     _met(d["p99"] <= TARGET_P99_LATENCY and lat["not_durable_within_window"] == 0)))
    big = results.get("big_transaction")
    if big:
        rows.append((f"peak RSS, {big['rows']:,}-row transaction", f"{big['ours']['max_rss'] / 1e6:.0f} MB",
                     f"{big['theirs']['max_rss'] / 1e6:.0f} MB",
                     f"target <= {TARGET_PEAK_RSS / 1e6:.0f} MB", _met(big["ours"]["max_rss"] <= TARGET_PEAK_RSS)))
    return rows


def print_report(results: dict[str, Any]) -> None:
    header = ("figure", "pgtape capture", "pg_recvlogical", "comparison", "target")
    rows = [header, *summary_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print()
    if results.get("mode") == "quick":
        print("--quick: a smoke run; its sizes are too small for the figures to mean much (start-up dominates)")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(line)
    for r in rows[1:]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    t = results.get("throughput")
    if t:
        print()
        print(f"throughput detail: {t['workload']['row_changes']:,} row changes "
              f"({t['workload']['transactions']:,} transactions); "
              f"capture start-up {t['capture_startup_seconds']:.2f}s, "
              f"{t['ours_changes_per_s_without_startup']:,.0f}/s without it; CPU per change: capture "
              f"{t['ours_cpu_us_per_change']:.1f} us, pg_recvlogical {t['theirs_cpu_us_per_change']:.1f} us; "
              f"change counts agree: {t['changes_agree']}; capture restart with a "
              f"{t['capture_restart_open_segment_bytes'] / 1e6:.1f} MB open segment: "
              f"{t['capture_restart_seconds']:.2f}s")
        for r in t["runs"]:
            print(f"  round {r['round']} {r['tool']:8} {r['changes']:>9,} changes {r['wall']:7.2f}s "
                  f"{r['changes_per_s']:>10,.0f}/s  CPU {r['cpu']:6.2f}s  peak RSS {r['max_rss'] / 1e6:5.0f} MB  "
                  f"load {r['loadavg_1m_before']:.2f}")
        prof = t.get("profile")
        if prof:
            print(f"capture profile ({prof['samples']} samples, {prof['raw']}), self time by function:")
            for name, pct in prof["self_percent"][:10]:
                print(f"  {pct:5.1f}%  {name}")
    lat = results.get("latency")
    if lat:
        d, s = lat["latency"], lat["latency_from_server_commit_timestamp"]
        print(f"latency detail: {lat['transactions_measured']} of {lat['transactions_recorded']} transactions "
              f"measured ({lat['unmatched']} unmatched, {lat['not_durable_within_window']} not durable in time); "
              f"p50 {d['p50'] * 1000:.0f} / p90 {d['p90'] * 1000:.0f} / p99 {d['p99'] * 1000:.0f} / "
              f"max {d['max'] * 1000:.0f} ms; from the server commit timestamp p99 {s['p99'] * 1000:.0f} ms; "
              f"poll every {(lat['poll_interval_mean'] or 0) * 1000:.1f} ms")
    big = results.get("big_transaction")
    if big:
        print(f"large transaction detail: {big['wal_bytes'] / 1e6:.0f} MB WAL; capture {big['ours']['wall']:.1f}s "
              f"({big['ours']['changes_per_s']:,.0f}/s), pg_recvlogical {big['theirs']['wall']:.1f}s "
              f"({big['theirs']['changes_per_s']:,.0f}/s); tape {big['tape_bytes'] / 1e6:.1f} MB")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of about a minute")
    parser.add_argument("--only", default="throughput,latency,big",
                        help="comma-separated subset of throughput,latency,big (default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="also run capture once more under py-spy and summarise where its time goes")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the JSON results (bench/out)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (archives, logs)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"throughput", "latency", "big"}
    if unknown:
        parser.error(f"unknown --only part(s): {', '.join(sorted(unknown))}")
    steps: list[tuple[str, Callable[[Bench], dict[str, Any]]]] = [
        ("throughput", bench_throughput), ("latency", bench_latency), ("big_transaction", bench_big_transaction)]
    steps = [(k, f) for k, f in steps if (k if k != "big_transaction" else "big") in only]

    work = Path(tempfile.mkdtemp(prefix="pgtape-bench-"))
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
    results: dict[str, Any] = {"mode": sizes.name, "sizes": sizes.__dict__,
                               "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                               "loadavg_at_start": os.getloadavg()}
    if os.getloadavg()[0] > 0.5:
        log(f"note: load average {os.getloadavg()[0]:.2f} at start; other work on this machine skews the figures")
    failed = False
    try:
        with EmbeddedPostgres() as pg:
            with psycopg.connect(pg.dsn(), autocommit=True) as c:
                c.execute(f"create database {DBNAME}")
                results["machine"] = machine_info(scalar(c.execute("show server_version")))
            results["server_settings"] = pg.settings
            bench = Bench(pg, work, sizes, out=args.out, stamp=stamp, profile=args.profile, keep=args.keep)
            try:
                apply_schema(bench.conn)
                for key, step in steps:
                    try:
                        results[key] = step(bench)
                    except Exception as e:  # one failed figure does not hide the others
                        failed = True
                        results[key] = None
                        results.setdefault("errors", {})[key] = f"{type(e).__name__}: {e}"
                        log(f"{key} FAILED: {type(e).__name__}: {e}")
            finally:
                bench.close()
    finally:
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["loadavg_at_end"] = os.getloadavg()
    results["seconds"] = round(time.time() - started, 1)
    results["summary"] = [dict(zip(("figure", "pgtape", "pg_recvlogical", "comparison", "target"), r))
                          for r in summary_rows(results)]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{sizes.name}-{stamp}.json"
    text = json.dumps(results, indent=2, default=str)
    path.write_text(text)
    (args.out / f"latest-{sizes.name}.json").write_text(text)
    sys.stderr.flush()
    print_report(results)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"results: {shown} ({results['seconds']:.0f}s in all; load average "
          f"{results['loadavg_at_start'][0]:.2f} at start, {results['loadavg_at_end'][0]:.2f} at end)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
