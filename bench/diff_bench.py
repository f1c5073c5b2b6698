"""`pgtape diff --schema copy --against live` on a large table: equal, and with 10 differences.

    python -m bench.diff_bench              # 1,000,000 rows (about 2-3 minutes)
    python -m bench.diff_bench --quick      # 100,000 rows (well under a minute)
    python -m bench.diff_bench --rows N     # any size

One throwaway testkit.cluster.EmbeddedPostgres (always stopped, even on failure):
  1. public.t (id bigint primary key, amount numeric(12,2), status text, meta jsonb,
     created timestamptz) with N rows, and an equal copy copy.t (CREATE TABLE AS + primary key);
     VACUUM ANALYZE both (hint bits and statistics set before anything is timed);
  2. `pgtape init --tables public.t` (the archive must exist; not timed);
  3. for scale: `SELECT count(*) FROM public.t` on one connection (best of --runs);
  4. timed, spawn to exit (os.wait4: wall, and the pgtape process's own CPU and peak RSS):
     `python -m pgtape diff --dsn ... --archive ... --tables public.t --schema copy --against live --json`
     on the equal copy (must exit 0), then after 10 differences are made in copy.t (2 rows deleted,
     2 inserted, 6 changed: amount +0.01 x2, status x2, meta x1, created +1 µs x1) (must exit 1 and
     report exactly 2 missing, 2 extra, 6 different), --runs times each, the best counts;
  5. the same comparisons in-process (replay.compare.compare on a connection that times every
     statement), then EXPLAIN (ANALYZE, BUFFERS) of each distinct statement: where the time goes.
It prints a table and writes JSON to bench/out/ (diff-<mode>-<stamp>.json, diff-latest-<mode>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import psycopg

from bench.measure import ProcResult, clean_env, machine_info, run, save_results, scalar, work_dir
from testkit.cluster import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "diffbench"
TABLE = "public.t"
TARGET_EQUAL_SECONDS = 10.0
FULL_ROWS = 1_000_000
QUICK_ROWS = 100_000

SCHEMA = """
create table t (id bigint primary key, amount numeric(12,2), status text, meta jsonb, created timestamptz);
"""
LOAD = """
insert into t
select g, (g % 100000) / 100.0 + 1,
       (array['pending', 'paid', 'refunded', 'failed'])[g % 4 + 1],
       jsonb_build_object('order', g, 'channel', (array['web', 'app', 'box'])[g % 3 + 1],
                          'tags', jsonb_build_array('a' || (g % 7), 'b'), 'fee', (g % 50) / 10.0),
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1.000123 second'
from generate_series(1, {rows}) g
"""
# 10 differences: ids chosen across the key range.
DIFFERENCES = [
    "delete from copy.t where id in ({a}, {b})",  # 2 missing from copy
    "insert into copy.t values ({x}, 1.00, 'pending', '{{}}', now()), ({y}, 2.00, NULL, NULL, NULL)",  # 2 extra
    "update copy.t set amount = amount + 0.01 where id in ({c}, {d})",  # 2 different
    "update copy.t set status = 'chargeback' where id in ({e}, {f})",  # 2 different
    "update copy.t set meta = meta || '{{\"fee\": 99}}' where id = {g}",  # 1 different
    "update copy.t set created = created + interval '1 microsecond' where id = {h}",  # 1 different
]
EXPECTED = {"missing": 2, "extra": 2, "different": 6}


def log(msg: str) -> None:
    print(f"diff_bench: {msg}", file=sys.stderr, flush=True)


# -- in-process profile -----------------------------------------------------------------------
@dataclass
class Statement:
    sql: str
    params: Any
    seconds: float
    rows: int


@dataclass
class TimingConnection:
    """Wraps a psycopg connection: every execute() is timed (compare() only calls execute)."""

    conn: psycopg.Connection
    log: list[Statement] = field(default_factory=list)

    def execute(self, sql: str, params: Any = None) -> _Rows:
        start = time.perf_counter()
        cur = self.conn.execute(sql, params)
        rows = cur.fetchall()  # compare() iterates or fetches everything anyway
        seconds = time.perf_counter() - start
        self.log.append(Statement(sql, params, seconds, len(rows)))
        return _Rows(rows)


class _Rows:
    """The part of a cursor compare() uses, over rows fetched already."""

    def __init__(self, rows: list[tuple]) -> None:
        self._rows = rows

    def fetchone(self) -> tuple | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple]:
        return self._rows

    def __iter__(self) -> Iterator[tuple]:
        return iter(self._rows)


def _kind(sql: str) -> str:
    if "FULL JOIN" in sql:
        return "join differing buckets"
    if "GROUP BY" in sql:
        return "bucket sums"
    if "LIMIT 1" in sql:
        return "sample row lookup"
    if sql.startswith("SELECT count(*)"):
        return "count + hash sum"
    return "catalog"


def profile_compare(dsn: str, explain: bool) -> dict:
    """compare() in-process with every statement timed; EXPLAIN ANALYZE of one of each kind."""
    from pgtape.pg import column_types, connect
    from pgtape.replay.compare import Side, compare

    with connect(dsn, autocommit=True, application_name="diff_bench profile") as conn:
        live, copy = "public.t", "copy.t"
        sides = (Side("live", live, column_types(conn, live)), Side("schema copy", copy, column_types(conn, copy)))
        tc = TimingConnection(conn)
        start = time.perf_counter()
        # compare() takes a psycopg.Connection but only calls execute() and reads rows, which tc times.
        result = compare(tc, TABLE, ["id"], *sides)  # type: ignore[arg-type]  # a duck-typed timing stand-in
        total = time.perf_counter() - start
        statements: list[dict[str, Any]] = [
            {"kind": _kind(s.sql), "seconds": round(s.seconds, 3), "rows": s.rows, "sql": s.sql,
             "params": repr(s.params)[:200]} for s in tc.log]
        by_kind: dict[str, dict[str, float]] = {}
        for st in statements:
            k = by_kind.setdefault(st["kind"], {"count": 0, "seconds": 0.0})
            k["count"] += 1
            k["seconds"] = round(k["seconds"] + st["seconds"], 3)
        plans = {}
        if explain:
            seen = set()
            for s in tc.log:
                kind = _kind(s.sql)
                if kind in seen or kind == "catalog":
                    continue
                seen.add(kind)
                rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, VERBOSE) {s.sql}", s.params).fetchall()
                plans[kind] = [r[0] for r in rows]
    return {"total_seconds": round(total, 3), "statements": statements, "by_kind": by_kind, "plans": plans,
            "result": {"missing": result.missing, "extra": result.extra, "different": result.different,
                       "equal": result.equal}}


# -- the bench --------------------------------------------------------------------------------
def _diff_cmd(dsn: str, archive: Path) -> list[str]:
    return [sys.executable, "-m", "pgtape", "diff", "--dsn", dsn, "--archive", str(archive), "--tables", TABLE,
            "--schema", "copy", "--against", "live", "--json"]


def _timed_diff(dsn: str, archive: Path, work: Path, name: str, expect_rc: int) -> ProcResult:
    r = run(_diff_cmd(dsn, archive), env=clean_env(), cwd=ROOT, log_dir=work, name=name, timeout=900)
    if r.returncode != expect_rc:
        raise RuntimeError(f"pgtape diff ({name}) exited {r.returncode}, expected {expect_rc}: "
                           f"{r.stderr.strip()[-2000:]}")
    return r


def _summary(r: ProcResult) -> dict:
    out = json.loads(r.stdout)
    [t] = out["tables"]
    return {k: t[k] for k in ("rows_expected", "rows_actual", "equal", "missing", "extra", "different")} | {
        "samples_missing": [s["id"] for s in t["samples_missing"]],
        "samples_extra": [s["id"] for s in t["samples_extra"]],
        "samples_different": [{"id": s["key"]["id"], "columns": sorted(s["columns"])} for s in t["samples_different"]]}


def run_bench(rows: int, runs: int, explain: bool, work: Path) -> dict:
    res: dict[str, Any] = {"mode": "quick" if rows <= QUICK_ROWS else "full", "rows": rows, "runs": runs,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with EmbeddedPostgres(base_dir=work / "pg") as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute(f"create database {DBNAME}")
            version = scalar(c.execute("show server_version"))
            res["settings"] = dict(c.execute(
                "select name, setting from pg_settings where name in ('shared_buffers', 'work_mem', "
                "'max_parallel_workers_per_gather', 'max_parallel_workers', 'jit', 'fsync')").fetchall())
        dsn = pg.dsn(DBNAME)
        res["machine"] = machine_info(version)
        res["load_before"] = os.getloadavg()
        log(f"loading {rows:,} rows and the copy")
        t0 = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(SCHEMA)
            c.execute(LOAD.format(rows=rows))
            c.execute("create schema copy")
            c.execute("create table copy.t as select * from public.t")
            c.execute("alter table copy.t add primary key (id)")
            c.execute("vacuum analyze public.t")
            c.execute("vacuum analyze copy.t")
            res["table_bytes"] = scalar(c.execute("select pg_table_size('public.t')"))
            res["copy_bytes"] = scalar(c.execute("select pg_table_size('copy.t')"))
        res["load_seconds"] = round(time.perf_counter() - t0, 1)

        archive = work / "archive"
        log("pgtape init --tables public.t")
        init = run([sys.executable, "-m", "pgtape", "init", "--dsn", dsn, "--archive", str(archive), "--tables",
                    TABLE], env=clean_env(), cwd=ROOT, log_dir=work, name="init", timeout=900).check("pgtape init")
        res["init_seconds"] = round(init.wall, 2)

        with psycopg.connect(dsn, autocommit=True) as c:
            counts = []
            for _ in range(max(3, runs)):
                t0 = time.perf_counter()
                n = scalar(c.execute("select count(*) from public.t"))
                counts.append(time.perf_counter() - t0)
            assert n == rows
        res["count_star"] = {"best": round(min(counts), 3), "all": [round(x, 3) for x in counts]}
        startup = run([sys.executable, "-m", "pgtape", "--version"], env=clean_env(), cwd=ROOT, log_dir=work,
                      name="version", timeout=60).check("pgtape --version")
        res["python_startup_seconds"] = round(startup.wall, 3)

        for case, expect_rc, prepare in (("equal", 0, None), ("10 differences", 1, DIFFERENCES)):
            if prepare:
                ids = {k: v for k, v in zip("abcdefgh", (1, rows // 3, rows // 7, rows // 2, 17, rows - 5, rows // 5,
                                                         rows // 9))}
                with psycopg.connect(dsn, autocommit=True) as c:
                    for stmt in prepare:
                        c.execute(stmt.format(x=rows + 1, y=rows + 2, **ids))
                    c.execute("vacuum analyze copy.t")
            log(f"timing pgtape diff, {case}")
            results = []
            for i in range(runs):
                res.setdefault("load_during", []).append(os.getloadavg()[0])
                results.append(_timed_diff(dsn, archive, work, f"diff-{case.replace(' ', '-')}-{i}", expect_rc))
            best = min(results, key=lambda r: r.wall)
            summary = _summary(best)
            if prepare and {k: summary[k] for k in EXPECTED} != EXPECTED:
                raise RuntimeError(f"pgtape diff reported {summary}, expected {EXPECTED}")
            if not prepare and summary["equal"] != rows:
                raise RuntimeError(f"pgtape diff reported {summary} on the equal copy")
            log(f"profiling compare() in-process, {case}")
            prof = profile_compare(dsn, explain)
            res.setdefault("cases", {})[case] = {
                "best_wall": round(best.wall, 3), "walls": [round(r.wall, 3) for r in results],
                "median_wall": round(statistics.median(r.wall for r in results), 3),
                "pgtape_cpu": round(best.cpu, 3), "pgtape_max_rss_mb": round(best.max_rss / 1e6, 1),
                "command": " ".join(_diff_cmd(dsn, archive)), "summary": summary, "profile": prof}
    res["target_equal_seconds"] = TARGET_EQUAL_SECONDS
    res["meets_target"] = res["cases"]["equal"]["best_wall"] <= TARGET_EQUAL_SECONDS
    res["platform"] = platform.platform()
    return res


def table(res: dict) -> str:
    lines = [f"pgtape diff --schema copy --against live, {res['rows']:,} rows "
             f"({res['table_bytes'] / 1e6:.0f} MB table), {res['runs']} run(s) each, best shown",
             f"  select count(*) from public.t           {res['count_star']['best']:8.3f} s",
             f"  python -m pgtape --version (start-up)   {res['python_startup_seconds']:8.3f} s"]
    for case, c in res["cases"].items():
        s = c["summary"]
        lines.append(f"  diff, {case:<32} {c['best_wall']:8.3f} s  (median {c['median_wall']:.3f}; pgtape CPU "
                     f"{c['pgtape_cpu']:.2f} s, RSS {c['pgtape_max_rss_mb']:.0f} MB; {s['missing']} missing, "
                     f"{s['extra']} extra, {s['different']} different)")
        for kind, k in c["profile"]["by_kind"].items():
            lines.append(f"      {kind:<28} {k['count']:3d} x  {k['seconds']:8.3f} s")
    verdict = "meets" if res["meets_target"] else "MISSES"
    lines.append(f"  equal tables: {verdict} the {res['target_equal_seconds']:.0f} s target")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.diff_bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows instead of {FULL_ROWS:,}")
    p.add_argument("--rows", type=int, help="rows in the table")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each diff, the best counts (default 3)")
    p.add_argument("--no-explain", action="store_true", help="skip EXPLAIN ANALYZE of the statements")
    p.add_argument("--keep", action="store_true", help="keep the work directory (for inspection)")
    args = p.parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    with work_dir("pgtape-diffbench-", args.keep) as work:
        res = run_bench(rows, max(1, args.runs), not args.no_explain, work)
    save_results("diff", res)
    print(table(res))
    return 0 if res["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
