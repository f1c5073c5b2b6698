"""Shared fixtures: one embedded PostgreSQL cluster per test session, fresh databases per test.

The cluster is started by pgtape's own code (testkit.cluster) and always stopped, even when
tests fail. Tests that need a server of their own (restarts, settings) start another.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import psycopg
import pytest

from pgtape.lsn import parse_lsn
from testkit.cluster import EmbeddedPostgres
from testkit.seaweed import SeaweedS3

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
_db_counter = itertools.count()
_bucket_counter = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture
def dbname(pg: EmbeddedPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database; its replication slots are dropped afterwards."""
    name = f"t{next(_db_counter)}_{request.node.name[:40]}".lower()
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'create database "{name}"')
    yield name
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        for (slot,) in c.execute("select slot_name from pg_replication_slots where database = %s", (name,)).fetchall():
            c.execute("select pg_terminate_backend(active_pid) from pg_replication_slots "
                      "where slot_name = %s and active_pid is not null", (slot,))
            c.execute("select pg_drop_replication_slot(%s)", (slot,))
        c.execute(f'drop database "{name}" with (force)')


@pytest.fixture
def dsn(pg: EmbeddedPostgres, dbname: str) -> str:
    return pg.dsn(dbname)


@pytest.fixture
def role(pg: EmbeddedPostgres, dbname: str) -> Iterator[str]:
    """A login role with REPLICATION but not superuser; what it owns in `dbname`, and it, dropped afterwards."""
    name = f"checker_{secrets.token_hex(4)}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"create role {name} login replication")
    yield name
    with psycopg.connect(pg.dsn(dbname), autocommit=True) as c:
        c.execute(f"drop owned by {name}")
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"drop role {name}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS `weed mini` per session (testkit/seaweed.py), started on first use, always stopped."""
    server = SeaweedS3(tmp_path_factory.mktemp("weed"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<a new bucket>/archive`, with the AWS_* variables that reach it set for this test and
    the pgtape processes it starts."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    bucket = f"t{next(_bucket_counter)}-{secrets.token_hex(4)}"
    s3_server.create_bucket(bucket)
    return f"s3://{bucket}/archive"


def clean_env() -> dict[str, str]:
    """This process's environment without PGTAPE_* settings, for the pgtape processes tests start."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PGTAPE_")}


def run_pgtape(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess, as a user would."""
    full_env = clean_env()
    full_env.update(env or {})
    r = subprocess.run([sys.executable, "-m", "pgtape", *args], capture_output=True, text=True,
                       timeout=timeout, env=full_env, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"pgtape {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r


def one_row(cur: psycopg.Cursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The one row a query returned (asserting that one came back)."""
    row = cur.fetchone()
    assert row is not None, "the query returned no row"
    return row


def scalar(cur: psycopg.Cursor[tuple[Any, ...]]) -> Any:
    """The first value of the one row a query returned: `scalar(c.execute("select count(*) ..."))`."""
    return one_row(cur)[0]


# A log line in pgtape/log.py's text format: `2026-12-02T16:30:00.123Z info pgtape.x: ...`.
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z (debug|info|warning|error) pgtape[\w.]*: ")


def one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str, after_logs: bool = False) -> str:
    """A refusal: exit `code`, no traceback, and on stderr exactly one line, `pgtape: ...`, holding every
    needle; that line. With `after_logs`, log lines (progress before the failure) may precede it."""
    assert r.returncode == code, f"exit {r.returncode} (expected {code}): {r.stderr}{r.stdout}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("pgtape: "), r.stderr
    assert len(lines) == 1 or (after_logs and all(_LOG_LINE.match(line) for line in lines[:-1])), r.stderr
    for n in needles:
        assert n in lines[-1], f"{n!r} not in {lines[-1]!r}"
    return lines[-1]


def run_sql(dsn: str, *statements: str) -> None:
    """Each statement in its own transaction (autocommit)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        for s in statements:
            c.execute(s)


def current_lsn(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as c:
        return scalar(c.execute("select pg_current_wal_lsn()::text"))


def confirmed_flush(dsn: str, slot: str = "pgtape") -> int:
    """The slot's confirmed_flush_lsn: how far the server knows capture has the tape durable."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
                        (slot,)).fetchone()
    assert row is not None and row[0] is not None, f"slot {slot} missing"
    return parse_lsn(row[0])


def capture_to_now(dsn: str, archive: Path, *args: str, tables: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `pgtape capture --until-lsn <current WAL position>`: everything committed so far lands on the tape."""
    extra = ["--tables", tables] if tables else []
    return run_pgtape("capture", "--dsn", dsn, "--archive", str(archive), "--until-lsn", current_lsn(dsn),
                      *extra, *args, check=True)


def spawn_pgtape(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """`pgtape ARGS` in the background, output to `log`; stop it with stop_process()."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "pgtape", *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=clean_env(), cwd=ROOT)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (ended, not yet reaped by its parent) counts as ended."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
