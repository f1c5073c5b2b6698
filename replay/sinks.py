"""Where a replay's result goes: a recovery schema, files, or the live tables (diff and in place).

The recovery schema is loaded into a staging schema, its tables in parallel, and renamed to its name
in one final transaction; a failure or Ctrl-C drops the staging schema, and a process killed mid-way
leaves only a schema named pgtape_incomplete_<hex>. The live-table forms (dry run, in place) run in
one transaction. Either way an interrupted replay leaves nothing half-written under a real name.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from pgtape.durable import fsync_dir, make_dirs_durably
from pgtape.errors import PgtapeError
from pgtape.pg import connect, first_line, quote_ident, split_table
from pgtape.copytext import unescape
from replay.engine import Plan
from replay.fold import TableFold

BATCH_ROWS = 4096  # lines per COPY write: joined in one C call


def _qual(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def _key_list(fold: TableFold) -> str:
    return ", ".join(quote_ident(k) for k in fold.key)


def create_table(conn: psycopg.Connection, qualified: str, fold: TableFold, temp: bool = False,
                 primary_key: bool = True) -> None:
    """`primary_key=False`: the caller adds it after loading, one index build instead of row by row."""
    cols = ", ".join(f"{quote_ident(c)} {t}" for c, t in zip(fold.columns, fold.types))
    pk = f", PRIMARY KEY ({_key_list(fold)})" if fold.key and primary_key else ""
    conn.execute(f"CREATE {'TEMP ' if temp else ''}TABLE {qualified} ({cols}{pk})")


def load_rows(conn: psycopg.Connection, qualified: str, rows: Iterator[bytes], freeze: bool = False,
              stop: threading.Event | None = None) -> int:
    """COPY the rows in; returns how many. `freeze` needs the table created in this transaction;
    `stop`, checked before each write, abandons the COPY (raises _Stopped)."""
    n = 0
    rows = iter(rows)
    with conn.cursor().copy(f"COPY {qualified} FROM STDIN{' WITH (FREEZE)' if freeze else ''}") as copy:
        while lines := list(islice(rows, BATCH_ROWS)):
            if stop is not None and stop.is_set():
                raise _Stopped
            n += len(lines)
            lines.append(b"")  # every line ends with LF
            copy.write(b"\n".join(lines))
    return n


# -- recovery schema --------------------------------------------------------------------------
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
    conn.execute(f"CREATE SCHEMA {quote_ident(staging)}")
    _comment(conn, staging, comment)
    conn.commit()


def _publish(conn: psycopg.Connection, staging: str, schema: str, force: bool, comment: str) -> None:
    """Swap the complete staging schema in, in one transaction. The target is checked again: another
    session may have filled it while the tables loaded."""
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


class _Stopped(Exception):
    """Another table's load failed, or Ctrl-C: this one gives up."""


class _ParallelLoad:
    """Each table on its own thread and connection, in its own transaction: CREATE TABLE without the
    key, COPY FREEZE (no later hint-bit writes, no per-row index maintenance), then ADD PRIMARY KEY.
    The first failure stops the rest."""

    def __init__(self, plan: Plan, dsn: str | None, staging: str) -> None:
        self.plan, self.dsn, self.staging = plan, dsn, staging
        self.stop = threading.Event()
        self.wake = threading.Event()  # a worker finished
        self.slots = threading.BoundedSemaphore(PARALLEL)
        self.lock = threading.Lock()  # guards the fields below
        self.pending = len(plan.folds)
        self.error: BaseException | None = None
        self.conns: dict[str, psycopg.Connection] = {}
        self.counts: dict[str, int] = {}

    def run(self) -> dict[str, int]:
        threads = [threading.Thread(target=self._worker, args=(t,), name=f"pgtape load {t}", daemon=True)
                   for t in self.plan.folds]
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
        return {t: self.counts[t] for t in self.plan.folds}

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
            raise _Stopped

    def _load(self, table: str) -> int:
        fold = self.plan.folds[table]
        q = _qual(self.staging, split_table(table)[1])
        with connect(self.dsn, autocommit=False, application_name=APP) as conn:
            with self.lock:
                self.conns[table] = conn
            try:
                # A cancel finds a worker between statements idle: check before each one.
                self._check_stop()
                create_table(conn, q, fold, primary_key=False)
                n = load_rows(conn, q, self.plan.rows(table), freeze=True, stop=self.stop)
                self._check_stop()
                if fold.key:
                    conn.execute(f"ALTER TABLE {q} ADD PRIMARY KEY ({_key_list(fold)})")
                self._check_stop()
                conn.commit()
            finally:
                with self.lock:
                    del self.conns[table]
        return n


# -- files ------------------------------------------------------------------------------------
def to_files(plan: Plan, directory: Path, fmt: str) -> dict[str, int]:
    make_dirs_durably(directory)
    counts: dict[str, int] = {}
    for table, fold in plan.folds.items():
        final = directory / f"{table}.{fmt}"
        tmp = final.with_name(final.name + ".partial")
        n = 0
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            if fmt == "csv":
                f.write(",".join(_csv_field(c) for c in fold.columns) + "\r\n")
                for line in plan.rows(table):
                    f.write(",".join(_csv_field(v) for v in map(unescape, line.split(b"\t"))) + "\r\n")
                    n += 1
            else:
                for line in plan.rows(table):
                    f.write(json.dumps(dict(zip(fold.columns, map(unescape, line.split(b"\t")))),
                                       ensure_ascii=False) + "\n")
                    n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        counts[table] = n
    fsync_dir(directory)
    return counts


def _csv_field(v: str | None) -> str:
    """PostgreSQL's CSV convention: NULL is an empty unquoted field, an empty string is quoted."""
    if v is None:
        return ""
    if v == "" or any(c in v for c in ',"\r\n'):
        return '"' + v.replace('"', '""') + '"'
    return v


# -- live tables: diff, and in place -------------------------------------------------------------
@dataclass
class TableDiff:
    table: str
    rows: int  # in the replayed result
    to_insert: int
    to_update: int
    to_delete: int


def diff_live(plan: Plan, dsn: str | None, apply: bool = False) -> tuple[list[TableDiff], str | None]:
    """Per table, how the live rows differ from the replayed ones. With `apply`: back up every row
    that would be overwritten or deleted into a new schema, then make the live tables equal to the
    result, all in one transaction. Returns (diffs, backup schema or None)."""
    backup = None
    with connect(dsn, autocommit=False, application_name="pgtape replay") as conn:
        try:
            staged: dict[str, str] = {}
            diffs = []
            for i, (table, fold) in enumerate(plan.folds.items()):
                staged[table] = f"pgtape_replayed_{i}"
                create_table(conn, staged[table], fold, temp=True)
                rows = load_rows(conn, staged[table], plan.rows(table))
                diffs.append(_diff_counts(conn, table, staged[table], fold, rows))
            if apply:
                now_us = time.time_ns() // 1000
                backup = f"pgtape_backup_{time.strftime('%Y%m%dt%H%M%S', time.gmtime(now_us // 10**6))}_{now_us % 10**6:06d}"
                _apply(conn, plan, staged, backup)
                conn.commit()
            else:
                conn.rollback()
        except psycopg.errors.ForeignKeyViolation as e:
            conn.rollback()
            detail = e.diag.message_detail or ""
            raise PgtapeError(f"rolled back: {first_line(e)} {detail} — rows outside the selected tables depend "
                              "on rows the replay would change; add those tables with --tables".strip()) from None
        except psycopg.Error as e:
            conn.rollback()
            raise PgtapeError(f"rolled back: {first_line(e)}") from None
    return diffs, backup


def _match(fold: TableFold, a: str, b: str) -> str:
    return " AND ".join(f"{a}.{quote_ident(k)} = {b}.{quote_ident(k)}" for k in fold.key)


def _common(conn: psycopg.Connection, table: str, fold: TableFold) -> list[str]:
    schema, name = split_table(table)
    live = {r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (_qual(schema, name),)).fetchall()}
    if not live:
        raise PgtapeError(f"live table {table} does not exist: replay into a recovery schema instead")
    return [c for c in fold.columns if c in live]


def _diff_counts(conn: psycopg.Connection, table: str, staged: str, fold: TableFold, rows: int) -> TableDiff:
    schema, name = split_table(table)
    live = _qual(schema, name)
    cols = _common(conn, table, fold)
    differs = " OR ".join(f"r.{quote_ident(c)}::text IS DISTINCT FROM l.{quote_ident(c)}::text" for c in cols) or "false"
    row = conn.execute(
        f"SELECT (SELECT count(*) FROM {staged} r WHERE NOT EXISTS (SELECT 1 FROM {live} l WHERE {_match(fold, 'l', 'r')})),"
        f" (SELECT count(*) FROM {staged} r JOIN {live} l ON {_match(fold, 'l', 'r')} WHERE {differs}),"
        f" (SELECT count(*) FROM {live} l WHERE NOT EXISTS (SELECT 1 FROM {staged} r WHERE {_match(fold, 'l', 'r')}))"
    ).fetchone()
    assert row is not None
    return TableDiff(table, rows, row[0], row[1], row[2])


def fk_order(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """Tables ordered parents first (by foreign keys among them)."""
    edges = conn.execute(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c "
        "WHERE c.contype = 'f' AND c.conrelid = ANY(%s::regclass[]) AND c.confrelid = ANY(%s::regclass[])",
        ([_qual(*split_table(t)) for t in tables],) * 2).fetchall()
    regname = {_regclass_text(conn, t): t for t in tables}
    parents = {t: set() for t in tables}
    for child, parent in edges:
        if child != parent and child in regname and parent in regname:
            parents[regname[child]].add(regname[parent])
    ordered: list[str] = []
    while len(ordered) < len(tables):
        ready = [t for t in tables if t not in ordered and parents[t] <= set(ordered)]
        ordered.extend(ready or [t for t in tables if t not in ordered])  # a cycle: keep the given order
    return ordered


def _regclass_text(conn: psycopg.Connection, table: str) -> str:
    row = conn.execute("SELECT to_regclass(%s)::text", (_qual(*split_table(table)),)).fetchone()
    return row[0] if row else table


def _apply(conn: psycopg.Connection, plan: Plan, staged: dict[str, str], backup: str) -> None:
    order = fk_order(conn, list(plan.folds))
    conn.execute(f"CREATE SCHEMA {quote_ident(backup)}")
    for table in order:
        fold = plan.folds[table]
        schema, name = split_table(table)
        live, r = _qual(schema, name), staged[table]
        cols = _common(conn, table, fold)
        differs = " OR ".join(f"r.{quote_ident(c)}::text IS DISTINCT FROM l.{quote_ident(c)}::text" for c in cols) or "false"
        conn.execute(f"CREATE TABLE {_qual(backup, name)} AS SELECT l.* FROM {live} l WHERE NOT EXISTS "
                     f"(SELECT 1 FROM {r} r WHERE {_match(fold, 'l', 'r')}) OR EXISTS (SELECT 1 FROM {r} r WHERE "
                     f"{_match(fold, 'l', 'r')} AND ({differs}))")
    # Inserts and updates parents first, deletes children first: no foreign key sees a missing row.
    for table in order:
        fold = plan.folds[table]
        schema, name = split_table(table)
        live, r = _qual(schema, name), staged[table]
        cols = _common(conn, table, fold)
        names = ", ".join(quote_ident(c) for c in cols)
        conn.execute(f"INSERT INTO {live} ({names}) SELECT {names} FROM {r} r WHERE NOT EXISTS "
                     f"(SELECT 1 FROM {live} l WHERE {_match(fold, 'l', 'r')})")
        sets = ", ".join(f"{quote_ident(c)} = r.{quote_ident(c)}" for c in cols if c not in fold.key)
        differs = " OR ".join(f"r.{quote_ident(c)}::text IS DISTINCT FROM l.{quote_ident(c)}::text" for c in cols)
        if sets:
            conn.execute(f"UPDATE {live} l SET {sets} FROM {r} r WHERE {_match(fold, 'l', 'r')} AND ({differs})")
    for table in reversed(order):
        fold = plan.folds[table]
        schema, name = split_table(table)
        live, r = _qual(schema, name), staged[table]
        conn.execute(f"DELETE FROM {live} l WHERE NOT EXISTS (SELECT 1 FROM {r} r WHERE {_match(fold, 'l', 'r')})")
