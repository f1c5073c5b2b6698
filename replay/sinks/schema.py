"""The recovery schema: every table loaded in parallel into a staging schema, then renamed in."""

from __future__ import annotations

import os
import secrets
import threading
from contextlib import contextmanager, nullcontext
from typing import Iterator

import psycopg
from psycopg import sql

from pgtape.errors import PgtapeError
from pgtape.names import quote_ident, sql_name
from pgtape.pg import connect, first_line
from pgtape.replay.engine import Plan
from pgtape.replay.sinks.load import Stopped, create_table, key_list, load_blocks, qual

APP = "pgtape replay"
PARALLEL = 8  # tables loading at once: one connection each, far below a default max_connections
STAGING_PREFIX = "pgtape_incomplete_"


def to_schema(plan: Plan, dsn: str | None, schema: str, force: bool) -> dict[str, int]:
    """Load every table into a staging schema, one thread and connection per table, then rename it to
    `schema` in one short transaction: an existing schema is replaced only by a complete one. A
    failure or Ctrl-C drops the staging schema; a process killed mid-way leaves only a schema named
    pgtape_incomplete_<hex>, commented "pgtape replay in progress, incomplete", to drop by hand."""
    staging = STAGING_PREFIX + secrets.token_hex(4)
    with connect(dsn, autocommit=False, application_name=APP) as conn, _schema_errors():
        _target_exists(conn, schema, force)  # refuse before loading anything
        try:
            _create_staging(conn, staging, f"pgtape replay in progress, incomplete: {plan.target.describe()} "
                                           f"pid {os.getpid()}")
            counts = _ParallelLoad(plan, dsn, staging).run()
            _publish(conn, staging, schema, force, f"pgtape replay {plan.target.describe()} from base {plan.base.id}")
        except BaseException:
            _drop_staging(conn, dsn, staging)
            raise
    return counts


@contextmanager
def _schema_errors() -> Iterator[None]:
    """A database error, from any connection, as one line naming what failed."""
    try:
        yield
    except psycopg.Error as e:
        raise PgtapeError(f"writing the recovery schema failed: {first_line(e)}") from None


def _comment(conn: psycopg.Connection, schema: str, text: str) -> None:
    conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(schema), sql.Literal(text)))


def _target_exists(conn: psycopg.Connection, schema: str, force: bool) -> bool:
    """Whether `schema` exists; refuses one that holds something, unless `force`."""
    row = conn.execute("SELECT count(c.oid) FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = "
                       "n.oid WHERE n.nspname = %s GROUP BY n.oid", (schema,)).fetchone()
    if row is not None and row[0] and not force:
        raise PgtapeError(f"schema {schema} exists and is not empty: choose --schema NAME, or --force "
                          "to replace it")
    return row is not None


def _create_staging(conn: psycopg.Connection, staging: str, comment: str) -> None:
    """Committed at once: the workers' connections must see it."""
    try:
        conn.execute(f"CREATE SCHEMA {quote_ident(staging)}")
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()
        [(role, db)] = conn.execute("SELECT current_user, current_database()").fetchall()
        raise PgtapeError(f"role {role} may not create schemas in database {db}: GRANT CREATE ON DATABASE "
                          f"{sql_name(db)} TO {sql_name(role)} (as its owner or a superuser), or replay --output DIR, "
                          "or --into a database where it may") from None
    _comment(conn, staging, comment)
    conn.commit()


def _publish(conn: psycopg.Connection, staging: str, schema: str, force: bool, comment: str) -> None:
    """Swap the complete staging schema in, in one transaction. Replays into one schema take turns
    here (an advisory lock on its name), and the target is checked again: another replay may have
    published it while the tables loaded."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgtape replay schema ' || %s))", (schema,))
    if _target_exists(conn, schema, force):
        conn.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
    conn.execute(f"ALTER SCHEMA {quote_ident(staging)} RENAME TO {quote_ident(schema)}")
    _comment(conn, schema, comment)
    conn.commit()


def _drop_staging(conn: psycopg.Connection, dsn: str | None, staging: str) -> None:
    """Best effort; what it cannot drop stays marked incomplete by its name and comment."""
    try:
        conn.rollback()  # the final transaction may have failed half-way
    except psycopg.Error:
        conn.close()
    try:
        with (connect(dsn, application_name=APP) if conn.closed else nullcontext(conn)) as c:
            c.execute("SET lock_timeout = '10s'")  # never hang on a worker that did not stop
            c.execute(f"DROP SCHEMA IF EXISTS {quote_ident(staging)} CASCADE")
            c.commit()
    except (psycopg.Error, PgtapeError):
        pass


class _ParallelLoad:
    """Each table on its own thread and connection, in its own transaction: CREATE TABLE without the
    key, COPY FREEZE (no later hint-bit writes, no per-row index maintenance), then ADD PRIMARY KEY.
    The first failure stops the rest."""

    def __init__(self, plan: Plan, dsn: str | None, staging: str) -> None:
        self.plan, self.dsn, self.staging = plan, dsn, staging
        self.names = plan.names_in_one_schema()
        self.stop = threading.Event()
        self.wake = threading.Event()  # a worker finished
        self.slots = threading.BoundedSemaphore(PARALLEL)
        self.lock = threading.Lock()  # guards the fields below
        self.pending = len(plan.present)
        self.error: BaseException | None = None
        self.conns: dict[str, psycopg.Connection] = {}
        self.counts: dict[str, int] = {}

    def run(self) -> dict[str, int]:
        threads = [threading.Thread(target=self._worker, args=(t,), name=f"pgtape load {t}", daemon=True)
                   for t in self.plan.present]
        try:
            for t in threads:
                t.start()
            self._wait()
        except BaseException:  # Ctrl-C
            self._halt(threads)
            raise
        if self.error is not None:
            self._halt(threads)
            raise self.error  # a PgtapeError as it was; _schema_errors words a database error
        return {t: self.counts[t] for t in self.plan.present}

    def _wait(self) -> None:
        # Short timed waits: the main thread stays responsive to SIGINT.
        while True:
            self.wake.clear()
            with self.lock:
                if self.pending == 0 or self.error is not None:
                    return
            self.wake.wait(0.2)

    def _halt(self, threads: list[threading.Thread]) -> None:
        self.stop.set()
        with self.lock:
            conns = list(self.conns.values())
        for c in conns:
            try:
                c.cancel_safe(timeout=5)
            except Exception:  # it may have closed meanwhile: nothing left to cancel
                pass
        for t in threads:
            while t.is_alive():
                t.join(0.2)

    def _worker(self, table: str) -> None:
        try:
            while not self.slots.acquire(timeout=0.2):
                self._check_stop()
            try:
                self.counts[table] = self._load(table)
            finally:
                self.slots.release()
        except BaseException as e:
            with self.lock:
                if self.error is None and not self.stop.is_set():  # later ones follow from stopping
                    self.error = e
        finally:
            with self.lock:
                self.pending -= 1
            self.wake.set()

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped

    def _load(self, table: str) -> int:
        fold = self.plan.folds[table]
        q = qual(self.staging, self.names[table])
        with connect(self.dsn, autocommit=False, application_name=APP) as conn:
            with self.lock:
                self.conns[table] = conn
            try:
                # A cancel finds a worker between statements idle: check before each one.
                self._check_stop()
                create_table(conn, q, fold, primary_key=False)
                n = load_blocks(conn, q, self.plan.blocks(table), freeze=True, stop=self.stop,
                                counted=self.plan.progress.loaded(table))
                self._check_stop()
                if fold.key:
                    conn.execute(f"ALTER TABLE {q} ADD PRIMARY KEY ({key_list(fold)})")
                self._check_stop()
                conn.commit()
            finally:
                with self.lock:
                    del self.conns[table]
        return n
