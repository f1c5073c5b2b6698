"""An oracle for replay tests, independent of pgtape: what the tables really were, and when.

`History` runs each transaction itself and records, around its COMMIT, the server clock and WAL
insert position (so a commit's time and LSN are bracketed without reading the tape), the
transaction id, and afterwards a canonical dump of the tables: `COPY t TO STDOUT` under the
rendering settings pgtape documents (docs/ARCHITECTURE.md, "Values"), sorted. Replay output is
compared with these dumps as COPY text lines, which keeps NULL (\\N) apart from every string.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

import psycopg
import pytest

from conftest import one_row, scalar

# Written out here rather than imported from pgtape.pg: the oracle must not share pgtape's code.
PINNED_OPTIONS = ("-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex "
                  "-c IntervalStyle=postgres")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def seed_for(request: pytest.FixtureRequest) -> int:
    text = os.environ.get("PGTAPE_TEST_SEED")
    seed = int(text) if text else random.randrange(1 << 32)
    print(f"{request.node.name}: seed {seed} (repeat with PGTAPE_TEST_SEED={seed})")
    return seed


def oracle_connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, options=PINNED_OPTIONS)


def us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


def iso(us_: int) -> str:
    """µs since 1970 -> ISO 8601 with an explicit UTC offset, as a user would type it."""
    return (EPOCH + timedelta(microseconds=us_)).isoformat()


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class TableState:
    columns: tuple[str, ...]
    types: tuple[str, ...]
    lines: tuple[bytes, ...]  # COPY text lines without LF, sorted

    def rows(self) -> dict[bytes, tuple[bytes, ...]]:
        """By the first column (the tests' primary key)."""
        return {line.split(b"\t")[0]: tuple(line.split(b"\t")) for line in self.lines}


def copy_lines(conn: psycopg.Connection, query: str) -> tuple[bytes, ...]:
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT") as cp:
        data = b"".join(bytes(chunk) for chunk in cp)
    lines = data.split(b"\n")
    assert lines.pop() == b""
    return tuple(sorted(lines))


def table_state(conn: psycopg.Connection, table: str) -> TableState:
    """Columns, types and sorted COPY lines. Types are named as format_type names them with only
    pg_catalog on the search path (a type of another schema qualified: public.mood), so a type's
    name does not depend on the session that reads it."""
    oid = scalar(conn.execute("SELECT %s::regclass::oid", (table,)))
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog")
        cols = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,)).fetchall()
    return TableState(tuple(c for c, _ in cols), tuple(t for _, t in cols), copy_lines(conn, f"SELECT * FROM {table}"))


def dump(conn: psycopg.Connection, tables: Iterable[str]) -> dict[str, TableState]:
    return {t: table_state(conn, t) for t in tables}


def unescape_copy(field: bytes) -> str | None:
    """One COPY text field -> its value (None for NULL), written independently of pgtape/copytext.py."""
    if field == b"\\N":
        return None
    out = bytearray()
    i = 0
    simple = {ord("t"): 9, ord("n"): 10, ord("r"): 13, ord("b"): 8, ord("f"): 12, ord("v"): 11, ord("\\"): 92}
    while i < len(field):
        c = field[i]
        if c == 92 and i + 1 < len(field):
            n = field[i + 1]
            if n in simple:
                out.append(simple[n])
                i += 2
                continue
        out.append(c)
        i += 1
    return out.decode()


def compare(table: str, columns: Sequence[str], types: Sequence[str] | None, lines: Iterable[bytes],
            expected: TableState) -> str | None:
    """None if the replayed table equals the recorded one, column for column and row for row, else
    what differs. (Schema changes are on the tape at their position: no column may be missing.)"""
    got = sorted(lines)
    if list(columns) != list(expected.columns):
        return f"{table}: columns {list(columns)} != real {list(expected.columns)}"
    if types is not None and list(types) != list(expected.types):
        return f"{table}: column types {list(types)} != real {list(expected.types)}"
    exp_lines = list(expected.lines)
    if got == exp_lines:
        return None
    extra = sorted(set(got) - set(exp_lines))
    lost = sorted(set(exp_lines) - set(got))

    def short(x: list[bytes]) -> list[bytes]:
        return [b[:160] for b in x[:3]]
    return (f"{table}: {len(got)} rows replayed vs {len(exp_lines)} real; only in replay {short(extra)}; "
            f"only real {short(lost)}")


@dataclass
class Step:
    """The tables right after one transaction (or an initial state: xid None)."""

    label: str
    xid: int | None  # 32-bit, as on the tape
    pre_time: int  # µs: server clock inside the transaction, just before COMMIT
    pre_lsn: int  # WAL insert position just before COMMIT
    post_time: int  # µs: server clock just after COMMIT returned
    post_lsn: int  # WAL insert position just after COMMIT
    state: dict[str, TableState]
    on_tape: bool = True  # False for a transaction that changes no captured row (DDL)


class History:
    def __init__(self, dsn: str, tables: Sequence[str]) -> None:
        self.conn = oracle_connect(dsn)
        self.tables = list(tables)
        self.steps: list[Step] = []

    def close(self) -> None:
        self.conn.close()

    def now(self) -> tuple[int, int]:
        t, lsn = one_row(self.conn.execute("SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text"))
        return us(t), lsn_int(lsn)

    def observe(self, label: str) -> Step:
        """The current state, with no transaction of its own (e.g. right after pgtape init)."""
        t, lsn = self.now()
        step = Step(label, None, t, lsn, t, lsn, dump(self.conn, self.tables), on_tape=False)
        self.steps.append(step)
        return step

    def txn(self, label: str, statements: Sequence[str | tuple[str, Sequence[Any]]], on_tape: bool = True) -> Step:
        c = self.conn
        c.execute("BEGIN")
        try:
            for s in statements:
                if isinstance(s, tuple):
                    c.execute(s[0], s[1])
                else:
                    c.execute(s)
            t, lsn, xid = one_row(c.execute("SELECT clock_timestamp(), pg_current_wal_insert_lsn()::text, "
                                            "pg_current_xact_id()::text"))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        post_t, post_lsn = self.now()
        step = Step(label, int(xid) & 0xFFFFFFFF, us(t), lsn_int(lsn), post_t, post_lsn,
                    dump(c, self.tables), on_tape)
        self.steps.append(step)
        return step

    def state_at(self, kind: str, value: int, exclusive: bool) -> Step | None:
        """The recorded step a time or LSN target certainly selects; None if `value` falls inside a
        commit's bracket (then only the tape knows which side of it the commit lies).

        Step i's commit time lies in [pre_time_i, post_time_i], its commit LSN in [pre_lsn_i, post_lsn_i).
        Inclusive: step i applies iff its commit point <= value; exclusive: iff < value."""
        chosen = self.steps[0]
        for s in self.steps[1:]:
            lo, hi = (s.pre_time, s.post_time) if kind == "time" else (s.pre_lsn, s.post_lsn)
            applied = hi < value if exclusive else hi <= value
            not_applied = lo >= value if exclusive else lo > value
            if applied:
                chosen = s
            elif not_applied:
                break
            else:
                return None
        return chosen


def parse_pg_csv(text: str) -> list[list[str | None]]:
    """CSV as PostgreSQL writes and reads it: an empty unquoted field is NULL, "" an empty string."""
    rows: list[list[str | None]] = []
    row: list[str | None] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted field")
                if text[i] == '"':
                    if i + 1 < n and text[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(text[i])
                i += 1
            value: str | None = "".join(buf)
        else:
            j = i
            while j < n and text[j] not in ",\r\n":
                j += 1
            value = text[i:j] or None
            i = j
        row.append(value)
        if i >= n:
            rows.append(row)
            break
        if text[i] == ",":
            i += 1
            if i >= n:
                row.append(None)
                rows.append(row)
            continue
        if text.startswith("\r\n", i):
            i += 2
        elif text[i] == "\n":
            i += 1
        else:
            raise ValueError(f"unexpected {text[i]!r} after a field at {i}")
        rows.append(row)
        row = []
    return rows
