"""Replay within a memory budget at scale (issue 16): N row changes over N/2 distinct keys after the base,
`pgtape replay --memory M` for each budget against PostgreSQL's own point-in-time recovery.

    python -m bench.replay_budget_bench --keys 5000000            # the issue's case: 10M changes, 5M keys
    python -m bench.replay_budget_bench --keys 1000000 --memory 512MiB --memory 128MiB

One throwaway EmbeddedPostgres (wal_level=logical, WAL archived by cp), as bench/replay_bench.py:
  1. `ledger (id bigint primary key, account integer, amount numeric(12,2), memo text)`, empty;
     `pgtape init` (the base), `pg_basebackup` right after, `pgtape capture` in the background;
  2. INSERT every key (transactions of --batch rows), then UPDATE every key (amount and memo),
     so each key changes twice; the target time T is read after that, then one more transaction
     so T lies inside the tape and the WAL; the tape made durable, capture stopped, WAL archived;
  3. per budget and run (interleaved with native): `pgtape replay --target-time T --memory M
     --schema bench_recovered --json`: wall time, CPU and peak RSS (os.wait4), its spill figures;
  4. native PITR to T (bench/replay_bench.run_native), timed from pg_ctl start to promoted;
  5. md5 of the table ordered by id on both sides.
JSON to bench/out/replay_budget-<mode>-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import replay_bench
from bench.measure import chown_tree, save_results, scalar, timed, work_dir
from bench.replay_bench import DBNAME, SCHEMA, Background, _as_pg, log, run_native, table_md5, wait_archived
from pgtape.config import parse_size
from pgtape.lsn import parse_lsn
from testkit.cluster import EmbeddedPostgres

TABLE = "public.ledger"


def wait_until_durable(pgtape: list[str], common: list[str], wal_lsn: int, capture: Background,
                       timeout: float) -> dict[str, Any]:
    """As replay_bench's, but `pgtape status` exits 1 while capture lags (minutes behind, here): read its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        capture.check_alive()
        r = subprocess.run([*pgtape, "status", *common, "--json"], capture_output=True, text=True, timeout=120)
        if r.returncode not in (0, 1):
            raise RuntimeError(f"pgtape status exited {r.returncode}: {r.stderr}")
        st: dict[str, Any] = json.loads(r.stdout)
        if parse_lsn(st["end_lsn"]) >= wal_lsn:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"capture not durable past {wal_lsn} after {timeout}s: {st}")
        time.sleep(15)  # each status run costs CPU that capture, catching up, needs


def run_ours(pgtape: list[str], common: list[str], dsn: str, target: str, memory: str, work: Path,
             timeout: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as c:  # not timed: a fresh, absent schema each run
        c.execute(f"drop schema if exists {SCHEMA} cascade")
        c.execute("checkpoint")
    r = timed([*pgtape, "replay", *common, "--target-time", target, "--schema", SCHEMA, "--memory", memory,
               "--work-dir", str(work), "--json"], timeout=timeout, what="pgtape replay")
    summary = json.loads(r.stdout)
    return {"memory": memory, "wall": r.wall, "cpu": r.cpu, "max_rss": r.max_rss, "changes": summary["changes"],
            "rows": summary["rows"], "spill": summary.get("memory")}


def run_bench(keys: int, batch: int, memories: list[str], runs: int, work: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    archive_dir = work / "wal_archive"
    archive_dir.mkdir()
    logs = work / "logs"
    logs.mkdir()
    spill_dir = work / "spill"
    if os.geteuid() == 0:
        chown_tree(archive_dir, "postgres")
    settings = {"wal_level": "logical", "archive_mode": "on", "archive_command": f"'cp %p {archive_dir}/%f'",
                "max_wal_size": "'4GB'"}
    res: dict[str, Any] = {"mode": f"{keys}keys", "keys": keys, "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "loadavg_at_start": os.getloadavg()}
    replay_bench.TABLES = (TABLE,)  # type: ignore[assignment]  # what run_native's md5 covers
    capture: Background | None = None
    with EmbeddedPostgres(base_dir=work / "primary", settings=settings) as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute(f"create database {DBNAME}")
        dsn = pg.dsn(DBNAME)
        tape = work / "tape"
        common = ["--dsn", dsn, "--archive", str(tape), "--tables", TABLE]
        pgtape = [sys.executable, "-m", "pgtape"]
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("create table ledger (id bigint primary key, account integer, amount numeric(12,2), "
                          "memo text)")
            timed([*pgtape, "init", *common, "--json"], timeout=600, what="pgtape init")
            capture = Background([*pgtape, "capture", *common], logs, "capture")
            basebackup = work / "basebackup"
            r = subprocess.run(_as_pg(pg, "pg_basebackup", "-d", pg.dsn(), "-D", str(basebackup), "-X", "none",
                                      "-c", "fast", "--no-sync"), capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"pg_basebackup failed: {r.stderr}")
            started = time.monotonic()
            with psycopg.connect(dsn, autocommit=True) as c:
                for lo in range(1, keys + 1, batch):
                    hi = min(lo + batch - 1, keys)
                    c.execute(f"insert into ledger select g, g % 1000, (g % 10000) / 100.0, 'payment ' || g "
                              f"from generate_series({lo}, {hi}) g")
                    capture.check_alive()
                for lo in range(1, keys + 1, batch):
                    hi = min(lo + batch - 1, keys)
                    c.execute(f"update ledger set amount = amount + 1, memo = memo || ' settled' "
                              f"where id between {lo} and {hi}")
                    capture.check_alive()
                time.sleep(0.01)
                target = scalar(c.execute("select clock_timestamp()::text"))
                time.sleep(0.01)
                c.execute("insert into ledger values (0, 0, 0, 'after the target')")
                end_lsn = parse_lsn(scalar(c.execute("select pg_current_wal_lsn()::text")))
            res["workload_seconds"] = round(time.monotonic() - started, 1)
            res["target"] = target
            log(f"workload: {2 * keys:,} row changes over {keys:,} keys in {res['workload_seconds']}s; target {target}")
            status = wait_until_durable(pgtape, common, end_lsn, capture, timeout=3600)
            capture.stop()
            capture = None
            res["tape"] = {k: status[k] for k in ("segments", "bytes", "transactions", "changes")}
            res["wal_segment"] = wait_archived(pg, dsn, archive_dir)
            log(f"tape {status['changes']:,} changes, {status['bytes'] / 2**20:.0f} MiB")
            ours: list[dict[str, Any]] = []
            native: list[dict[str, Any]] = []
            for i in range(runs):
                for m in memories:
                    o = run_ours(pgtape, common, dsn, target, m, spill_dir, timeout=3600)
                    log(f"pgtape replay --memory {m}: {o['wall']:.2f}s, peak RSS {o['max_rss'] / 2**20:.0f} MiB, "
                        f"{(o['spill'] or {}).get('runs')} runs")
                    o["md5"] = table_md5(dsn, SCHEMA)
                    ours.append(o)
                native.append(run_native(pg, work, basebackup, archive_dir, target, i, timeout=3600))
            res["equal"] = all(o["md5"] == native[-1]["tables"] for o in ours)
            res["ours_runs"], res["native_runs"] = ours, native
        finally:
            if capture is not None:
                capture.stop()
    best_native = min(n["wall"] for n in native)
    res["best"] = {m: min((o for o in ours if o["memory"] == m), key=lambda o: o["wall"]) for m in memories}
    res.update(native_best=best_native, seconds=round(time.monotonic() - t0, 1), loadavg_at_end=os.getloadavg(),
               machine=f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    return res


def table(res: dict[str, Any]) -> str:
    mib = 1 << 20
    native_runs = ", ".join(f"{n['wall']:.2f}" for n in res["native_runs"])
    lines = [f"{2 * res['keys']:,} row changes over {res['keys']:,} keys after an empty base; tape "
             f"{res['tape']['bytes'] / mib:.0f} MiB; native PITR best {res['native_best']:.2f} s "
             f"(runs {native_runs}); results "
             f"{'equal' if res['equal'] else 'DIFFERENT'} (md5); {res['machine']}; load average "
             f"{res['loadavg_at_start'][0]:.1f} at start, {res['loadavg_at_end'][0]:.1f} at end.", "",
             "| --memory | wall (best) | ours / native | peak RSS | RSS - budget | CPU | runs spilled | "
             "spilled | most on disk |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, o in res["best"].items():
        s = o["spill"] or {}
        lines.append(f"| {m} | {o['wall']:.2f} s | **{o['wall'] / res['native_best']:.2f}** | "
                     f"{o['max_rss'] / mib:.0f} MiB | {(o['max_rss'] - parse_size(m)) / mib:+.0f} MiB | "
                     f"{o['cpu']:.2f} s | {s.get('runs', 0)} | {s.get('spilled_bytes', 0) / mib:.0f} MiB | "
                     f"{s.get('peak_disk_bytes', 0) / mib:.0f} MiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay_budget_bench", description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=5_000_000, help="distinct keys (row changes: twice as many)")
    p.add_argument("--batch", type=int, default=250_000, help="rows per workload transaction")
    p.add_argument("--memory", action="append", help="a budget to replay with (repeatable; default 512MiB, 128MiB)")
    p.add_argument("--runs", type=int, default=1, help="interleaved runs, the best counts (default 1)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    with work_dir("pgtape-budgetbench-", args.keep) as work:
        res = run_bench(args.keys, args.batch, args.memory or ["512MiB", "128MiB"], max(1, args.runs), work)
    save_results("replay_budget", res)
    print(table(res))
    return 0 if res["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
