"""PostgreSQL 15.19+ decodes only through the plugins `output_plugin_libraries` names.

A cluster of its own, started WITHOUT wal2json in that list (as every patched server is by
default): `check` names the fix, `init`, `capture` and `snapshot` fail with the same one line, and
the statements the message prints, run as they are, make capture work without a server restart.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import capture_to_now, run_pgtape, run_sql as sql
from testkit.cluster import EmbeddedPostgres, find_bindir, server_parameter_defaults
from pgtape.tape.archive import Archive
from pgtape.tape.reader import iter_changes

pytestmark = pytest.mark.skipif("output_plugin_libraries" not in server_parameter_defaults(find_bindir()),
                                reason="this PostgreSQL (before 15.19) lets any installed output plugin decode")

HEAD = "the server refuses wal2json as a logical decoding output plugin: "
QUOTING = "quote each name on its own: one quoted string would be a single name"
SERVER_WIDE_FIX = (f"{HEAD}output_plugin_libraries is 'pgoutput, test_decoding', which does not name it; as a "
                   "superuser run: ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', "
                   f"'wal2json'; SELECT pg_reload_conf(); (no restart needed; {QUOTING})")
_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(output_plugins=()) as s:
        yield s


@pytest.fixture
def db(server: EmbeddedPostgres) -> Iterator[str]:
    """A fresh database with table t; the server-wide list is back to its default afterwards."""
    name = f"allow{next(_names)}"
    server.psql(f"create database {name}")
    sql(server.dsn(name), "create table t (id int primary key, v text)", "insert into t values (1, 'before')")
    yield name
    server.psql("ALTER SYSTEM RESET output_plugin_libraries")
    server.psql("SELECT pg_reload_conf()")
    sql(server.dsn(), *(f"select pg_drop_replication_slot('{s}')" for s in server.psql(
        f"select slot_name from pg_replication_slots where database = '{name}'").split()))
    server.psql(f"drop database {name} with (force)")


def check_problems(dsn: str, archive: Path) -> tuple[int, list[str]]:
    r = run_pgtape("check", "--dsn", dsn, "--archive", str(archive), "--tables", "public.t")
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, [line.removeprefix("problem: ") for line in r.stdout.splitlines()
                          if line.startswith("problem: ")]


def refused(*args: str) -> str:
    """Run a pgtape command that must fail with one error line (after any progress log lines, which
    carry the command's name); that line without its `pgtape: ` prefix."""
    r = run_pgtape(*args)
    assert r.returncode == 3 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("pgtape: ")]
    assert len(errors) == 1 and r.stderr.endswith(errors[0] + "\n"), r.stderr
    return errors[0].removeprefix("pgtape: ")


def fix_statements(message: str, after: str, before: str) -> str:
    """The statements a message tells the user to run, cut out exactly as printed."""
    return message.split(after, 1)[1].rsplit(before, 1)[0]


def psql(server: EmbeddedPostgres, dbname: str, script: str) -> None:
    """Run a script through psql's standard input, as a superuser at a terminal would."""
    r = subprocess.run([str(server.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", server.dsn(dbname)],
                       input=script, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def tape_values(archive: Path) -> list[str | None]:
    return [ch.new["v"] for ch in iter_changes(Archive(archive), 1) if ch.new]


def test_superuser_gets_the_exact_fix_and_capture_works_after_a_reload(server: EmbeddedPostgres, db: str,
                                                                      tmp_path: Path) -> None:
    dsn, archive = server.dsn(db), tmp_path / "archive"
    code, problems = check_problems(dsn, archive)
    assert (code, problems) == (1, [SERVER_WIDE_FIX])
    report = json.loads(run_pgtape("check", "--json", "--dsn", dsn, "--archive", str(archive),
                                   "--tables", "public.t").stdout)
    assert report["problems"] == [{"code": "plugin_not_allowed", "message": SERVER_WIDE_FIX}]
    assert refused("init", "--dsn", dsn, "--archive", str(archive), "--tables", "public.t") == SERVER_WIDE_FIX
    assert refused("capture", "--dsn", dsn, "--archive", str(archive), "--tables", "public.t",
                   "--until-lsn", "0/1") == SERVER_WIDE_FIX

    # The trap the message warns of: one quoted string is one name, so wal2json stays refused.
    sql(server.dsn(), "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput, test_decoding, wal2json'",
        "SELECT pg_reload_conf()")
    code, problems = check_problems(dsn, archive)
    assert code == 1 and problems[0].startswith(
        f"{HEAD}output_plugin_libraries is '\"pgoutput, test_decoding, wal2json\"', which does not name it"), problems
    sql(server.dsn(), "ALTER SYSTEM RESET output_plugin_libraries", "SELECT pg_reload_conf()")

    # The printed statements, run as printed; no restart.
    psql(server, db, fix_statements(SERVER_WIDE_FIX, "as a superuser run: ", " (no restart"))
    assert check_problems(dsn, archive) == (0, [])
    capture_to_now(dsn, archive, tables="public.t")
    sql(dsn, "insert into t values (2, 'after the fix')")
    capture_to_now(dsn, archive, tables="public.t")
    assert tape_values(archive) == ["after the fix"]


def test_an_existing_slot_refused_after_a_minor_upgrade_resumes_without_loss(server: EmbeddedPostgres, db: str,
                                                                             tmp_path: Path) -> None:
    """A slot made while wal2json was allowed, then a server where it is not (as after an upgrade
    to 15.19+): capture and snapshot refuse in one line; the slot keeps every change meanwhile."""
    dsn, archive = server.dsn(db), tmp_path / "archive"
    sql(server.dsn(), "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'",
        "SELECT pg_reload_conf()")
    capture_to_now(dsn, archive, tables="public.t")
    sql(dsn, "insert into t values (2, 'captured')")
    capture_to_now(dsn, archive, tables="public.t")

    sql(server.dsn(), "ALTER SYSTEM RESET output_plugin_libraries", "SELECT pg_reload_conf()")
    sql(dsn, "insert into t values (3, 'while refused')")
    common = ("--dsn", dsn, "--archive", str(archive), "--tables", "public.t")
    assert refused("capture", *common, "--until-lsn", "FF/0") == SERVER_WIDE_FIX
    assert refused("snapshot", *common) == SERVER_WIDE_FIX
    code, problems = check_problems(dsn, archive)
    assert (code, problems) == (1, [SERVER_WIDE_FIX])
    failed = run_pgtape("snapshots", "--json", *common, check=True).stdout
    assert SERVER_WIDE_FIX in failed  # the failed snapshot is in the catalog, with the reason

    psql(server, db, fix_statements(SERVER_WIDE_FIX, "as a superuser run: ", " (no restart"))
    capture_to_now(dsn, archive, tables="public.t")
    assert tape_values(archive) == ["captured", "while refused"]


def test_replication_role_cannot_read_the_list_and_gets_a_psql_statement(server: EmbeddedPostgres, db: str,
                                                                         tmp_path: Path) -> None:
    role = f"capturer_{db}"
    sql(server.dsn(db), f"create role {role} login replication", f"grant select on t to {role}")
    try:
        dsn, archive = server.dsn(db, user=role), tmp_path / "archive"
        expected = (f"{HEAD}output_plugin_libraries does not name it (role {role} cannot read its value, which "
                    "needs superuser or pg_read_all_settings); as a superuser, in psql, run: SELECT "
                    "format('ALTER SYSTEM SET output_plugin_libraries = %s', concat_ws(', ', "
                    "nullif(current_setting('output_plugin_libraries'), ''), 'wal2json')), "
                    "'SELECT pg_reload_conf()' \\gexec (no restart needed)")
        assert check_problems(dsn, archive) == (1, [expected])
        assert refused("init", "--dsn", dsn, "--archive", str(archive), "--tables", "public.t") == expected

        psql(server, db, fix_statements(expected, "in psql, run: ", " (no restart") + "\n")
        assert server.psql("show output_plugin_libraries") == "pgoutput, test_decoding, wal2json"
        assert check_problems(dsn, archive) == (0, [])
        capture_to_now(dsn, archive, tables="public.t")
        sql(server.dsn(db), "insert into t values (2, 'as the role')")
        capture_to_now(dsn, archive, tables="public.t")
        assert tape_values(archive) == ["as the role"]
    finally:
        sql(server.dsn(db), f"drop owned by {role}")
        sql(server.dsn(), f"drop role {role}")


def test_a_per_role_setting_is_fixed_where_it_is_set(server: EmbeddedPostgres, db: str, tmp_path: Path) -> None:
    """ALTER SYSTEM cannot override ALTER ROLE ... SET: the fix names the place that sets the value."""
    role = f"admin_{db}"
    sql(server.dsn(), f"create role {role} login superuser",
        "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'",
        f"alter role {role} set output_plugin_libraries = 'pgoutput'", "SELECT pg_reload_conf()")
    try:
        dsn = server.dsn(db, user=role)
        expected = (f"{HEAD}output_plugin_libraries is 'pgoutput', which does not name it (set by ALTER ROLE "
                    f"{role} SET); as a superuser run: ALTER ROLE {role} SET output_plugin_libraries = 'pgoutput', "
                    f"'wal2json'; ({QUOTING})")
        assert check_problems(dsn, tmp_path / "archive") == (1, [expected])
        psql(server, db, fix_statements(expected, "as a superuser run: ", " ("))
        assert check_problems(dsn, tmp_path / "archive") == (0, [])
    finally:
        sql(server.dsn(), f"drop role {role}")
