"""A table's shape: name, kind, columns by attnum with their types and missing values, key, leaves.

One query (SHAPE_SQL) reads it from the catalog, both inside the DDL trigger and for pgtape's own
reads (capture's view and polling, each snapshot's table headers), so the two always agree.
"""

from __future__ import annotations

import json

import msgspec
import psycopg

from pgtape.names import canonical

# One JSON object per table (what shape_from_json reads), for the DDL trigger (capture/ddl_trigger.py)
# and for reads of the catalog (read_shapes): {rel} the table's oid, {event} and {created} (the tables the
# command created: a new partition is empty, an attached one is not) as the caller has them.
SHAPE_SQL = """
SELECT json_build_object(
  'event', {event}, 'oid', c.oid::bigint, 'schema', n.nspname, 'name', c.relname, 'kind', c.relkind,
  'identity', c.relreplident, 'created', {created}::bigint[],
  'columns', (SELECT coalesce(json_agg(json_build_array(a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                                                        CASE WHEN a.atthasmissing
                                                             THEN (a.attmissingval::text::text[])[1] END)
                                       ORDER BY a.attnum), '[]')
              FROM (SELECT a.attnum, a.attname, a.atttypid, a.atttypmod,
                           coalesce(l.atthasmissing, a.atthasmissing) AS atthasmissing,
                           CASE WHEN l.atthasmissing THEN l.attmissingval ELSE a.attmissingval END AS attmissingval
                    FROM pg_attribute a
                    -- A partitioned table holds no rows, so no missing values: its leaves do, the same in
                    -- each for a column added through it.
                    LEFT JOIN LATERAL (SELECT la.atthasmissing, la.attmissingval FROM pg_partition_tree(c.oid) t
                                       JOIN pg_attribute la ON la.attrelid = t.relid AND la.attname = a.attname
                                       WHERE c.relkind = 'p' AND t.isleaf AND la.atthasmissing
                                       ORDER BY t.relid LIMIT 1) l ON true
                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) a),
  'key', (SELECT coalesce(json_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum)), '[]')
          FROM pg_index i JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'i' THEN i.indisreplident
                                                           WHEN 'n' THEN false ELSE i.indisprimary END),
  'leaves', CASE WHEN c.relkind = 'p' THEN
              (SELECT coalesce(json_agg(json_build_array(l.oid::bigint, ln.nspname, l.relname) ORDER BY l.oid), '[]')
               FROM pg_partition_tree(c.oid) t JOIN pg_class l ON l.oid = t.relid
               JOIN pg_namespace ln ON ln.oid = l.relnamespace WHERE t.isleaf AND l.relkind = 'r') END)::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = {rel}
"""


class Column(msgspec.Struct, array_like=True, frozen=True):
    attnum: int
    name: str
    type: str  # format_type() with typmod
    missing: str | None  # what rows that existed when the column was added read (attmissingval), as text


class TableShape(msgspec.Struct, frozen=True):
    oid: int
    name: str  # canonical, now
    kind: str  # "r" a table, "p" a partitioned table
    identity: str  # pg_class.relreplident
    columns: list[Column]
    key: list[str]  # the replica key (pgtape.pg.replica_key): [] with REPLICA IDENTITY FULL and no key
    leaves: dict[int, str] = {}  # a partitioned table's leaf partitions: oid -> canonical name


View = dict[str, TableShape | None]  # identity -> its shape; None once the table is dropped


def shape_from_json(doc: dict) -> TableShape:
    return TableShape(int(doc["oid"]), canonical(doc["schema"], doc["name"]), doc["kind"], doc["identity"],
                      [Column(int(a), n, t, m) for a, n, t, m in doc["columns"]], list(doc["key"]),
                      {int(o): canonical(s, n) for o, s, n in doc.get("leaves") or []})


def read_shapes(conn: psycopg.Connection, oids: list[int]) -> dict[int, TableShape]:
    """The current shape of each table that still exists, from the catalog (the trigger's query).

    Types are named as the trigger names them, with only pg_catalog on the search path (a type of
    another schema is qualified: public.mood), whatever this session's search path; in a transaction
    the setting lasts until its end."""
    query = SHAPE_SQL.format(rel="%(rel)s::oid", event="'catalog'", created="'{}'")
    shapes = {}
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog")
        for oid in oids:
            row = conn.execute(query, {"rel": oid}).fetchone()
            if row is not None:
                shapes[oid] = shape_from_json(json.loads(row[0]))
    return shapes
