"""pgtape serve as operators use it, against a real PostgreSQL and a real service process: Prometheus
metrics over HTTP, webhooks (to a real HTTP receiver), the audit trail of API calls and of the jobs
they start, the SQL monitoring catalog kept current, restoring one backup and verifying it."""

from __future__ import annotations

import json
import threading
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import msgspec
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import capture_to_now, one_line_error, run_pgtape, wait_until
from pgtape.snapshots import catalog
from pgtape.tape.archive import Archive
from test_serve import TOKEN, Serve


class Receiver:
    """A webhook endpoint: records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"content_type": self.headers["Content-Type"], **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-part"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["event"] == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def _metrics(serve: Serve) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    req = urllib.request.Request(serve.base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_webhooks_audit_sql_and_restoring_a_backup(dsn: str, tmp_path: Path, receiver: Receiver) -> None:
    archive = tmp_path / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table payments (id int primary key, amount numeric(12,2) not null, note text)")
        c.execute("create table orders (id int primary key, item text)")
        c.execute("insert into payments select g, g * 1.5, 'p' || g from generate_series(1, 50) g")
        c.execute("insert into orders select g, 'item ' || g from generate_series(1, 5) g")
    capture_to_now(dsn, archive, tables="public.payments,public.orders")
    run_pgtape("sql", "install", "--dsn", dsn, check=True)
    serve = Serve(tmp_path, dsn, conf=f'[notify]\nwebhook_urls = ["{receiver.url}"]\ndisconnected_after = "1s"\n')
    try:
        # Capture inside the service: its changes are counted, and the metrics say it is connected.
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("update payments set note = 'seen by serve' where id <= 30")  # 30 row changes
        wait_until("/healthz 200", lambda: serve.call("GET", "/healthz", token=None) == (200, {"ok": True}), 60, 0.3)
        def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            m = _metrics(serve)
            return m if m[("pgtape_changes_captured_total", ())] >= 30 else None
        m = wait_until("the metrics to count the 30 changes", counted, 30, 0.5)
        assert m[("pgtape_changes_captured_total", ())] == 30
        assert m[("pgtape_capture_connected", ())] == 1
        assert m[("pgtape_snapshots", (("status", "completed"),))] == 1  # init's base
        assert m[("pgtape_tape_bytes", ())] == json.loads(run_pgtape("status", "--archive", str(archive), "--dsn", dsn,
                                                                     "--json").stdout)["bytes"]

        # A full backup through the API; the SQL catalog shows it (the service syncs after the job).
        status, doc = serve.call("POST", "/v1/backups", {"backup_type": "full"})
        assert status == 202, doc
        job = serve.job(doc["job_id"])
        backup_id = doc["id"]
        assert job["status"] == "completed" and job["result"]["id"] == backup_id, job
        cli = ["--archive", str(archive), "--dsn", dsn]  # an id named in advance is checked
        one_line_error(run_pgtape("snapshot", *cli, "--id", backup_id), 2, "exists already")
        one_line_error(run_pgtape("snapshot", *cli, "--id", "nope"), 2, "invalid snapshot id")
        with psycopg.connect(dsn, autocommit=True) as c:
            at_backup = sorted(c.execute("select id, amount::text, note from payments").fetchall())
            c.execute("update payments set amount = 0 where id <= 10")  # after the backup: not in it

            def in_sql() -> tuple[Any, ...] | None:
                return c.execute("select backup_type, status, record_count from pgtape.payment_backups "
                                 "where id = %s", (backup_id,)).fetchone()
            assert wait_until("the backup in pgtape.payment_backups", in_sql, 30, 0.5) == ("full", "completed", 55)

        # backup_restore: exactly what the backup holds; data_verification of that backup.
        status, doc = serve.call("POST", "/v1/recoveries", {"recovery_type": "backup_restore", "backup_id": backup_id,
                                                             "tables": ["payments"],
                                                             "into": {"schema": "from_backup"}})
        assert status == 202, doc
        restore = serve.job(doc["id"])
        assert restore["status"] == "completed" and restore["result"]["base"]["id"] == backup_id, restore
        with psycopg.connect(dsn) as c:
            assert sorted(c.execute("select id, amount::text, note from from_backup.payments").fetchall()) == at_backup
        status, doc = serve.call("POST", "/v1/recoveries", {"recovery_type": "data_verification",
                                                             "backup_id": backup_id})
        verified = serve.job(doc["id"])
        assert verified["status"] == "completed" and verified["result"]["ok"] is True, verified
        hook = wait_until("the recovery_completed webhook",
                          lambda: [p for p in receiver.events("recovery_completed")
                                   if p["recovery_id"] == restore["id"]], 30, 0.2)[0]
        assert hook["content_type"] == "application/json" and hook["recovery_type"] == "backup_restore"
        assert restore["id"] in hook["text"] and hook["tables"] == ["payments"]

        # A recovery point at an earlier time.
        earlier = (datetime.now(timezone.utc) - timedelta(seconds=2)).isoformat()
        status, doc = serve.call("POST", "/v1/recovery-points", {"name": "earlier", "at": earlier})
        assert status == 201 and doc["at"], doc

        # A snapshot failing (written into the catalog as a failed run would leave it) is notified once.
        a = Archive(archive)
        failed = catalog.failed(catalog.load_all(a)[-1], "disk on fire")
        failed = msgspec.structs.replace(failed, id="20990101T000000Z-1")
        catalog.save(a, failed)
        hook = wait_until("the snapshot_failed webhook", lambda: receiver.events("snapshot_failed"), 30, 0.2)[0]
        assert hook["snapshot_id"] == failed.id and hook["error"] == "disk on fire"

        # The audit trail: the API calls under the token's name, and the job's own line.
        lines = [json.loads(ln) for ln in run_pgtape("audit", "--archive", str(archive), "--json",
                                                      check=True).stdout.splitlines()]
        api = [(x["actor"], x["operation"], x["result"]["http_status"]) for x in lines
               if x["operation"].startswith(("GET ", "POST "))]
        assert ("api:env", "POST /v1/backups", 202) in api and ("api:env", "POST /v1/recovery-points", 201) in api
        assert not [x for x in api if x[1] in ("GET /healthz", "GET /metrics")]
        assert [x for x in lines if x["operation"] == "snapshot" and x["actor"] == "api:env"]
        assert [x for x in lines if x["operation"] == "replay" and x["actor"] == "api:env"
                and x["arguments"].get("snapshot") == backup_id]

        # Capture losing its slot: disconnected longer than disconnected_after is notified.
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'pgtape'")
            wait_until("the slot to be free", lambda: c.execute(
                "select not active from pg_replication_slots where slot_name = 'pgtape'").fetchone() == (True,), 30)
            c.execute("select pg_drop_replication_slot('pgtape')")
        hook = wait_until("the capture_disconnected webhook", lambda: receiver.events("capture_disconnected"), 60,
                          0.2)[0]
        assert "disappeared" in hook["error"] and hook["disconnected_seconds"] > 1
    finally:
        serve.stop()


def test_failures_are_notified(dsn: str, tmp_path: Path, receiver: Receiver) -> None:
    """The other webhooks, each provoked for real: a recovery that fails, a verification that finds
    damage, and (with capture left to nobody) lag over [capture] max_lag."""
    archive = tmp_path / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table payments (id int primary key, amount numeric(12,2) not null, note text)")
        c.execute("create table orders (id int primary key, item text)")
        c.execute("insert into payments select g, g, 'p' || g from generate_series(1, 20) g")
    capture_to_now(dsn, archive, tables="public.payments,public.orders")
    conf = f'[notify]\nwebhook_urls = ["{receiver.url}"]\n[capture]\nmax_lag = "1s"\n'
    serve = Serve(tmp_path, dsn, "--no-capture", conf=conf)
    try:
        # A point-in-time recovery before the recoverable window fails: recovery_failed.
        status, doc = serve.call("POST", "/v1/recoveries", {"recovery_type": "point_in_time",
                                                             "target_time": "2001-01-01T00:00:00Z"})
        assert status == 202, doc
        job = serve.job(doc["id"])
        assert job["status"] == "failed" and "recoverable window" in job["error"], job
        hook = wait_until("the recovery_failed webhook", lambda: receiver.events("recovery_failed"), 30, 0.2)[0]
        assert hook["recovery_id"] == job["id"] and hook["error"] == job["error"]

        # A backup whose file is damaged: data_verification of it finds it, verify_failed.
        backup = catalog.load_all(Archive(archive))[0]
        damaged = next(catalog.snapshot_dir(Archive(archive), backup.generation, backup.id).iterdir())
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0x40
        damaged.write_bytes(bytes(data))
        status, doc = serve.call("POST", "/v1/recoveries", {"recovery_type": "data_verification",
                                                             "backup_id": backup.id})
        job = serve.job(doc["id"])
        assert job["exit_code"] == 1 and job["result"]["ok"] is False, job
        hook = wait_until("the verify_failed webhook", lambda: receiver.events("verify_failed"), 30, 0.2)[0]
        assert hook["problem_count"] >= 1 and damaged.name in json.dumps(hook["problems"]), hook

        # Nobody captures: WAL piles up beyond the tape, and the tape falls behind max_lag: lag_high.
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("update payments set note = 'nobody captures this' where id <= 5")
        hook = wait_until("the lag_high webhook", lambda: receiver.events("lag_high"), 60, 0.3)[0]
        assert hook["max_lag_seconds"] == 1 and hook["lag_seconds"] > 1, hook
        assert serve.call("GET", "/healthz", token=None)[0] == 503
    finally:
        serve.stop()
