"""Replay: a base snapshot plus the tape up to the target, folded per table.

`prepare()` reads the tape once (from the base's as-of LSN to the target) into TableFolds and
returns the plan; `TableResult.rows()` then streams each table's final rows out of its base file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pgtape.errors import PgtapeError
from pgtape.tape.archive import Archive
from pgtape.tape.reader import Txn, iter_changes
from pgtape.tape.segment import SegmentError
from pgtape.pg import split_table
from replay.fold import TableFold
from replay.plan import Window, choose_base, window
from replay.target import Target
from snapshots import catalog
from snapshots.catalog import SnapshotRecord
from snapshots.format import TableReader, table_file_name

MARK_PREFIX = "pgtape"


@dataclass
class Plan:
    generation: int
    window: Window
    base: SnapshotRecord
    target: Target
    folds: dict[str, TableFold]
    last_txn: Txn | None  # the last transaction applied (None: the base alone)
    transactions: int
    changes: int
    base_dir: Path

    def rows(self, table: str) -> Iterator[bytes]:
        """The table's rows at the target, COPY text lines without LF."""
        return self.folds[table].rows(_base_lines(self.base_dir, table))


def _base_lines(base_dir: Path, table: str) -> Iterator[bytes]:
    path = base_dir / table_file_name(*split_table(table))
    try:
        reader = TableReader(path)
    except FileNotFoundError:
        raise PgtapeError(f"base file {path} is missing (run pgtape verify)") from None
    except SegmentError as e:
        raise PgtapeError(f"damaged base: {e}") from None
    try:
        for chunk in reader.chunks():
            lines = chunk.split(b"\n")
            lines.pop()  # chunks end with LF
            yield from lines
    except SegmentError as e:
        raise PgtapeError(f"damaged base: {e}") from None


def prepare(archive: Archive, tables: list[str], target: Target,
            progress: Callable[[int], None] | None = None, complete_to: int | None = None) -> Plan:
    """`complete_to`: an LSN up to which the tape is known complete although no record says so
    yet (the slot's confirmed position, which capture advances only over durable data)."""
    gen = archive.identity().generation
    w, bases = window(archive, gen, tables)
    if complete_to is not None and complete_to > w.to_lsn:
        w = Window(w.from_lsn, w.from_time, complete_to, w.to_time)
    if target.kind == "name":
        target = resolve_mark(archive, target)
    base = choose_base(w, bases, target)
    base_dir = catalog.snapshot_dir(archive, gen, base.id)
    folds: dict[str, TableFold] = {}
    for t in tables:
        path = base_dir / table_file_name(*split_table(t))
        try:
            h = TableReader(path).header
        except (FileNotFoundError, SegmentError) as e:
            raise PgtapeError(f"base {base.id} is unreadable for {t}: {e} (run pgtape verify)") from None
        if not h.key:
            raise PgtapeError(f"{t} has no primary key: replay matches rows by primary key")
        folds[t] = TableFold(t, list(h.columns), list(h.types), list(h.key), list(h.columns))
    last: Txn | None = None
    transactions = changes = 0
    stop_after: int | None = None  # end LSN of the transaction holding the named mark
    try:
        for c in iter_changes(archive, gen, base.as_of_lsn):
            txn = c.txn
            if last is None or txn.end_lsn != last.end_lsn:
                if stop_after is not None or target.is_past(txn):
                    break
                last = txn
                transactions += 1
                if progress and transactions % 10000 == 0:
                    progress(transactions)
            if c.op == "M":
                if c.message and c.message.prefix == MARK_PREFIX and target.kind == "name" and \
                        _mark_name(c.message.content) == target.name:
                    stop_after = txn.end_lsn
                continue
            fold = folds.get(f"{c.schema}.{c.table}")
            if fold is not None:
                fold.apply(c)
                changes += 1
    except SegmentError as e:
        raise PgtapeError(f"damaged tape: {e} (run pgtape verify)") from None
    if target.kind == "name" and stop_after is None:
        raise PgtapeError(f"recovery point {target.name!r} is not on the tape yet: is capture running?")
    return Plan(gen, w, base, target, folds, last, transactions, changes, base_dir)


def _mark_name(content: str) -> str | None:
    try:
        return json.loads(content).get("name")
    except (ValueError, AttributeError):
        return None


def resolve_mark(archive: Archive, target: Target) -> Target:
    from replay.marks import load_mark
    mark = load_mark(archive, target.name or "")
    return Target("name", lsn=mark.lsn, name=target.name)
