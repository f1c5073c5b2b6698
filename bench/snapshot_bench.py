"""`pgtape snapshot` against `pg_dump --data-only --format=custom` on the same Temba data.

    python -m bench.snapshot_bench            # >= 1,000,000 rows (222,223 orders)
    python -m bench.snapshot_bench --quick    # ~135,000 rows, for a smoke run
    python -m bench.snapshot_bench --profile  # also cProfile one snapshot and print where time goes

On a throwaway testkit.cluster.EmbeddedPostgres (always stopped): the Temba schema, `pgtape init`
while the tables are empty (so init copies nothing), bulk_load, VACUUM ANALYZE (so neither tool
pays for setting hint bits), then each tool runs `--runs` times, interleaved, best wall time
kept. Times are wall clock from spawn to exit of the client process, CPU and peak RSS are the
client's own (os.wait4); the server's COPY work is the same for both and not counted as CPU.
Sizes: the snapshot's files (zstd level 3) vs the dump file (pg_dump's default zlib). pg_dump
with --compress=0 runs too, as a reference only: it shows how much of pg_dump's time is zlib.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from bench.measure import load_profile, scalar, timed
from examples.temba.workload import apply_schema, bulk_load
from testkit.cluster import EmbeddedPostgres

TABLES = ("public.payments", "public.orders", "public.tickets")
FULL_ORDERS = 222_223  # ~4.5 rows per order: >= 1,000,000 rows
QUICK_ORDERS = 30_000
TIMEOUT = 1800  # per measured process, seconds
MIB = 1 << 20


@dataclass
class Run:
    tool: str
    wall: float
    cpu: float
    max_rss_mib: float
    bytes: int


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_bench(orders: int, runs: int, profile: bool, work: Path, pg_dump: Path) -> dict:
    with EmbeddedPostgres() as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute("create database temba")
        dsn = pg.dsn("temba")
        archive = work / "archive"
        common = ["--dsn", dsn, "--archive", str(archive), "--tables", ",".join(TABLES)]
        pgtape = [sys.executable, "-m", "pgtape"]
        with psycopg.connect(dsn, autocommit=True) as c:
            apply_schema(c)
        timed([*pgtape, "init", *common], what="pgtape init", timeout=TIMEOUT)  # on empty tables: an empty base
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as c:
            counts = bulk_load(c, orders, seed=1)
            c.execute("vacuum analyze")
            sizes = {t: scalar(c.execute("select pg_total_relation_size(%s)", (t,)))
                     for t in TABLES}
        load_s = time.perf_counter() - started
        total = sum(counts.values())
        print(f"loaded {total} rows {counts} in {load_s:.1f}s; tables {sum(sizes.values()) >> 20} MiB on disk",
              file=sys.stderr)

        results: list[Run] = []
        for i in range(runs):
            # ours
            r = timed([*pgtape, "snapshot", *common, "--json"], what="pgtape snapshot", timeout=TIMEOUT)
            snap = json.loads(r.stdout)
            rows = {t.split(".")[1]: n for t, n in snap["rows"].items()}
            if rows != counts:
                raise RuntimeError(f"snapshot rows {rows} differ from loaded {counts}")
            results.append(Run("pgtape snapshot", r.wall, r.cpu, r.max_rss / MIB, snap["bytes"]))
            print(f"run {i + 1}: pgtape snapshot {r.wall:.2f}s", file=sys.stderr)
            # pg_dump as asked (default zlib compression), and uncompressed (-Z0) for reference
            for tool, extra in (("pg_dump -Fc", []), ("pg_dump -Fc -Z0", ["--compress=0"])):
                dump = work / f"dump-{i}.pgdump"
                r = timed([str(pg_dump), "--data-only", "--format=custom", *extra,
                           *[a for t in TABLES for a in ("-t", t)], "-f", str(dump), "-d", dsn], what=tool,
                          timeout=TIMEOUT)
                results.append(Run(tool, r.wall, r.cpu, r.max_rss / MIB, dump.stat().st_size))
                dump.unlink()
                print(f"run {i + 1}: {tool} {r.wall:.2f}s", file=sys.stderr)

        profile_top: list[str] = []
        if profile:
            prof = work / "snapshot.prof"
            timed([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "pgtape", "snapshot", *common],
                  what="pgtape snapshot (profiled)", timeout=TIMEOUT)
            total_tt, raw = load_profile(prof)
            rows_ = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:12]
            for (file, line, fn), (_, ncalls, tt, ct, _) in rows_:
                where = f"{Path(file).name}:{line}({fn})" if line else fn
                profile_top.append(f"{tt:7.2f}s self {100 * tt / total_tt:5.1f}%  {ct:7.2f}s cum  {ncalls:>9} calls  "
                                   f"{where}")
        version = subprocess.run([str(pg_dump), "--version"], capture_output=True, text=True).stdout.strip()
        server = pg.bindir

    best = {tool: min((r for r in results if r.tool == tool), key=lambda r: r.wall)
            for tool in ("pgtape snapshot", "pg_dump -Fc", "pg_dump -Fc -Z0")}
    ours, theirs = best["pgtape snapshot"], best["pg_dump -Fc"]
    return {
        "orders": orders, "rows": counts, "total_rows": total, "table_bytes": sizes, "runs": runs,
        "load_seconds": round(load_s, 2), "pg_dump": version, "server_bindir": str(server),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "all": [asdict(r) for r in results], "best": {k: asdict(v) for k, v in best.items()},
        "time_ratio": ours.wall / theirs.wall, "size_ratio": ours.bytes / theirs.bytes,
        "cpu_ratio": ours.cpu / theirs.cpu if theirs.cpu else None, "profile": profile_top,
    }


def markdown(res: dict) -> str:
    o, d, z = res["best"]["pgtape snapshot"], res["best"]["pg_dump -Fc"], res["best"]["pg_dump -Fc -Z0"]
    mib = 1 << 20
    lines = [
        f"{res['total_rows']:,} rows ({', '.join(f'{t} {n:,}' for t, n in res['rows'].items())}), "
        f"{sum(res['table_bytes'].values()) / mib:.0f} MiB in PostgreSQL; best of {res['runs']} interleaved runs; "
        f"{res['machine']}; {res['pg_dump']}.",
        "",
        "| | pgtape snapshot | pg_dump --data-only -Fc | ours / pg_dump | (reference: pg_dump -Fc -Z0) |",
        "|---|---:|---:|---:|---:|",
        f"| wall time | {o['wall']:.2f} s | {d['wall']:.2f} s | **{res['time_ratio']:.2f}** | {z['wall']:.2f} s |",
        f"| client CPU (user+sys) | {o['cpu']:.2f} s | {d['cpu']:.2f} s | "
        f"{(res['cpu_ratio'] or 0):.2f} | {z['cpu']:.2f} s |",
        f"| client peak RSS | {o['max_rss_mib']:.0f} MiB | {d['max_rss_mib']:.0f} MiB | "
        f"{o['max_rss_mib'] / d['max_rss_mib']:.2f} | {z['max_rss_mib']:.0f} MiB |",
        f"| output size | {o['bytes'] / mib:.1f} MiB (zstd 3) | {d['bytes'] / mib:.1f} MiB (zlib) | "
        f"**{res['size_ratio']:.2f}** | {z['bytes'] / mib:.1f} MiB |",
        "",
        "All runs (wall s): " + ", ".join(f"{r['tool']} {r['wall']:.2f}" for r in res["all"]),
    ]
    if res["profile"]:
        lines += ["", "cProfile of one `pgtape snapshot` (top by self time):", "", "```", *res["profile"], "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.snapshot_bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ORDERS} orders instead of {FULL_ORDERS}")
    p.add_argument("--orders", type=int, help="orders to bulk-load (about 4.5 rows each)")
    p.add_argument("--runs", type=int, default=2, help="runs of each tool; the best counts (default 2)")
    p.add_argument("--profile", action="store_true", help="also cProfile one pgtape snapshot")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    orders = args.orders or (QUICK_ORDERS if args.quick else FULL_ORDERS)
    pg_dump = Path(os.environ.get("PGTAPE_PG_BINDIR", "/usr/lib/postgresql/15/bin")) / "pg_dump"
    if not pg_dump.exists():
        print(f"snapshot_bench: {pg_dump} not found (install postgresql-client-15 or set PGTAPE_PG_BINDIR)",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pgtape-snapbench-"))
    try:
        res = run_bench(orders, args.runs, args.profile, work, pg_dump)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
