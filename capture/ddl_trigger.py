"""The DDL event trigger: schema changes recorded in the stream, at their exact position.

Logical decoding carries no DDL. Three event triggers (creating one needs a superuser on
PostgreSQL 15) emit a transactional logical message, prefix `pgtape_schema`, inside the very
transaction that changes a table, at the point of the change:
  ddl_command_end  the new shape of each table the command touched, and of the partitioned tables
                   above it (their leaves anew): columns with attnum, type and the value rows that
                   existed before an ADD COLUMN read (attmissingval), the key, the name; and, for an
                   ALTER TYPE, each table with a column of that type (its values may print anew);
  sql_drop         each table dropped;
  table_rewrite    a table whose rows are about to be rewritten (ALTER COLUMN TYPE, a volatile
                   default, ...): its rows change without any decoded row change.
Capture turns these into Schema records on the tape (capture/tables.py). Without the triggers,
capture notices changed shapes by polling the catalog, at an approximate position.
The functions never fail the DDL they observe on a catalog read: such an error becomes a WARNING,
and polling notices the change.
"""

from __future__ import annotations

import psycopg

from pgtape.capture.wal2json import DDL_PREFIX as MESSAGE_PREFIX
from pgtape.shapes import SHAPE_SQL

SCHEMA = "pgtape"
TRIGGERS = ("pgtape_ddl_command_end", "pgtape_sql_drop", "pgtape_table_rewrite")

# Rendering pinned as on every pgtape session (pgtape/pg.py), so a missing value's text is canonical.
_PINNED = ("SET search_path = pg_catalog SET DateStyle = 'ISO' SET TimeZone = 'UTC' SET extra_float_digits = 3 "
           "SET bytea_output = 'hex' SET IntervalStyle = 'postgres'")

INSTALL_SQL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE OR REPLACE FUNCTION {SCHEMA}.table_shape(rel oid, event text, created oid[]) RETURNS text
LANGUAGE sql STABLE {_PINNED} AS $$ {SHAPE_SQL.format(rel="rel", event="event", created="created")} $$;

CREATE OR REPLACE FUNCTION {SCHEMA}.on_ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER {_PINNED} AS $$
DECLARE
  shapes text[];
  shape text;
BEGIN
  BEGIN
    -- Tables the command touched (an index stands for its table), and every partitioned table
    -- above them (their leaves may have changed); the tables it created.
    WITH touched AS (
      SELECT coalesce(i.indrelid, c.oid) AS relid, d.command_tag = 'CREATE TABLE' AS created
        FROM pg_event_trigger_ddl_commands() d JOIN pg_class c ON c.oid = d.objid
        LEFT JOIN pg_index i ON i.indexrelid = c.oid
       WHERE d.classid = 'pg_class'::regclass),
    made AS (SELECT coalesce(array_agg(relid) FILTER (WHERE created), '{{}}') AS oids FROM touched),
    tables AS (SELECT relid FROM touched UNION SELECT pg_partition_ancestors(relid) FROM touched)
    SELECT array_agg({SCHEMA}.table_shape(t.relid, 'ddl', made.oids) ORDER BY t.relid) INTO shapes
      FROM tables t JOIN pg_class c ON c.oid = t.relid, made WHERE c.relkind IN ('r', 'p');
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgtape could not record this schema change (%); capture notices it later by polling', SQLERRM;
    RETURN;
  END;
  BEGIN
    -- ALTER TYPE can change how existing values print without any row change (an enum label
    -- renamed, an attribute added to a composite type): each table with such a column hears of it.
    SELECT shapes || array_agg(json_build_object('event', 'type', 'oid', a.attrelid::bigint,
                                                 'type', format_type(d.objid, NULL))::text)
      INTO shapes
      FROM pg_event_trigger_ddl_commands() d JOIN pg_type t ON true
      JOIN pg_attribute a ON a.atttypid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE d.classid = 'pg_type'::regclass AND d.command_tag = 'ALTER TYPE'
       AND (t.oid = d.objid OR t.typelem = d.objid OR t.typbasetype = d.objid);
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgtape could not record this type change (%): replays of the tables using it may print old '
                  'values of it until their next base', SQLERRM;
  END;
  -- Emitted outside the exception block: a message alone in a subtransaction is decoded after the
  -- changes its transaction makes later (PostgreSQL 15), so it would land out of place.
  FOREACH shape IN ARRAY coalesce(shapes, '{{}}') LOOP
    PERFORM pg_logical_emit_message(true, '{MESSAGE_PREFIX}', shape);
  END LOOP;
END $$;

CREATE OR REPLACE FUNCTION {SCHEMA}.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER {_PINNED} AS $$
DECLARE
  drops text[];
  one text;
BEGIN
  BEGIN
    SELECT array_agg(json_build_object('event', 'drop', 'oid', objid::bigint, 'schema', schema_name,
                                       'name', object_name)::text)
      INTO drops FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table';
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgtape could not record this drop (%); capture notices it later by polling', SQLERRM;
    RETURN;
  END;
  FOREACH one IN ARRAY coalesce(drops, '{{}}') LOOP
    PERFORM pg_logical_emit_message(true, '{MESSAGE_PREFIX}', one);
  END LOOP;
END $$;

CREATE OR REPLACE FUNCTION {SCHEMA}.on_table_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER {_PINNED} AS $$
BEGIN
  PERFORM pg_logical_emit_message(true, '{MESSAGE_PREFIX}', json_build_object(
    'event', 'rewrite', 'oid', pg_event_trigger_table_rewrite_oid()::bigint)::text);
END $$;

REVOKE ALL ON FUNCTION {SCHEMA}.table_shape(oid, text, oid[]) FROM PUBLIC;
"""

_EVENTS = {"pgtape_ddl_command_end": ("ddl_command_end", "on_ddl_command_end"),
           "pgtape_sql_drop": ("sql_drop", "on_sql_drop"),
           "pgtape_table_rewrite": ("table_rewrite", "on_table_rewrite")}


def installed(conn: psycopg.Connection) -> bool:
    """Are all three triggers present and enabled? (Readable by any role.)"""
    row = conn.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY(%s) AND evtenabled <> 'D'",
                       (list(TRIGGERS),)).fetchone()
    return row is not None and row[0] == len(TRIGGERS)


def may_install(conn: psycopg.Connection) -> bool:
    """Creating an event trigger needs a superuser (PostgreSQL 15)."""
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def disabled(conn: psycopg.Connection) -> list[str]:
    """Triggers present but disabled: an administrator's choice, which pgtape does not undo."""
    return [r[0] for r in conn.execute("SELECT evtname FROM pg_event_trigger WHERE evtname = ANY(%s) AND "
                                       "evtenabled = 'D' ORDER BY 1", (list(TRIGGERS),)).fetchall()]


def install(conn: psycopg.Connection) -> None:
    """Create (or bring up to date) the functions, and the triggers that are missing, in one
    transaction."""
    with conn.transaction():
        conn.execute(INSTALL_SQL)
        present = {r[0] for r in conn.execute("SELECT evtname FROM pg_event_trigger WHERE evtname = ANY(%s)",
                                              (list(TRIGGERS),)).fetchall()}
        for name, (event, function) in _EVENTS.items():
            if name not in present:
                conn.execute(f"CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION {SCHEMA}.{function}()")
