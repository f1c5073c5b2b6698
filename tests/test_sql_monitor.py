"""SQL monitoring against a real PostgreSQL: pgtape sql install (twice), pgtape sql sync into
payment_backups, the two views checked against values computed here, create_recovery_point()'s
logical message read back through a test_decoding slot, and its refusals."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import one_line_error, run_pgtape, run_sql, scalar
from testkit.cluster import EmbeddedPostgres
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.tape.archive import Archive
from pgtape.timefmt import now_us

TABLES = ["public.payments", "public.orders"]
OBJECTS = ["pgtape", "pgtape.payment_backups", "pgtape.backup_status_summary", "pgtape.backup_health_check",
           "pgtape.create_recovery_point(text, text, timestamptz)"]
HOUR_US = 3600 * 1_000_000


def _install(dsn: str, *extra: str) -> dict[str, Any]:
    return json.loads(run_pgtape("sql", "install", "--dsn", dsn, "--json", *extra, check=True).stdout)


def _time(us: int | None) -> datetime | None:
    return None if us is None else datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)


def _record(sid: str, tables: list[str], status: str, created_at: int, **extra: Any) -> SnapshotRecord:
    """A catalog record written directly: the states a test cannot easily provoke through a real snapshot."""
    return SnapshotRecord(sid, 1, "manual", tables, status, created_at, created_at + 30 * 24 * HOUR_US,
                          os.getpid(), os.uname().nodename, **extra)


def test_install_is_idempotent_and_sync_mirrors_the_catalog(dsn: str, tmp_path: Path) -> None:
    run_sql(dsn, "create table payments (id int primary key, amount numeric)",
            "create table orders (id int primary key, item text)",
            "insert into payments select g, g * 1.5 from generate_series(1, 30) g",
            "insert into orders select g, 'item ' || g from generate_series(1, 12) g")
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive)]
    first = _install(dsn)  # before init: pgtape init puts its DDL triggers into the same schema
    assert [(o["name"], o["action"]) for o in first["objects"]] == [(n, "created") for n in OBJECTS]
    assert any("GRANT SELECT ON pgtape.payment_backups" in g for g in first["grants"])
    second = _install(dsn)
    assert [o["action"] for o in second["objects"]] == ["exists", "exists", "replaced", "replaced", "replaced"]
    text = run_pgtape("sql", "install", "--dsn", dsn, check=True).stdout
    assert "table pgtape.payment_backups: exists" in text and "GRANT USAGE ON SCHEMA pgtape" in text

    run_pgtape("init", *cli, "--tables", ",".join(TABLES), check=True)  # the initial base: full
    r = run_pgtape("sql", "sync", *cli, "--schema", "elsewhere")  # a schema without the table: the fix named
    one_line_error(r, 3, "elsewhere.payment_backups", "run pgtape sql install")

    run_sql(dsn, "insert into payments values (31, 7)")
    run_pgtape("snapshot", *cli, "--tables", "public.payments", check=True)  # a snapshot of payments only
    run_pgtape("snapshot", *cli, "--tables", "public.orders", check=True)
    now = now_us()
    a = Archive(archive)
    catalog.save(a, _record("x-failed", ["public.payments"], catalog.FAILED, now,
                            completed_at=now + 5_000_000, error="disk full"))  # after the payments snapshot
    catalog.save(a, _record("x-running", TABLES, catalog.RUNNING, now))  # this process: alive
    catalog.save(a, _record("x-old", ["public.orders", "public.payments"], catalog.COMPLETED, now - 200 * HOUR_US,
                            completed_at=now - 199 * HOUR_US, as_of_lsn=0x1000, as_of_time=now - 200 * HOUR_US,
                            rows={"public.orders": 3, "public.payments": 4}, bytes=999))
    catalog.save(a, _record("x-tickets", ["public.tickets"], catalog.FAILED, now - 30 * HOUR_US,
                            completed_at=now - 30 * HOUR_US, error="interrupted"))

    out = json.loads(run_pgtape("sql", "sync", *cli, "--json", check=True).stdout)
    records = json.loads(run_pgtape("snapshots", *cli, "--json", check=True).stdout)
    assert out["snapshots"] == len(records) == 7

    def kind(tables: list[str]) -> str:
        if sorted(tables) == sorted(TABLES):
            return "full"
        return tables[0].split(".")[1] if len(tables) == 1 and tables[0] in ("public.payments", "public.orders",
                                                                             "public.tickets") else "tables"

    raw = {r.id: r for r in catalog.load_all(a)}
    expected: dict[str, tuple[Any, ...]] = {}
    for rec in records:
        s = raw[rec["id"]]
        completed = s.status == "completed"
        expected[s.id] = (kind(s.tables), s.status, s.tables, sum(s.rows.values()) if completed else None,
                          s.bytes if completed else None, _time(s.created_at), _time(s.expires_at),
                          _time(s.completed_at), rec["as_of_lsn"], _time(s.as_of_time), s.error, s.generation)
    assert sorted(e[0] for e in expected.values()) == ["full", "full", "full", "orders", "payments", "payments",
                                                       "tickets"]
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = {row[0]: tuple(row[1:]) for row in c.execute(
            "select id, backup_type, status, tables, record_count, file_size_bytes, created_at, expires_at, "
            "completed_at, as_of_lsn::text, as_of_time, error_message, generation from pgtape.payment_backups")}
    assert rows == expected
    initial = next(r for r in raw.values() if r.kind == "initial")
    assert rows[initial.id][3] == 30 + 12 and rows[initial.id][4] > 0

    # The views, recomputed from the expected rows.
    summary: dict[str, tuple[Any, ...]] = {}
    for t in {e[0] for e in expected.values()}:
        mine = [e for e in expected.values() if e[0] == t]
        ok = [e for e in mine if e[1] == "completed"]
        summary[t] = (len(mine), len(ok), sum(e[1] == "failed" for e in mine), sum(e[1] == "running" for e in mine),
                      max((e[7] for e in ok), default=None), sum(e[4] for e in ok))
    with psycopg.connect(dsn) as c:  # one transaction: the views' now() is db_now
        got = {row[0]: tuple(row[1:]) for row in c.execute(
            "select backup_type, total, completed, failed, running, newest_completed_at, completed_size_bytes "
            "from pgtape.backup_status_summary")}
        health = {row[0]: tuple(row[1:]) for row in c.execute(
            "select backup_type, completed_7d, failed_7d, newest_success_at, extract(epoch from newest_success_age), "
            "verdict from pgtape.backup_health_check")}
        db_now = scalar(c.execute("select now()"))
    assert got == summary
    week_ago = db_now - timedelta(days=7)
    for t, (completed_7d, failed_7d, newest, age, verdict) in health.items():
        mine = [e for e in expected.values() if e[0] == t]
        assert completed_7d == sum(e[1] == "completed" and e[5] >= week_ago for e in mine), t
        assert failed_7d == sum(e[1] == "failed" and e[5] >= week_ago for e in mine), t
        assert newest == summary[t][4], t
        assert (age is None) == (newest is None) and (newest is None or float(age) == (db_now - newest)
                                                                            .total_seconds()), t
        finished = max((e for e in mine if e[1] != "running"), key=lambda e: e[5])
        rule = ("critical" if newest is None or db_now - newest > timedelta(hours=48) else
                "warning" if finished[1] == "failed" or db_now - newest > timedelta(hours=25) else "healthy")
        assert verdict == rule, t
    # full: a success just now (the running and old ones do not count against it); payments: the newest
    # finished one failed, after a success; orders: completed just now; tickets: never succeeded.
    assert {t: h[4] for t, h in health.items()} == {"full": "healthy", "payments": "warning", "orders": "healthy",
                                                    "tickets": "critical"}
    assert health["full"][0] == 1  # x-old is older than 7 days

    # A snapshot gone from the catalog (prune) leaves the table at the next sync; a changed one is updated.
    a.storage.delete(catalog.record_key("x-tickets"))
    catalog.save(a, catalog.failed(raw["x-running"], "disk full"))
    assert json.loads(run_pgtape("sql", "sync", *cli, "--json", check=True).stdout)["snapshots"] == 6
    with psycopg.connect(dsn, autocommit=True) as c:
        assert scalar(c.execute("select count(*) from pgtape.payment_backups where id = 'x-tickets'")) == 0
        assert c.execute("select status, error_message from pgtape.payment_backups where id = 'x-running'"
                         ).fetchall() == [("failed", "disk full")]
        assert scalar(c.execute("select verdict from pgtape.backup_health_check where backup_type = 'full'")) \
            == "warning"  # its newest finished backup has now failed


def _messages(c: psycopg.Connection, slot: str) -> list[tuple[str, str]]:
    """(lsn, data) of the slot's pending messages (test_decoding's text), without consuming them."""
    return [(str(lsn), str(data)) for lsn, data in c.execute(
        "select lsn::text, data from pg_logical_slot_peek_changes(%s, NULL, NULL) where data like 'message:%%'",
        (slot,))]


def test_create_recovery_point_emits_the_mark_message(pg: EmbeddedPostgres, dsn: str, dbname: str, role: str) -> None:
    _install(dsn, "--schema", "mon")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select pg_create_logical_replication_slot('rp_test', 'test_decoding')")
        lsn = scalar(c.execute("select mon.create_recovery_point('before-release-42', 'deploy 42')::text"))
        scalar(c.execute("select mon.create_recovery_point('past.point:1', NULL, "
                         "'2026-01-02 03:04:05.123456+00')"))
        with c.transaction():  # a time within the calling transaction is its exact position too
            scalar(c.execute("select mon.create_recovery_point('in-tx', NULL, clock_timestamp())"))
        messages = _messages(c, "rp_test")
    assert len(messages) == 3, messages
    assert messages[0][0] == lsn
    contents = []
    for _, data in messages:
        assert data.startswith("message: transactional: 1 prefix: pgtape, sz: "), data
        contents.append(json.loads(data.split(" content:", 1)[1]))
    assert contents == [{"name": "before-release-42", "description": "deploy 42", "at": None},
                        {"name": "past.point:1", "description": None, "at": "2026-01-02T03:04:05.123456Z"},
                        {"name": "in-tx", "description": None, "at": None}]

    with psycopg.connect(dsn, autocommit=True) as c:
        for call, needle in [("'later', NULL, now() + interval '1 minute'", "in the future"),
                             ("'bad name'", "invalid recovery point name"),
                             (f"'{'x' * 101}'", "invalid recovery point name"),
                             ("NULL", "invalid recovery point name")]:
            with pytest.raises(psycopg.errors.InvalidParameterValue, match=needle):
                c.execute(f"select mon.create_recovery_point({call})")
        assert len(_messages(c, "rp_test")) == 3

    # Granted to nobody by default; the GRANTs install prints are what a monitoring role needs.
    grants = _install(dsn, "--schema", "mon")["grants"]
    as_role = pg.dsn(dbname, user=role)
    with psycopg.connect(as_role, autocommit=True) as c:
        for q in ("select * from mon.backup_health_check", "select mon.create_recovery_point('nope')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(q)
    run_sql(dsn, *(g.split(";")[0].replace(" monitoring", f" {role}") for g in grants))
    with psycopg.connect(as_role, autocommit=True) as c:
        assert c.execute("select * from mon.backup_status_summary").fetchall() == []
        assert c.execute("select * from mon.backup_health_check").fetchall() == []
        c.execute("select mon.create_recovery_point('by-monitor')")
        assert len(_messages(c, "rp_test")) == 4
