"""What capture knows of each captured table, at a position of the tape.

A captured table is an object (its oid), known on the tape by its identity: its canonical name
when the generation started (pgtape/names.py). Capture keeps, per identity, the table's shape now:
name, kind (a table or a partitioned table), columns by attnum with their types and the value rows
that existed before an ADD COLUMN read, its key, and a partitioned table's leaves. This maps the
names wal2json reports (a renamed table's new name, a partition's own name) to identities, builds
the stream's table filter, and tells a change of shape from the last one.

The view starts from the catalog inside the exported snapshot of the generation's first base (so
it describes exactly the start LSN) and follows the DDL trigger's messages in the stream
(capture/ddl_trigger.py), or, without the trigger, the catalog as polled. Each new view is saved in
`generations/NNNN/TABLES.json` with the tape position it describes, before that position can be
durable, so a restarted capture resumes with the view of the tape's end. docs/ARCHITECTURE.md,
"Schema changes", states the rules. Shapes: pgtape/shapes.py; saved views: pgtape/tape/views.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import msgspec
import psycopg

from pgtape.copytext import COPY_ESCAPES
from pgtape.errors import PgtapeError
from pgtape.names import quoted, split_table
from pgtape.pg import relation_oid
from pgtape.shapes import TableShape, View, read_shapes, shape_from_json
from pgtape.tape.records import Schema


def resolve_tables(conn: psycopg.Connection, tables: list[str]) -> View:
    """The configured tables' shapes now, refusing any that cannot be captured and replayed."""
    view: View = {}
    for table in tables:
        oid = relation_oid(conn, quoted(table))
        if oid is None:
            raise PgtapeError(f"table {table} does not exist: create it or fix --tables (run pgtape check)")
        shape = read_shapes(conn, [oid]).get(oid)
        if shape is None or shape.kind not in ("r", "p"):
            raise PgtapeError(f"{table} is not a table: list only tables in --tables (run pgtape check)")
        problem = capturable(table, shape)
        if problem:
            raise PgtapeError(problem)
        view[table] = shape
    return view


def capturable(table: str, shape: TableShape) -> str | None:
    """Why a table cannot be captured exactly, or None. wal2json silently drops the UPDATEs and
    DELETEs of a table without a replica identity; a partitioned table is replayed by its key."""
    if shape.kind == "p" and not shape.key:
        return (f"partitioned table {table} has no primary key: pgtape replays a partitioned table by its primary "
                "key; add one")
    if not shape.key and shape.identity != "f":
        return (f"table {table} has neither a primary key nor REPLICA IDENTITY FULL: wal2json would silently drop "
                f"its UPDATEs and DELETEs; add a primary key or run ALTER TABLE {table} REPLICA IDENTITY FULL")
    return None


# -- names -------------------------------------------------------------------------------------------
def names_of(view: View) -> dict[tuple[str, str], str]:
    """(schema, table) as wal2json reports them -> the identity they belong to."""
    names: dict[tuple[str, str], str] = {}
    for identity, shape in view.items():
        if shape is None:
            continue
        if shape.kind == "p":
            for leaf in shape.leaves.values():
                names[split_table(leaf)] = identity
        else:
            names[split_table(shape.name)] = identity
    return names


def columns_of(view: View) -> dict[tuple[str, str], tuple[str, ...]]:
    """Every reported name's full list of columns (a partition has its partitioned table's)."""
    return {name: tuple(c.name for c in shape.columns)
            for name, identity in names_of(view).items() if (shape := view[identity]) is not None}


# -- what a schema change means -------------------------------------------------------------------
@dataclass
class Effects:
    """What one DDL message (or one catalog poll) asks of capture."""

    records: list[Schema] = field(default_factory=list)  # for the tape, at this position
    rebases: list[tuple[str, str]] = field(default_factory=list)  # (table, why): rows changed unseen
    notes: list[str] = field(default_factory=list)  # for the log

    def __bool__(self) -> bool:
        return bool(self.records or self.rebases or self.notes)


def owner(view: View, oid: int) -> tuple[str, bool] | None:
    """(identity, is a leaf of it) for a table oid capture follows."""
    for identity, shape in view.items():
        if shape is None:
            continue
        if shape.oid == oid:
            return identity, False
        if oid in shape.leaves:
            return identity, True
    return None


def schema_record(identity: str, shape: TableShape | None) -> Schema:
    if shape is None:
        return Schema(identity, identity, [], [], [], [], [], True)
    return Schema(identity, shape.name, [c.name for c in shape.columns], [c.type for c in shape.columns],
                  [c.attnum for c in shape.columns], [_copy_field(c.missing) for c in shape.columns],
                  list(shape.key), False)


def _copy_field(text: str | None) -> bytes | None:
    """A missing value's text output as a COPY text field (None stays None: rows read NULL)."""
    return None if text is None else text.translate(COPY_ESCAPES).encode()


def apply_message(view: View, content: str) -> Effects:
    """One message of the DDL trigger, applied to `view` (changed in place)."""
    try:
        doc = json.loads(content)
        oid = int(doc["oid"])
    except (ValueError, KeyError, TypeError) as e:
        raise PgtapeError(f"undecodable schema-change message from the DDL trigger ({e}): {content[:200]!r}") from None
    found = owner(view, oid)
    effects = Effects()
    if found is None:
        return effects  # a table capture does not follow
    identity, is_leaf = found
    old = view[identity]
    assert old is not None
    event = doc.get("event")
    if event == "type":
        effects.rebases.append((identity, f"ALTER TYPE {doc.get('type')} may have changed how its values print (no "
                                          "row changes are decoded for that)"))
        return effects
    if event == "rewrite":
        what = "a partition of it" if is_leaf else "it"
        effects.rebases.append((identity, f"ALTER TABLE rewrote {what} (no row changes are decoded for that)"))
        return effects
    if event == "drop":
        if is_leaf:
            leaves = {o: n for o, n in old.leaves.items() if o != oid}
            view[identity] = msgspec.structs.replace(old, leaves=leaves)
            effects.rebases.append((identity, f"its partition {old.leaves[oid]} was dropped with its rows"))
        else:
            view[identity] = None
            effects.records.append(schema_record(identity, None))
            effects.notes.append(f"captured table {identity} was dropped; a new table of that name would not be "
                                 "captured (pgtape init --restart starts a generation that does)")
        return effects
    if is_leaf:
        return effects  # a partition's own shape: its partitioned table's message follows
    new = shape_from_json(doc)
    created = {int(o) for o in doc.get("created") or []}
    view[identity] = new
    return _changes(identity, old, new, created, effects)


def apply_polled(view: View, polled: dict[int, TableShape], seen: list[View]) -> Effects:
    """The catalog as polled, where it differs from every view the stream passed through while the
    poll read it (`seen`: a DDL that committed during the poll may be decoded already, or not yet):
    each such difference is a schema change the stream did not report, at a position only
    approximately known, so that table needs a new base (docs/ARCHITECTURE.md, "Schema changes").
    `view` is changed in place."""
    effects = Effects()
    for identity, old in list(view.items()):
        if old is None:
            continue
        new = polled.get(old.oid)
        if any(v.get(identity) == new for v in seen):
            continue
        if new is None:
            view[identity] = None
            effects.rebases.append((identity, "it was dropped (noticed by polling the catalog)"))
            effects.notes.append(f"captured table {identity} was dropped (noticed by polling the catalog)")
            continue
        view[identity] = new
        what = []
        if new.name != old.name:
            what.append(f"renamed to {new.name}")
        if new.columns != old.columns:
            what.append(f"its columns changed from ({_columns(old)}) to ({_columns(new)})")
        if new.key != old.key or new.identity != old.identity:
            what.append("its key or replica identity changed")
        if new.leaves != old.leaves:
            what.append("its partitions changed")
        effects.rebases.append((identity, f"{', '.join(what) or 'its definition changed'} (noticed by polling the "
                                          "catalog: the position is approximate)"))
    return effects


def _same_text(old: str, new: str) -> bool:
    """Does a type change without a rewrite keep the text of every existing value? Only a new type
    modifier (varchar(20) -> varchar(40), numeric(10,2) -> numeric(12,2): PostgreSQL rewrites the
    table when a value would change) or text <-> varchar. Any other change (timestamp -> timestamptz,
    cidr -> inet, int -> oid) may print a value anew, so it is a rebase point."""
    base = [re.sub(r"\(\d+(,\d+)?\)", "", t) for t in (old, new)]  # timestamp(3) with time zone -> ...
    return base[0] == base[1] or set(base) <= {"text", "character varying"}


def _columns(shape: TableShape) -> str:
    return ", ".join(f"{c.name} {c.type}" for c in shape.columns)


def _changes(identity: str, old: TableShape, new: TableShape, created: set[int], effects: Effects) -> Effects:
    if new != old:
        # Recorded even when only the partitions changed: the view a restarted capture resumes with is
        # the one of the tape's end, so a transaction that changes it must be on the tape.
        effects.records.append(schema_record(identity, new))
    before = {c.attnum: c for c in old.columns}
    for c in new.columns:
        was = before.get(c.attnum)
        if was is not None and was.type != c.type and not _same_text(was.type, c.type):
            effects.rebases.append((identity, f"the type of its column {c.name} changed from {was.type} to {c.type}, "
                                              "which may print existing values differently (no row changes are "
                                              "decoded for that)"))
    if new.key != old.key:
        # Rows are matched by key: a fold keyed by the old one cannot carry on with the new one.
        effects.rebases.append((identity, f"its key changed from ({', '.join(old.key)}) to ({', '.join(new.key)})"))
    problem = capturable(identity, new)
    if problem:
        effects.notes.append(f"warning: {problem}")
    for oid, name in new.leaves.items():
        if oid not in old.leaves and oid not in created:
            effects.rebases.append((identity, f"{name} was attached as a partition, with its rows"))
    for oid, name in old.leaves.items():
        if oid not in new.leaves:
            effects.rebases.append((identity, f"its partition {name} was detached or dropped, with its rows"))
    if new.name != old.name:
        effects.notes.append(f"captured table {identity} is now named {new.name}")
    return effects
