"""`pgtape check` against real PostgreSQL servers, through the real command line.

Server-level refusals (wal_level, exhausted slots and WAL senders) get clusters of their own;
everything else runs in a fresh database of the session cluster. There is no pg_hba test: a
logical replication connection is matched like an ordinary connection to its database
(`replication` lines in pg_hba.conf are for physical replication only), so once the ordinary
connection is accepted the replication one is too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from pgtape.capture.preflight import classify_replication_error
from conftest import run_pgtape, run_sql as _sql
from pgtape import pg as pgmod
from testkit.cluster import EmbeddedPostgres, free_port, server_parameter_defaults

TABLE = "create table public.t (id int primary key, v text)"


def check(dsn: str, archive: Path | str, *args: str, tables: str = "public.t") -> tuple[int, str, list[str]]:
    """Run `pgtape check`: (exit code, stdout, problem lines)."""
    r = run_pgtape("check", "--dsn", dsn, "--archive", str(archive), "--tables", tables, *args)
    assert "Traceback" not in r.stderr, r.stderr
    problems = [line.removeprefix("problem: ") for line in r.stdout.splitlines() if line.startswith("problem: ")]
    return r.returncode, r.stdout, problems


def assert_only_problem(result: tuple[int, str, list[str]], message: str) -> None:
    code, out, problems = result
    assert code == 1, out
    assert problems == [message], out


def test_replication_role_without_superuser_passes(pg: EmbeddedPostgres, dbname: str, role: str,
                                                   tmp_path: Path) -> None:
    _sql(pg.dsn(dbname), TABLE,
         "create table public.full_t (v text)", "alter table public.full_t replica identity full",
         "create table public.idx_t (k int not null, v text)", "create unique index idx_t_k on public.idx_t (k)",
         "alter table public.idx_t replica identity using index idx_t_k",
         f"grant select on public.t, public.full_t, public.idx_t to {role}")
    dsn = pg.dsn(dbname, user=role) + " password=s3cret"
    code, out, problems = check(dsn, tmp_path / "archive", tables="public.t,public.full_t,public.idx_t")
    assert (code, problems) == (0, []), out
    assert "ok: wal_level = logical" in out
    assert "ok: replication connection accepted and a temporary wal2json slot created" in out
    assert "ok: table public.full_t: REPLICA IDENTITY FULL, SELECT granted" in out
    assert "ok: table public.idx_t: REPLICA IDENTITY USING INDEX, SELECT granted" in out
    assert "s3cret" not in out
    # Without superuser the DDL trigger cannot be installed: a warning says what that means and the fix.
    assert ("warning: the DDL trigger is not installed: capture notices schema changes by polling the catalog, at "
            "an approximate position, and replay refuses targets around each one until capture has taken a new "
            "base; to record them exactly, run pgtape init once as a superuser to install it") in out, out
    with psycopg.connect(pg.dsn(dbname), autocommit=True) as c:  # the probe slot was temporary
        assert c.execute("select slot_name from pg_replication_slots").fetchall() == []

    r = run_pgtape("check", "--json", "--dsn", dsn, "--archive", str(tmp_path / "archive"), "--tables", "public.t")
    report = json.loads(r.stdout)
    assert (r.returncode, report["ok"], report["problems"]) == (0, True, [])
    assert "wal_level = logical" in report["checks"]

    # As a superuser, init installs the DDL trigger; the same role's check then says so.
    run_pgtape("init", "--dsn", pg.dsn(dbname), "--archive", str(tmp_path / "archive"), "--tables",
               "public.t,public.full_t,public.idx_t", check=True)
    code, out, problems = check(dsn, tmp_path / "archive", tables="public.t,public.full_t,public.idx_t")
    assert (code, problems) == (0, []), out
    assert "ok: DDL trigger installed: schema changes are recorded at their exact position" in out, out


def test_json_lists_problems(dsn: str, tmp_path: Path) -> None:
    r = run_pgtape("check", "--json", "--dsn", dsn, "--archive", str(tmp_path), "--tables", "public.nope")
    report = json.loads(r.stdout)
    assert (r.returncode, report["ok"]) == (1, False)
    assert [p["code"] for p in report["problems"]] == ["table_missing"]


def test_cannot_connect_is_the_only_problem(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=u password=hunter2 connect_timeout=5"
    code, out, problems = check(dsn, tmp_path)
    assert code == 1 and len(problems) == 1, out
    assert problems[0].startswith("cannot connect to ") and "Connection refused" in problems[0]
    assert "hunter2" not in out and "ok:" not in out


def test_missing_table(dsn: str, dbname: str, tmp_path: Path) -> None:
    _sql(dsn, TABLE)
    assert_only_problem(check(dsn, tmp_path, tables="public.t,public.gone"),
                        f"table public.gone does not exist in database {dbname}: create it or fix --tables")


def test_table_without_identity(dsn: str, tmp_path: Path) -> None:
    _sql(dsn, "create table public.nokey (v text)",
         "create table public.nothing (id int primary key)", "alter table public.nothing replica identity nothing")
    code, out, problems = check(dsn, tmp_path, tables="public.nokey,public.nothing")
    assert code == 1, out
    assert problems == [
        "table public.nokey has neither a primary key nor REPLICA IDENTITY FULL: wal2json would silently drop its "
        "UPDATEs and DELETEs; add a primary key or run ALTER TABLE public.nokey REPLICA IDENTITY FULL",
        "table public.nothing has REPLICA IDENTITY NOTHING: wal2json would silently drop its UPDATEs and "
        "DELETEs; run ALTER TABLE public.nothing REPLICA IDENTITY DEFAULT",
    ]


def test_missing_select(pg: EmbeddedPostgres, dbname: str, role: str, tmp_path: Path) -> None:
    _sql(pg.dsn(dbname), TABLE)
    assert_only_problem(check(pg.dsn(dbname, user=role), tmp_path),
                        f"role {role} lacks SELECT on public.t: GRANT SELECT ON public.t TO {role}")


def test_missing_replication_privilege(pg: EmbeddedPostgres, dbname: str, role: str, tmp_path: Path) -> None:
    _sql(pg.dsn(dbname), TABLE, f"grant select on public.t to {role}", f"alter role {role} noreplication")
    # The catalog says so and the walsender refuses too: reported once.
    assert_only_problem(check(pg.dsn(dbname, user=role), tmp_path),
                        f"role {role} lacks the REPLICATION privilege: run ALTER ROLE {role} REPLICATION as a "
                        "superuser")


def test_existing_slot_with_wrong_plugin_or_database(pg: EmbeddedPostgres, dsn: str, dbname: str,
                                                     tmp_path: Path) -> None:
    _sql(dsn, TABLE, "select pg_create_logical_replication_slot('pgtape', 'test_decoding')")
    assert_only_problem(check(dsn, tmp_path),
                        "replication slot pgtape uses output plugin test_decoding, not wal2json: choose another "
                        "name with --slot, or drop it (SELECT pg_drop_replication_slot('pgtape')) if nothing "
                        "else uses it")
    slot = f"other_{dbname}"[:63]
    _sql(pg.dsn(), f"select pg_create_logical_replication_slot('{slot}', 'wal2json')")
    try:
        assert_only_problem(check(dsn, tmp_path, "--slot", slot),
                            f"replication slot {slot} belongs to database postgres, not {dbname}: connect to "
                            "postgres or choose another name with --slot")
    finally:
        _sql(pg.dsn(), f"select pg_drop_replication_slot('{slot}')")


def test_archive_problems(dsn: str, tmp_path: Path) -> None:
    _sql(dsn, TABLE)
    r = run_pgtape("check", "--dsn", dsn, "--tables", "public.t")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stdout.splitlines()[-1] == ("problem: no archive configured: set [archive] path in pgtape.toml, "
                                         "PGTAPE_ARCHIVE or --archive")

    missing = tmp_path / "no" / "archive"
    assert_only_problem(check(dsn, missing),
                        f"archive directory {missing} cannot be created: its parent {missing.parent} does not "
                        f"exist; check the path (is its disk mounted?) and create it with mkdir -p {missing}")

    a_file = tmp_path / "file"
    a_file.write_text("")
    assert_only_problem(check(dsn, a_file),
                        f"archive path {a_file} exists but is not a directory: choose another --archive")

    # Root writes through permission bits; sysfs refuses new files to everyone.
    if os.geteuid() == 0:
        read_only = Path("/sys/kernel")
    else:
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o555)
    code, out, problems = check(dsn, read_only)
    assert code == 1 and len(problems) == 1, out
    assert problems[0].startswith(f"archive directory {read_only} is not writable: ")
    assert problems[0].endswith("; fix its ownership or permissions, or choose another --archive")


def test_wal_level_replica(tmp_path: Path) -> None:
    with EmbeddedPostgres(settings={"wal_level": "replica"}) as server:
        server.psql(TABLE)
        assert_only_problem(check(server.dsn(), tmp_path),
                            "wal_level is replica, logical decoding needs logical: set wal_level = logical in "
                            "postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart the server")


@pytest.fixture(scope="module")
def small() -> Iterator[EmbeddedPostgres]:
    """A cluster with a single replication slot and a single WAL sender."""
    with EmbeddedPostgres(settings={"max_replication_slots": "1", "max_wal_senders": "1"}) as server:
        server.psql(TABLE)
        yield server


def test_no_free_slot(small: EmbeddedPostgres, tmp_path: Path) -> None:
    small.psql("select pg_create_physical_replication_slot('other')")
    try:
        assert_only_problem(check(small.dsn(), tmp_path),
                            "no free replication slot (1 of max_replication_slots = 1 in use) for slot pgtape: drop "
                            "an unused slot (see pg_replication_slots) or raise max_replication_slots in "
                            "postgresql.conf and restart the server")
    finally:
        small.psql("select pg_drop_replication_slot('other')")


def test_existing_slot_needs_no_free_slot(small: EmbeddedPostgres, tmp_path: Path) -> None:
    small.psql("select pg_create_logical_replication_slot('pgtape', 'wal2json')")
    try:
        code, out, problems = check(small.dsn(), tmp_path)
        assert (code, problems) == (0, []), out
        assert "ok: replication slot pgtape exists (wal2json, database postgres)" in out
    finally:
        small.psql("select pg_drop_replication_slot('pgtape')")


def test_no_free_wal_sender(small: EmbeddedPostgres, tmp_path: Path) -> None:
    with pgmod.connect(small.dsn(), replication=True):  # holds the only WAL sender
        assert_only_problem(check(small.dsn(), tmp_path),
                            "no free WAL sender (1 of max_wal_senders = 1 in use): raise max_wal_senders in "
                            "postgresql.conf and restart the server, or stop an unused replication client (see "
                            "pg_stat_replication)")


def test_missing_plugin_is_recognised(pg: EmbeddedPostgres) -> None:
    # wal2json cannot be uninstalled from the test server, so classify the real error a server gives
    # for any output plugin it cannot load: the same code path, with another file name.
    with pgmod.connect(pg.dsn(), replication=True) as c:
        # 15.19+ refuses an unlisted plugin before trying to load it: list this one for this session.
        if "output_plugin_libraries" in server_parameter_defaults(pg.bindir):
            c.execute("SET output_plugin_libraries = no_such_plugin")
        with pytest.raises(psycopg.Error) as err:
            c.execute("CREATE_REPLICATION_SLOT pgtape_no_plugin TEMPORARY LOGICAL no_such_plugin")
    problem = classify_replication_error(pgmod.first_line(err.value), "postgres", 15)
    assert problem.code == "plugin_missing"
    assert problem.message == ("wal2json is not installed on the server (the server said: could not load "
                               "no_such_plugin): apt-get install postgresql-15-wal2json on the database host, or "
                               "your platform's wal2json package")
