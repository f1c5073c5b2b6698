"""`make demo`: the incident story on a throwaway PostgreSQL, as a new user would see it.

Temba sells tickets; pgtape captures payments, orders and tickets. A buggy release marks paid
payments refunded and deletes tickets. We look at the damage with a dry run, recover the tables
as they were just before the release into a recovery schema, and compare with the state the demo
recorded itself before the incident. Everything it starts is stopped at the end, even on failure.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psycopg

from examples.temba.workload import apply_schema, run_workload
from testkit.cluster import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("payments", "orders", "tickets")


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def pgtape(*args: str, env: dict[str, str], show: bool = True) -> str:
    print(f"$ pgtape {' '.join(shlex.quote(a) for a in args)}", flush=True)
    r = subprocess.run([sys.executable, "-m", "pgtape", *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if show:
        print((r.stderr + r.stdout).rstrip(), flush=True)
    if r.returncode != 0:
        raise SystemExit(f"demo: pgtape {args[0]} failed (exit {r.returncode})")
    return r.stdout


def fingerprint(conn: psycopg.Connection, schema: str) -> dict[str, tuple[int, str]]:
    """Row count and md5 of every row's text, in key order: equal fingerprints, equal tables."""
    out = {}
    for t in TABLES:
        row = conn.execute(f"SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x.id)), '') "
                           f"FROM {schema}.{t} x").fetchone()
        assert row is not None
        out[t] = (row[0], row[1])
    return out


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pgtape-demo-"))
    workdir.chmod(0o755)  # the server runs as user postgres when the demo runs as root
    say("A throwaway PostgreSQL 15 (wal_level=logical) with the Temba ticketing schema")
    with EmbeddedPostgres(workdir / "pg") as pg:
        dsn = pg.dsn()
        env = {**os.environ, "PGTAPE_DSN": dsn, "PGTAPE_ARCHIVE": str(workdir / "archive")}
        with psycopg.connect(dsn, autocommit=True) as conn:
            apply_schema(conn)
        run_workload(dsn, rate=None, duration=None, transactions=300, seed=1)
        print(f"cluster on port {pg.port}; archive in {workdir / 'archive'}; 300 orders of history already")

        say("Preflight")
        pgtape("check", env=env)

        say("Capture starts: it creates the slot, copies the initial base, then streams")
        print("$ pgtape capture &")
        log = open(workdir / "capture.log", "w")
        capture = subprocess.Popen([sys.executable, "-m", "pgtape", "capture"], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "capturing" in (workdir / "capture.log").read_text(), capture, workdir)
            say("Ticket sales: 10 s at 60 transactions/s, a snapshot, 5 s more")
            stats = run_workload(dsn, rate=60, duration=10, transactions=None, seed=2)
            print(stats.summary())
            pgtape("snapshot", env=env)
            stats = run_workload(dsn, rate=60, duration=5, transactions=None, seed=3)
            print(stats.summary())

            say("Release 4.2 is about to ship: a recovery point first")
            pgtape("mark", "before-release", "--description", "release 4.2", env=env)
            with psycopg.connect(dsn) as conn:
                before = fingerprint(conn, "public")
            print("the demo records its own fingerprint of the three tables now: "
                  + ", ".join(f"{t} {n} rows" for t, (n, _) in before.items()))

            say("The incident: release 4.2 marks paid payments refunded and deletes validated tickets")
            with psycopg.connect(dsn, autocommit=True) as conn:
                refunded = conn.execute("UPDATE payments SET status = 'refunded', refunded_amount = amount, "
                                        "updated_at = now() WHERE status = 'succeeded'").rowcount
                deleted = conn.execute("DELETE FROM tickets WHERE status = 'validated'").rowcount
            print(f"{refunded} payments wrongly refunded, {deleted} tickets deleted")
            stats = run_workload(dsn, rate=60, duration=3, transactions=None, seed=4)
            print("traffic goes on: " + stats.summary())
            time.sleep(0.5)  # a group-commit interval: the tape is durable up to now

            say("How healthy is the tape?")
            pgtape("status", env=env)
            pgtape("snapshots", env=env)

            say("What would going back to before-release change? (dry run)")
            pgtape("replay", "--target-name", "before-release", "--dry-run", env=env)

            say("Recover the three tables as they were just before the release")
            pgtape("replay", "--target-name", "before-release", env=env)
            with psycopg.connect(dsn) as conn:
                recovered = fingerprint(conn, "pgtape_recovered_before_release")
                payment = conn.execute("SELECT p.id FROM payments p JOIN pgtape_recovered_before_release.payments r "
                                       "USING (id) WHERE r.status = 'succeeded' AND p.status = 'refunded' "
                                       "ORDER BY p.created_at DESC LIMIT 1").fetchone()  # born on the tape
            if payment:
                say(f"The story of one damaged payment ({payment[0]})")
                pgtape("log", "--table", "payments", "--key", f"id={payment[0]}", env=env)
        finally:
            capture.send_signal(signal.SIGTERM)
            try:
                capture.wait(30)
            except subprocess.TimeoutExpired:
                capture.kill()
            log.close()

        say("Summary")
        for t in TABLES:
            (n1, h1), (n2, h2) = before[t], recovered[t]
            print(f"{t:<9} before the incident {n1:>6} rows   recovered {n2:>6} rows   "
                  f"{'identical' if (n1, h1) == (n2, h2) else 'DIFFERENT'}")
        ok = before == recovered and capture.returncode == 0
        print(f"capture stopped cleanly (exit {capture.returncode}); recovery "
              f"{'matches the recorded state exactly' if ok else 'DOES NOT MATCH'}; recovered tables are in "
              "schema pgtape_recovered_before_release, ready to compare or copy back "
              "(pgtape replay --target-name before-release --in-place --yes)")
    return 0 if ok else 1


def wait_for(cond: Callable[[], bool], capture: subprocess.Popen, workdir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if capture.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"demo: capture did not start:\n{(workdir / 'capture.log').read_text()}")
        time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
