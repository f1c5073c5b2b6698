"""Folding the tape onto a base: per table, the final state of every key the tape touched.

Memory is bounded by the number of keys changed between base and target, never by table size:
the base streams through (`rows()`), and only changed keys are held (`TableFold.entries`).
Rows stay the COPY text lines the tape holds (pgtape/copytext.py) from tape to output, and keys
are the key fields of those lines, so they compare byte for byte with base lines. Rules
(docs/ARCHITECTURE.md, "Replay"):
  - an UPDATE's absent (unchanged TOAST) columns keep the row's previous value, which may come
    from the base row of the key the row had before a primary-key change (`_Partial.inherit`);
  - TRUNCATE drops the base and every earlier change of the table;
  - the result has the table's last shape seen on the tape up to the target (else the base's):
    a column added later is NULL in rows not written since, a dropped column disappears.
This is replay's hot loop: a whole-row change costs one key slice and one dict store.

Memory is bounded by a budget (`Budget`, docs/ARCHITECTURE.md "Replay memory"): past it, a fold
writes its entries to a sorted run (replay/spill.py) and starts afresh; `rows()` then merges the
runs, newest first per key, with the base sorted the same way.
"""

from __future__ import annotations

import gc
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from operator import countOf
from typing import Any, Callable, Iterable, Iterator

from pgtape.copytext import NULL
from pgtape.errors import PgtapeError
from pgtape.replay.spill import (RECORD_OVERHEAD, Keys, Run, SpillDir, Values, Window, join, merge_runs, merge_windows,
                                 read_run, reduce_runs, sorted_pairs)
from pgtape.tape.records import Change, Relation, Schema

Key = bytes  # the key fields of a COPY text line, joined by TAB
KeyReader = Callable[[bytes], Key]


class _Partial:
    """A row known only in part: values by column, the rest from the row `inherit` had before (in the
    base, or in a run written before run `runs_before`), or NULL when `inherit` is None."""

    __slots__ = ("values", "inherit", "runs_before")

    def __init__(self, values: dict[str, bytes], inherit: Key | None, runs_before: int = 0) -> None:
        self.values = values
        self.inherit = inherit
        self.runs_before = runs_before


# An entry: the whole row in the fold's current shape | None (deleted) | a _Partial.
Entry = bytes | None | _Partial

# How an entry is written in a run, beside its key: the line (a whole row) | None (deleted) |
# [PARTIAL, values] (the other columns hold their fill) | [PARTIAL_SELF, values] (the others as the
# key's previous state: in an older run, else the base). A partial row that takes its other columns
# from another key (an UPDATE of the primary key without its TOAST columns) is never written: it
# stays in memory.
PARTIAL, PARTIAL_SELF = 2, 3


def key_reader(columns: list[str], key: list[str]) -> KeyReader | None:
    """A function from a COPY text line of `columns` to its key; None if a key column is missing."""
    if not key or not set(key) <= set(columns):
        return None
    pos = [columns.index(k) for k in key]
    if len(pos) == 1:
        p = pos[0]
        return lambda line: line.split(b"\t", p + 1)[p]
    n = max(pos) + 1

    def read(line: bytes) -> Key:
        fields = line.split(b"\t", n)
        return b"\t".join([fields[i] for i in pos])
    return read


@dataclass
class RelInfo:
    """What the fold needs of one tape Relation, computed once per segment."""

    columns: list[str]
    key_of: KeyReader | None
    key_is_line: bool  # the columns are the key: a line is its own key (the usual DELETE identity)
    key_first: bool  # a one-column key in the first column: the key is the line up to its first TAB
    full_shape: bool  # columns equal the fold's current columns
    fast: bool = False  # full_shape and a key: a whole row is stored as it is

    def __post_init__(self) -> None:
        self.set_shape(self.full_shape)

    def set_shape(self, full: bool) -> None:
        self.full_shape, self.fast = full, full and self.key_of is not None


@dataclass
class TableFold:
    name: str  # the captured table (its identity, pgtape/names.py)
    columns: list[str]
    types: list[str]
    key: list[str]
    base_columns: list[str]
    from_lsn: int = 0  # the base's as-of LSN: transactions ending at or before it are in the base
    attnums: list[int] = field(default_factory=list)  # of `columns`, to follow renames (Schema records)
    relname: str = ""  # the table's canonical name at this point of the tape (changes with a rename)
    oid: int = 0  # the table's object: the live table, whatever its name now
    entries: dict[Key, Entry] = field(default_factory=dict)
    truncated: bool = False
    dropped: bool = False  # the table no longer exists at this point
    stale: str | None = None  # why the fold cannot go on (a key change): replay refuses targets past it
    base_pos: list[int | None] = field(default_factory=list)  # per column: its field in base lines, or None
    fill: list[bytes] = field(default_factory=list)  # per column: what rows lacking it hold (missing value)
    _rels: dict[int, RelInfo] = field(default_factory=dict)  # by Relation id, this segment
    _types: dict[str, str] = field(default_factory=dict)  # every column type seen
    spill: SpillDir | None = None  # where runs go; None: never spilled (no budget)
    runs: list[Run] = field(default_factory=list)  # oldest first
    next_run: int = 0  # the id of the next run (ids never repeat, also after a TRUNCATE)
    sort_bytes: int = 64 << 20  # memory for sorting the base when the fold has runs

    def __post_init__(self) -> None:
        self._types.update(zip(self.columns, self.types))
        if not self.base_pos:
            self.base_pos = [self.base_columns.index(c) if c in self.base_columns else None for c in self.columns]
            self.fill = [NULL] * len(self.columns)
        self.relname = self.relname or self.name

    def new_segment(self) -> None:
        self._rels.clear()

    def info(self, rel: Relation) -> RelInfo:
        info = self._rels.get(rel.id)
        if info is None:
            info = RelInfo(rel.columns, key_reader(rel.columns, self.key), rel.columns == self.key,
                           self.key == rel.columns[:1], rel.columns == self.columns)
            self._rels[rel.id] = info
            self._types.update(zip(rel.columns, rel.types))
        return info

    # -- applying the tape ----------------------------------------------------------------
    def truncate(self) -> None:
        self.truncated = True
        self.entries.clear()
        self._drop_runs()

    def _drop_runs(self) -> None:
        if self.spill is not None:
            for run in self.runs:
                self.spill.remove(run)
        self.runs = []

    def apply_schema(self, s: Schema) -> None:
        """The table's shape from here on (DDL at this point of its transaction). Columns follow
        their attnum, so a renamed column keeps its values; rows that existed before a column was
        added hold its missing value; a dropped column's values go."""
        if s.dropped:
            self.truncate()
            self.dropped = True
            return
        self.relname = s.name
        if s.key != self.key:
            self.stale = f"its key changed from ({', '.join(self.key)}) to ({', '.join(s.key)})"
            return
        src, fill = self._mapping(s)
        old_columns = self.columns
        if self.runs:
            self.spill_out()  # the runs are rewritten one at a time: memory holds one of them at most

        def remap(entries: dict[Key, Any]) -> dict[Key, Any]:
            return self._remap(entries, src, fill, old_columns, list(s.columns))
        self.entries = remap(self.entries)
        self._rewrite_runs(remap)
        self.base_pos = [self.base_pos[i] if i is not None else None for i in src]
        self.fill = fill
        self.columns, self.types, self.attnums = list(s.columns), list(s.types), list(s.attnums)
        self._types.update(zip(self.columns, self.types))
        for info in self._rels.values():
            info.set_shape(info.columns == self.columns)

    def _remap(self, entries: dict[Key, Any], src: list[int | None], fill: list[bytes], old_columns: list[str],
               columns: list[str]) -> dict[Key, Any]:
        """Entries in the shape `columns`, column i from old column src[i] (None: fill[i])."""
        for k, e in entries.items():
            if type(e) is bytes:
                fields = e.split(b"\t")
                entries[k] = b"\t".join([fields[i] if i is not None else f for i, f in zip(src, fill)])
            elif isinstance(e, _Partial):
                e.values = {c: e.values[old_columns[i]] for c, i in zip(columns, src)
                            if i is not None and old_columns[i] in e.values}
        return entries

    def _mapping(self, s: Schema) -> tuple[list[int | None], list[bytes]]:
        """For each column of `s`: where it was (by attnum) in the current shape, and what rows
        lacking it hold (a column added here: its missing value)."""
        src = [self.attnums.index(a) if a in self.attnums else None for a in s.attnums]
        return src, [self.fill[i] if i is not None else (m if m is not None else NULL) for i, m in zip(src, s.missing)]

    def apply(self, c: Change, info: RelInfo, old: RelInfo | None) -> None:
        """One change; `info` describes c.rel, `old` c.old_rel. The engine inlines the common
        cases (RelInfo.fast) and calls this for the rest."""
        if self.stale:
            return  # replay refuses every target past this point (replay/engine.py)
        op = c.op
        if op == "D":
            self.entries[self._key(old, c.old)] = None
            return
        row = c.row
        assert row is not None
        if not info.full_shape and (op == "I" or not c.absent or not set(info.columns) <= set(self.columns)):
            self._reshape(info.columns, c.absent)
        new_key = self._key(info, row)
        old_key = self._key(old, c.old) if c.old is not None else new_key
        # A whole row is now in the current shape (reshaped above); a partial one is merged.
        stored = row if op == "I" or not c.absent else self._merge_partial(old_key, info.columns, row)
        if old_key != new_key:
            self.entries[old_key] = None
        self.entries[new_key] = stored

    def _merge_partial(self, old_key: Key, columns: list[str], row: bytes) -> bytes | _Partial:
        """An UPDATE without its unchanged TOAST columns: those keep the row's previous values."""
        prev = self.entries.get(old_key, _MISSING)
        runs_before = self.next_run
        if prev is _MISSING:
            values: dict[str, bytes] = {}
            # Its previous state: in a run (if any was written since a TRUNCATE), else the base.
            inherit = None if self.truncated and not self.runs else old_key
        elif prev is None:
            raise _deleted_then_updated(self.name, old_key)
        elif isinstance(prev, bytes):
            values, inherit = dict(zip(self.columns, prev.split(b"\t"))), None
        else:
            values, inherit, runs_before = dict(prev.values), prev.inherit, prev.runs_before
        values.update(zip(columns, row.split(b"\t")))
        if all(c in values for c in self.columns):
            return b"\t".join([values[c] for c in self.columns])
        return _Partial(values, inherit, runs_before)

    def _reshape(self, columns: list[str], absent: list[str] | None) -> None:
        """A row in another shape: the table's columns changed (ALTER TABLE). Absent (unchanged
        TOAST) columns keep their place; columns new to the fold come after. Whole rows held in
        the old shape become partial: a column added since is NULL in them."""
        if absent:
            keep = set(columns) | set(absent)
            shape = [n for n in self.columns if n in keep] + [n for n in columns if n not in self.columns]
        else:
            shape = list(columns)
        if shape == self.columns:
            return
        old = self.columns
        if self.runs:
            self.spill_out()
        where = {c: i for i, c in enumerate(old)}
        self.base_pos = [self.base_pos[where[c]] if c in where else None for c in shape]
        self.fill = [self.fill[where[c]] if c in where else NULL for c in shape]
        self.attnums = []  # a shape seen only in rows: columns are known by name from here on
        self.columns, self.types = shape, [self._types[n] for n in shape]
        for info in self._rels.values():
            info.set_shape(info.columns == shape)

        def reshape(entries: dict[Key, Any]) -> dict[Key, Any]:
            return self._reshape_entries(entries, old)
        self.entries = reshape(self.entries)
        self._rewrite_runs(reshape)

    def _reshape_entries(self, entries: dict[Key, Any], old: list[str]) -> dict[Key, Any]:
        """Whole rows held in the old shape become partial (self.columns is the new shape)."""
        for k, e in entries.items():
            if type(e) is bytes:
                entries[k] = _Partial(dict(zip(old, e.split(b"\t"))), None)
        return entries

    def _key(self, info: RelInfo | None, line: bytes | None) -> Key:
        if info is None or info.key_of is None or line is None:
            raise PgtapeError(f"{self.name}: a change lacks the key columns {self.key}; replay needs the primary key")
        return info.key_of(line)

    # -- memory: measuring and spilling -----------------------------------------------------
    def state_bytes(self) -> int:
        """What the entries take in memory, object by object (sys.getsizeof; a deletion's shared None
        counts as 16 bytes, a little more than nothing)."""
        entries = self.entries
        size = sys.getsizeof(entries) + sum(map(len, entries)) + len(entries) * _BYTES
        try:  # whole rows and deletions (the usual case): as sys.getsizeof, but lengths summed in C loops
            deleted = countOf(entries.values(), None)
            rows = sum(map(len, filter(None, entries.values())))  # type: ignore[arg-type]
            return size + rows + (len(entries) - deleted) * _BYTES + deleted * sys.getsizeof(None)
        except TypeError:  # (a partial row has no length)
            pass
        size += sum(map(sys.getsizeof, entries.values()))
        for e in [e for e in entries.values() if type(e) is _Partial]:
            size += sys.getsizeof(e.values) + sum(map(sys.getsizeof, e.values.values()))
        return size

    def spill_out(self) -> None:
        """Write the entries to a new run, sorted by key, and drop them from memory (but partial rows
        waiting for another key's row: those stay)."""
        entries = self.entries
        if self.spill is None or not entries:
            return
        with _no_gc():  # (partial rows make dicts and lists: the collector would walk the whole state for nothing)
            whole = _Partial not in set(map(type, entries.values()))  # whole rows and deletions: written as they are
            keys = sorted(entries) if whole else sorted(k for k, e in entries.items() if self._spillable(k, e))
            if keys:
                self.runs.append(self.spill.write_chunks(self.next_run, self._slices(entries, keys, whole), self.name))
                self.next_run += 1
            kept = len(entries) - len(keys)
            del keys
            self.entries = {k: e for k, e in entries.items() if not self._spillable(k, e)} if kept else {}

    def _slices(self, entries: dict[Key, Any], keys: list[Key], whole: bool) -> Iterator[tuple[Keys, Values]]:
        """Sorted keys and their values, SPILL_SLICE at a time: a list of all values beside all the keys
        would cost 8 bytes an entry more at the moment memory is fullest (Budget: SPILL_BYTES_PER_ENTRY)."""
        for i in range(0, len(keys), SPILL_SLICE):
            part = keys[i:i + SPILL_SLICE]
            yield part, (list(map(entries.__getitem__, part)) if whole else [self._encode(k, entries[k]) for k in part])

    def _spillable(self, k: Key, e: Any) -> bool:
        return type(e) is not _Partial or e.inherit is None or e.inherit == k

    def _encode(self, k: Key, e: Any) -> Any:
        if type(e) is _Partial:
            return [PARTIAL if e.inherit is None else PARTIAL_SELF, e.values]
        return e  # a line, or None

    def _decode(self, k: Key, v: Any) -> Any:
        if type(v) is list:
            return _Partial(v[1], None if v[0] == PARTIAL else k)
        return v

    def _rewrite_runs(self, transform: Callable[[dict[Key, Any]], dict[Key, Any]]) -> None:
        """Each run through `transform` (a change of shape), one at a time, keeping its id."""
        if self.spill is None or not self.runs:
            return
        rewritten = []
        for run in self.runs:
            entries = transform({k: self._decode(k, v) for k, v in read_run(run)})
            self.spill.remove(run)
            keys = sorted(entries)
            rewritten.append(self.spill.write_run(run.id, keys, [self._encode(k, entries[k]) for k in keys],
                                                  self.name))
            del entries, keys
        self.runs = rewritten

    # -- producing the result -------------------------------------------------------------
    def rows(self, base_lines: Iterator[bytes]) -> Iterator[bytes]:
        """COPY text lines (without LF) of the table at the target: untouched base rows first,
        then every row the tape left behind."""
        if self.dropped:
            return
        if self.runs:
            for lines in self._rows_from_runs(base_lines):
                yield from lines
            return
        same_shape = self.base_pos == list(range(len(self.base_columns)))
        entries = self.entries
        inherit_from = {e.inherit for e in entries.values() if type(e) is _Partial and e.inherit is not None}
        saved: dict[Key, list[bytes]] = {}  # base rows that partial entries take columns from
        if not self.truncated:
            base_key = key_reader(self.base_columns, self.key)
            assert base_key is not None
            for line in base_lines:
                if not entries and same_shape:
                    yield line
                    continue
                k = base_key(line)
                if k in inherit_from:
                    saved[k] = line.split(b"\t")
                if k not in entries:
                    yield line if same_shape else b"\t".join(self._take(line.split(b"\t")))
        for e in entries.values():
            if type(e) is bytes:
                yield e
            elif type(e) is _Partial:
                yield self._complete(e, saved.get(e.inherit) if e.inherit is not None else None)

    def blocks(self, base_chunks: Iterator[bytes]) -> Iterator[bytes]:
        """rows() as blocks of whole lines, each ending with LF, for COPY. The common case (a keyed table
        in its base's shape, no runs, no TRUNCATE, no partial rows) filters each base chunk by key in
        a few list-wide steps and passes a chunk that holds no changed key through as it is: no
        per-line generator step, no re-joining (the large-base replay, BENCHMARKS.md)."""
        entries = self.entries
        fast = (type(self) is TableFold and not self.runs and not self.truncated and not self.dropped
                and self.base_pos == list(range(len(self.base_columns)))
                and not any(type(e) is _Partial for e in entries.values()))
        if type(self) is TableFold and self.runs and not self.dropped:
            for lines in self._rows_from_runs(_lines(base_chunks)):  # (a block per key range)
                if lines:
                    lines.append(b"")
                    yield b"\n".join(lines)
            return
        if not fast:
            yield from _joined(self.rows(_lines(base_chunks)))
            return
        base_key = key_reader(self.base_columns, self.key)
        assert base_key is not None
        first = self.key == self.base_columns[:1]
        for chunk in base_chunks:
            if not entries:
                yield chunk
                continue
            lines = chunk.split(b"\n")
            lines.pop()  # chunks end with LF
            keys = [line.partition(b"\t")[0] for line in lines] if first else list(map(base_key, lines))
            if entries.keys().isdisjoint(keys):
                yield chunk
                continue
            kept = [line for line, k in zip(lines, keys) if k not in entries]
            if kept:
                kept.append(b"")
                yield b"\n".join(kept)
        yield from _joined([e for e in entries.values() if type(e) is bytes])  # (no partial rows here)

    def _in_current_shape(self, line: bytes) -> bytes:
        if self.base_pos == list(range(len(self.base_columns))):
            return line
        return b"\t".join(self._take(line.split(b"\t")))

    def _sorted_base(self, base_lines: Iterator[bytes]) -> Iterator[tuple[Key, bytes]]:
        """(key, line) of every base row, by key; none after a TRUNCATE."""
        if self.truncated:
            return iter(())
        base_key = key_reader(self.base_columns, self.key)
        assert base_key is not None and self.spill is not None
        return sorted_pairs(((base_key(line), line) for line in base_lines), self.spill, self.sort_bytes,
                            lambda r: 2 * len(r[1]) + RECORD_OVERHEAD, self.sort_bytes // 2)

    def _rows_from_runs(self, base_lines: Iterator[bytes]) -> Iterator[list[bytes]]:
        """rows() once the fold has written runs, in lists: the runs merged a key range at a time (spill.Window:
        the newest state per key), with the base sorted by key; partial rows waiting for another key's
        row (in memory) come last. A range without partial rows takes the list-wide path. Runs too
        many to merge within half of `sort_bytes` are first merged into fewer (spill.reduce_runs)."""
        self.spill_out()
        assert self.spill is not None
        waiting: dict[Key, _Partial] = {k: e for k, e in self.entries.items() if type(e) is _Partial}
        wanted = {e.inherit for e in waiting.values()}
        self.runs = reduce_runs(self.runs, self.sort_bytes // 2, self.spill, self._squash,
                                {e.runs_before for e in waiting.values()})
        saved: dict[Key, tuple[list[tuple[int, Any]], bytes | None]] = {}
        base = self._sorted_base(base_lines)
        pending = next(base, None)
        for w in _no_gc_each(merge_windows(self.runs)):
            final: dict[Key, Any] = {}
            for _, ks, vs in w.runs:  # oldest run first: the newest state of each key stays
                final.update(zip(ks, vs))
            out: list[bytes] = []
            base_of: dict[Key, bytes] = {}  # base rows of keys the range holds
            while pending is not None and (w.bound is None or pending[0] <= w.bound):
                k, line = pending
                if k in final:
                    base_of[k] = line
                elif k in wanted:
                    saved[k] = ([], line)
                if k not in final and k not in waiting:
                    out.append(self._in_current_shape(line))
                    if len(out) >= BLOCK_LINES:  # (the last range runs to the base's end)
                        yield out
                        out = []
                pending = next(base, None)
            if _has_partial(w) or not wanted.isdisjoint(final) or not waiting.keys().isdisjoint(final):
                for k, group in _groups(w).items():
                    base_line = base_of.get(k)
                    if k in wanted:
                        saved[k] = (group, base_line)
                    if k in waiting:
                        continue  # the partial row is newer than anything else of its key
                    if (row := self._resolve(k, group, base_line, None, None)) is not None:
                        out.append(row)
            else:
                out.extend([v for v in final.values() if v is not None])
            yield out
        out = []
        while pending is not None:  # (no window: runs without records)
            if pending[0] in wanted:
                saved[pending[0]] = ([], pending[1])
            if pending[0] not in waiting:
                out.append(self._in_current_shape(pending[1]))
                if len(out) >= BLOCK_LINES:
                    yield out
                    out = []
            pending = next(base, None)
        for e in waiting.values():
            assert e.inherit is not None
            group, base_line = saved.get(e.inherit, ([], None))
            row = self._resolve(e.inherit, group, base_line, e.runs_before, dict(e.values))
            out.append(row if row is not None else self._complete(_Partial(e.values, None), None))
        yield out

    def _squash(self, w: Window) -> tuple[Keys, Values]:
        """A window of runs as one run (spill.reduce_runs): each key's states, newest first, as one."""
        final: dict[Key, Any] = {}
        for _, ks, vs in w.runs:
            final.update(zip(ks, vs))
        if _has_partial(w):
            for k, group in _groups(w).items():
                final[k] = self._stacked(k, group)
        keys = sorted(final)
        return keys, [final[k] for k in keys]

    def _stacked(self, key: Key, group: list[tuple[int, Any]]) -> Any:
        """One state equal to a key's states newest first (a partial row over older ones)."""
        values: dict[str, bytes] | None = None
        for _, v in group:
            if type(v) is bytes:
                if values is None:
                    return v
                return b"\t".join([values.get(c, f) for c, f in zip(self.columns, v.split(b"\t"))])
            if v is None:
                if values is None:
                    return None
                raise _deleted_then_updated(self.name, key)
            values = v[1] | values if values is not None else dict(v[1])
            if v[0] == PARTIAL:
                return [PARTIAL, values]
        return [PARTIAL_SELF, values]

    def _resolve(self, key: Key, group: list[tuple[int, Any]], base: bytes | None, before: int | None,
                 values: dict[str, bytes] | None) -> bytes | None:
        """The row of `key` from its states newest first (run id, value) — only those of runs before
        `before` if given — then its base row; `values` (a partial row's) take precedence. None: no row."""
        for run_id, v in group:
            if before is not None and run_id >= before:
                continue
            if type(v) is bytes:
                if values is None:
                    return v
                return b"\t".join([values.get(c, f) for c, f in zip(self.columns, v.split(b"\t"))])
            if v is None:
                if values is None:
                    return None
                raise _deleted_then_updated(self.name, key)
            values = v[1] | values if values is not None else dict(v[1])
            if v[0] == PARTIAL:
                return self._complete(_Partial(values, None), None)
        if values is None:
            return self._in_current_shape(base) if base is not None else None
        return self._complete(_Partial(values, None), base.split(b"\t") if base is not None else None)

    def _take(self, fields: list[bytes]) -> list[bytes]:
        """A base row in the current shape."""
        return [fields[p] if p is not None else f for p, f in zip(self.base_pos, self.fill)]

    def _complete(self, e: _Partial, base_fields: list[bytes] | None) -> bytes:
        values = e.values
        parts = []
        for c, p, f in zip(self.columns, self.base_pos, self.fill):
            if c in values:
                parts.append(values[c])
            elif base_fields is not None and p is not None:
                parts.append(base_fields[p])
            else:
                parts.append(f)
        return b"\t".join(parts)


_BYTES = sys.getsizeof(b"")  # a bytes object besides its data


def _has_partial(w: Window) -> bool:
    """Any partial row ([kind, values]) in the window's values."""
    return any(list in set(map(type, vs)) for _, _, vs in w.runs)


def _groups(w: Window) -> dict[Key, list[tuple[int, Any]]]:
    """Each key of the window with its states, newest first: [(run id, value)]."""
    groups: dict[Key, list[tuple[int, Any]]] = {}
    for run_id, ks, vs in w.runs:  # (oldest run first)
        for k, v in zip(ks, vs):
            groups.setdefault(k, []).insert(0, (run_id, v))
    return groups


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector off for a while (spilling and merging make only acyclic lists)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _no_gc_each(it: Iterator[Any]) -> Iterator[Any]:
    """Each step of `it` (reading and merging a window of runs) with the collector off."""
    while True:
        with _no_gc():
            item = next(it, _END)
        if item is _END:
            return
        yield item


_END = object()
BLOCK_LINES = 4096  # lines per block when blocks() joins them itself


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        lines = chunk.split(b"\n")
        lines.pop()  # chunks end with LF
        yield from lines


def _joined(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Lines in blocks of BLOCK_LINES, each line ending with LF."""
    it = iter(lines)
    while block := list(islice(it, BLOCK_LINES)):
        block.append(b"")
        yield b"\n".join(block)


class Budget:
    """The folds' memory held under the budget, checked after each frame of the tape, two ways:
    - the state: the number of entries times a size per entry measured (`state_bytes`) whenever that
      estimate passes `limit`; past 95 % of it, the largest folds write runs until their total is half
      the limit;
    - the process (where the OS tells its resident size: Linux): what is resident plus what may come
      before the next check (spilling's sorted list of keys, a dict doubling its table) past `memory`
      spills the same way. The state's measure misses allocator rounding, the frames being decoded
      and what earlier spills left fragmented; this catches them. Read about 64 times per fill of
      the limit, and ignored while the state is under a quarter of the limit (spilling it would free
      little: the memory is elsewhere)."""

    def __init__(self, limit: int, memory: int | None = None) -> None:
        self.limit = limit
        self.memory = memory
        self.per_entry = 400.0  # bytes, more than an entry takes: measured on the first check past the limit
        self.measurements = 0
        self.spills = 0
        self._resident_check = 0  # the number of entries at which resident memory is read next

    def check(self, folds: list[TableFold]) -> None:
        n = 0
        for f in folds:
            n += len(f.entries)
        estimate = n * self.per_entry
        if estimate <= self.limit:
            if self.memory is None or n < self._resident_check:
                return
            step = int(self.limit / 64 / self.per_entry)
            self._resident_check = n + step
            resident = resident_bytes()
            if resident is None or resident + _growth(folds, n, step) <= self.memory:
                return
            threshold = self.limit / 4
        else:
            threshold = self.limit * 0.95  # next measurement after at least 5 % more entries
        sizes = [(f.state_bytes(), f) for f in folds if f.entries]
        self.measurements += 1
        total = sum(size for size, _ in sizes)
        self.per_entry = total / n
        if total <= threshold:
            return
        for size, f in sorted(sizes, key=lambda sf: -sf[0]):
            f.spill_out()
            self.spills += 1
            total -= size
            if total <= self.limit // 2:
                break
        self._resident_check = 0


def _growth(folds: list[TableFold], n: int, step: int) -> int:
    """What memory may grow by, at most, before the next check: spilling (SPILL_BYTES_PER_ENTRY), and any
    fold's dict growing its table within `step` entries more (CPython doubles a dict's table when two
    thirds full: the new index is written whole and the entries are copied while the old table lives)."""
    grow = n * SPILL_BYTES_PER_ENTRY
    for f in folds:
        held = len(f.entries)
        size = 8
        while (size << 1) // 3 < held:
            size <<= 1
        full = (size << 1) // 3
        if full - held <= step:
            grow += (4 if size < 1 << 30 else 8) * 2 * size + 24 * full
    return grow


# Spilling a fold sorts its keys into a list (8 bytes an entry) with timsort's work area beside it (up to
# half that), then takes their values SPILL_SLICE keys at a time.
SPILL_BYTES_PER_ENTRY = 12
SPILL_SLICE = 1 << 16


def resident_bytes() -> int | None:
    """This process's resident memory (Linux: /proc/self/statm), None where the OS does not say."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _deleted_then_updated(table: str, key: Key) -> PgtapeError:
    return PgtapeError(f"{table}: the tape updates key {key!r} after deleting it; the tape is inconsistent "
                       "(run pgtape verify)")


class BagFold(TableFold):
    """A table without a key (REPLICA IDENTITY FULL): its rows are a multiset of whole lines.

    A DELETE's identity is the whole old row: it removes one equal row, whichever (duplicates are
    legal and equal rows are indistinguishable). An UPDATE removes one old row and adds the new one,
    its absent (unchanged TOAST) columns taken from the old row. `entries` counts, per line in the
    fold's shape, how many more (or fewer) copies the result has than the base."""

    entries: dict[Key, int]  # type: ignore[assignment]  # counts of lines, not TableFold's Entry

    def apply(self, c: Change, info: RelInfo, old: RelInfo | None) -> None:
        if self.stale:
            return
        entries = self.entries
        old_line = None
        if c.old is not None:
            assert old is not None
            old_line = self._in_shape(old.columns, c.old)
            entries[old_line] = entries.get(old_line, 0) - 1
        if c.op == "D":
            if old_line is None:
                raise PgtapeError(f"{self.name}: a DELETE without its old row; the table needs REPLICA IDENTITY FULL")
            return
        assert c.row is not None
        if not info.full_shape and not c.absent and c.op == "I":
            self._reshape(info.columns, None)
        values = dict(zip(info.columns, c.row.split(b"\t")))
        if c.absent:
            if old_line is None:
                raise PgtapeError(f"{self.name}: an UPDATE leaves out columns {c.absent} and has no old row to take "
                                  "them from; the table needs REPLICA IDENTITY FULL")
            values = dict(zip(self.columns, old_line.split(b"\t"))) | values
        new_line = b"\t".join([values.get(col, NULL) for col in self.columns])
        entries[new_line] = entries.get(new_line, 0) + 1

    def _remap(self, entries: dict[Key, Any], src: list[int | None], fill: list[bytes], old_columns: list[str],
               columns: list[str]) -> dict[Key, Any]:
        counts: dict[Key, int] = {}  # the counted lines follow the new shape; two may become one
        for line, n in entries.items():
            fields = line.split(b"\t")
            k = b"\t".join([fields[i] if i is not None else f for i, f in zip(src, fill)])
            counts[k] = counts.get(k, 0) + n
        return counts

    def _reshape_entries(self, entries: dict[Key, Any], old: list[str]) -> dict[Key, Any]:
        counts: dict[Key, int] = {}
        for line, n in entries.items():
            k = self._in_shape(old, line)
            counts[k] = counts.get(k, 0) + n
        return counts

    def state_bytes(self) -> int:
        return sys.getsizeof(self.entries) + sum(map(len, self.entries)) + len(self.entries) * _BYTES

    def _spillable(self, k: Key, e: Any) -> bool:
        return True

    def _encode(self, k: Key, e: Any) -> Any:
        return e

    def _decode(self, k: Key, v: Any) -> Any:
        return v

    def _in_shape(self, columns: list[str], line: bytes) -> bytes:
        if columns == self.columns:
            return line
        values = dict(zip(columns, line.split(b"\t")))
        return b"\t".join([values.get(col, NULL) for col in self.columns])

    def rows(self, base_lines: Iterator[bytes]) -> Iterator[bytes]:
        if self.dropped:
            return
        if self.runs:
            yield from self._bag_from_runs(base_lines)
            return
        counts = {line: n for line, n in self.entries.items() if n}
        same_shape = self.base_pos == list(range(len(self.base_columns)))
        if not self.truncated:
            for line in base_lines:
                if not same_shape:
                    line = b"\t".join(self._take(line.split(b"\t")))
                n = counts.get(line)
                if n is not None and n < 0:  # a deleted copy of this row
                    counts[line] = n + 1
                    continue
                yield line
        for line, n in counts.items():
            if n < 0:
                raise PgtapeError(f"{self.name}: the tape deletes a row the table did not hold ({line[:80]!r}); "
                                  "the tape or the base is inconsistent (run pgtape verify)")
            for _ in range(n):
                yield line

    def _bag_from_runs(self, base_lines: Iterator[bytes]) -> Iterator[bytes]:
        """The runs' counts summed per line (counts add up: run order does not matter), joined with the
        base lines sorted and counted."""
        self.spill_out()
        assert self.spill is not None
        self.runs = reduce_runs(self.runs, self.sort_bytes // 2, self.spill)  # (counts add up: kept as they are)
        base = iter(()) if self.truncated else _counted(sorted_pairs(
            ((self._in_current_shape(line), None) for line in base_lines), self.spill, self.sort_bytes,
            lambda r: len(r[0]) + RECORD_OVERHEAD, self.sort_bytes // 2))
        for line, group, copies in join(base, merge_runs(self.runs)):
            n = (copies[1] if copies is not None else 0) + sum(c for _, c in group or ())
            if n < 0:
                raise PgtapeError(f"{self.name}: the tape deletes a row the table did not hold ({line[:80]!r}); "
                                  "the tape or the base is inconsistent (run pgtape verify)")
            for _ in range(n):
                yield line


def _counted(pairs: Iterator[tuple[bytes, Any]]) -> Iterator[tuple[bytes, int]]:
    """Sorted (line, _) pairs as (line, copies)."""
    current: bytes | None = None
    n = 0
    for line, _ in pairs:
        if line != current:
            if current is not None:
                yield current, n
            current, n = line, 0
        n += 1
    if current is not None:
        yield current, n


_MISSING = _Partial({}, None)  # a sentinel (compared by identity), typed as an Entry
