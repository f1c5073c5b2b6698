"""Preflight for `pgtape check`: can capture run with this configuration?

Checks the server settings, the role's privileges, the replication connection, wal2json, the
tables and the archive directory. Each problem is one line that says what is wrong and how to
fix it; so is each warning (a risk that does not fail the check: values wal2json cannot carry, a
DSN that allows an unencrypted connection to a remote host).
Only what a role with REPLICATION and SELECT may do is used (catalog views, settings and a
TEMPORARY slot), so such a role can check itself; no superuser needed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgtape.capture import ddl_trigger
from pgtape import pg, privileges
from pgtape.config import Config
from pgtape.names import split_table
from pgtape.errors import PgtapeError, UsageError
from pgtape.plugin_allowlist import PARAMETER, Allowlist, allowlist_problem, is_refusal, read_allowlist, refusal_message
from pgtape.slot import PLUGIN, find_slot

# Creating a logical slot waits until every transaction open at that moment has ended; a stuck
# transaction would hang `check` (and capture) forever, so the probe gives up after this long.
SLOT_PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


@dataclass(frozen=True)
class Capability:
    """What this role may do beyond the least-privilege role's commands (pgtape/privileges.py)."""
    code: str  # in_place_replay, schema_change_trigger, output_plugin_libraries, mark
    description: str
    available: bool
    enable: str | None  # when not available: the statements (or the step) that make it so


@dataclass
class Report:
    checks: list[str] = field(default_factory=list)  # what passed, one line each
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # risks that do not fail the check
    capabilities: list[Capability] = field(default_factory=list)  # optional; never fail the check

    @property
    def ok(self) -> bool:
        return not self.problems

    def passed(self, text: str) -> None:
        self.checks.append(text)

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def warn(self, warning: Problem) -> None:
        self.warnings.append(warning)

    def add_once(self, problem: Problem) -> None:
        """For server-level problems that two checks can find (settings, then the real attempt)."""
        if all(p.code != problem.code for p in self.problems):
            self.problems.append(problem)


@dataclass(frozen=True)
class Server:
    role: str
    database: str
    major: int
    superuser: bool
    replication: bool
    wal_level: str
    max_slots: int
    slots_used: int
    max_senders: int
    senders_used: int


_SERVER_SQL = """
select current_user, current_database(), current_setting('server_version_num')::int / 10000,
       r.rolsuper, r.rolreplication, current_setting('wal_level'),
       current_setting('max_replication_slots')::int, (select count(*) from pg_replication_slots),
       current_setting('max_wal_senders')::int, (select count(*) from pg_stat_replication)
from pg_roles r where r.rolname = current_user
"""

_TABLE_SQL = """
select c.relkind, c.relreplident,
       exists(select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary),
       exists(select 1 from pg_index i where i.indrelid = c.oid and i.indisreplident),
       has_table_privilege(c.oid, 'SELECT'), has_schema_privilege(n.oid, 'USAGE'),
       c.relrowsecurity and (c.relforcerowsecurity or not pg_has_role(c.relowner, 'USAGE'))
         and not (select rolbypassrls or rolsuper from pg_roles where rolname = current_user)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = %s
"""

_RELKINDS = {"v": "a view", "m": "a materialized view", "f": "a foreign table", "S": "a sequence",
             "i": "an index", "I": "an index", "c": "a composite type", "t": "a TOAST table"}


def preflight(config: Config) -> Report:
    report = Report()
    plaintext = plaintext_warning(config.dsn, os.environ)
    if plaintext is not None:
        report.warn(plaintext)
    try:
        conn = pg.connect(config.dsn, application_name="pgtape check")
    except PgtapeError as e:
        report.add(Problem("connect", str(e)))  # nothing else can be checked meaningfully
        return report
    with conn:
        try:
            _check_database(conn, config, report)
        except psycopg.Error as e:
            report.add(Problem("query", f"a preflight query failed: {pg.first_line(e)}"))
    _check_archive(config, report)
    return report


# -- server, role and replication ----------------------------------------------------------------

def _check_database(conn: psycopg.Connection, config: Config, report: Report) -> None:
    row = conn.execute(_SERVER_SQL).fetchone()
    assert row is not None
    server = Server(*row)
    report.passed(f"connected to {pg.redact_dsn(config.dsn)} as role {server.role}, database {server.database}")

    logical = server.wal_level == "logical"
    if logical:
        report.passed("wal_level = logical")
    else:
        report.add(wal_level_problem(server.wal_level))

    if server.superuser or server.replication:
        report.passed(f"role {server.role} may replicate ({'superuser' if server.superuser else 'REPLICATION'})")
    else:
        report.add(privilege_problem(server.role))

    allowlist = read_allowlist(conn)
    if allowlist is not None and allowlist.names is not None:  # else the probe below finds out
        if PLUGIN in allowlist.names:
            report.passed(f"{PARAMETER} names {PLUGIN}")
        else:
            report.add(Problem("plugin_not_allowed", allowlist_problem(allowlist, server.role, server.database)))

    slot_exists = _check_slot(conn, config.slot, server, report)
    free_slot = server.slots_used < server.max_slots
    free_sender = server.senders_used < server.max_senders
    if not free_slot and not slot_exists:
        report.add(slots_full_problem(f" ({server.slots_used} of max_replication_slots = {server.max_slots} "
                                      f"in use) for slot {config.slot}"))
    if not free_sender:
        report.add(senders_full_problem(f" ({server.senders_used} of max_wal_senders = {server.max_senders} "
                                        "in use)"))
    if (free_slot or slot_exists) and free_sender:
        report.passed(f"replication slots: {server.slots_used} of {server.max_slots} in use; "
                      f"WAL senders: {server.senders_used} of {server.max_senders} in use")

    # The probe needs a WAL sender of its own, and a free slot for its temporary one.
    decoded = free_sender and _probe_replication(conn, config, server, create_slot=logical and free_slot,
                                                 report=report)

    _check_ddl_trigger(conn, server, report)
    for table in config.tables:
        _check_table(conn, table, server, report)
    _check_capabilities(conn, config, server, allowlist, decoded, report)


def _check_slot(conn: psycopg.Connection, name: str, server: Server, report: Report) -> bool:
    slot = find_slot(conn, name)
    if slot is None:
        report.passed(f"replication slot {name} does not exist yet: capture will create it")
        return False
    drop = f"SELECT pg_drop_replication_slot('{name}')"
    if slot.plugin is None:
        report.add(Problem("slot_physical", f"replication slot {name} is a physical slot: choose another name "
                                            f"with --slot, or drop it ({drop}) if nothing uses it"))
    elif slot.plugin != PLUGIN:
        report.add(Problem("slot_plugin", f"replication slot {name} uses output plugin {slot.plugin}, not "
                                          f"{PLUGIN}: choose another name with --slot, or drop it ({drop}) "
                                          "if nothing else uses it"))
    elif slot.database != server.database:
        report.add(Problem("slot_database", f"replication slot {name} belongs to database {slot.database}, not "
                                            f"{server.database}: connect to {slot.database} or choose another "
                                            "name with --slot"))
    else:
        report.passed(f"replication slot {name} exists ({PLUGIN}, database {server.database})")
    return True


def _probe_replication(conn: psycopg.Connection, config: Config, server: Server, *, create_slot: bool,
                       report: Report) -> bool:
    """Open a replication connection (REPLICATION privilege, a free WAL sender) and create a TEMPORARY
    wal2json slot (plugin installed, slot creation allowed); the server drops it when the session ends.
    True when the slot was created (so this role's sessions may decode through wal2json).

    pg_hba.conf needs nothing more: it matches a logical replication connection like an ordinary one
    to its database (`replication` lines are for physical replication only)."""
    try:
        repl = pg.connect(config.dsn, replication=True, application_name="pgtape check")
    except PgtapeError as e:
        report.add_once(classify_replication_error(str(e), server.role, server.major))
        return False
    with repl:
        if not create_slot:
            report.passed("replication connection accepted (no test slot created, so wal2json is unverified)")
            return False

        def cancel() -> None:
            try:
                repl.cancel_safe()
            except psycopg.Error:
                pass  # the connection is gone: the slot attempt fails on its own

        timer = threading.Timer(SLOT_PROBE_TIMEOUT, cancel)
        timer.start()
        try:
            repl.execute(f"CREATE_REPLICATION_SLOT pgtape_check_{os.getpid()}_{secrets.token_hex(3)} "
                         f"TEMPORARY LOGICAL {PLUGIN}")
        except psycopg.Error as e:
            if is_refusal(e):
                report.add_once(Problem("plugin_not_allowed", refusal_message(conn)))
            else:
                report.add_once(classify_replication_error(pg.first_line(e), server.role, server.major))
            return False
        finally:
            timer.cancel()
    report.passed(f"replication connection accepted and a temporary {PLUGIN} slot created: {PLUGIN} is installed")
    return True


def classify_replication_error(text: str, role: str, server_major: int) -> Problem:
    """A failed replication connection or slot creation (the server's error text) -> what to fix."""
    if ("must be superuser or replication role" in text or "permission denied to start WAL sender" in text
            or "permission denied to use replication slots" in text):
        return privilege_problem(role)
    if "exceeds max_wal_senders" in text or "too many clients" in text:
        return senders_full_problem()
    if "all replication slots are in use" in text or "max_replication_slots > 0" in text:
        return slots_full_problem()
    if "requires wal_level >= logical" in text:
        return wal_level_problem("not logical")
    m = re.search(r'could not access file "([^"]+)"', text)
    if m:
        return Problem("plugin_missing", f"{PLUGIN} is not installed on the server (the server said: could not "
                                         f"load {m.group(1)}): apt-get install postgresql-{server_major}-wal2json "
                                         "on the database host, or your platform's wal2json package")
    if "canceling statement" in text:
        return Problem("slot_timeout", f"creating a test replication slot took over {SLOT_PROBE_TIMEOUT:g} s: a "
                                       "long-open transaction holds it back (see xact_start in pg_stat_activity) "
                                       "and would hold back capture too; end it and retry")
    return Problem("replication", f"a logical replication connection failed: {text}")


def wal_level_problem(current: str) -> Problem:
    return Problem("wal_level", f"wal_level is {current}, logical decoding needs logical: set wal_level = logical "
                                "in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart the server")


def privilege_problem(role: str) -> Problem:
    return Problem("replication_privilege", f"role {role} lacks the REPLICATION privilege: run ALTER ROLE "
                                            f"{pg.sql_name(role)} REPLICATION as a superuser")


def slots_full_problem(detail: str = "") -> Problem:
    return Problem("slots_full", f"no free replication slot{detail}: drop an unused slot (see "
                                 "pg_replication_slots) or raise max_replication_slots in postgresql.conf and "
                                 "restart the server")


def senders_full_problem(detail: str = "") -> Problem:
    return Problem("wal_senders_full", f"no free WAL sender{detail}: raise max_wal_senders in postgresql.conf and "
                                       "restart the server, or stop an unused replication client (see "
                                       "pg_stat_replication)")


def _check_ddl_trigger(conn: psycopg.Connection, server: Server, report: Report) -> None:
    """Schema changes are exact only with the DDL trigger (capture/ddl_trigger.py)."""
    if ddl_trigger.installed(conn):
        report.passed("DDL trigger installed: schema changes are recorded at their exact position")
        return
    off = ddl_trigger.disabled(conn)
    fix = (f"run ALTER EVENT TRIGGER ... ENABLE for {', '.join(off)}" if off else
           "pgtape init installs it (this role is a superuser)" if server.superuser else
           "run pgtape init once as a superuser to install it")
    report.warn(Problem("schema_changes_approximate",
                        f"the DDL trigger is {'disabled' if off else 'not installed'}: capture notices schema changes "
                        "by polling the catalog, at an approximate position, and replay refuses targets around each "
                        f"one until capture has taken a new base; to record them exactly, {fix}"))


# -- optional capabilities -------------------------------------------------------------------

def _check_capabilities(conn: psycopg.Connection, config: Config, server: Server, allowlist: Allowlist | None,
                        decoded: bool, report: Report) -> None:
    """What needs more than the least-privilege role (pgtape/privileges.py), each with what enables it."""
    oids = [oid for oid in (_table_oid(conn, t) for t in config.tables) if oid is not None]
    grants = privileges.in_place_grants(conn, oids)
    report.capabilities.append(Capability(
        "in_place_replay", "replay --in-place: replace the live rows (INSERT, UPDATE, DELETE on the captured tables; "
        "CREATE and TEMPORARY on the database)", not grants, "; ".join(grants) or None))

    off = ddl_trigger.disabled(conn)
    trigger = ddl_trigger.installed(conn)
    report.capabilities.append(Capability(
        "schema_change_trigger", "schema changes recorded at their exact position (the DDL event triggers; creating "
        "them needs a superuser)", trigger,
        None if trigger else "; ".join(f"ALTER EVENT TRIGGER {n} ENABLE" for n in off) if off else
        "run pgtape init once as this role (a superuser)" if server.superuser else
        "run pgtape init once with a superuser's DSN (pgtape init --dsn '... user=<a superuser>')"))

    if allowlist is None:
        report.capabilities.append(Capability(
            "output_plugin_libraries", f"decoding through {PLUGIN} (this server predates {PARAMETER}: any installed "
            "plugin decodes)", True, None))
    else:
        allowed = PLUGIN in allowlist.names if allowlist.names is not None else decoded
        report.capabilities.append(Capability(
            "output_plugin_libraries", f"decoding through {PLUGIN} ({PARAMETER} must name it; changing it needs a "
            "superuser's ALTER SYSTEM)", allowed,
            None if allowed else allowlist_problem(allowlist, server.role, server.database).split(": ", 1)[1]))

    grant = privileges.mark_grant(conn)
    report.capabilities.append(Capability(
        "mark", "pgtape mark: recovery points at the exact stream position (pg_logical_emit_message)",
        grant is None, grant))


def _table_oid(conn: psycopg.Connection, table: str) -> int | None:
    row = conn.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s", split_table(table)).fetchone()
    return None if row is None else int(row[0])


# -- TLS ---------------------------------------------------------------------------------------

# libpq's sslmode values that settle for an unencrypted connection (prefer is its default).
_PLAINTEXT_SSLMODES = ("disable", "allow", "prefer")


def plaintext_warning(dsn: str | None, environ: Mapping[str, str]) -> Problem | None:
    """A warning when the DSN lets libpq talk to a host that is not local without TLS: row values
    and the password would cross the network readable. The environment counts as libpq reads it
    (PGHOST, PGHOSTADDR, PGSSLMODE), each only where the DSN leaves the parameter out."""
    try:
        params = conninfo_to_dict(dsn or "")
    except psycopg.ProgrammingError:
        return None  # connecting says what is wrong with it

    def setting(name: str, env: str) -> str:
        value = params.get(name)
        return str(value) if value is not None else environ.get(env, "")

    sslmode = setting("sslmode", "PGSSLMODE") or "prefer"
    if sslmode not in _PLAINTEXT_SSLMODES:
        return None
    # hostaddr, when given, is where libpq really connects (host then only names the certificate).
    hosts = setting("hostaddr", "PGHOSTADDR") or setting("host", "PGHOST")
    remote = [h for h in (h.strip() for h in hosts.split(",")) if h and not _is_local(h)]
    if not remote:
        return None
    return Problem("unencrypted_connection",
                   f"sslmode={sslmode} allows an unencrypted connection to {', '.join(remote)}, which is not "
                   "local: row values and the password could be read on the network; add sslmode=verify-full "
                   "and sslrootcert=<the server's CA certificate> to the DSN (sslmode=require at least)")


def _is_local(host: str) -> bool:
    """A unix-socket directory (or, with @, an abstract one), localhost or a loopback address (127.0.0.0/8, ::1)."""
    if host.startswith("/") or host.startswith("@") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- tables ------------------------------------------------------------------------------------

def _check_table(conn: psycopg.Connection, table: str, server: Server, report: Report) -> None:
    row = conn.execute(_TABLE_SQL, split_table(table)).fetchone()
    if row is None:
        report.add(Problem("table_missing", f"table {table} does not exist in database {server.database}: "
                                            "create it or fix --tables"))
        return
    relkind, replident, has_pk, has_identity_index, can_select, usage, policed = row
    if not usage:
        schema = split_table(table)[0]
        report.add(Problem("schema_usage", f"role {server.role} lacks USAGE on schema {pg.sql_name(schema)}, so it "
                                           f"cannot read {table}: GRANT USAGE ON SCHEMA {pg.sql_name(schema)} TO "
                                           f"{pg.sql_name(server.role)}"))
    if policed:
        # pgtape's sessions turn row_security off, so the role would get an error rather than the rows
        # its policies allow (capture decodes every row: the base and the tape would disagree).
        report.add(Problem("row_security", f"table {table} has row-level security and role {server.role} is "
                                           "subject to it: snapshots and comparisons would fail rather than see "
                                           f"only some rows; as a superuser run ALTER ROLE {pg.sql_name(server.role)} "
                                           "BYPASSRLS"))
    if relkind == "p":
        # Captured through its root: its partitions, later ones included, are filed under it.
        if not has_pk:
            report.add(Problem("partitioned_without_key", f"partitioned table {table} has no primary key: pgtape "
                                                          "replays a partitioned table by its primary key; add one"))
        if not can_select:
            report.add(Problem("select_privilege", f"role {server.role} lacks SELECT on {table}: GRANT SELECT ON "
                                                   f"{table} TO {pg.sql_name(server.role)}"))
        if has_pk and can_select:
            report.passed(f"table {table}: partitioned (its partitions, later ones too, are captured as it), "
                          "primary key, SELECT granted")
        _check_value_limits(conn, table, report)  # its partitions share its columns and CHECK constraints
        return
    if relkind != "r":
        report.add(Problem("table_kind", f"{table} is {_RELKINDS.get(relkind, f'of relkind {relkind}')}, not a "
                                         "table: list only tables in --tables"))
        return

    identity = _replica_identity(replident, has_pk, has_identity_index)
    if identity is None:
        report.add(_identity_problem(table, replident, has_pk))
    if not can_select:
        report.add(Problem("select_privilege", f"role {server.role} lacks SELECT on {table}: GRANT SELECT ON "
                                               f"{table} TO {pg.sql_name(server.role)}"))
    if identity is not None and can_select:
        report.passed(f"table {table}: {identity}, SELECT granted")
    _check_value_limits(conn, table, report)


def _replica_identity(replident: str, has_pk: bool, has_identity_index: bool) -> str | None:
    """How UPDATE and DELETE records identify the old row, or None when they cannot."""
    if replident == "f":
        return "REPLICA IDENTITY FULL"
    if replident == "i" and has_identity_index:
        return "REPLICA IDENTITY USING INDEX"
    if replident == "d" and has_pk:
        return "primary key"
    return None


def _identity_problem(table: str, replident: str, has_pk: bool) -> Problem:
    # Without an old-row identity wal2json only logs a WARNING and skips UPDATE and DELETE records.
    dropped = f"{PLUGIN} would silently drop its UPDATEs and DELETEs"
    if replident == "n":
        fix = f"run ALTER TABLE {table} REPLICA IDENTITY {'DEFAULT' if has_pk else 'FULL'}"
        return Problem("replica_identity", f"table {table} has REPLICA IDENTITY NOTHING: {dropped}; {fix}")
    if replident == "i":
        return Problem("replica_identity", f"table {table} has REPLICA IDENTITY USING INDEX but that index is gone: "
                                           f"{dropped}; run ALTER TABLE {table} REPLICA IDENTITY FULL")
    return Problem("replica_identity", f"table {table} has neither a primary key nor REPLICA IDENTITY FULL: "
                                       f"{dropped}; add a primary key or run ALTER TABLE {table} REPLICA IDENTITY FULL")


# -- values wal2json cannot carry ----------------------------------------------------------------
#
# wal2json 2.5 prints a numeric, real or double precision NaN, Infinity or -Infinity as JSON null,
# which the tape cannot tell from NULL, and a float -0 as the JSON integer -0, which decodes as 0.
# It decides by the column's own type oid: a domain over these types has an oid of its own and its
# values arrive as JSON strings ("NaN", "-0"), intact, as do arrays ("{NaN}"). So only columns of
# exactly these three types are at risk; domains and array elements are not examined.

# The values of each type that wal2json loses, as PostgreSQL literals.
_LOSSY = {"numeric": ("NaN", "Infinity", "-Infinity"),  # numeric has no -0
          "real": ("NaN", "Infinity", "-Infinity", "-0"),
          "double precision": ("NaN", "Infinity", "-Infinity", "-0")}

_COLUMNS_SQL = """
select a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), format_type(a.atttypid, null)
from pg_attribute a
where a.attrelid = (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
                    where n.nspname = %s and c.relname = %s)
  and a.attnum > 0 and not a.attisdropped
  and a.atttypid in ('numeric'::regtype, 'real'::regtype, 'double precision'::regtype)
order by a.attnum
"""

# Validated CHECK constraints on this one column only (NOT VALID ones may not hold for old rows).
_CONSTRAINTS_SQL = """
select pg_get_expr(k.conbin, k.conrelid), k.conbin::text from pg_constraint k
where k.conrelid = (select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
                    where n.nspname = %s and c.relname = %s)
  and k.contype = 'c' and k.convalidated and k.conkey = array[%s]::int2[]
"""

# The functions a stored expression (its pg_node_tree text) calls: FuncExprs, operators (whose
# function the parser records next to them) and the hash and negator functions of IN lists.
_CALLS = re.compile(r":(?:funcid|opfuncid|hashfuncid|negfuncid) (\d+)")
# Nodes that run code the tree does not name by function: a domain's constraints, a row
# comparison's operators.
_OPAQUE = ("{COERCETODOMAIN", "{ROWCOMPAREEXPR")
# Built in (below FirstNormalObjectId) and immutable, so free of side effects.
_HARMLESS_SQL = "select count(*) from pg_proc where oid = any(%s::oid[]) and oid < 16384 and provolatile = 'i'"


def _check_value_limits(conn: psycopg.Connection, table: str, report: Report) -> None:
    """Warn about the numeric and float columns whose NaN, Infinity, -Infinity or -0 the tape would lose.

    Whether a CHECK constraint rules a value out is undecidable in general, so PostgreSQL decides:
    each constraint on that column alone is evaluated with the column set to the value. A CHECK
    passes when true or NULL, so only false rules the value out; an error counts as not ruling it out.
    """
    schema, name = split_table(table)
    lost: dict[str, list[str]] = {}  # column -> the values it loses
    for attnum, column, type_sql, base in conn.execute(_COLUMNS_SQL, (schema, name)).fetchall():
        exprs = [expr for expr, tree in conn.execute(_CONSTRAINTS_SQL, (schema, name, attnum)).fetchall()
                 if _harmless(conn, tree)]
        values = [v for v in _LOSSY[base] if not _ruled_out(conn, pg.quote_literal(v), type_sql, type_sql != base,
                                                             column, exprs)]
        if values:
            lost[column] = values
    if not lost:
        return
    sends = []
    if any(v != "-0" for values in lost.values() for v in values):
        sends.append("NaN, Infinity and -Infinity as null (the same as NULL)")
    if any("-0" in values for values in lost.values()):
        sends.append("float -0 as 0")
    columns = ", ".join(f"{pg.sql_name(c)} ({', '.join(values)})" for c, values in lost.items())
    fixes = ", ".join(f"ADD CHECK ({_exclusion(c, values)})" for c, values in lost.items())
    plural = "s" if len(lost) > 1 else ""
    report.warn(Problem("lossy_values", f"table {table}: {PLUGIN} sends {' and '.join(sends)}, so the tape would "
                                        f"lose them in column{plural} {columns}; if they never occur, rule them "
                                        f"out: ALTER TABLE {table} {fixes}"))


def _harmless(conn: psycopg.Connection, tree: str) -> bool:
    """May this stored CHECK expression be evaluated as the role running check? Only when all it calls
    is built in and immutable: a function of the table owner's (even one declared IMMUTABLE) or a
    volatile built-in like pg_terminate_backend would otherwise run with this role's privileges.
    A constraint not evaluated rules nothing out."""
    if any(node in tree for node in _OPAQUE):
        return False
    functions = sorted({int(f) for f in _CALLS.findall(tree)} - {0})  # 0: none (no hash function, ...)
    row = conn.execute(_HARMLESS_SQL, (functions,)).fetchone()
    return row is not None and row[0] == len(functions)


def _ruled_out(conn: psycopg.Connection, literal: str, type_sql: str, typmod: bool, column: str,
               exprs: list[str]) -> bool:
    """Can the column not hold this value: its type modifier refuses it (numeric(10,2) has no
    Infinity), or a constraint is false for it?"""
    value = f"{literal}::{type_sql}"  # the column's exact type, typmod included
    return (typmod and not _probe(conn, f"select {value} is not null")
            or any(_probe(conn, f"select ({e}) is false from (values ({value})) as v({pg.quote_ident(column)})")
                   for e in exprs))


def _probe(conn: psycopg.Connection, sql: str) -> bool:
    """True when `sql` returns true. An error (the value does not fit the type, the expression fails
    for it) is false, and is contained: the probe runs in a transaction block of its own (a savepoint
    if the connection were not in autocommit mode; pg.connect's is) that always rolls back."""
    try:
        with conn.transaction(force_rollback=True):
            row = conn.execute(sql).fetchone()
    except psycopg.Error:
        if conn.broken:
            raise
        return False
    return bool(row and row[0])


def _exclusion(column: str, values: list[str]) -> str:
    """A CHECK expression that is false for exactly these values. NaN = NaN and -0 = 0 in PostgreSQL,
    so NOT IN rules out NaN and the infinities but not -0; only its text output tells -0 apart."""
    name = pg.sql_name(column)
    parts = []
    specials = [v for v in values if v != "-0"]
    if specials:
        parts.append(f"{name} NOT IN ({', '.join(pg.quote_literal(v) for v in specials)})")
    if "-0" in values:
        parts.append(f"{name}::text <> '-0'")
    return " AND ".join(parts)


# -- archive -------------------------------------------------------------------------------------

def _check_archive(config: Config, report: Report) -> None:
    try:
        path = config.require_archive()
    except UsageError as e:
        report.add(Problem("archive_unset", str(e)))
        return
    if path.is_dir():
        # Really create and fsync a file: permissions, read-only mounts, quotas and ACLs all show.
        try:
            fd, probe = tempfile.mkstemp(dir=path, prefix=".pgtape-check-")
            try:
                os.write(fd, b"pgtape check\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            report.add(Problem("archive_unwritable", f"archive directory {path} is not writable: {e.strerror or e}; "
                                                     "fix its ownership or permissions, or choose another --archive"))
            return
        report.passed(f"archive directory {path} is writable")
    elif path.exists():
        report.add(Problem("archive_not_directory", f"archive path {path} exists but is not a directory: "
                                                    "choose another --archive"))
    elif not path.parent.is_dir():
        # Capture would create every missing parent, but a missing parent is more often a typo or an
        # unmounted disk than intent: the tape would silently land on the wrong filesystem.
        report.add(Problem("archive_parent_missing", f"archive directory {path} cannot be created: its parent "
                                                     f"{path.parent} does not exist; check the path (is its disk "
                                                     f"mounted?) and create it with mkdir -p {path}"))
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        report.add(Problem("archive_unwritable", f"archive directory {path} cannot be created: {path.parent} is "
                                                 "not writable; fix its permissions or choose another --archive"))
    else:
        report.passed(f"archive directory {path} does not exist yet: capture will create it")
