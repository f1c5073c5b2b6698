"""Group commit: adaptive vs timer, side by side in one run: `python -m bench.commit_latency`.

On a throwaway embedded PostgreSQL cluster (always stopped at the end) this measures, for
`[capture] group_commit = "timer"` (fsync every `fsync_interval`, the earlier behaviour) and
`"adaptive"` (fsync as soon as the stream is drained; docs/ARCHITECTURE.md, Rule A1):
  1. commit-to-durable latency of single-row commits paced at 40, 200 and 2,000 tx/s: from COMMIT
     returning to the slot's confirmed_flush_lsn passing that commit (a poller reads
     pg_replication_slots every 2 ms), p50/p99, and the tape fsyncs per second (capture's own
     count, `fsyncs` in its --json summary);
  2. flat-out capture throughput (the Temba workload, as bench/run.py) of both modes and of
     pg_recvlogical over the same stream, rounds alternating.
Both modes run at each rate one after the other (the order alternates). It prints a table and
writes everything to bench/out/commit-latency-<mode>-<UTC time>.json. Method: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.measure import ROOT, Child, SlotPoller, machine_info, percentile, save_results, scalar, work_dir
from bench.run import (DBNAME, TABLES, Bench, Sizes, capture_summary, count_recv_changes, generate_workload,
                       tape_bytes)
from examples.temba.workload import apply_schema
from pgtape import metadata
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.tape.archive import Archive
from pgtape.tape.reader import iter_changes
from pgtape.tape.segment import DURABLE_FILE
from testkit.cluster import EmbeddedPostgres

MODES = ("timer", "adaptive")
TABLE = "public.gc_bench"
TARGET_P99 = 0.020  # seconds, at 40 and 200 tx/s (issue 17)
TARGET_THROUGHPUT = 0.97  # adaptive / timer, changes per second


@dataclass(frozen=True)
class Plan:
    name: str
    rates: tuple[tuple[float, float], ...]  # (transactions per second, seconds)
    changes: int  # throughput workload
    rounds: int


FULL = Plan("full", ((40, 15), (200, 10), (2000, 8)), changes=250_000, rounds=3)
QUICK = Plan("quick", ((40, 4), (200, 3), (2000, 2)), changes=20_000, rounds=1)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def config_file(work: Path, mode: str) -> Path:
    path = work / f"pgtape-{mode}.toml"
    path.write_text(f'[capture]\ngroup_commit = "{mode}"\n')  # every other setting at its default
    return path


def capture_cmd(bench: Bench, conf: Path, archive: Path, slot: str, tables: str, until: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "pgtape", "capture", "--config", str(conf), "--dsn", bench.dsn,
           "--archive", str(archive), "--tables", tables, "--slot", slot, "--json"]
    return cmd + (["--until-lsn", format_lsn(until)] if until is not None else [])


def run_capture(bench: Bench, cmd: list[str], name: str) -> Any:
    return Child(cmd, env=bench.env, cwd=ROOT, log_dir=bench.logs, name=name).wait(600).check(name)


# -- 1: latency at paced rates ----------------------------------------------------------------
def latency_phase(bench: Bench, mode: str, rate: float, seconds: float, first_id: int) -> dict[str, Any]:
    slot = f"gc_{mode}_{int(rate)}"
    archive = bench.work / f"lat-{mode}-{int(rate)}"
    conf = config_file(bench.work, mode)
    run_capture(bench, capture_cmd(bench, conf, archive, slot, TABLE, bench.wal_lsn()), f"{slot}-create")
    child = Child(capture_cmd(bench, conf, archive, slot, TABLE, None), env=bench.env, cwd=ROOT,
                  log_dir=bench.logs, name=slot)
    poller: SlotPoller | None = None
    commits: list[tuple[float, int]] = []  # (time.time() right after COMMIT returned, insert LSN before it)
    load = os.getloadavg()[0]
    try:
        bench.wait_streaming(slot, child)
        poller = SlotPoller(bench.dsn, slot, interval=0.002)
        poller.start()
        time.sleep(0.5)
        cpu_before = _cpu(child.proc.pid)
        with psycopg.connect(bench.dsn, autocommit=True, application_name="bench-commits") as conn:
            cur = conn.cursor()
            # RETURNING reads the insert position before the commit record: the commit ends after it.
            query = f"insert into {TABLE} values (%s, 0) returning pg_current_wal_insert_lsn()::text"
            n = int(rate * seconds)
            start = time.monotonic()
            for i in range(n):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                row = cur.execute(query, (first_id + i,)).fetchone()
                commits.append((time.time(), parse_lsn(row[0] if row else "0/0")))
            elapsed = time.monotonic() - start
        last = commits[-1][1]
        deadline = time.monotonic() + 30
        while poller.latest() <= last and time.monotonic() < deadline and poller.error is None:
            time.sleep(0.01)
        time.sleep(0.1)
        cpu_after = _cpu(child.proc.pid)
    finally:
        if poller is not None:
            poller.stop()
        result = child.terminate()
    if poller is not None and poller.error is not None:
        raise RuntimeError(f"slot poller failed: {poller.error}")
    result.check(f"pgtape capture ({slot})")
    assert poller is not None
    summary = capture_summary(result)

    # The tape holds exactly these transactions, in commit order (one serial connection, one row each).
    arch = Archive(archive)
    ends: list[int] = []
    commit_times: list[int] = []
    for change in iter_changes(arch, arch.identity().generation):
        ends.append(change.txn.end_lsn)
        commit_times.append(change.txn.commit_time)
    if len(ends) != len(commits):
        raise RuntimeError(f"{slot}: {len(commits)} commits but {len(ends)} transactions on the tape")
    for i, (_, lsn) in enumerate(commits):
        if not (ends[i] > lsn and (i + 1 == len(commits) or ends[i] <= commits[i + 1][1])):
            raise RuntimeError(f"{slot}: transaction {i} ends at {format_lsn(ends[i])}, out of order")
    latencies: list[float] = []
    when: list[float] = []  # seconds since the first commit, for each latency
    server_side: list[float] = []  # from the server's commit timestamp instead of the client clock
    not_durable = 0
    for (t, _), end, ct in zip(commits, ends, commit_times):
        durable = poller.first_time_at_or_after(end)
        if durable is None:
            not_durable += 1
        else:
            latencies.append(durable - t)
            when.append(t - commits[0][0])
            server_side.append(durable - ct / 1e6)
    published = metadata.read(arch.storage, f"{arch.generation_key(arch.identity().generation)}/{DURABLE_FILE}",
                              dict).get("commit_to_durable")
    fsyncs = int(summary.get("fsyncs", 0))
    return {
        "mode": mode, "rate": rate, "seconds": seconds, "transactions": len(commits),
        "achieved_rate": len(commits) / elapsed, "loadavg_1m_before": load,
        "latency": _dist(latencies), "latency_from_server_commit_timestamp": _dist(server_side),
        "not_durable_within_window": not_durable,
        "fsyncs": fsyncs, "fsyncs_per_s": fsyncs / elapsed,
        "capture_cpu_seconds_during_workload": None if cpu_before is None or cpu_after is None
        else cpu_after - cpu_before,
        "poll_interval_mean": poller.mean_interval(),
        "published_commit_to_durable": published,  # capture's own last window (DURABLE.json)
        # The slowest 1%: (seconds into the phase, latency in ms), to tell stalls from spread.
        "slowest": sorted(((round(w, 3), round(x * 1e3, 1)) for x, w in zip(latencies, when)),
                          key=lambda e: -e[1])[:max(1, len(latencies) // 100)],
    }


def _cpu(pid: int) -> float | None:
    """user+sys CPU seconds of a running process (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _dist(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values), "mean": sum(values) / len(values)}


def bench_latency(bench: Bench, plan: Plan) -> list[dict[str, Any]]:
    bench.conn.execute(f"create table {TABLE} (id bigint primary key, v int)")
    phases: list[dict[str, Any]] = []
    next_id = 0
    for k, (rate, seconds) in enumerate(plan.rates):
        for mode in (MODES if k % 2 == 0 else MODES[::-1]):
            log(f"latency: {mode} at {rate:g} tx/s for {seconds:g}s")
            phase = latency_phase(bench, mode, rate, seconds, next_id)
            next_id += phase["transactions"]
            d = phase["latency"]
            log(f"latency: {mode} at {rate:g} tx/s: p50 {d['p50'] * 1e3:.1f} ms, p99 {d['p99'] * 1e3:.1f} ms, "
                f"{phase['fsyncs_per_s']:.1f} fsyncs/s (achieved {phase['achieved_rate']:.0f} tx/s)")
            phases.append(phase)
            bench.drop_slot(f"gc_{mode}_{int(rate)}")
    return phases


# -- 2: flat-out throughput, both modes and pg_recvlogical ------------------------------------
def bench_throughput(bench: Bench, plan: Plan) -> dict[str, Any]:
    apply_schema(bench.conn)
    tables = ",".join(TABLES)
    confs = {m: config_file(bench.work, m) for m in MODES}
    archives: dict[tuple[str, int], tuple[Path, str]] = {}
    for i in range(plan.rounds):
        for m in MODES:
            slot, archive = f"tput_{m}_{i + 1}", bench.work / f"tput-{m}-{i + 1}"
            run_capture(bench, capture_cmd(bench, confs[m], archive, slot, tables, bench.wal_lsn()), f"{slot}-create")
            archives[(m, i)] = (archive, slot)
        bench.copy_slot(f"tput_timer_{i + 1}", f"tput_recv_{i + 1}")
    start = bench.wal_lsn()
    log(f"throughput: the Temba workload, >= {plan.changes} row changes, flat out")
    workload = generate_workload(bench, plan.changes, 2, first_seed=3000)
    end = bench.wal_lsn()
    runs: list[dict[str, Any]] = []
    tools = ["timer", "adaptive", "recv"]
    for i in range(plan.rounds):
        order = tools[i % 3:] + tools[:i % 3]  # each tool goes first once in three rounds
        for tool in order:
            load = os.getloadavg()[0]
            if tool == "recv":
                out = bench.work / f"recv-{i + 1}.json"
                r = bench.recvlogical(f"tput_recv_{i + 1}", end, out, f"tput-recv-{i + 1}")
                changes, fsyncs, size = count_recv_changes(out), None, out.stat().st_size
                out.unlink()
            else:
                archive, slot = archives[(tool, i)]
                r = run_capture(bench, capture_cmd(bench, confs[tool], archive, slot, tables, end), f"{slot}-run")
                s = capture_summary(r)
                changes, fsyncs, size = int(s.get("changes", 0)), int(s.get("fsyncs", 0)), tape_bytes(archive)
            runs.append({"tool": tool, "round": i + 1, "changes": changes, "wall": r.wall, "cpu": r.cpu,
                         "changes_per_s": changes / r.wall, "fsyncs": fsyncs, "bytes": size,
                         "loadavg_1m_before": load})
            log(f"throughput round {i + 1}: {tool}: {changes} changes in {r.wall:.2f}s ({changes / r.wall:,.0f}/s, "
                f"CPU {r.cpu:.2f}s" + (f", {fsyncs} fsyncs)" if fsyncs is not None else ")"))
        bench.drop_slot(f"tput_recv_{i + 1}")

    def best(tool: str) -> dict[str, Any]:
        return max((r for r in runs if r["tool"] == tool), key=lambda r: r["changes_per_s"])

    def median_ratio(a: str, b: str) -> float:
        ratios = sorted(x["changes_per_s"] / y["changes_per_s"] for x in runs for y in runs
                        if x["tool"] == a and y["tool"] == b and x["round"] == y["round"])
        return ratios[len(ratios) // 2]

    def median_cpu(tool: str) -> float:
        cpus = sorted(r["cpu"] / max(1, r["changes"]) * 1e6 for r in runs if r["tool"] == tool)
        return cpus[len(cpus) // 2]

    wal = bench.wal_diff(end, start)
    return {"workload": workload, "wal_bytes": wal, "runs": runs,
            "cpu_us_per_change_median": {t: median_cpu(t) for t in tools},
            "adaptive_vs_timer_cpu_per_change": median_cpu("adaptive") / median_cpu("timer"),
            "best": {t: best(t)["changes_per_s"] for t in tools},
            "adaptive_vs_timer_best": best("adaptive")["changes_per_s"] / best("timer")["changes_per_s"],
            "adaptive_vs_timer_median_of_rounds": median_ratio("adaptive", "timer"),
            "adaptive_vs_recv_best": best("adaptive")["changes_per_s"] / best("recv")["changes_per_s"],
            "timer_vs_recv_best": best("timer")["changes_per_s"] / best("recv")["changes_per_s"],
            "tape_wal": {m: best(m)["bytes"] / wal for m in MODES},
            "changes_agree": len({r["changes"] for r in runs} | {workload["row_changes"]}) == 1}


# -- report -----------------------------------------------------------------------------------
def print_report(res: dict[str, Any]) -> None:
    print()
    if res["plan"]["name"] == "quick":
        print("--quick: a smoke run; too short for the figures to mean much")
    phases = res.get("latency") or []
    if phases:
        print("commit -> confirmed_flush_lsn (ms)    timer                          adaptive")
        print("rate      p50     p99     max  fsyncs/s   |   p50     p99     max  fsyncs/s   target p99")
        for rate, _ in res["plan"]["rates"]:
            by = {p["mode"]: p for p in phases if p["rate"] == rate}
            cells = [_cells(by.get(m)) for m in MODES]
            a = by.get("adaptive")
            target = "-" if rate > 200 else ("met" if a and a["latency"]["p99"] <= TARGET_P99 else "MISSED")
            print(f"{rate:>5g}/s {cells[0]}  | {cells[1]}  {target}")
        for p in phases:
            pub = p.get("published_commit_to_durable") or {}
            print(f"  {p['mode']:8} {p['rate']:>5g}/s: {p['transactions']} tx at {p['achieved_rate']:.0f}/s, "
                  f"not durable {p['not_durable_within_window']}, capture CPU "
                  f"{p['capture_cpu_seconds_during_workload'] or 0:.2f}s, "
                  f"poll {(p['poll_interval_mean'] or 0) * 1e3:.1f} ms, "
                  f"server-clock p99 {p['latency_from_server_commit_timestamp']['p99'] * 1e3:.1f} ms, capture's own "
                  f"window p50/p99 {pub.get('p50_ms', '-')}/{pub.get('p99_ms', '-')} ms, load "
                  f"{p['loadavg_1m_before']:.2f}")
    t = res.get("throughput")
    if t:
        print(f"throughput (best round, changes/s): timer {t['best']['timer']:,.0f}, adaptive "
              f"{t['best']['adaptive']:,.0f}, pg_recvlogical {t['best']['recv']:,.0f}; adaptive/timer "
              f"{t['adaptive_vs_timer_best']:.3f} (median of rounds {t['adaptive_vs_timer_median_of_rounds']:.3f}; "
              f"target >= {TARGET_THROUGHPUT}), adaptive/recv {t['adaptive_vs_recv_best']:.2f}, timer/recv "
              f"{t['timer_vs_recv_best']:.2f}; tape/WAL timer {t['tape_wal']['timer']:.3f}, adaptive "
              f"{t['tape_wal']['adaptive']:.3f}; change counts agree: {t['changes_agree']}")
        c = t["cpu_us_per_change_median"]
        print(f"CPU per change (median of rounds): timer {c['timer']:.1f} us, adaptive {c['adaptive']:.1f} us, "
              f"pg_recvlogical {c['recv']:.1f} us; adaptive/timer {t['adaptive_vs_timer_cpu_per_change']:.3f}")
        for r in t["runs"]:
            print(f"  round {r['round']} {r['tool']:8} {r['changes']:>9,} changes {r['wall']:6.2f}s "
                  f"{r['changes_per_s']:>9,.0f}/s CPU {r['cpu']:6.2f}s "
                  f"fsyncs {r['fsyncs'] if r['fsyncs'] is not None else '-'} load {r['loadavg_1m_before']:.2f}")
    print()


def _cells(p: dict[str, Any] | None) -> str:
    d = p["latency"] if p else None
    if p is None or d is None:
        return f"{'-':>6}  {'-':>6}  {'-':>6}  {'-':>7} "
    return f"{d['p50'] * 1e3:6.1f}  {d['p99'] * 1e3:6.1f}  {d['max'] * 1e3:6.1f}  {p['fsyncs_per_s']:7.1f} "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases, small workload: a smoke run")
    parser.add_argument("--only", default="latency,throughput", help="latency, throughput or both (default)")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 3; --quick 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (archives, logs)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(plan.name, plan.rates, plan.changes, args.rounds)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only - {"latency", "throughput"}:
        parser.error(f"unknown --only part(s): {', '.join(sorted(only - {'latency', 'throughput'}))}")
    started = time.time()
    res: dict[str, Any] = {"mode": plan.name, "plan": plan.__dict__, "loadavg_at_start": os.getloadavg(),
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))}
    failed = False
    with work_dir("pgtape-gc-bench-", keep=args.keep) as work, EmbeddedPostgres() as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute(f"create database {DBNAME}")
            res["machine"] = machine_info(scalar(c.execute("show server_version")))
        sizes = Sizes(plan.name, changes=plan.changes, workers=2, rounds=plan.rounds, latency_rate=0,
                      latency_duration=0, big_rows=0, timeout=600)
        bench = Bench(pg, work, sizes, out=work, stamp="")
        try:
            for key, step in (("latency", bench_latency), ("throughput", bench_throughput)):
                if key in only:
                    try:
                        res[key] = step(bench, plan)
                    except Exception as e:  # one failed part does not hide the other
                        failed = True
                        res.setdefault("errors", {})[key] = f"{type(e).__name__}: {e}"
                        log(f"{key} FAILED: {type(e).__name__}: {e}")
        finally:
            bench.close()
    res["loadavg_at_end"] = os.getloadavg()
    res["seconds"] = round(time.time() - started, 1)
    path = save_results("commit-latency", res)
    print_report(res)
    print(f"results: {path} ({res['seconds']:.0f}s; load average {res['loadavg_at_start'][0]:.2f} at start, "
          f"{res['loadavg_at_end'][0]:.2f} at end)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
