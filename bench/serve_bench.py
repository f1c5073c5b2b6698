"""Capture throughput inside `pgtape serve` (its API scraped every second) against `pgtape capture`
alone and `pg_recvlogical`, on the same stream: `python -m bench.serve_bench [--quick]`.

On a throwaway cluster: one slot per consumer and round, all created before the Temba workload
runs flat out, so every consumer has the same WAL to decode. Each consumer is timed from its spawn
until its slot's confirmed_flush_lsn reaches the workload's end (the server's view of what is
durable: the same finish line for all three, polled every 10 ms); pg_recvlogical stops at --endpos.
While `pgtape serve` catches up, a client fetches GET /metrics once a second with a token, as a
Prometheus scraper would. Rounds alternate the order. Results: BENCHMARKS.md, "pgtape serve".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from bench.measure import ROOT, Child, ProcResult, machine_info, scalar
from bench.run import DBNAME, QUICK, FULL, TABLES, Bench, Sizes, count_recv_changes, generate_workload, log
from examples.temba.workload import apply_schema
from pgtape.lsn import format_lsn, parse_lsn
from testkit.cluster import EmbeddedPostgres

TARGET_RATIO = 0.95  # serve / capture alone, changes per second: at least (at most 5% lower)
TOKEN = "bench-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _confirmed(conn: psycopg.Connection, slot: str) -> int:
    row = conn.execute("select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
                       (slot,)).fetchone()
    return parse_lsn(row[0]) if row and row[0] else 0


class Scraper(threading.Thread):
    """GET /metrics once a second (with the token) until stopped; counts answers and failures."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.ok = self.failed = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            request = urllib.request.Request(self.url, headers={"Authorization": f"Bearer {TOKEN}"})
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    r.read()
                self.ok += 1
            except OSError:
                self.failed += 1  # (the API may not be listening yet in the first second)


def _until_confirmed(bench: Bench, child: Child, slot: str, end: int, timeout: float) -> float:
    """Seconds from the child's spawn until its slot confirms `end`; the child must stay up."""
    with psycopg.connect(bench.dsn, autocommit=True, application_name="bench-poller") as conn:
        deadline = time.monotonic() + timeout
        while _confirmed(conn, slot) < end:
            if not child.alive():
                raise RuntimeError(f"{child.cmd[3]} exited early: {child.err_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{slot} did not reach {format_lsn(end)} in {timeout:.0f}s")
            time.sleep(0.01)
        return time.perf_counter() - child.start


def consume(bench: Bench, tool: str, archive: Path, slot: str, end: int, name: str) -> dict[str, Any]:
    common = ["--dsn", bench.dsn, "--archive", str(archive), "--tables", ",".join(TABLES), "--slot", slot]
    env = dict(bench.env)
    scraper: Scraper | None = None
    if tool == "serve":
        port = _free_port()
        env["PGTAPE_API_TOKEN"] = TOKEN
        cmd = [sys.executable, "-m", "pgtape", "serve", "--listen", f"127.0.0.1:{port}", *common]
        scraper = Scraper(port)
    else:
        cmd = [sys.executable, "-m", "pgtape", "capture", *common]
    child = Child(cmd, env=env, cwd=ROOT, log_dir=bench.logs, name=name)
    try:
        if scraper:
            scraper.start()
        wall = _until_confirmed(bench, child, slot, end, bench.sizes.timeout)
    finally:
        if scraper:
            scraper.stop_event.set()
        r: ProcResult = child.terminate()
    if r.returncode != 0:
        raise RuntimeError(f"{tool} exited {r.returncode} after SIGTERM: {r.stderr[-2000:]}")
    return {"tool": tool, "wall": wall, "cpu_total": r.cpu, "max_rss": r.max_rss,
            "scrapes_ok": scraper.ok if scraper else None, "scrapes_failed": scraper.failed if scraper else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds (default: 3, --quick: 1)")
    parser.add_argument("--changes", type=int, help="row changes the workload makes (default: 250,000)")
    args = parser.parse_args(argv)
    sizes: Sizes = QUICK if args.quick else FULL
    if args.changes:
        sizes = dataclasses.replace(sizes, changes=args.changes)
    rounds = args.rounds or sizes.rounds
    work = Path(tempfile.mkdtemp(prefix="pgtape-serve-bench-"))
    started = time.time()
    results: dict[str, Any] = {"mode": sizes.name, "rounds": rounds, "loadavg_at_start": os.getloadavg()}
    with EmbeddedPostgres() as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute(f"create database {DBNAME}")
            results["machine"] = machine_info(scalar(c.execute("show server_version")))
        bench = Bench(pg, work, sizes, out=work, stamp="serve")
        try:
            apply_schema(bench.conn)
            slots: dict[tuple[str, int], str] = {}
            archives: dict[tuple[str, int], Path] = {}
            for i in range(rounds):
                for tool in ("capture", "serve"):
                    slot = f"{tool}_{i + 1}"
                    archives[tool, i], _ = bench.new_archive(f"{tool}-{i + 1}", slot)
                    slots[tool, i] = slot
                slots["recv", i] = f"recv_{i + 1}"
                bench.copy_slot(slots["capture", 0], slots["recv", i])
            start = bench.wal_lsn()
            log(f"serve bench: generating the Temba workload (>= {sizes.changes} row changes)")
            results["workload"] = generate_workload(bench, sizes.changes, sizes.workers, first_seed=3000)
            end = bench.wal_lsn()
            results["wal_bytes"] = bench.wal_diff(end, start)
            changes = results["workload"]["row_changes"]
            runs: list[dict[str, Any]] = []
            order = ["capture", "serve", "recv"]
            for i in range(rounds):
                for tool in order if i % 2 == 0 else list(reversed(order)):
                    if tool == "recv":
                        out = work / f"recv-{i + 1}.json"
                        r = bench.recvlogical(slots["recv", i], end, out, f"recv-{i + 1}")
                        run: dict[str, Any] = {"tool": "recv", "wall": r.wall, "cpu_total": r.cpu,
                                               "max_rss": r.max_rss, "changes": count_recv_changes(out)}
                        out.unlink()
                    else:
                        run = consume(bench, tool, archives[tool, i], slots[tool, i], end, f"{tool}-{i + 1}")
                        run["changes"] = changes
                    run.update(round=i + 1, changes_per_s=run["changes"] / run["wall"])
                    runs.append(run)
                    log(f"round {i + 1}: {tool}: {run['changes']} changes in {run['wall']:.2f}s "
                        f"({run['changes_per_s']:,.0f}/s)"
                        + (f", {run['scrapes_ok']} scrapes ok, {run['scrapes_failed']} failed" if tool == "serve"
                           else ""))
        finally:
            bench.close()
            shutil.rmtree(work, ignore_errors=True)
    results["runs"] = runs

    def best(tool: str) -> dict[str, Any]:
        return max((r for r in runs if r["tool"] == tool), key=lambda r: r["changes_per_s"])

    ours, alone, recv = best("serve"), best("capture"), best("recv")
    results["ratio_serve_capture"] = ours["changes_per_s"] / alone["changes_per_s"]
    results["ratio_serve_recv"] = ours["changes_per_s"] / recv["changes_per_s"]
    # This machine's noise (other processes, the server's own work) moves single runs by 10-20%:
    # the paired ratio of each round (the two ran one after the other on the same stream) and its
    # median say more than the best runs. CPU per change is the least noisy figure.
    by_round = {(r["tool"], r["round"]): r for r in runs}
    paired = sorted(by_round["serve", i]["changes_per_s"] / by_round["capture", i]["changes_per_s"]
                    for i in range(1, rounds + 1))
    results["ratio_serve_capture_per_round"] = paired
    results["ratio_serve_capture_median"] = statistics.median(paired)
    cpu = {t: statistics.median(r["cpu_total"] / r["changes"] * 1e6 for r in runs if r["tool"] == t)
           for t in ("serve", "capture", "recv")}
    results["cpu_us_per_change_median"] = cpu
    results["seconds"] = round(time.time() - started, 1)
    results["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2, default=str))
    median = results["ratio_serve_capture_median"]
    met = median >= TARGET_RATIO
    print(f"\n| consumer | changes/s (best of {rounds}) | CPU µs per change (median) |\n|---|---:|---:|\n"
          f"| pgtape serve, /metrics every 1 s | {ours['changes_per_s']:,.0f} | {cpu['serve']:.1f} |\n"
          f"| pgtape capture alone | {alone['changes_per_s']:,.0f} | {cpu['capture']:.1f} |\n"
          f"| pg_recvlogical | {recv['changes_per_s']:,.0f} | {cpu['recv']:.1f} |\n\n"
          f"serve / capture alone, paired by round: {', '.join(f'{r:.3f}' for r in paired)}; median "
          f"**{median:.3f}** (target >= {TARGET_RATIO}: {'met' if met else 'MISSED'}); best runs "
          f"{results['ratio_serve_capture']:.3f}; serve / pg_recvlogical (best runs) {results['ratio_serve_recv']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
