"""The offsite copy (issue 15), against a SeaweedFS `weed mini` and a PostgreSQL cluster this script starts:

  1. upload: pgtape's uploader (Uploader.run_pass: checksums, state file) vs boto3's own upload_file
     of the same files, each into a fresh prefix, interleaved, best of --runs;
  2. offsite lag under the Temba workload at --rate transactions/s with capture running
     ([offsite] interval 10s): every 0.5 s, the server's clock minus the time the offsite tape is
     complete up to (OFFSITE.json's tape_time): what a transaction committed then waits to be offsite;
  3. capture throughput with the offsite copy on vs off: a backlog of flat-out Temba traffic, then
     `pgtape capture --until-lsn` drains it; wall time of the drain, on and off interleaved. With offsite
     on, `pgtape push` right after `init` puts the base offsite first: the drain measures the steady state
     (the tape uploaded as it grows), not the one-off upload of a new archive.

    python -m bench.offsite_bench                    # the numbers in BENCHMARKS.md
    python -m bench.offsite_bench --quick            # a smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import psycopg

from examples.temba.workload import apply_schema, bulk_load, run_workload
from pgtape.offsite.upload import STATE_FILE, OffsiteState, Uploader
from pgtape.storage.s3 import S3Storage
from pgtape.tape.archive import Archive
from testkit.cluster import EmbeddedPostgres
from testkit.seaweed import SeaweedS3

ROOT = Path(__file__).resolve().parent.parent
TABLES = "public.payments,public.orders,public.tickets"


def log(msg: str) -> None:
    print(f"offsite_bench: {msg}", file=sys.stderr, flush=True)


def env_with(server: SeaweedS3) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGTAPE_", "AWS_"))}
    env.update(server.env())
    return env


# -- 1. upload throughput ----------------------------------------------------------------------
def make_files(root: Path, count: int, size: int) -> list[Path]:
    tape = root / "generations" / "0001" / "tape"
    tape.mkdir(parents=True)
    files = []
    for i in range(count):
        p = tape / f"{i * 16:016X}-{(i + 1) * 16:016X}.tape"
        p.write_bytes(os.urandom(size))
        files.append(p)
    return files


def upload_bench(server: SeaweedS3, work: Path, count: int, size: int, runs: int) -> dict[str, list[float]]:
    src = work / "files"
    files = make_files(src, count, size)
    client = server.client()
    server.create_bucket("bench-upload")
    times: dict[str, list[float]] = {"pgtape": [], "boto3": []}
    for run in range(runs):
        for who in ("pgtape", "boto3"):
            prefix = f"{who}-{run}-{secrets.token_hex(3)}"
            (src / STATE_FILE).unlink(missing_ok=True)
            uploader = Uploader(Archive(src), S3Storage(f"s3://bench-upload/{prefix}"), 10)  # (as client: made before)
            t0 = time.perf_counter()
            if who == "pgtape":
                uploader.run_pass(force_open=True)
            else:
                for p in files:
                    client.upload_file(str(p), "bench-upload", f"{prefix}/{p.relative_to(src)}")
            times[who].append(time.perf_counter() - t0)
            log(f"upload {who} run {run + 1}: {times[who][-1]:.2f}s")
    return times


# -- 2 and 3: with PostgreSQL ------------------------------------------------------------------
def pgtape(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pgtape", *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def lag_bench(pg: EmbeddedPostgres, server: SeaweedS3, work: Path, rate: float, seconds: float) -> list[float]:
    dsn = pg.dsn("temba_lag")
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute("create database temba_lag")
    with psycopg.connect(dsn, autocommit=True) as c:
        apply_schema(c)
        bulk_load(c, 2000, seed=1)
    server.create_bucket("bench-lag")
    conf = work / "lag.toml"
    conf.write_text('[offsite]\nurl = "s3://bench-lag/a"\ninterval = "10s"\n')
    archive = work / "lag-archive"
    env = env_with(server)
    cli = ["--config", str(conf), "--dsn", dsn, "--archive", str(archive), "--tables", TABLES, "--slot", "lag"]
    subprocess.run([sys.executable, "-m", "pgtape", "init", *cli], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    cap = pgtape("capture", *cli, env=env)
    samples: list[float] = []
    stop = threading.Event()
    traffic = threading.Thread(target=lambda: run_workload(dsn, rate=rate, duration=seconds, transactions=None,
                                                           seed=7), daemon=True)
    try:
        traffic.start()
        time.sleep(12)  # the first open-segment upload
        with psycopg.connect(dsn, autocommit=True) as c:
            while traffic.is_alive() and not stop.is_set():
                row = c.execute("select extract(epoch from clock_timestamp())").fetchone()
                assert row is not None
                now_us = int(float(row[0]) * 1e6)
                try:
                    state = msgspec.json.decode((archive / STATE_FILE).read_bytes())["doc"]
                    st = msgspec.convert(state, OffsiteState)
                except (FileNotFoundError, ValueError, msgspec.DecodeError):
                    st = None
                if st is not None and st.tape_time is not None:
                    samples.append(max(0.0, (now_us - st.tape_time) / 1e6))
                time.sleep(0.5)
        traffic.join()
    finally:
        cap.terminate()
        cap.wait(60)
    return samples


def drain_bench(pg: EmbeddedPostgres, server: SeaweedS3, work: Path, backlog: int, runs: int
                ) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {f"{m}{x}": [] for m in ("off", "on") for x in ("", "-start", "-cpu", "-start-cpu")}
    env = env_with(server)
    server.create_bucket("bench-drain")
    for run in range(runs):
        for mode in ("off", "on"):
            db = f"temba_drain_{mode}_{run}"
            dsn = pg.dsn(db)
            with psycopg.connect(pg.dsn(), autocommit=True) as c:
                c.execute(f"create database {db}")
            with psycopg.connect(dsn, autocommit=True) as c:
                apply_schema(c)
            conf = work / f"{db}.toml"
            conf.write_text('[capture]\nsegment_size = "4MiB"\n'
                            + (f'[offsite]\nurl = "s3://bench-drain/{db}"\ninterval = "10s"\n' if mode == "on" else ""))
            cli = ["--config", str(conf), "--dsn", dsn, "--archive", str(work / db), "--tables", TABLES,
                   "--slot", db]
            subprocess.run([sys.executable, "-m", "pgtape", "init", *cli], env=env, cwd=ROOT, check=True,
                           capture_output=True)
            if mode == "on":  # the steady state: the base and metadata are offsite already, only the tape is new
                subprocess.run([sys.executable, "-m", "pgtape", "push", *cli[:6]], env=env, cwd=ROOT, check=True,
                               capture_output=True)
            stats = run_workload(dsn, rate=None, duration=None, transactions=backlog, seed=run + 1)
            with psycopg.connect(dsn, autocommit=True) as c:
                row = c.execute("select pg_current_wal_lsn()::text").fetchone()
                assert row is not None
                until = row[0]
            t0, cpu0 = time.perf_counter(), _children_cpu()
            subprocess.run([sys.executable, "-m", "pgtape", "capture", *cli, "--until-lsn", until], env=env,
                           cwd=ROOT, check=True, capture_output=True)
            times[mode].append(time.perf_counter() - t0)
            times[f"{mode}-cpu"].append(_children_cpu() - cpu0)
            # The same command with nothing left to drain: the fixed cost (process start, connecting; with
            # offsite on, starting the uploader process: importing boto3, making its client), subtracted below.
            t0, cpu0 = time.perf_counter(), _children_cpu()
            subprocess.run([sys.executable, "-m", "pgtape", "capture", *cli, "--until-lsn", until], env=env,
                           cwd=ROOT, check=True, capture_output=True)
            times[f"{mode}-start"].append(time.perf_counter() - t0)
            times[f"{mode}-start-cpu"].append(_children_cpu() - cpu0)
            log(f"drain {mode} run {run + 1}: {stats.transactions} transactions, {stats.row_changes} row changes "
                f"in {times[mode][-1]:.2f}s (nothing to drain: {times[mode + '-start'][-1]:.2f}s)")
    return times


def _children_cpu() -> float:
    """User + system CPU seconds of the finished children (the capture process just run): barely moved by
    other load on the machine, unlike wall time."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--backlog", type=int, help="transactions for the drain (default 8000; --quick 1500)")
    ap.add_argument("--only", action="append", choices=("upload", "lag", "drain"), help="run only these parts")
    args = ap.parse_args()
    parts = set(args.only or ("upload", "lag", "drain"))
    count, size = (8, 2 << 20) if args.quick else (24, 8 << 20)
    lag_seconds, backlog = (25.0, 1500) if args.quick else (70.0, 8000)
    backlog = args.backlog or backlog
    up: dict[str, list[float]] = {}
    lag: list[float] = []
    drain: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pgtape-offsite-bench-") as tmp:
        work = Path(tmp)
        server = SeaweedS3(work / "weed")
        try:
            server.start()
            for k, v in server.env().items():
                os.environ[k] = v
            if "upload" in parts:
                up = upload_bench(server, work, count, size, args.runs)
            if parts & {"lag", "drain"}:
                with EmbeddedPostgres() as pg:
                    if "lag" in parts:
                        lag = lag_bench(pg, server, work, args.rate, lag_seconds)
                    if "drain" in parts:
                        drain = drain_bench(pg, server, work, backlog, args.runs)
        finally:
            server.stop()
    mib = count * size / (1 << 20)
    if up:
        report_upload(up, count, mib, args.runs)
    if lag:
        print(f"offsite lag at {args.rate:g} tx/s, interval 10s ({len(lag)} samples): p50 {pct(lag, 50):.1f}s, "
              f"p99 {pct(lag, 99):.1f}s, max {max(lag):.1f}s, mean {statistics.mean(lag):.1f}s")
    if drain:
        report_drain(drain, backlog, args.runs)
    return 0


def report_upload(up: dict[str, list[float]], count: int, mib: float, runs: int) -> None:
    bp, bb = min(up["pgtape"]), min(up["boto3"])
    print(f"upload of {count} files, {mib:.0f} MiB (best of {runs}): pgtape {mib / bp:.1f} MiB/s ({bp:.2f}s), "
          f"boto3 upload_file {mib / bb:.1f} MiB/s ({bb:.2f}s): pgtape/boto3 throughput = {bb / bp:.2f}")
    print(f"  all runs (s): pgtape {', '.join(f'{t:.2f}' for t in up['pgtape'])}; "
          f"boto3 {', '.join(f'{t:.2f}' for t in up['boto3'])}")


def report_drain(drain: dict[str, list[float]], backlog: int, runs: int) -> None:
    on, off = min(drain["on"]), min(drain["off"])
    print(f"capture drain of a backlog of {backlog} Temba transactions (best of {runs}): offsite off {off:.2f}s, "
          f"on {on:.2f}s: on/off time = {on / off:.3f} (throughput {100 * (off / on - 1):+.1f}%)")
    print(f"  all runs (s): off {', '.join(f'{t:.2f}' for t in drain['off'])}; "
          f"on {', '.join(f'{t:.2f}' for t in drain['on'])}")
    so, sn = min(drain["off-start"]), min(drain["on-start"])
    net_off = min(a - b for a, b in zip(drain["off"], drain["off-start"]))
    net_on = min(a - b for a, b in zip(drain["on"], drain["on-start"]))
    print(f"  fixed cost (the same command, nothing to drain; best): off {so:.2f}s, on {sn:.2f}s; drain minus it "
          f"(best): off {net_off:.2f}s, on {net_on:.2f}s: on/off = {net_on / net_off:.3f}")
    c_off, c_on = min(drain["off-cpu"]), min(drain["on-cpu"])
    s_off, s_on = min(drain["off-start-cpu"]), min(drain["on-start-cpu"])
    print(f"  capture's CPU (user+sys, best): drain off {c_off:.2f}s, on {c_on:.2f}s (on/off {c_on / c_off:.3f}); "
          f"nothing to drain off {s_off:.2f}s, on {s_on:.2f}s; drain minus that: on/off "
          f"{(c_on - s_on) / (c_off - s_off):.3f}")


if __name__ == "__main__":
    sys.exit(main())
