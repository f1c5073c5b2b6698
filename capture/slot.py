"""The replication slot and the archive's identity: where a capture may start, and refusals.

Continuity rule: a tape continues only from the slot it was started from, on the same database
system. A missing slot, another system or another database is a fatal error, never a silent
new slot (docs/ARCHITECTURE.md, "Generations").
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import quote_literal
from pgtape.tape.archive import Archive, Generation

PLUGIN = "wal2json"


@dataclass(frozen=True)
class SystemInfo:
    system_id: str
    database: str


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    confirmed_flush_lsn: int | None


def identify_system(conn: psycopg.Connection) -> SystemInfo:
    [(system_id, _timeline, _xlogpos, dbname)] = conn.execute("IDENTIFY_SYSTEM").fetchall()
    if dbname is None:
        raise PgtapeError("the connection is not to a database: put dbname=... in the DSN")
    return SystemInfo(str(system_id), dbname)


def find_slot(conn: psycopg.Connection, name: str) -> SlotInfo | None:
    row = conn.execute(
        "SELECT slot_name, plugin, database, confirmed_flush_lsn::text FROM pg_replication_slots "
        f"WHERE slot_name = {quote_literal(name)}").fetchone()
    if row is None:
        return None
    return SlotInfo(row[0], row[1], row[2], parse_lsn(row[3]) if row[3] else None)


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


def gap_message(slot_name: str, confirmed: int, tape_end: int) -> str:
    return (f"replication slot {slot_name} has confirmed up to {format_lsn(confirmed)}, but the tape ends at "
            f"{format_lsn(tape_end)}: the transactions in ({format_lsn(tape_end)}, {format_lsn(confirmed)}] were "
            "acknowledged yet are not on the tape, and the server will not send them again (was the archive "
            "restored from an older copy, or did its disk lose its last writes?)")


def check_no_gap(slot: SlotInfo | None, tape_end: int) -> None:
    """The gap rule (docs/ARCHITECTURE.md): capture never resumes across positions the slot confirmed
    that the tape does not hold."""
    if slot is not None and slot.confirmed_flush_lsn is not None and slot.confirmed_flush_lsn > tape_end:
        raise PgtapeError(f"{gap_message(slot.name, slot.confirmed_flush_lsn, tape_end)}; the tape up to "
                          f"{format_lsn(tape_end)} stays replayable, and pgtape init --restart starts a new "
                          "generation to capture again")
