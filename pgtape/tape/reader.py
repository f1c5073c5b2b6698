"""Reading a generation's tape in commit order: transactions and their changes, resolved.

Segments are read one after another; relation ids are resolved per segment; only whole
transactions come out. Memory is one frame plus one change at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from pgtape.copytext import split_row
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive, SegmentFile
from pgtape.tape.crypto import generation_mismatch
from pgtape.names import split_table
from pgtape.tape.records import Begin, Change, Commit, Message, Relation, Schema, Truncate
from pgtape.tape.segment import SegmentError, SegmentReader


@dataclass(frozen=True)
class Txn:
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: int  # µs UTC


@dataclass(frozen=True)
class RowChange:
    """One change with names resolved. `new`/`old` map column -> text value (None = NULL)."""

    txn: Txn
    op: str  # I, U, D, T (truncate), M (logical message), S (schema change)
    schema: str
    table: str
    new: dict[str, str | None] | None
    old: dict[str, str | None] | None
    absent: list[str]  # unchanged TOAST columns of an update: value not sent, not NULL
    types: dict[str, str]
    key: list[str]
    message: Message | None = None
    shape: Schema | None = None  # S: the table's shape from here on


def iter_changes(archive: Archive, generation: int, from_lsn: int | None = None,
                 to_lsn: int | None = None) -> Iterator[RowChange]:
    """Changes of transactions whose end LSN lies in (from_lsn, to_lsn], in commit order."""
    encrypted = archive.generation(generation).encrypted
    for seg in archive.segments(generation):
        if from_lsn is not None and seg.end_lsn is not None and seg.end_lsn <= from_lsn:
            continue
        if to_lsn is not None and seg.start_lsn >= to_lsn:
            break
        yield from _segment_changes(archive, seg, from_lsn, to_lsn, (generation, encrypted))


def _segment_changes(archive: Archive, seg: SegmentFile, from_lsn: int | None,
                     to_lsn: int | None, generation: tuple[int, bool]) -> Iterator[RowChange]:
    reader = archive.read_segment(seg, SegmentReader)
    if problem := generation_mismatch(reader.encrypted, *generation):
        raise SegmentError(seg.path, 0, problem)
    relations: dict[int, Relation] = {}
    txn: Txn | None = None
    wanted = False
    last_end = seg.start_lsn
    for r in reader.records():
        if isinstance(r, Change):
            if wanted and txn is not None:
                yield _resolve(txn, r, relations)
        elif isinstance(r, Relation):
            relations[r.id] = r
        elif isinstance(r, Begin):
            if r.end_lsn <= last_end:
                raise SegmentError(seg.path, None, f"transaction {r.xid} ending at {format_lsn(r.end_lsn)} does not "
                                                   f"follow the previous one ({format_lsn(last_end)})")
            last_end = r.end_lsn
            txn = Txn(r.xid, r.commit_lsn, r.end_lsn, r.commit_time)
            wanted = (from_lsn is None or r.end_lsn > from_lsn) and (to_lsn is None or r.end_lsn <= to_lsn)
        elif isinstance(r, Truncate):
            if wanted and txn is not None:
                yield RowChange(txn, "T", r.schema, r.table, None, None, [], {}, [])
        elif isinstance(r, Message):
            if wanted and txn is not None:
                yield RowChange(txn, "M", "", "", None, None, [], {}, [], r)
        elif isinstance(r, Schema):
            if wanted and txn is not None:
                schema, table = split_table(r.table)
                yield RowChange(txn, "S", schema, table, None, None, [], dict(zip(r.columns, r.types)), r.key,
                                shape=r)
        elif isinstance(r, Commit):
            txn = None
    if txn is not None:
        raise SegmentError(seg.path, None, f"transaction {txn.xid} has no commit record")


def _resolve(txn: Txn, c: Change, relations: dict[int, Relation]) -> RowChange:
    rel = relations[c.rel]
    new = dict(zip(rel.columns, split_row(c.row))) if c.row is not None else None
    old = None
    types = dict(zip(rel.columns, rel.types))
    if c.old is not None:
        orel = relations[c.old_rel]
        old = dict(zip(orel.columns, split_row(c.old)))
        for name, t in zip(orel.columns, orel.types):
            types.setdefault(name, t)
    return RowChange(txn, c.op, rel.schema, rel.table, new, old, c.absent or [], types, rel.key)
