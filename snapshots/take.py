"""Taking a snapshot: the tables exactly as of one LSN, streamed with COPY into table files.

Exactness (docs/ARCHITECTURE.md, "Snapshots"): a logical slot created with SNAPSHOT 'export'
returns its consistent point C and a snapshot that sees exactly the transactions whose commit
record precedes C. The tape holds exactly the transactions whose commit ends after the capture
slot's position, and commit records never straddle C, so snapshot(C) + tape(C, target] is the
state at target with no transaction lost or doubled. A later snapshot uses a TEMPORARY slot the
same way: capture's slot and the tape are untouched, writers are never locked.
take_snapshot(): such a later snapshot, on demand or on schedule (the initial base: capture/generation.py).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import msgspec
import psycopg

from pgtape.durable import make_dirs_durably
from pgtape.config import Config
from pgtape.errors import PgtapeError, UsageError
from pgtape.lock import Lock
from pgtape.lsn import format_lsn
from pgtape.names import quote_ident, split_table
from pgtape.pg import connect, first_line
from pgtape.shapes import TableShape, read_shapes
from pgtape.exported_snapshot import ExportedSnapshot, create_slot_exporting, temporary_slot_name
from pgtape.slot import identify_system
from pgtape.timefmt import now_us
from pgtape.tape import FORMAT_VERSION
from pgtape.tape.archive import Archive
from pgtape.tape.views import load_view
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.snapshots.format import TableHeader, TableWriter, table_file_name

log = logging.getLogger(__name__).info  # progress and events, on stderr (pgtape/log.py)


class SnapshotLock(Lock):
    """One snapshot at a time per archive (every snapshot, init's initial base, and prune)."""

    def __init__(self, archive: Archive) -> None:
        make_dirs_durably(archive.path)
        super().__init__(archive.path / "snapshot.lock", f"another snapshot is running on {archive.path}: wait "
                         "for it (pgtape snapshots shows it)")
        # Every snapshot writer holds this lock, so a .partial directory now is an interrupted one.
        _remove_partials(archive)


def _remove_partials(archive: Archive) -> None:
    """The .partial directories of interrupted snapshots (snapshot.lock held: no snapshot is being written)."""
    storage = archive.storage
    for g in storage.list("generations"):
        directory = f"generations/{g.name}/snapshots"
        for e in storage.list(directory):
            if e.name.endswith(".partial"):
                _delete_quietly(archive, f"{directory}/{e.name}")


def _delete_quietly(archive: Archive, key: str) -> None:
    try:
        archive.storage.delete_tree(key)
    except OSError:
        pass  # a leftover the next snapshot removes


def copy_tables(archive: Archive, record: SnapshotRecord, snap: ExportedSnapshot, oids: dict[str, int],
                progress: Callable[[str], None] | None = None) -> SnapshotRecord:
    """Stream every table of `record` (`oids`: each one's object) under `snap` into a published
    snapshot; returns the completed record (saved). On any error the record is saved as failed,
    nothing is published, and PgtapeError is raised."""
    final = catalog.snapshot_key(archive, record.generation, record.id)
    partial = final + ".partial"
    record = msgspec.structs.replace(record, as_of_lsn=snap.as_of_lsn, as_of_time=snap.as_of_time)
    catalog.save(archive, record)
    try:
        # The shapes as of the snapshot (a catalog read under it); a missing table fails before any copy.
        shapes = read_shapes(snap.conn, [oids[t] for t in record.tables])
        for table in record.tables:
            if oids[table] not in shapes:
                raise PgtapeError(f"table {table} does not exist (it was dropped)")
        rows: dict[str, int] = {}
        size = 0
        for table in record.tables:
            started = time.monotonic()
            n, b = _copy_table(snap, archive, partial, record, table, shapes[oids[table]])
            rows[table], size = n, size + b
            if progress:
                progress(f"{table}: {n} rows, {b} bytes in {time.monotonic() - started:.1f}s")
        # Each file's name is durable already (Storage.create); the directory is published whole.
        archive.storage.rename(partial, final)
        snap.conn.rollback()
    except BaseException as e:
        _delete_quietly(archive, partial)
        reason = _describe(e)
        try:
            catalog.save(archive, catalog.failed(record, reason))
        except OSError:
            pass  # the record stays "running" and reads as interrupted once this process is gone
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise PgtapeError(f"snapshot {record.id} failed: {reason}") from None
    done = msgspec.structs.replace(record, status=catalog.COMPLETED, rows=rows, bytes=size, completed_at=now_us())
    catalog.save(archive, done)
    return done


def _copy_table(snap: ExportedSnapshot, archive: Archive, directory: str, record: SnapshotRecord, table: str,
                shape: TableShape) -> tuple[int, int]:
    schema, name = split_table(table)
    header = TableHeader(FORMAT_VERSION, record.id, record.generation, schema, name, shape.name, shape.oid,
                         [c.name for c in shape.columns], [c.type for c in shape.columns],
                         [c.attnum for c in shape.columns], shape.key, snap.as_of_lsn, snap.as_of_time)
    writer = TableWriter(archive.storage, f"{directory}/{table_file_name(table)}", header)
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


def new_record(archive: Archive, generation: int, tables: list[str], kind: str, retention: float | None,
               snapshot_id: str | None = None) -> SnapshotRecord:
    now = now_us()
    expires = now + int(retention * 1_000_000) if retention else None
    return SnapshotRecord(snapshot_id or catalog.new_id(), generation, kind, tables, catalog.RUNNING, now, expires,
                          os.getpid(), os.uname().nodename)


def _describe(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, OSError):
        return f"cannot write the archive: {e.strerror or e} ({e.filename or ''})".replace(" ()", "")
    if isinstance(e, psycopg.errors.InsufficientPrivilege) and "row-level security" in str(e):
        return (f"{first_line(e)}: pgtape reads every row or none (row_security is off in its sessions); as a "
                "superuser run ALTER ROLE <this role> BYPASSRLS (pgtape check names it)")
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return (f"{first_line(e)}: the role needs SELECT on every captured table (GRANT SELECT ON ... TO ...; "
                "pgtape check names each one missing)")
    if isinstance(e, psycopg.Error):
        return f"the source failed mid-copy: {first_line(e)}"
    return str(e) or type(e).__name__


def take_snapshot(config: Config, archive: Archive, tables: list[str], kind: str,
                  snapshot_id: str | None = None) -> SnapshotRecord:
    """`snapshot_id`: the new snapshot's id, named in advance (pgtape serve answers with it at once)."""
    if snapshot_id is not None:
        if not catalog.ID_RE.fullmatch(snapshot_id):
            raise UsageError(f"invalid snapshot id {snapshot_id!r}: the form is 20261202T170000.123456Z-4242")
        if any(r.id == snapshot_id for r in catalog.load_all(archive)):
            raise UsageError(f"snapshot {snapshot_id} exists already: choose another id")
    ident = archive.identity()
    gen = archive.generation(ident.generation)
    archive.check_encryption(gen)  # its files are encrypted as its generation is, or not at all
    unknown = [t for t in tables if t not in gen.tables]
    if unknown:
        raise UsageError(f"{', '.join(unknown)} not captured in generation {gen.id} (captured: "
                         f"{', '.join(gen.tables)}): a snapshot without a tape could not be replayed")
    lock = SnapshotLock(archive)
    try:
        repl = connect(config.dsn, replication=True, application_name="pgtape snapshot")
        try:
            system = identify_system(repl)
            if system.system_id != gen.system_id or system.database != gen.database:
                raise PgtapeError(f"the server is database system {system.system_id} database {system.database}, "
                                  f"but generation {gen.id} captures {gen.system_id} database {gen.database}")
            view = load_view(archive, gen.id, at_lsn=2**64 - 1)  # the newest: the tables' objects (oids)
            dropped = [t for t in tables if view.get(t) is None]
            if dropped == tables:
                raise PgtapeError(f"{', '.join(dropped)} no longer exists (dropped): there is nothing to snapshot")
            if dropped:  # a table dropped since the generation began: its last bases stay as they are
                log(f"skipping {', '.join(dropped)}: dropped")
                tables = [t for t in tables if t not in dropped]
            record = new_record(archive, gen.id, tables, kind, config.retention, snapshot_id)
            catalog.save(archive, record)
            try:
                snap = create_slot_exporting(repl, config.dsn, temporary_slot_name(), temporary=True)
            except PgtapeError as e:
                catalog.save(archive, catalog.failed(record, str(e)))
                raise
        finally:
            repl.close()  # drops the temporary slot; the imported snapshot lives on in snap.conn
        log(f"snapshot {record.id} of {', '.join(tables)} as of {format_lsn(snap.as_of_lsn)}")
        with snap.conn:
            oids = {t: shape.oid for t in tables if (shape := view[t]) is not None}  # (dropped ones left above)
            return copy_tables(archive, record, snap, oids, progress=log)
    finally:
        lock.release()
