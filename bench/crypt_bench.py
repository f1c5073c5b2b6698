"""The cost of encryption at rest: capture throughput and replay time with and without a key, side by side.

    python -m bench.crypt_bench                   # 3 interleaved runs, 30,000 Temba transactions
    python -m bench.crypt_bench --transactions 5000 --runs 2   # a smoke run

One throwaway testkit.cluster.EmbeddedPostgres (wal_level=logical; always stopped) and the Temba schema:
  1. `pgtape init` of 2 x --runs archives, each with its own slot, before any traffic: half of them with
     PGTAPE_KEY_FILE set (a keyring from `pgtape key generate`: encrypted generations), half without;
  2. the Temba workload, flat out, --transactions transactions; every slot now holds the same stream;
  3. capture: for each pair (plain, encrypted; the order alternates between runs) `pgtape capture
     --until-lsn <end>`, wall time spawn to exit and CPU (os.wait4): row changes/s of each;
  4. replay: --runs interleaved `pgtape replay --latest --schema ...` from the first plain and the first
     encrypted archive (schema dropped after each), wall and CPU;
  5. ratios encrypted / plain of the best run of each; tape bytes of both archives.
It prints a table and writes JSON to bench/out/ (crypt-<mode>-<stamp>.json). Method and results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.measure import ProcResult, clean_env, machine_info, run, save_results, scalar, work_dir
from examples.temba.workload import apply_schema, run_workload
from testkit.cluster import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
TABLES = "public.payments,public.orders,public.tickets"
TARGET = 1.10  # encrypted / plain: at most


def _pgtape(args: list[str], *, keyring: Path | None, logs: Path, name: str, timeout: float = 1800) -> ProcResult:
    env = clean_env()
    if keyring is not None:
        env["PGTAPE_KEY_FILE"] = str(keyring)
    return run([sys.executable, "-m", "pgtape", *args], env=env, cwd=ROOT, log_dir=logs, name=name,
               timeout=timeout).check(f"pgtape {args[0]} ({name})")


def _tape_bytes(archive: Path) -> int:
    return sum(p.stat().st_size for p in (archive / "generations").rglob("*.tape*") if not p.name.endswith(".tmp"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.crypt_bench", description=__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, default=30_000, help="Temba transactions (default 30,000)")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs of each; the best counts (default 3)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    mode = f"{args.transactions}tx"
    res: dict[str, Any] = {"mode": mode, "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with work_dir("pgtape-crypt-bench-", keep=args.keep) as work:
        logs = work / "logs"
        logs.mkdir()
        keyring = work / "keyring"
        _pgtape(["key", "generate", str(keyring)], keyring=None, logs=logs, name="keygen")
        with EmbeddedPostgres(base_dir=work / "pg", settings={"wal_level": "logical"}) as pg:
            with psycopg.connect(pg.dsn(), autocommit=True) as c:
                c.execute("create database temba")
                res["postgresql"] = scalar(c.execute("show server_version"))
            res["machine"] = machine_info(res["postgresql"])
            dsn = pg.dsn("temba")
            with psycopg.connect(dsn, autocommit=True) as c:
                apply_schema(c)

            def cli(kind: str, i: int) -> list[str]:
                return ["--dsn", dsn, "--archive", str(work / f"{kind}{i}"), "--tables", TABLES, "--slot", f"{kind}{i}"]

            keys = {"plain": None, "encrypted": keyring}
            for i in range(args.runs):
                for kind, key in keys.items():
                    _pgtape(["init", *cli(kind, i)], keyring=key, logs=logs, name=f"init-{kind}{i}")
            stats = run_workload(dsn, rate=None, duration=None, transactions=args.transactions, seed=1)
            changes = stats.inserts + stats.updates + stats.deletes
            with psycopg.connect(dsn, autocommit=True) as c:
                end = scalar(c.execute("select pg_current_wal_lsn()::text"))
            res["row_changes"] = changes
            print(f"workload: {stats.transactions} transactions, {changes} row changes; capturing", flush=True)

            capture: dict[str, list[dict[str, float]]] = {k: [] for k in keys}
            for i in range(args.runs):
                order = list(keys) if i % 2 == 0 else list(reversed(keys))
                for kind in order:
                    r = _pgtape(["capture", *cli(kind, i), "--until-lsn", end], keyring=keys[kind], logs=logs,
                                name=f"capture-{kind}{i}")
                    capture[kind].append({"wall": r.wall, "cpu": r.cpu, "changes_per_s": changes / r.wall})
            res["capture"] = capture
            res["tape_bytes"] = {k: _tape_bytes(work / f"{k}0") for k in keys}

            replay: dict[str, list[dict[str, float]]] = {k: [] for k in keys}
            for i in range(args.runs):
                order = list(keys) if i % 2 == 0 else list(reversed(keys))
                for kind in order:
                    schema = f"rec_{kind}"
                    r = _pgtape(["replay", *cli(kind, 0), "--latest", "--schema", schema, "--json"],
                                keyring=keys[kind], logs=logs, name=f"replay-{kind}{i}")
                    replay[kind].append({"wall": r.wall, "cpu": r.cpu})
                    with psycopg.connect(dsn, autocommit=True) as c:
                        c.execute(f"drop schema {schema} cascade")
            res["replay"] = replay

    best = {
        "capture_wall": {k: min(r["wall"] for r in v) for k, v in res["capture"].items()},
        "capture_cpu": {k: min(r["cpu"] for r in v) for k, v in res["capture"].items()},
        "replay_wall": {k: min(r["wall"] for r in v) for k, v in res["replay"].items()},
        "replay_cpu": {k: min(r["cpu"] for r in v) for k, v in res["replay"].items()},
    }
    res["best"] = best
    res["ratios"] = {m: v["encrypted"] / v["plain"] for m, v in best.items()}
    n = res["row_changes"]
    print(f"\n{n:,} row changes, best of {args.runs} interleaved runs (encrypted / plain; target <= {TARGET:.2f})")
    print(f"{'':26}{'plain':>12}{'encrypted':>12}{'ratio':>8}")
    for m, v in best.items():
        print(f"{m + ' (s)':26}{v['plain']:>12.2f}{v['encrypted']:>12.2f}{res['ratios'][m]:>8.3f}")
    thr = {k: n / best["capture_wall"][k] for k in ("plain", "encrypted")}
    print(f"{'capture (changes/s)':26}{thr['plain']:>12,.0f}{thr['encrypted']:>12,.0f}"
          f"{thr['encrypted'] / thr['plain']:>8.3f}")
    tb = res["tape_bytes"]
    print(f"{'tape bytes':26}{tb['plain']:>12,}{tb['encrypted']:>12,}{tb['encrypted'] / tb['plain']:>8.3f}")
    print(f"results: {save_results('crypt', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
