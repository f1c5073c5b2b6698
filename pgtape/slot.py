"""The replication slot and the server's identity: where a capture may start, and the gap rule.

Continuity rule: a tape continues only from the slot it was started from, on the same database
system. A missing slot, another system or another database is a fatal error, never a silent
new slot (docs/ARCHITECTURE.md, "Generations"; capture/generation.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import quote_literal

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
