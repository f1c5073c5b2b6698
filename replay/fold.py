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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from pgtape.copytext import NULL
from pgtape.errors import PgtapeError
from pgtape.tape.records import Change, Relation, Schema

Key = bytes  # the key fields of a COPY text line, joined by TAB
KeyReader = Callable[[bytes], Key]


class _Partial:
    """A row known only in part: values by column, the rest from the base row `inherit` (or NULL)."""

    __slots__ = ("values", "inherit")

    def __init__(self, values: dict[str, bytes], inherit: Key | None) -> None:
        self.values = values
        self.inherit = inherit


# An entry: the whole row in the fold's current shape | None (deleted) | a _Partial.
Entry = bytes | None | _Partial


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
        for k, e in self.entries.items():
            if type(e) is bytes:
                fields = e.split(b"\t")
                self.entries[k] = b"\t".join([fields[i] if i is not None else f for i, f in zip(src, fill)])
            elif isinstance(e, _Partial):
                e.values = {c: e.values[old_columns[i]] for c, i in zip(s.columns, src)
                            if i is not None and old_columns[i] in e.values}
        self.base_pos = [self.base_pos[i] if i is not None else None for i in src]
        self.fill = fill
        self.columns, self.types, self.attnums = list(s.columns), list(s.types), list(s.attnums)
        self._types.update(zip(self.columns, self.types))
        for info in self._rels.values():
            info.set_shape(info.columns == self.columns)

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
        if prev is _MISSING:
            values: dict[str, bytes] = {}
            inherit = None if self.truncated else old_key
        elif prev is None:
            raise PgtapeError(f"{self.name}: the tape updates key {old_key!r} after deleting it; "
                              "the tape is inconsistent (run pgtape verify)")
        elif isinstance(prev, bytes):
            values, inherit = dict(zip(self.columns, prev.split(b"\t"))), None
        else:
            values, inherit = dict(prev.values), prev.inherit
        values.update(zip(columns, row.split(b"\t")))
        if all(c in values for c in self.columns):
            return b"\t".join([values[c] for c in self.columns])
        return _Partial(values, inherit)

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
        for k, e in self.entries.items():
            if type(e) is bytes:
                self.entries[k] = _Partial(dict(zip(old, e.split(b"\t"))), None)
        where = {c: i for i, c in enumerate(old)}
        self.base_pos = [self.base_pos[where[c]] if c in where else None for c in shape]
        self.fill = [self.fill[where[c]] if c in where else NULL for c in shape]
        self.attnums = []  # a shape seen only in rows: columns are known by name from here on
        self.columns, self.types = shape, [self._types[n] for n in shape]
        for info in self._rels.values():
            info.set_shape(info.columns == shape)

    def _key(self, info: RelInfo | None, line: bytes | None) -> Key:
        if info is None or info.key_of is None or line is None:
            raise PgtapeError(f"{self.name}: a change lacks the key columns {self.key}; replay needs the primary key")
        return info.key_of(line)

    # -- producing the result -------------------------------------------------------------
    def rows(self, base_lines: Iterator[bytes]) -> Iterator[bytes]:
        """COPY text lines (without LF) of the table at the target: untouched base rows first,
        then every row the tape left behind."""
        if self.dropped:
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

    def apply_schema(self, s: Schema) -> None:
        if not s.dropped and s.key == self.key:  # the counted lines follow the new shape too
            src, fill = self._mapping(s)
            counts: dict[Key, int] = {}
            for line, n in self.entries.items():
                fields = line.split(b"\t")
                k = b"\t".join([fields[i] if i is not None else f for i, f in zip(src, fill)])
                counts[k] = counts.get(k, 0) + n
            self.entries = counts
        super().apply_schema(s)  # the counts are not lines: there only the shape changes

    def _reshape(self, columns: list[str], absent: list[str] | None) -> None:
        old = self.columns
        super()._reshape(columns, absent)  # the counts are not lines: only the shape changes there
        if self.columns != old:
            counts: dict[Key, int] = {}
            for line, n in self.entries.items():
                k = self._in_shape(old, line)
                counts[k] = counts.get(k, 0) + n
            self.entries = counts

    def _in_shape(self, columns: list[str], line: bytes) -> bytes:
        if columns == self.columns:
            return line
        values = dict(zip(columns, line.split(b"\t")))
        return b"\t".join([values.get(col, NULL) for col in self.columns])

    def rows(self, base_lines: Iterator[bytes]) -> Iterator[bytes]:
        if self.dropped:
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


_MISSING = _Partial({}, None)  # a sentinel (compared by identity), typed as an Entry
