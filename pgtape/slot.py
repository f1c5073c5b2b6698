"""Replication slots: the server's identity, finding a slot, creating one with an exported snapshot,
and the gap rule.

Shared by capture (its slot), snapshots (a temporary slot per snapshot, the capture slot at init)
and verify --live (a temporary slot). Continuity rule: docs/ARCHITECTURE.md, "Generations".
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass

import psycopg

from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import connect, first_line, quote_literal
from pgtape.plugin_allowlist import PLUGIN, is_refusal, refusal_message

# Creating a logical slot waits for every transaction open at that moment to end.
SLOT_TIMEOUT = 60.0


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
    system_id, _timeline, _xlogpos, dbname = conn.execute("IDENTIFY_SYSTEM").fetchone()  # type: ignore[misc]
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


def temporary_slot_name() -> str:
    return f"pgtape_snap_{os.getpid()}_{secrets.token_hex(3)}"


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
