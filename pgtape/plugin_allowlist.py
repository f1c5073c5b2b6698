"""`output_plugin_libraries`: may this server's sessions decode through wal2json, and the exact fix.

Since PostgreSQL 15.19 a server decodes only through the output plugins this parameter names
(default `pgoutput, test_decoding`); slot creation, START_REPLICATION and the SQL slot functions
refuse any other, for superusers too. When a change takes effect, and the syntax trap of
`ALTER SYSTEM SET` on a list: README.md, "Using it on your database".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg

from pgtape.pg import quote_literal, sql_name
from pgtape.slot import PLUGIN

PARAMETER = "output_plugin_libraries"
_REFUSAL = f'library "{PLUGIN}" may not be used as an output plugin'
# One element of a list-valued setting as SHOW prints it: a bare word or a "double-quoted" name.
_LIST_ITEM = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^,\s]+))\s*(?:,|$)')


@dataclass(frozen=True)
class Allowlist:
    value: str | None  # None: this role may not read it (that needs superuser or pg_read_all_settings)
    source: str | None  # pg_settings.source: where the value comes from (None when unreadable)

    @property
    def names(self) -> list[str] | None:
        if self.value is None:
            return None
        return [quoted.replace('""', '"') if quoted else bare for quoted, bare in _LIST_ITEM.findall(self.value)]


def is_refusal(error: BaseException | str) -> bool:
    return _REFUSAL in str(error)


def read_allowlist(conn: psycopg.Connection) -> Allowlist | None:
    """The session's value, or None when the server has no such parameter (before 15.19).

    `conn` must be in autocommit: an unreadable value is an error, which would abort a transaction."""
    row = conn.execute(f"SELECT setting, source FROM pg_settings WHERE name = '{PARAMETER}'").fetchone()
    if row is not None:
        return Allowlist(row[0], row[1])
    try:  # pg_settings hides what the role may not read; current_setting tells hidden from absent
        exists = conn.execute(f"SELECT current_setting('{PARAMETER}', true)").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return Allowlist(None, None)
    return None if exists is None or exists[0] is None else Allowlist(exists[0], None)


def refusal_message(conn: psycopg.Connection) -> str:
    """The one line for a server that refuses wal2json, with the statements that fix it."""
    [(role, database)] = conn.execute("SELECT current_user, current_database()").fetchall()
    allowlist = read_allowlist(conn) or Allowlist(None, None)
    return allowlist_problem(allowlist, role, database)


def allowlist_problem(allowlist: Allowlist, role: str, database: str) -> str:
    head = f"the server refuses {PLUGIN} as a logical decoding output plugin: "
    names = allowlist.names
    if names is None:
        # The value is unknown here: let psql build the statement from it (\gexec runs each cell).
        return (f"{head}{PARAMETER} does not name it (role {role} cannot read its value, which needs superuser or "
                f"pg_read_all_settings); as a superuser, in psql, run: SELECT format('ALTER SYSTEM SET {PARAMETER} "
                f"= %s', concat_ws(', ', nullif(current_setting('{PARAMETER}'), ''), '{PLUGIN}')), "
                "'SELECT pg_reload_conf()' \\gexec (no restart needed)")
    listed = ", ".join(quote_literal(n) for n in [*names, PLUGIN])
    now = f"{PARAMETER} is {quote_literal(allowlist.value or '')}, which does not name it"
    quoting = "quote each name on its own: one quoted string would be a single name"
    # ALTER SYSTEM cannot override a value set for the role or database, nor on a command line.
    where = {"user": f"ALTER ROLE {sql_name(role)}", "database": f"ALTER DATABASE {sql_name(database)}",
             "database user": f"ALTER ROLE {sql_name(role)} IN DATABASE {sql_name(database)}",
             }.get(allowlist.source or "")
    if where:
        return f"{head}{now} (set by {where} SET); as a superuser run: {where} SET {PARAMETER} = {listed}; ({quoting})"
    if allowlist.source == "command line":
        return f"{head}{now} (set on the server's command line): add {PLUGIN} there and restart the server"
    if allowlist.source == "client":
        return f"{head}{now} (set by the options of the connection string): add {PLUGIN} there"
    return (f"{head}{now}; as a superuser run: ALTER SYSTEM SET {PARAMETER} = {listed}; SELECT pg_reload_conf(); "
            f"(no restart needed; {quoting})")
