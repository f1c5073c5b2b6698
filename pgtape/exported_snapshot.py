"""A new slot with an exported snapshot, imported at once into a data connection.

The snapshot sees exactly the transactions whose commit precedes the slot's consistent point
(docs/ARCHITECTURE.md, "Snapshots"): every base is copied under one, the initial base through the
capture slot itself, later ones and verify --live through a TEMPORARY slot.
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass

import psycopg

from pgtape.errors import PgtapeError
from pgtape.lsn import parse_lsn
from pgtape.pg import connect, first_line
from pgtape.plugin_allowlist import is_refusal, refusal_message
from pgtape.slot import PLUGIN

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


def temporary_slot_name() -> str:
    return f"pgtape_snap_{os.getpid()}_{secrets.token_hex(3)}"
