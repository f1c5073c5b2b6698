"""`make demo`: pgtape capture on a throwaway PostgreSQL, as a new user would see it.

Starts an embedded cluster, creates the Temba ticketing schema, runs `pgtape check`, starts
`pgtape capture`, drives a workload, then shows `pgtape status` and a `pgtape log` excerpt: the
whole history of one payment. Everything it starts is stopped at the end, even on failure.
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

import psycopg

from examples.temba.workload import apply_schema, run_workload
from pgtape.embedded import EmbeddedPostgres
from pgtape.tape.archive import Archive
from pgtape.tape.reader import iter_changes

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def pgtape(*args: str, env: dict[str, str], show: bool = True) -> str:
    print(f"$ pgtape {' '.join(shlex.quote(a) for a in args)}", flush=True)
    r = subprocess.run([sys.executable, "-m", "pgtape", *args], env=env, capture_output=True, text=True, cwd=ROOT)
    out = r.stdout + r.stderr
    if show:
        print(out.rstrip(), flush=True)
    if r.returncode != 0:
        raise SystemExit(f"demo: pgtape {args[0]} failed (exit {r.returncode})")
    return r.stdout


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pgtape-demo-"))
    workdir.chmod(0o755)  # the server runs as user postgres when the demo runs as root
    say("Starting a throwaway PostgreSQL 15 with wal_level=logical")
    with EmbeddedPostgres(workdir / "pg") as pg:
        dsn = pg.dsn()
        env = {**os.environ, "PGTAPE_DSN": dsn, "PGTAPE_ARCHIVE": str(workdir / "archive")}
        print(f"cluster on port {pg.port}, archive in {workdir / 'archive'}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            apply_schema(conn)
        print("Temba schema: orders, payments, tickets")

        say("Preflight")
        pgtape("check", env=env)

        say("Capture runs in the background (group commit every 200 ms)")
        print("$ pgtape capture &")
        log = open(workdir / "capture.log", "w")
        capture = subprocess.Popen([sys.executable, "-m", "pgtape", "capture"], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not (workdir / "archive" / "ARCHIVE.json").exists():
                if capture.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"demo: capture did not start: {(workdir / 'capture.log').read_text()}")
                time.sleep(0.1)

            say("Ticket sales: 15 s of Temba traffic at 60 transactions/s")
            stats = run_workload(dsn, rate=60, duration=15, transactions=None, seed=7)
            print(stats.summary())
            time.sleep(0.5)  # one group-commit interval and a little more

            say("How healthy is the tape?")
            pgtape("status", env=env)

            with psycopg.connect(dsn) as conn:
                row = conn.execute("select id from payments where status = 'refunded' order by created_at limit 1"
                                   ).fetchone() or conn.execute("select id from payments limit 1").fetchone()
            assert row is not None
            say(f"Every change ever made to payment {row[0]}")
            pgtape("log", "--table", "payments", "--key", f"id={row[0]}", env=env)
        finally:
            capture.send_signal(signal.SIGTERM)
            try:
                capture.wait(30)
            except subprocess.TimeoutExpired:
                capture.kill()
            log.close()
        say("Capture stopped with SIGTERM; its log")
        print((workdir / "capture.log").read_text().rstrip())
        archive = Archive(workdir / "archive")
        on_tape = sum(1 for _ in iter_changes(archive, archive.identity().generation))
        verdict = "equal" if on_tape == stats.row_changes else "DIFFERENT"
        print(f"\ncapture exit code {capture.returncode}; the workload made {stats.row_changes} row changes, "
              f"the tape holds {on_tape}: {verdict}.")
    return 0 if capture.returncode == 0 and on_tape == stats.row_changes else 1


if __name__ == "__main__":
    raise SystemExit(main())
