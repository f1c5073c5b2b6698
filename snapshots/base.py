"""The two ways a snapshot starts: the initial base of a generation, and a later snapshot.

initialize(): a new generation. Its permanent capture slot is created with an exported
snapshot, and the base is copied under it: the tape starts exactly where the base ends.
take_snapshot(): later, on demand or on schedule, through a TEMPORARY slot (capture unaffected).
Both hold the snapshot lock; initialize() also expects the caller to hold the capture lock.
"""

from __future__ import annotations

import logging
from typing import Callable

import psycopg

from pgtape.capture import ddl_trigger
from pgtape.capture.slot import find_slot, identify_system
from pgtape.capture.tables import load_view, resolve_tables, save_view
from pgtape.config import Config
from pgtape.errors import PgtapeError, UsageError
from pgtape.lsn import format_lsn
from pgtape.pg import connect
from pgtape.tape.archive import Archive, Generation
from pgtape.tape.segment import SegmentWriter
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.snapshots.take import SnapshotLock, copy_tables, create_slot_exporting, new_record, temporary_slot_name

Log = Callable[[str], None]
log: Log = logging.getLogger(__name__).info  # progress and events, on stderr (pgtape/log.py)


def initialize(config: Config, archive: Archive, *, restart: bool) -> tuple[Generation, SnapshotRecord | None]:
    """Create (or with `restart`, replace) the capture slot and the generation's initial base.

    Idempotent: an archive whose current generation has its initial base and its slot is left
    alone and (generation, None) returned."""
    repl = connect(config.dsn, replication=True, application_name="pgtape init")
    try:
        system = identify_system(repl)
        slot = find_slot(repl, config.slot)
        if archive.exists():
            ident = archive.identity()
            gen = archive.generation(ident.generation)
            base = _initial_base(archive, gen.id)
            if not restart:
                if ident.system_id != system.system_id:
                    raise PgtapeError(f"{archive.path} belongs to database system {ident.system_id}, not "
                                      f"{system.system_id}: use another --archive, or --restart to start over")
                if base is not None:
                    _ddl_trigger(config, log)
                    return gen, None  # initialised; a vanished slot is capture's fatal error, not a reason to redo
                if not archive.tape_is_empty(gen.id):
                    raise UsageError(f"{archive.path} already has a tape for generation {gen.id}; re-initialising "
                                     "starts a new generation: pass --restart")
            reason = "restart" if restart else "initial base missing"
        elif slot is not None:
            raise PgtapeError(
                f"replication slot {config.slot} already exists but {archive.path} holds no tape, so what the slot "
                f"skipped is unknown: choose another --slot or drop it with "
                f"SELECT pg_drop_replication_slot('{config.slot}')")
        else:
            reason = "initial"
        with connect(config.dsn, application_name="pgtape init") as conn:
            resolve_tables(conn, list(config.tables))  # refuse what cannot be captured before touching a slot
        _ddl_trigger(config, log)  # before the slot: every schema change after its start is in the stream
        if slot is not None:
            _drop_slot(repl, config.slot)
        if archive.exists():
            _seal_open_segment(archive, archive.identity().generation)
        lock = SnapshotLock(archive)
        try:
            snap = create_slot_exporting(repl, config.dsn, config.slot, temporary=False)
            with snap.conn:
                view = resolve_tables(snap.conn, list(config.tables))  # the catalog as of the start LSN
                gen = archive.start_generation(system.system_id, system.database, config.slot, snap.as_of_lsn,
                                               reason, list(config.tables))
                save_view(archive, gen.id, gen.start_lsn, view)
                log(f"generation {gen.id}: slot {config.slot} created at {format_lsn(gen.start_lsn)}; "
                    "copying the initial base")
                record = new_record(archive, gen.id, list(config.tables), "initial", config.retention)
                done = copy_tables(archive, record, snap, {t: s.oid for t, s in view.items() if s}, progress=log)
        finally:
            lock.release()
        return gen, done
    finally:
        repl.close()


def take_snapshot(config: Config, archive: Archive, tables: list[str], kind: str) -> SnapshotRecord:
    ident = archive.identity()
    gen = archive.generation(ident.generation)
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
            record = new_record(archive, gen.id, tables, kind, config.retention)
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
            return copy_tables(archive, record, snap, {t: view[t].oid for t in tables}, progress=log)  # type: ignore[union-attr]
    finally:
        lock.release()


def _ddl_trigger(config: Config, log: Log) -> None:
    """Install the DDL trigger where this role may (a superuser), so that schema changes are in the
    stream at their exact position (capture/ddl_trigger.py)."""
    with connect(config.dsn, application_name="pgtape init") as conn:
        _install_ddl_trigger(conn, log)


def _install_ddl_trigger(conn: psycopg.Connection, log: Log) -> None:
    if ddl_trigger.installed(conn):
        return
    if ddl_trigger.may_install(conn):
        ddl_trigger.install(conn)
        off = ddl_trigger.disabled(conn)
        if off:
            log(f"the DDL trigger is disabled ({', '.join(off)}): capture notices schema changes by polling the "
                "catalog, at an approximate position; ALTER EVENT TRIGGER ... ENABLE records them exactly")
        else:
            log("installed the DDL trigger: schema changes are recorded on the tape at their exact position")
    else:
        log("the DDL trigger is not installed (that needs a superuser): capture notices schema changes by polling "
            "the catalog, at an approximate position; run pgtape init once as a superuser to install it")


def _initial_base(archive: Archive, generation: int) -> SnapshotRecord | None:
    gen = archive.generation(generation)
    for r in catalog.load_all(archive):
        if r.generation == generation and r.kind == "initial" and r.status == catalog.COMPLETED \
                and r.as_of_lsn == gen.start_lsn:
            return r
    return None


def _seal_open_segment(archive: Archive, generation: int) -> None:
    """A generation that ends keeps its tape, sealed: it can still be replayed on its own."""
    segments = archive.segments(generation)
    if segments and segments[-1].is_open:
        writer, _ = SegmentWriter.recover(segments[-1].path)
        writer.seal()


def _drop_slot(repl: psycopg.Connection, name: str) -> None:
    try:
        repl.execute(f"DROP_REPLICATION_SLOT {name}")
    except psycopg.errors.ObjectInUse:
        raise PgtapeError(f"replication slot {name} is in use: stop pgtape capture first") from None

