"""Taking a snapshot: the tables exactly as of one LSN, streamed with COPY into table files.

Exactness (docs/ARCHITECTURE.md, "Snapshots"): a logical slot created with SNAPSHOT 'export'
returns its consistent point C and a snapshot that sees exactly the transactions whose commit
record precedes C. The tape holds exactly the transactions whose commit ends after the capture
slot's position, and commit records never straddle C, so snapshot(C) + tape(C, target] is the
state at target with no transaction lost or doubled. A later snapshot uses a TEMPORARY slot the
same way: capture's slot and the tape are untouched, writers are never locked.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import msgspec
import psycopg

from pgtape.capture.plugin_allowlist import is_refusal, refusal_message
from pgtape.capture.slot import PLUGIN
from pgtape.capture.tables import TableShape, read_shapes
from pgtape.durable import fsync_dir, make_dirs_durably, rename_durably
from pgtape.errors import PgtapeError
from pgtape.lsn import parse_lsn
from pgtape.names import quote_ident, split_table
from pgtape.pg import connect, first_line
from pgtape.tape import FORMAT_VERSION
from pgtape.tape.archive import Archive
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.snapshots.format import TableHeader, TableWriter, table_file_name

# Creating a logical slot waits for every transaction open at that moment to end.
SLOT_TIMEOUT = 60.0


@dataclass(frozen=True)
class ExportedSnapshot:
    """A data connection inside a transaction that sees exactly the state at `as_of_lsn`."""

    conn: psycopg.Connection
    as_of_lsn: int
    as_of_time: int  # µs UTC: every transaction the snapshot holds committed at or before it


def create_slot_exporting(repl: psycopg.Connection, dsn: str | None, slot: str, temporary: bool,
                          read_only: bool = True) -> ExportedSnapshot:
    """Create a slot with an exported snapshot and import it at once into a new data connection.

    The exported snapshot dies at the next command on `repl`, so nothing else runs there first."""
    timer = threading.Timer(SLOT_TIMEOUT, _cancel, (repl,))
    timer.start()
    try:
        row = repl.execute(f"CREATE_REPLICATION_SLOT {slot} {'TEMPORARY ' if temporary else ''}LOGICAL {PLUGIN} "
                           "(SNAPSHOT 'export')").fetchone()
    except psycopg.errors.QueryCanceled:
        raise PgtapeError(f"creating replication slot {slot} waited {SLOT_TIMEOUT:.0f}s for open transactions "
                          "to end: find the long-running transaction in pg_stat_activity") from None
    except psycopg.Error as e:
        if is_refusal(e):
            raise PgtapeError(refusal_message(repl)) from None
        raise PgtapeError(f"cannot create replication slot {slot}: {first_line(e)} (run pgtape check)") from None
    finally:
        timer.cancel()
    assert row is not None
    data = connect(dsn, autocommit=False, application_name="pgtape snapshot")
    try:
        data.execute(f"BEGIN ISOLATION LEVEL REPEATABLE READ{', READ ONLY' if read_only else ''}")
        data.execute(f"SET TRANSACTION SNAPSHOT '{row[2]}'")
        now = data.execute("SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint").fetchone()
    except psycopg.Error as e:
        data.close()
        raise PgtapeError(f"cannot import the exported snapshot: {first_line(e)}") from None
    assert now is not None
    return ExportedSnapshot(data, parse_lsn(row[1]), int(now[0]))


def _cancel(conn: psycopg.Connection) -> None:
    try:
        conn.cancel_safe()
    except psycopg.Error:
        pass


class SnapshotLock:
    """One snapshot at a time per archive (a second one is refused, not queued)."""

    def __init__(self, archive: Archive) -> None:
        make_dirs_durably(archive.path)
        self._fd = os.open(archive.path / "snapshot.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise PgtapeError(f"another snapshot is running on {archive.path}: wait for it "
                              "(pgtape snapshots shows it)") from None
        # Every snapshot writer holds this lock, so a .partial directory now is an interrupted one.
        for leftover in archive.path.glob("generations/*/snapshots/*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)

    def release(self) -> None:
        os.close(self._fd)


def copy_tables(archive: Archive, record: SnapshotRecord, snap: ExportedSnapshot, oids: dict[str, int],
                progress: Callable[[str], None] | None = None) -> SnapshotRecord:
    """Stream every table of `record` (`oids`: each one's object) under `snap` into a published
    snapshot; returns the completed record (saved). On any error the record is saved as failed,
    nothing is published, and PgtapeError is raised."""
    final = catalog.snapshot_dir(archive, record.generation, record.id)
    partial = final.with_name(final.name + ".partial")
    record = msgspec.structs.replace(record, as_of_lsn=snap.as_of_lsn, as_of_time=snap.as_of_time)
    catalog.save(archive, record)
    try:
        # The shapes as of the snapshot (a catalog read under it); a missing table fails before any copy.
        shapes = read_shapes(snap.conn, [oids[t] for t in record.tables])
        for table in record.tables:
            if oids[table] not in shapes:
                raise PgtapeError(f"table {table} does not exist (it was dropped)")
        make_dirs_durably(partial)
        rows: dict[str, int] = {}
        size = 0
        for table in record.tables:
            started = time.monotonic()
            n, b = _copy_table(snap, partial, record, table, shapes[oids[table]])
            rows[table], size = n, size + b
            if progress:
                progress(f"{table}: {n} rows, {b} bytes in {time.monotonic() - started:.1f}s")
        fsync_dir(partial)
        rename_durably(partial, final)
        snap.conn.rollback()
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        reason = _describe(e)
        try:
            catalog.save(archive, catalog.failed(record, reason))
        except OSError:
            pass  # the record stays "running" and reads as interrupted once this process is gone
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise PgtapeError(f"snapshot {record.id} failed: {reason}") from None
    done = msgspec.structs.replace(record, status=catalog.COMPLETED, rows=rows, bytes=size, completed_at=_now())
    catalog.save(archive, done)
    return done


def _copy_table(snap: ExportedSnapshot, directory: Path, record: SnapshotRecord, table: str,
                shape: TableShape) -> tuple[int, int]:
    schema, name = split_table(table)
    header = TableHeader(FORMAT_VERSION, record.id, record.generation, schema, name, shape.name, shape.oid,
                         [c.name for c in shape.columns], [c.type for c in shape.columns],
                         [c.attnum for c in shape.columns], shape.key, snap.as_of_lsn, snap.as_of_time)
    writer = TableWriter(directory / table_file_name(table), header)
    try:
        select = ", ".join(quote_ident(c.name) for c in shape.columns)
        # By oid: the table may have been renamed since (a partitioned table: its rows, every partition's).
        [(relation,)] = snap.conn.execute("SELECT %s::regclass::text", (shape.oid,)).fetchall()
        with snap.conn.cursor().copy(f"COPY (SELECT {select} FROM {relation}) TO STDOUT") as copy:
            for data in copy:
                writer.write(data)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def new_record(archive: Archive, generation: int, tables: list[str], kind: str, retention: float | None
               ) -> SnapshotRecord:
    now = _now()
    expires = now + int(retention * 1_000_000) if retention else None
    return SnapshotRecord(catalog.new_id(), generation, kind, tables, catalog.RUNNING, now, expires,
                          os.getpid(), os.uname().nodename)


def temporary_slot_name() -> str:
    return f"pgtape_snap_{os.getpid()}_{secrets.token_hex(3)}"


def _describe(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, OSError):
        return f"cannot write the archive: {e.strerror or e} ({e.filename or ''})".replace(" ()", "")
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return (f"{first_line(e)}: the role needs SELECT on every captured table (GRANT SELECT ON ... TO ...; "
                "pgtape check names each one missing)")
    if isinstance(e, psycopg.Error):
        return f"the source failed mid-copy: {first_line(e)}"
    return str(e) or type(e).__name__


def _now() -> int:
    return time.time_ns() // 1000
