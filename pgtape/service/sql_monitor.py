"""SQL monitoring: the old backup guide's catalog, views and create_recovery_point(), in a database.

`install` creates (idempotently) in a schema of the monitoring database the table payment_backups,
the views backup_status_summary and backup_health_check and the function create_recovery_point
(pgtape/service/sql/install.sql). `sync` makes payment_backups mirror the archive's snapshot catalog:
pgtape serve calls it after every snapshot and periodically, `pgtape sql sync` once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from importlib import resources

import msgspec
import psycopg
from psycopg import sql

from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn
from pgtape.names import split_table
from pgtape.pg import connect, quote_literal, redact_dsn
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.tape.archive import Archive
from pgtape.tape.records import MARK_PREFIX

TABLE = "payment_backups"
VIEWS = ("backup_status_summary", "backup_health_check")
FUNCTION = "create_recovery_point(text, text, timestamptz)"
NAMED_TYPES = ("payments", "orders", "tickets")  # the old guide's backup types of one table


class Installed(msgspec.Struct):
    """One object `install` handled: created, or already there (table, schema) or replaced (views, function)."""
    kind: str  # schema, table, view, function
    name: str  # schema-qualified
    action: str  # created, exists, replaced


def monitoring_dsn(config: Config) -> str | None:
    return config.sql_dsn or config.dsn


def install(config: Config) -> list[Installed]:
    """Create or replace every object, in one transaction; what each one was."""
    schema = config.sql_schema
    script = (resources.files("pgtape.service") / "sql" / "install.sql").read_text()
    script = script.replace("@MARK_PREFIX@", quote_literal(MARK_PREFIX))
    with connect(monitoring_dsn(config)) as c, c.transaction():
        before = _existing(c, schema)
        c.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        if schema not in before:
            c.execute(sql.SQL("COMMENT ON SCHEMA {} IS 'pgtape SQL monitoring: backup catalog, views, "
                              "create_recovery_point()'").format(sql.Identifier(schema)))
        c.execute(sql.SQL("SET LOCAL search_path = {}, pg_catalog").format(sql.Identifier(schema)))
        c.execute(script.encode())  # no parameters: psycopg runs the statements as one script
    objects = [("schema", schema), ("table", f"{schema}.{TABLE}"), *(("view", f"{schema}.{v}") for v in VIEWS),
               ("function", f"{schema}.{FUNCTION}")]
    return [Installed(kind, name, "created" if name not in before else
                      "exists" if kind in ("schema", "table") else "replaced")
            for kind, name in objects]


def _existing(c: psycopg.Connection, schema: str) -> set[str]:
    """Which of install's objects exist already, by the names install reports."""
    found: set[str] = set()
    if c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone():
        found.add(schema)
    for name in (TABLE, *VIEWS):
        if _exists(c, "to_regclass", schema, name):
            found.add(f"{schema}.{name}")
    if _exists(c, "to_regprocedure", schema, FUNCTION):
        found.add(f"{schema}.{FUNCTION}")
    return found


def _exists(c: psycopg.Connection, lookup: str, schema: str, name: str) -> bool:
    """`name` (a relation, or a function with its argument types) in `schema`, by to_regclass/to_regprocedure."""
    row = c.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(lookup)),
                    (f"{sql.Identifier(schema).as_string(c)}.{name}",)).fetchone()
    return row is not None and row[0] is not None


def grants(schema: str, role: str = "monitoring") -> list[str]:
    """What a monitoring role needs (install grants nothing)."""
    objects = ", ".join(f"{schema}.{name}" for name in (TABLE, *VIEWS))
    return [f"GRANT USAGE ON SCHEMA {schema} TO {role};",
            f"GRANT SELECT ON {objects} TO {role};",
            f"GRANT EXECUTE ON FUNCTION {schema}.{FUNCTION} TO {role};  -- to create recovery points"]


def backup_type(tables: list[str], captured: list[str] | None) -> str:
    """The old guide's type: full (every captured table), payments/orders/tickets (that one table), else tables."""
    if captured is not None and set(tables) == set(captured):
        return "full"
    if len(tables) == 1 and split_table(tables[0])[1] in NAMED_TYPES:
        return split_table(tables[0])[1]
    return "tables"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _time(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)  # exact: no float seconds


_UPSERT = """
INSERT INTO {table} (id, backup_type, status, tables, record_count, file_size_bytes, created_at, expires_at,
                     completed_at, as_of_lsn, as_of_time, error_message, generation)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::pg_lsn, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    backup_type = excluded.backup_type, status = excluded.status, tables = excluded.tables,
    record_count = excluded.record_count, file_size_bytes = excluded.file_size_bytes,
    created_at = excluded.created_at, expires_at = excluded.expires_at, completed_at = excluded.completed_at,
    as_of_lsn = excluded.as_of_lsn, as_of_time = excluded.as_of_time, error_message = excluded.error_message,
    generation = excluded.generation
"""


def sync(config: Config, archive: Archive) -> int:
    """Make payment_backups hold one row per snapshot of the archive's catalog, in one transaction;
    the number of rows it now holds."""
    table = sql.Identifier(config.sql_schema, TABLE)
    dsn = monitoring_dsn(config)
    with connect(dsn) as c, c.transaction():
        if not _exists(c, "to_regclass", config.sql_schema, TABLE):
            raise PgtapeError(f"no table {config.sql_schema}.{TABLE} in {redact_dsn(dsn)}: run pgtape sql install")
        # Syncs one at a time, each reading the catalog under the lock: a slower one never deletes a
        # row a newer one added. Readers of the table and views are not blocked.
        c.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table))
        records = catalog.load_all(archive)
        cache: dict[int, list[str] | None] = {}
        rows = [_row(r, _captured(archive, r.generation, cache)) for r in records]
        with c.cursor() as cur:
            cur.executemany(sql.SQL(_UPSERT).format(table=table), rows)
        c.execute(sql.SQL("DELETE FROM {} WHERE NOT (id = ANY(%s))").format(table), ([r.id for r in records],))
    return len(records)


def _captured(archive: Archive, generation: int, cache: dict[int, list[str] | None]) -> list[str] | None:
    if generation not in cache:
        try:
            cache[generation] = archive.generation(generation).tables
        except FileNotFoundError:  # a generation pruned while its record is being deleted
            cache[generation] = None
    return cache[generation]


def _row(r: SnapshotRecord, captured: list[str] | None) -> tuple[object, ...]:
    done = r.status == catalog.COMPLETED
    return (r.id, backup_type(r.tables, captured), r.status, r.tables, sum(r.rows.values()) if done else None,
            r.bytes if done else None, _time(r.created_at), _time(r.expires_at), _time(r.completed_at),
            format_lsn(r.as_of_lsn) if r.as_of_lsn is not None else None, _time(r.as_of_time), r.error,
            r.generation)
