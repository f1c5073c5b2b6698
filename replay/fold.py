"""Folding the tape onto a base: per table, the final state of every key the tape touched.

Memory is bounded by the number of keys changed between base and target, never by table size:
the base streams through (`rows()`), and only changed keys are held (`TableFold.entries`).
Values are kept in COPY text form (replay/copytext.py) so base fields and tape values compare
byte for byte. Rules (docs/ARCHITECTURE.md, "Replay"):
  - an UPDATE's absent (unchanged TOAST) columns keep the row's previous value, which may come
    from the base row of the key the row had before a primary-key change (`inherit`);
  - TRUNCATE drops the base and every earlier change of the table;
  - the result has the table's last shape seen on the tape up to the target (else the base's):
    a column added later is NULL in rows not written since, a dropped column disappears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from pgtape.errors import PgtapeError
from pgtape.tape.reader import RowChange
from replay.copytext import NULL, escape

Key = tuple[bytes, ...]


@dataclass
class Entry:
    values: dict[str, bytes] | None  # None: the key is deleted
    inherit: Key | None = None  # base key whose row supplies columns not in `values`


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

    # -- applying the tape ----------------------------------------------------------------
    def apply(self, c: RowChange) -> None:
        self.changes += 1
        if c.op == "T":
            self.truncated = True
            self.entries.clear()
            return
        if c.new is not None:
            # A row in another shape: the table's columns changed (ALTER TABLE). Absent (unchanged
            # TOAST) columns keep their place; columns new to the fold come after.
            shape = list(c.new) if not c.absent else (
                [n for n in self.columns if n in c.new or n in c.absent] + [n for n in c.new if n not in self.columns])
            if shape != self.columns:
                known = dict(zip(self.columns, self.types))
                known.update(c.types)
                self.columns, self.types = shape, [known[n] for n in shape]
        if c.op == "I":
            assert c.new is not None
            self.entries[self._key(c.new)] = Entry({k: escape(v) for k, v in c.new.items()})
        elif c.op == "U":
            assert c.new is not None
            old_key = self._key(c.old) if c.old else self._key(c.new)
            new_key = self._key(c.new)
            prev = self.entries.get(old_key)
            if prev is None:
                prev = Entry({}, None if self.truncated else old_key)
            elif prev.values is None:
                raise PgtapeError(f"{self.name}: the tape updates key {old_key!r} after deleting it; "
                                  "the tape is inconsistent (run pgtape verify)")
            values = dict(prev.values)  # type: ignore[arg-type]
            values.update((k, escape(v)) for k, v in c.new.items())
            if old_key != new_key:
                self.entries[old_key] = Entry(None)
            self.entries[new_key] = Entry(values, prev.inherit)
        elif c.op == "D":
            if c.old is None:
                raise PgtapeError(f"{self.name}: a DELETE without its old key on the tape")
            self.entries[self._key(c.old)] = Entry(None)

    def _key(self, row: dict[str, str | None]) -> Key:
        try:
            return tuple(escape(row[k]) for k in self.key)
        except KeyError as e:
            raise PgtapeError(f"{self.name}: a change lacks key column {e}; replay needs the primary key") from None

    # -- producing the result -------------------------------------------------------------
    def rows(self, base_lines: Iterator[bytes]) -> Iterator[bytes]:
        """COPY text lines (without LF) of the table at the target."""
        out = self.columns
        base_idx = {c: i for i, c in enumerate(self.base_columns)}
        key_idx = [base_idx[k] for k in self.key]
        same_shape = self.base_columns == out
        inherit_from = {e.inherit for e in self.entries.values()
                        if e.values is not None and e.inherit is not None and len(e.values) < len(out)}
        saved: dict[Key, list[bytes]] = {}
        done: set[Key] = set()
        if not self.truncated:
            entries = self.entries
            for line in base_lines:
                fields = line.split(b"\t")
                k = tuple(fields[i] for i in key_idx)
                if k in inherit_from:
                    saved[k] = fields
                e = entries.get(k) if entries else None
                if e is None:
                    yield line if same_shape else b"\t".join(
                        fields[base_idx[c]] if c in base_idx else NULL for c in out)
                elif e.values is not None and (e.inherit is None or e.inherit == k or len(e.values) >= len(out)):
                    done.add(k)
                    yield self._merge(e, fields if e.inherit == k else None, base_idx)
        for k, e in self.entries.items():
            if e.values is None or k in done:
                continue
            source = saved.get(e.inherit) if e.inherit is not None else None
            yield self._merge(e, source, base_idx)

    def _merge(self, e: Entry, base_fields: list[bytes] | None, base_idx: dict[str, int]) -> bytes:
        values = e.values
        assert values is not None
        parts = []
        for c in self.columns:
            v = values.get(c)
            if v is None:
                v = base_fields[base_idx[c]] if base_fields is not None and c in base_idx else NULL
            parts.append(v)
        return b"\t".join(parts)
