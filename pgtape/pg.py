"""Connections to the source database: pinned session settings, replication mode, redaction.

Every pgtape connection renders values the same way (DateStyle=ISO, TimeZone=UTC, ...), so the
text wal2json prints, COPY writes and the tape stores is canonical. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgtape.errors import PgtapeError
from pgtape.names import quote_ident as quote_ident, sql_name as sql_name  # re-exported: quoting lives in names

# Rendering settings pinned on every session, the walsender's included (it decodes with them).
PINNED_SETTINGS = {
    "DateStyle": "ISO",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "IntervalStyle": "postgres",
    # Row-level security never filters silently: a role that policies would restrict gets an error
    # (as pg_dump does) instead of a snapshot, comparison or in-place replay of only some rows.
    "row_security": "off",
}


# Connection parameters that hold a secret: the password, the passphrase of an encrypted client key
# (sslpassword), and OAuth's client secret (libpq 18).
SECRET_PARAMETERS = ("password", "sslpassword", "oauth_client_secret")


def redact_dsn(dsn: str | None) -> str:
    """The DSN without its secrets (SECRET_PARAMETERS), for messages and logs."""
    if not dsn:
        return "(libpq environment)"
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable connection string)"
    for name in SECRET_PARAMETERS:
        params.pop(name, None)
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def _pinned_options(dsn: str | None) -> str:
    existing = ""
    if dsn:
        try:
            existing = str(conninfo_to_dict(dsn).get("options") or "")
        except psycopg.ProgrammingError:
            # libpq's message quotes the text around the fault, which may be a password: say where to look.
            raise PgtapeError("the connection string (--dsn, PGTAPE_DSN or [source] dsn) cannot be parsed; it is not "
                              "shown, as it may hold a password: write it as key=value pairs separated by spaces, "
                              "quoting values with spaces as key='a value', or as a postgresql:// URI") from None
    pinned = " ".join(f"-c {k}={v}" for k, v in PINNED_SETTINGS.items())
    return f"{existing} {pinned}".strip()


def connect(dsn: str | None, *, replication: bool = False, autocommit: bool = True,
            application_name: str = "pgtape") -> psycopg.Connection:
    """Open a connection; a failure becomes one PgtapeError line without the password."""
    options = _pinned_options(dsn)
    try:
        if replication:
            # Replication connections speak only the simple query protocol.
            return psycopg.connect(dsn or "", autocommit=autocommit, options=options,
                                   application_name=application_name, replication="database", prepare_threshold=None)
        return psycopg.connect(dsn or "", autocommit=autocommit, options=options, application_name=application_name)
    except psycopg.OperationalError as e:
        raise PgtapeError(f"cannot connect to {redact_dsn(dsn)}: {first_line(e)}") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def quote_literal(text: str) -> str:
    """For the replication protocol, which takes no query parameters."""
    return "'" + text.replace("'", "''") + "'"


def relation_oid(conn: psycopg.Connection, name: str) -> int | None:
    """The oid of the relation `name` names in SQL (unquoted parts fold to lower case), None if none."""
    row = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def column_types(conn: psycopg.Connection, relation: str | int) -> dict[str, str]:
    """A relation's columns (by name or oid) in attnum order: name -> type as format_type() names it."""
    rows = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                        "%s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (str(relation),)).fetchall()
    return {r[0]: r[1] for r in rows}


def replica_key(conn: psycopg.Connection, relation: str) -> list[str]:
    """The columns that identify a row of a relation (a name or an oid) on the tape, in key order:
    the REPLICA IDENTITY index's columns, else the primary key's; [] with REPLICA IDENTITY FULL and
    no primary key (rows are then matched whole) or with REPLICA IDENTITY NOTHING."""
    return [r[0] for r in conn.execute(
        "SELECT a.attname FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) WHERE c.oid = %s::regclass "
        "AND CASE c.relreplident WHEN 'i' THEN i.indisreplident WHEN 'n' THEN false ELSE i.indisprimary END "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)", (str(relation),)).fetchall()]
