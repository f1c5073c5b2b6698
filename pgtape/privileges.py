"""What a role needs beyond the least-privilege role, and the exact statement that grants it.

The least-privilege role (README, Security) has LOGIN, REPLICATION, SELECT on the captured tables
and CREATE on the database: enough for check, init, capture, snapshot, replay into a recovery
schema or files, verify --live and diff. The operations here need more; `pgtape check` lists them
as optional capabilities, and each refuses, before it changes anything, with the statement to run:
  replay --in-place   INSERT, UPDATE and DELETE on its tables (LOCK ... IN EXCLUSIVE MODE needs
                      UPDATE or DELETE, which these include), CREATE and TEMPORARY on the database
                      (the backup schema of what it overwrites, the staged rows);
  pgtape mark         EXECUTE on pg_logical_emit_message (PUBLIC has it unless an administrator
                      revoked it).
The DDL event trigger (a superuser) and output_plugin_libraries (a superuser's ALTER SYSTEM) are
in capture/ddl_trigger.py and plugin_allowlist.py.
"""

from __future__ import annotations

from typing import Sequence

import psycopg

from pgtape.names import canonical, sql_name

IN_PLACE_TABLE_PRIVILEGES = ("INSERT", "UPDATE", "DELETE")
IN_PLACE_DATABASE_PRIVILEGES = ("CREATE", "TEMPORARY")
EMIT_MESSAGE = "pg_catalog.pg_logical_emit_message(boolean, text, text)"


def _role_database(conn: psycopg.Connection) -> tuple[str, str]:
    [(role, database)] = conn.execute("SELECT current_user, current_database()").fetchall()
    return str(role), str(database)


def in_place_grants(conn: psycopg.Connection, tables: Sequence[int]) -> list[str]:
    """The GRANT statements this role still needs for replay --in-place of these tables (by oid; a
    partitioned table is written through its root, so the root's privileges are what counts).
    Empty: it has what it needs."""
    role, database = _role_database(conn)
    missing: dict[tuple[str, ...], list[str]] = {}  # the privileges a table lacks -> those tables
    for oid in tables:
        row = conn.execute("SELECT n.nspname, c.relname, " + ", ".join(
            f"has_table_privilege(c.oid, '{p}')" for p in IN_PLACE_TABLE_PRIVILEGES) + " FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s", (oid,)).fetchone()
        if row is None:
            continue  # gone: replay says so itself
        lacks = tuple(p for p, has in zip(IN_PLACE_TABLE_PRIVILEGES, row[2:]) if not has)
        if lacks:
            missing.setdefault(lacks, []).append(canonical(row[0], row[1]))
    grants = [f"GRANT {', '.join(p)} ON {', '.join(t)} TO {sql_name(role)}" for p, t in missing.items()]
    row = conn.execute("SELECT " + ", ".join(f"has_database_privilege(current_database(), '{p}')"
                                             for p in IN_PLACE_DATABASE_PRIVILEGES)).fetchone()
    assert row is not None
    lacks_db = [p for p, has in zip(IN_PLACE_DATABASE_PRIVILEGES, row) if not has]
    if lacks_db:
        grants.append(f"GRANT {', '.join(lacks_db)} ON DATABASE {sql_name(database)} TO {sql_name(role)}")
    return grants


def in_place_refusal(grants: Sequence[str]) -> str:
    """The one line replay --in-place fails with when `grants` (in_place_grants) is not empty."""
    return (f"replay --in-place needs privileges this role lacks; nothing was changed: as the tables' owner or a "
            f"superuser run {'; '.join(grants)} (or replay into a recovery schema, which needs none of them)")


def mark_grant(conn: psycopg.Connection) -> str | None:
    """The GRANT `pgtape mark` needs (to emit its logical message), or None when it has it."""
    row = conn.execute(f"SELECT has_function_privilege('{EMIT_MESSAGE}', 'EXECUTE')").fetchone()
    if row is not None and row[0]:
        return None
    role, _ = _role_database(conn)
    return f"GRANT EXECUTE ON FUNCTION {EMIT_MESSAGE} TO {sql_name(role)}"
