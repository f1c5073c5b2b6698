"""A generation: starting one (the capture slot and its initial base) and continuing one.

initialize(): a new generation. Its permanent capture slot is created with an exported
snapshot, and the base is copied under it: the tape starts exactly where the base ends. It holds
the snapshot lock and expects the caller to hold the capture lock.
open_generation(): the current generation, checked against the server, slot and tables capture
is given. Continuity rule: a tape continues only from the slot it was started from, on the same
database system (docs/ARCHITECTURE.md, "Generations").
"""

from __future__ import annotations

import logging
from typing import Callable

import psycopg

from pgtape.capture import ddl_trigger
from pgtape.capture.tables import resolve_tables
from pgtape.config import Config
from pgtape.errors import PgtapeError, UsageError
from pgtape.lsn import format_lsn
from pgtape.pg import connect
from pgtape.exported_snapshot import create_slot_exporting
from pgtape.slot import PLUGIN, SlotInfo, SystemInfo, find_slot, identify_system
from pgtape.tape.archive import Archive, Generation
from pgtape.tape.crypto import KeyUnavailable
from pgtape.tape.segment import SegmentWriter
from pgtape.tape.views import save_view
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.snapshots.take import SnapshotLock, copy_tables, new_record

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
                archive.check_encryption(gen)  # a key added or removed: only --restart switches
                # Prune may delete the initial base once a newer complete one stays (PRUNED.json records it).
                if base is not None or gen.id in archive.pruned().tape_start_lsn:
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


def open_generation(conn: psycopg.Connection, archive: Archive, config: Config) -> tuple[SystemInfo, Generation]:
    """The archive's current generation, checked against this server, slot and tables."""
    system = identify_system(conn)
    slot = find_slot(conn, config.slot)
    ident = archive.identity()
    gen = archive.generation(ident.generation)
    if ident.system_id != system.system_id:
        raise PgtapeError(f"{archive.path} belongs to database system {ident.system_id}, but the server is "
                          f"{system.system_id}: point --dsn at the original server or use another --archive")
    if ident.database != system.database:
        raise PgtapeError(f"{archive.path} holds database {ident.database}, but the connection is to "
                          f"{system.database}: fix dbname in the DSN or use another --archive")
    if ident.slot != config.slot:
        raise PgtapeError(f"{archive.path} is captured through slot {ident.slot}, not {config.slot}: "
                          f"use --slot {ident.slot}")
    if sorted(gen.tables) != sorted(config.tables):
        raise PgtapeError(f"generation {gen.id} of {archive.path} captures {','.join(gen.tables)}, not "
                          f"{','.join(config.tables)}: use --tables {','.join(gen.tables)}")
    archive.check_encryption(gen)
    check_slot(slot, config.slot, system.database, gen)
    return system, gen


def check_slot(slot: SlotInfo | None, name: str, database: str, gen: Generation) -> None:
    if slot is None:
        raise PgtapeError(
            f"replication slot {name} has disappeared: changes after the tape's end may be lost, so capture "
            f"will not continue generation {gen.id} (started at {format_lsn(gen.start_lsn)}); "
            f"to start over, capture into a new --archive")
    if slot.plugin != PLUGIN:
        raise PgtapeError(f"replication slot {name} uses plugin {slot.plugin}, not {PLUGIN}: use another --slot")
    if slot.database != database:
        raise PgtapeError(f"replication slot {name} belongs to database {slot.database}, not {database}")


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
        try:
            writer, _ = SegmentWriter.recover(archive.storage, segments[-1].key)
        except KeyUnavailable as e:  # switching encryption off: the old tape stays as it is, readable with its key
            log(f"{segments[-1].path.name} stays open (it reads as it is, up to its last transaction): {e}")
            return
        writer.seal()


def _drop_slot(repl: psycopg.Connection, name: str) -> None:
    try:
        repl.execute(f"DROP_REPLICATION_SLOT {name}")
    except psycopg.errors.ObjectInUse:
        raise PgtapeError(f"replication slot {name} is in use: stop pgtape capture first") from None

