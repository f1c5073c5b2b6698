"""Folding the tape onto a base: per table, the final state of every key the tape touched.

Memory is bounded by the number of keys changed between base and target, never by table size:
the base streams through (`rows()`), and only changed keys are held (`TableFold.entries`).
Keys are compared in COPY text form (replay/copytext.py), as base fields are; other values stay
plain text until a row is written out. Rules (docs/ARCHITECTURE.md, "Replay"):
  - an UPDATE's absent (unchanged TOAST) columns keep the row's previous value, which may come
    from the base row of the key the row had before a primary-key change (`inherit`);
  - TRUNCATE drops the base and every earlier change of the table;
  - the result has the table's last shape seen on the tape up to the target (else the base's):
    a column added later is NULL in rows not written since, a dropped column disappears.
This is replay's hot loop: it works on tape records directly, with per-relation lookups cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from pgtape.errors import PgtapeError
from pgtape.tape.records import Change, Relation
from replay.copytext import NULL, escape

Key = tuple[bytes, ...]
# An entry: (values by column, or None when the key is deleted; base key supplying missing columns)
Entry = tuple["dict[str, str | None] | None", "Key | None"]


@dataclass
class _RelInfo:
    """What the fold needs of one tape Relation, computed once per segment."""

    columns: list[str]
    key_idx: list[int]  # positions of the key columns in `columns`
    full_shape: bool  # columns equal the fold's current columns


@dataclass
class TableFold:
    name: str  # schema.table
    columns: list[str]
    types: list[str]
    key: list[str]
    base_columns: list[str]
    entries: dict[Key, Entry] = field(default_factory=dict)
    truncated: bool = False
    changes: int = 0
    _rels: dict[int, _RelInfo] = field(default_factory=dict)  # by id(Relation), this segment
    _types: dict[str, str] = field(default_factory=dict)  # every column type seen

    def __post_init__(self) -> None:
        self._types.update(zip(self.columns, self.types))

    def new_segment(self) -> None:
        self._rels.clear()

    def _info(self, rel: Relation) -> _RelInfo:
        info = self._rels.get(id(rel))
        if info is None:
            try:
                idx = [rel.columns.index(k) for k in self.key] if set(self.key) <= set(rel.columns) else []
            except ValueError:
                idx = []
            info = _RelInfo(rel.columns, idx, rel.columns == self.columns)
            self._rels[id(rel)] = info
            self._types.update(zip(rel.columns, rel.types))
        return info

    # -- applying the tape ----------------------------------------------------------------
    def truncate(self) -> None:
        self.changes += 1
        self.truncated = True
        self.entries.clear()

    def apply(self, c: Change, rel: Relation, old_rel: Relation | None) -> None:
        self.changes += 1
        op = c.op
        if op == "D":
            if old_rel is None or c.old is None:
                raise PgtapeError(f"{self.name}: a DELETE without its old key on the tape")
            self.entries[self._key(self._info(old_rel), c.old)] = (None, None)
            return
        info = self._info(rel)
        values = c.values
        assert values is not None
        if not info.full_shape and (op == "I" or not c.absent or not set(info.columns) <= set(self.columns)):
            self._reshape(info.columns, c.absent)
            info.full_shape = info.columns == self.columns
        new_key = self._key(info, values)
        if op == "I":
            self.entries[new_key] = (dict(zip(info.columns, values)), None)
            return
        old_key = self._key(self._info(old_rel), c.old) if old_rel is not None and c.old is not None else new_key
        prev = self.entries.get(old_key)
        if prev is None:
            row: dict[str, str | None] = {}
            inherit = None if self.truncated else old_key
        else:
            if prev[0] is None:
                raise PgtapeError(f"{self.name}: the tape updates key {old_key!r} after deleting it; "
                                  "the tape is inconsistent (run pgtape verify)")
            row, inherit = dict(prev[0]), prev[1]
        row.update(zip(info.columns, values))
        if old_key != new_key:
            self.entries[old_key] = (None, None)
        self.entries[new_key] = (row, inherit)

    def _reshape(self, columns: list[str], absent: list[str] | None) -> None:
        """A row in another shape: the table's columns changed (ALTER TABLE). Absent (unchanged
        TOAST) columns keep their place; columns new to the fold come after."""
        if absent:
            keep = set(columns) | set(absent)
            shape = [n for n in self.columns if n in keep] + [n for n in columns if n not in self.columns]
        else:
            shape = list(columns)
        if shape != self.columns:
            self.columns, self.types = shape, [self._types[n] for n in shape]
            for info in self._rels.values():
                info.full_shape = info.columns == shape

    def _key(self, info: _RelInfo, values: list[str | None] | None) -> Key:
        if not info.key_idx or values is None:
            raise PgtapeError(f"{self.name}: a change lacks the key columns {self.key}; replay needs the primary key")
        return tuple([escape(values[i]) for i in info.key_idx])

    # -- producing the result -------------------------------------------------------------
    def rows(self, base_lines: Iterator[bytes]) -> Iterator[bytes]:
        """COPY text lines (without LF) of the table at the target."""
        out = self.columns
        base_idx = {c: i for i, c in enumerate(self.base_columns)}
        key_idx = [base_idx[k] for k in self.key]
        same_shape = self.base_columns == out
        width = len(out)
        inherit_from = {e[1] for e in self.entries.values()
                        if e[0] is not None and e[1] is not None and len(e[0]) < width}
        saved: dict[Key, list[bytes]] = {}
        done: set[Key] = set()
        if not self.truncated:
            entries = self.entries
            for line in base_lines:
                if not entries and same_shape:
                    yield line
                    continue
                fields = line.split(b"\t")
                k = tuple([fields[i] for i in key_idx])
                if k in inherit_from:
                    saved[k] = fields
                e = entries.get(k)
                if e is None:
                    yield line if same_shape else b"\t".join(
                        [fields[base_idx[c]] if c in base_idx else NULL for c in out])
                elif e[0] is not None and (e[1] is None or e[1] == k or len(e[0]) >= width):
                    done.add(k)
                    yield self._merge(e[0], fields if e[1] == k else None, base_idx)
        for k, e in self.entries.items():
            if e[0] is None or k in done:
                continue
            source = saved.get(e[1]) if e[1] is not None else None
            yield self._merge(e[0], source, base_idx)

    def _merge(self, values: dict[str, str | None], base_fields: list[bytes] | None,
               base_idx: dict[str, int]) -> bytes:
        parts = []
        for c in self.columns:
            if c in values:
                parts.append(escape(values[c]))
            elif base_fields is not None and c in base_idx:
                parts.append(base_fields[base_idx[c]])
            else:
                parts.append(NULL)
        return b"\t".join(parts)
