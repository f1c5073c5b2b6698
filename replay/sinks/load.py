"""Tables for a replay's rows and COPY into them: what every database destination shares."""

from __future__ import annotations

import threading
from itertools import islice
from typing import Callable, Iterator

import psycopg

from pgtape.errors import PgtapeError
from pgtape.pg import quote_ident
from pgtape.replay.fold import TableFold

BATCH_ROWS = 4096  # lines per COPY write: joined in one C call


class Stopped(Exception):
    """The load was asked to stop (another table's load failed, or Ctrl-C)."""


def qual(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def key_list(fold: TableFold) -> str:
    return ", ".join(quote_ident(k) for k in fold.key)


def live_relation(conn: psycopg.Connection, fold: TableFold) -> str:
    """The live table the fold replays, by its object (oid): renamed since, it is still the one."""
    row = conn.execute("SELECT oid::regclass::text FROM pg_class WHERE oid = %s", (fold.oid,)).fetchone()
    if row is None:
        raise PgtapeError(f"live table {fold.name} no longer exists (dropped): replay into a recovery schema instead")
    return row[0]


def create_table(conn: psycopg.Connection, qualified: str, fold: TableFold, temp: bool = False,
                 primary_key: bool = True) -> None:
    """`primary_key=False`: the caller adds it after loading, one index build instead of row by row."""
    cols = ", ".join(f"{quote_ident(c)} {t}" for c, t in zip(fold.columns, fold.types))
    pk = f", PRIMARY KEY ({key_list(fold)})" if fold.key and primary_key else ""
    conn.execute(f"CREATE {'TEMP ' if temp else ''}TABLE {qualified} ({cols}{pk})")


def load_rows(conn: psycopg.Connection, qualified: str, rows: Iterator[bytes], freeze: bool = False,
              stop: threading.Event | None = None, counted: Callable[[int], None] | None = None) -> int:
    """COPY the rows in; returns how many. `freeze` needs the table created in this transaction;
    `stop`, checked before each write, abandons the COPY (raises Stopped); `counted` hears each write's
    number of rows (Progress.loaded)."""
    n = 0
    rows = iter(rows)
    with conn.cursor().copy(f"COPY {qualified} FROM STDIN{' WITH (FREEZE)' if freeze else ''}") as copy:
        while lines := list(islice(rows, BATCH_ROWS)):
            if stop is not None and stop.is_set():
                raise Stopped
            n += len(lines)
            if counted is not None:
                counted(len(lines))
            lines.append(b"")  # every line ends with LF
            copy.write(b"\n".join(lines))
    return n


def load_blocks(conn: psycopg.Connection, qualified: str, blocks: Iterator[bytes], freeze: bool = False,
                stop: threading.Event | None = None, counted: Callable[[int], None] | None = None) -> int:
    """load_rows for blocks of whole lines each ending with LF (Plan.blocks): written as they come."""
    n = 0
    with conn.cursor().copy(f"COPY {qualified} FROM STDIN{' WITH (FREEZE)' if freeze else ''}") as copy:
        for block in blocks:
            if stop is not None and stop.is_set():
                raise Stopped
            lines = block.count(b"\n")
            n += lines
            if counted is not None:
                counted(lines)
            copy.write(block)
    return n
