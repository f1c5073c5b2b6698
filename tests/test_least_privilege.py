"""Least privilege: the whole flow as a role with only LOGIN, REPLICATION, SELECT on the captured
tables and CREATE on the database, on a cluster of its own that asks that role for its password
(scram-sha-256); the owner (a superuser, trusted) only writes the workload and grants.

What needs more refuses in one line naming the statement to run; running exactly what `pgtape
check` prints for it (its optional capabilities) makes it work: replay --in-place, pgtape mark (once
EXECUTE on pg_logical_emit_message is revoked from PUBLIC), output_plugin_libraries, the DDL trigger.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from conftest import (capture_to_now, one_line_error, run_pgtape, run_sql, scalar, spawn_pgtape, stop_process)
from testkit.cluster import EmbeddedPostgres, find_bindir, server_parameter_defaults

ROLE = "tape_reader"
PASSWORD = "least-Priv 9q"  # has a space: the DSN quotes it
TABLES = ["public.payments", "public.orders", "public.events", "public.tickets"]
# The owner (postgres) is trusted; everyone else must give a password (SCRAM). A logical replication
# connection is matched by the `all` database lines, like an ordinary one.
HBA = ("host all postgres 127.0.0.1/32 trust", "host all all 127.0.0.1/32 scram-sha-256")
HAS_ALLOWLIST = "output_plugin_libraries" in server_parameter_defaults(find_bindir())

SCHEMA_SQL = [
    "CREATE TABLE payments (id int PRIMARY KEY, amount numeric(12,2) NOT NULL, status text)",
    "CREATE TABLE orders (id bigint PRIMARY KEY, payment_id int REFERENCES payments, note text)",
    "CREATE TABLE events (kind text, at int)",  # no key: a multiset of rows
    "ALTER TABLE events REPLICA IDENTITY FULL",
    "CREATE TABLE tickets (id int, day date, seat text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)",
    "CREATE TABLE tickets_a PARTITION OF tickets FOR VALUES FROM ('2026-01-01') TO ('2026-07-01')",
    "CREATE TABLE tickets_b PARTITION OF tickets FOR VALUES FROM ('2026-07-01') TO ('2027-01-01')",
    "INSERT INTO payments SELECT g, g * 1.25, 'new' FROM generate_series(1, 200) g",
    "INSERT INTO orders SELECT g, g, 'o' || g FROM generate_series(1, 100) g",
    "INSERT INTO events SELECT 'k' || (g % 3), g % 5 FROM generate_series(1, 30) g",
    "INSERT INTO tickets SELECT g, DATE '2026-01-01' + g, 's' || g FROM generate_series(1, 300) g",
]


def least_role(server: EmbeddedPostgres, db: str) -> str:
    """Create the least-privilege role with exactly the README's grants; its DSN (with its password)."""
    run_sql(server.dsn(db),
            f"CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD '{PASSWORD}'",
            f"GRANT SELECT ON {', '.join(TABLES)} TO {ROLE}",
            f"GRANT CREATE ON DATABASE {db} TO {ROLE}")
    with psycopg.connect(server.dsn(db), autocommit=True) as c:
        flags = c.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication, "
                          "(SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid) "
                          f"FROM pg_roles r WHERE rolname = '{ROLE}'").fetchone()
        assert flags == (False, False, False, False, True, 0)
        # Nothing else on the tables; public's CREATE is PUBLIC's no longer (PostgreSQL 15).
        assert not scalar(c.execute(f"SELECT has_schema_privilege('{ROLE}', 'public', 'CREATE')"))
        for t in TABLES:
            assert [scalar(c.execute(f"SELECT has_table_privilege('{ROLE}', '{t}', '{p}')"))
                    for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")] == [True] + [False] * 4
    return f"host=127.0.0.1 port={server.port} dbname={db} user={ROLE} password='{PASSWORD}'"


def rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return sorted(c.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def capabilities(dsn: str, archive: Path) -> dict[str, dict[str, Any]]:
    r = run_pgtape("check", "--json", "--dsn", dsn, "--archive", str(archive), "--tables", ",".join(TABLES))
    assert "Traceback" not in r.stderr, r.stderr
    report = json.loads(r.stdout)
    assert {"ok", "checks", "warnings", "problems"} <= set(report)
    return {c["code"]: c for c in report["capabilities"]}


def workload(dsn: str, step: int) -> None:
    run_sql(dsn,
            f"UPDATE payments SET amount = amount + {step}, status = 'paid' WHERE id % 7 = {step % 7}",
            f"DELETE FROM orders WHERE id % 11 = {step % 11}",
            f"INSERT INTO payments SELECT g, {step}.5, 'late' "
            f"FROM generate_series({1000 * step}, {1000 * step + 20}) g",
            f"INSERT INTO events VALUES ('k1', {step % 5}), ('new', {step})",
            "DELETE FROM events WHERE ctid = (SELECT min(ctid) FROM events WHERE kind = 'k0')",
            f"UPDATE tickets SET seat = 'moved{step}' WHERE id % 13 = {step % 13}",
            f"INSERT INTO tickets VALUES ({5000 + step}, '2026-08-0{step % 9 + 1}', 'late')")


@pytest.fixture
def server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tcp_hba=HBA) as s:
        yield s


def test_whole_flow_as_least_privileged_role(server: EmbeddedPostgres, tmp_path: Path) -> None:
    server.psql("CREATE DATABASE shop")
    owner = server.dsn("shop")
    run_sql(owner, *SCHEMA_SQL)
    dsn = least_role(server, "shop")
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", ",".join(TABLES)]

    # The password is really asked for: without it the server refuses the role.
    no_password = dsn.replace(f" password='{PASSWORD}'", "")
    r = run_pgtape("check", "--json", *cli[:1], no_password, *cli[2:])
    [problem] = json.loads(r.stdout)["problems"]
    assert problem["code"] == "connect" and "password" in problem["message"], problem

    r = run_pgtape("check", *cli)
    assert r.returncode == 0, r.stdout + r.stderr
    in_place_grant = f"GRANT INSERT, UPDATE, DELETE ON {', '.join(TABLES)} TO {ROLE}"
    assert f"optional: replay --in-place: replace the live rows (INSERT, UPDATE, DELETE on the captured tables; " \
           f"CREATE and TEMPORARY on the database): not available; {in_place_grant}" in r.stdout, r.stdout
    caps = capabilities(dsn, archive)
    assert {k: (c["available"], c["enable"]) for k, c in caps.items()} == {
        "in_place_replay": (False, in_place_grant),
        "schema_change_trigger": (False, "run pgtape init once with a superuser's DSN (pgtape init --dsn "
                                         "'... user=<a superuser>')"),
        "output_plugin_libraries": (True, None),
        "mark": (True, None),
    }

    run_pgtape("init", *cli, check=True)
    workload(owner, 1)
    capture_to_now(owner, archive, "--dsn", dsn, tables=",".join(TABLES))
    run_pgtape("snapshot", *cli, check=True)
    workload(owner, 2)
    run_pgtape("mark", *cli[:4], "before-3", check=True)
    workload(owner, 3)
    capture_to_now(owner, archive, "--dsn", dsn, tables=",".join(TABLES))

    # Replay into a recovery schema: equal to the live tables, row for row.
    run_pgtape("replay", *cli, "--latest", "--schema", "rec", check=True)
    for t in TABLES:
        assert rows(owner, t) == rows(owner, t.replace("public.", "rec.")), t
    r = run_pgtape("diff", *cli, "--schema", "rec", "--against", "live")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines() if ": equal" in line] == TABLES, r.stdout
    r = run_pgtape("replay", *cli, "--target-name", "before-3", "--schema", "at_mark", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["schema"] == "at_mark"

    # verify --live while capture (as the role) runs.
    workload(owner, 4)
    capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture.log")
    try:
        r = run_pgtape("verify", "--live", *cli, "--timeout", "60")
    finally:
        stop_process(capture)
    assert r.returncode == 0 and "ok: the replay equals the live tables" in r.stdout, r.stdout + r.stderr
    assert all(f"{t}: equal" in r.stdout for t in TABLES), r.stdout
    run_pgtape("verify", *cli[2:4], check=True)  # the archive itself

    # The role created nothing outside its recovery schemas.
    with psycopg.connect(owner, autocommit=True) as c:
        owned = c.execute("SELECT DISTINCT n.nspname FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace "
                          f"WHERE k.relowner = '{ROLE}'::regrole AND n.nspname NOT LIKE 'pg_temp%%' "
                          "AND n.nspname NOT LIKE 'pg_toast%%' ORDER BY 1").fetchall()
    assert owned == [("at_mark",), ("rec",)]

    # replay --in-place needs more: refused before it changes anything, naming the grant...
    live_before = {t: rows(owner, t) for t in TABLES}
    r = run_pgtape("replay", *cli, "--target-name", "before-3", "--in-place", "--yes")
    one_line_error(r, 3, f"nothing was changed: as the tables' owner or a superuser run {in_place_grant}",
                   after_logs=True)
    assert {t: rows(owner, t) for t in TABLES} == live_before
    # ... and exactly the statement check printed makes it work.
    run_sql(owner, caps["in_place_replay"]["enable"])
    assert capabilities(dsn, archive)["in_place_replay"] == {**caps["in_place_replay"], "available": True,
                                                             "enable": None}
    run_pgtape("replay", *cli, "--target-name", "before-3", "--in-place", "--yes", check=True)
    for t in TABLES:
        assert rows(owner, t) == rows(owner, t.replace("public.", "at_mark.")), t

    # pgtape mark without EXECUTE on pg_logical_emit_message (an administrator revoked it from PUBLIC).
    emit = "pg_catalog.pg_logical_emit_message(boolean, text, text)"
    run_sql(owner, f"REVOKE EXECUTE ON FUNCTION {emit} FROM PUBLIC")
    grant = f"GRANT EXECUTE ON FUNCTION {emit} TO {ROLE}"
    one_line_error(run_pgtape("mark", *cli[:4], "after-restore"), 3, grant)
    mark = capabilities(dsn, archive)["mark"]
    assert (mark["available"], mark["enable"]) == (False, grant)
    run_sql(owner, mark["enable"])
    run_pgtape("mark", *cli[:4], "after-restore", check=True)


@pytest.mark.skipif(not HAS_ALLOWLIST, reason="this PostgreSQL (before 15.19) lets any installed plugin decode")
def test_capabilities_for_least_role_and_superuser(tmp_path: Path) -> None:
    """A server that does not list wal2json yet (as every 15.19+ server starts), no DDL trigger yet."""
    with EmbeddedPostgres(tcp_hba=HBA, output_plugins=()) as server:
        server.psql("CREATE DATABASE shop")
        owner = server.dsn("shop")
        run_sql(owner, *SCHEMA_SQL)
        dsn = least_role(server, "shop")
        archive = tmp_path / "archive"

        su = capabilities(owner, archive)
        assert {k: c["available"] for k, c in su.items()} == {
            "in_place_replay": True, "schema_change_trigger": False, "output_plugin_libraries": False, "mark": True}
        assert su["schema_change_trigger"]["enable"] == "run pgtape init once as this role (a superuser)"
        fix = su["output_plugin_libraries"]["enable"]
        assert "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'; " \
               "SELECT pg_reload_conf();" in fix, fix

        least = capabilities(dsn, archive)
        assert not least["output_plugin_libraries"]["available"]
        # The role cannot read the value: psql builds the statement from it.
        assert "\\gexec" in least["output_plugin_libraries"]["enable"], least
        one_line_error(run_pgtape("capture", "--dsn", dsn, "--archive", str(archive), "--tables", ",".join(TABLES)),
                       3, "output_plugin_libraries", after_logs=True)

        # A superuser runs the statements its check printed; no restart.
        for statement in re.findall(r"(ALTER SYSTEM SET [^;]*|SELECT pg_reload_conf\(\));", fix):
            run_sql(owner, statement)
        # A superuser's init installs the DDL trigger; then the least role has it too.
        run_pgtape("init", "--dsn", owner, "--archive", str(archive), "--tables", ",".join(TABLES), check=True)
        assert {k: (c["available"], c["enable"]) for k, c in capabilities(owner, archive).items()} == {
            "in_place_replay": (True, None), "schema_change_trigger": (True, None),
            "output_plugin_libraries": (True, None), "mark": (True, None)}
        least = capabilities(dsn, archive)
        assert {k: c["available"] for k, c in least.items()} == {
            "in_place_replay": False, "schema_change_trigger": True, "output_plugin_libraries": True, "mark": True}
        r = run_pgtape("check", "--dsn", dsn, "--archive", str(archive), "--tables", ",".join(TABLES))
        assert r.returncode == 0, r.stdout
        assert "optional: schema changes recorded at their exact position (the DDL event triggers; creating them " \
               "needs a superuser): available" in r.stdout, r.stdout

        # And capture as the least role now works, through the trigger a superuser installed.
        run_sql(owner, "ALTER TABLE payments ADD COLUMN ref text", "UPDATE payments SET ref = 'r' WHERE id < 5")
        capture_to_now(owner, archive, "--dsn", dsn, tables=",".join(TABLES))
        run_pgtape("replay", "--dsn", dsn, "--archive", str(archive), "--tables", ",".join(TABLES), "--latest",
                   "--schema", "rec", check=True)
        assert rows(owner, "public.payments") == rows(owner, "rec.payments")


def test_row_level_security_is_never_a_silent_filter(server: EmbeddedPostgres, tmp_path: Path) -> None:
    """A policy would let the role see only some rows: capture decodes them all, so a base or a
    comparison of the visible ones would be wrong without a word. check names the fix; the commands
    refuse (row_security is off in pgtape's sessions); with BYPASSRLS the base holds every row."""
    server.psql("CREATE DATABASE shop")
    owner = server.dsn("shop")
    run_sql(owner, *SCHEMA_SQL, "ALTER TABLE payments ENABLE ROW LEVEL SECURITY",
            "CREATE POLICY cheap ON payments USING (amount < 100)")
    dsn = least_role(server, "shop")
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", ",".join(TABLES)]
    with psycopg.connect(dsn, autocommit=True) as c:  # what the role would see with row_security on
        assert scalar(c.execute("SELECT count(*) FROM payments")) == 79

    r = run_pgtape("check", "--json", *cli)
    assert r.returncode == 1, r.stdout
    assert json.loads(r.stdout)["problems"] == [{"code": "row_security", "message": (
        f"table public.payments has row-level security and role {ROLE} is subject to it: snapshots and comparisons "
        f"would fail rather than see only some rows; as a superuser run ALTER ROLE {ROLE} BYPASSRLS")}]
    one_line_error(run_pgtape("init", *cli), 3, 'row-level security policy for table "payments"',
                   "ALTER ROLE <this role> BYPASSRLS", after_logs=True)

    run_sql(owner, f"ALTER ROLE {ROLE} BYPASSRLS")
    assert run_pgtape("check", *cli).returncode == 0
    run_pgtape("init", "--restart", *cli, check=True)
    run_pgtape("replay", *cli, "--latest", "--schema", "rec", check=True)
    assert len(rows(owner, "rec.payments")) == 200
    assert rows(owner, "public.payments") == rows(owner, "rec.payments")


def test_a_schema_without_usage_is_named(pg: EmbeddedPostgres, dbname: str, role: str, tmp_path: Path) -> None:
    """SELECT on a table is not enough outside public: the role needs USAGE on its schema too."""
    run_sql(pg.dsn(dbname), 'CREATE SCHEMA "Billing"', 'CREATE TABLE "Billing".invoices (id int PRIMARY KEY)',
            f'GRANT SELECT ON "Billing".invoices TO {role}')
    r = run_pgtape("check", "--json", "--dsn", pg.dsn(dbname, user=role), "--archive", str(tmp_path / "a"),
                   "--tables", '"Billing".invoices')
    assert json.loads(r.stdout)["problems"] == [{"code": "schema_usage", "message": (
        f'role {role} lacks USAGE on schema "Billing", so it cannot read "Billing".invoices: GRANT USAGE ON SCHEMA '
        f'"Billing" TO {role}')}], r.stdout
    run_sql(pg.dsn(dbname), f'GRANT USAGE ON SCHEMA "Billing" TO {role}')
    r = run_pgtape("check", "--dsn", pg.dsn(dbname, user=role), "--archive", str(tmp_path / "a"),
                   "--tables", '"Billing".invoices')
    assert r.returncode == 0, r.stdout
