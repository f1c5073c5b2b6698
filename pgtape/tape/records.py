r"""Records on the tape. docs/FORMAT.md is the specification; this is its code.

A tuple is one COPY text line (pgtape/copytext.py): PostgreSQL's canonical text output of each
value, rendered with the pinned session settings of pgtape.pg, escaped as COPY TO escapes it, \N
for NULL, joined by TAB; never a binary float. Replay keeps these lines as they are, from the tape
to the COPY that loads the result.
A transaction is Begin, its Relation/Change/Truncate/Message records, then Commit.
Relations are interned per segment: a Change refers to one by id, so a segment reads alone.
"""

from __future__ import annotations

import msgspec

from pgtape.tape.crypto import Encryption


class Relation(msgspec.Struct, tag="R", array_like=True, frozen=True):
    """A tuple shape: table plus the columns (and their types) a change carries, in order."""

    id: int
    schema: str
    table: str
    columns: list[str]
    types: list[str]  # with typmod, as format_type() prints: numeric(12,2)
    key: list[str]  # primary-key columns, [] when the table has none (REPLICA IDENTITY FULL)


class Begin(msgspec.Struct, tag="B", array_like=True):
    xid: int
    commit_lsn: int  # start of the commit record
    end_lsn: int  # end of the commit record: the transaction's position on the tape
    commit_time: int  # microseconds since 1970-01-01 UTC


class Change(msgspec.Struct, tag="C", array_like=True, gc=False):
    op: str  # "I", "U" or "D"
    rel: int  # Relation id of `row` (I, U), or of `old` for D
    row: bytes | None  # new tuple (I, U), a COPY text line
    old_rel: int  # Relation id of `old`, -1 when there is none
    old: bytes | None  # old key or replica identity (U, D), a COPY text line
    absent: list[str] | None = None  # U only: unchanged TOAST columns, value not sent (not NULL)


class Truncate(msgspec.Struct, tag="T", array_like=True):
    schema: str
    table: str


class Message(msgspec.Struct, tag="M", array_like=True):
    """A logical message (pg_logical_emit_message) with a captured prefix."""

    lsn: int
    transactional: bool
    prefix: str
    content: str


MARK_PREFIX = "pgtape"  # a Message with this prefix is a recovery point (pgtape mark)


class Schema(msgspec.Struct, tag="S", array_like=True):
    """A captured table's shape from here on: a schema change (DDL) at its position in its
    transaction, or the table dropped. Columns are matched to earlier ones by attnum, so a renamed
    column keeps its values; a column new here holds `missing` in every row that existed before."""

    table: str  # the captured table: its canonical name when the generation started (its identity)
    name: str  # its canonical name from here on (differs after ALTER TABLE ... RENAME / SET SCHEMA)
    columns: list[str]
    types: list[str]  # with typmod
    attnums: list[int]
    missing: list[bytes | None]  # COPY text field earlier rows read for a column added here; None: NULL
    key: list[str]
    dropped: bool  # the table no longer exists (its other fields are empty)


class Commit(msgspec.Struct, tag="E", array_like=True):
    end_lsn: int
    changes: int  # Change and Truncate records in the transaction, for verification


class Position(msgspec.Struct, tag="P", array_like=True):
    """Outside transactions: the tape is complete up to `lsn` (server clock `time`, µs UTC).

    Written while captured tables are idle so the recoverable window keeps advancing."""

    lsn: int
    time: int


Record = Relation | Begin | Change | Truncate | Message | Schema | Commit | Position


class SegmentHeader(msgspec.Struct, frozen=True, omit_defaults=True):
    format_version: int
    generation: int
    system_id: str
    slot: str
    start_lsn: int  # the segment holds positions after this
    created_at: int  # µs UTC
    encryption: Encryption | None = None  # how every later frame is encrypted (absent: not at all)


class SegmentFooter(msgspec.Struct, frozen=True):
    start_lsn: int
    end_lsn: int  # the tape is complete up to here when the segment was sealed
    transactions: int
    changes: int
    first_commit_lsn: int | None
    last_commit_lsn: int | None
    first_commit_time: int | None
    last_commit_time: int | None
    complete_time: int | None  # the tape is known complete up to this time (last commit or Position)
    data_bytes: int  # bytes before the footer frame
    data_crc32: int  # crc32 of those bytes
