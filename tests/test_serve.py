"""pgtape serve driven over HTTP against a real PostgreSQL: auth on every route, refusals, a
backup, recoveries checked against the live rows recorded at the target, capture running in the
service, and jobs interrupted by stopping the service reading `interrupted` after a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import timezone
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from conftest import (ROOT, capture_to_now, clean_env, one_line_error, process_alive, run_pgtape, stop_process,
                      wait_until)
from pgtape.service.app import ROUTES
from testkit.cluster import free_port

TOKEN = "s3cret-token-of-the-test"
FILE_TOKEN = "other-token-from-the-file"


class Serve:
    def __init__(self, tmp: Path, dsn: str, *extra: str, conf: str = "") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.conf = tmp / "pgtape.toml"
        tokens = tmp / "tokens"
        if not tokens.exists():
            tokens.write_text(f"# name token\nops {FILE_TOKEN}\n")
            tokens.chmod(0o600)
        self.conf.write_text(f'[source]\ndsn = "{dsn}"\ntables = ["public.payments", "public.orders"]\n'
                             f'[archive]\npath = "{tmp / "archive"}"\n'
                             f'[api]\nlisten = "127.0.0.1:{self.port}"\ntoken_file = "{tokens}"\n' + conf)
        self.log = tmp / f"serve-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pgtape", "serve", "--config", str(self.conf), *extra],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                         env={**clean_env(), "PGTAPE_API_TOKEN": TOKEN})
        wait_until("the API to answer", lambda: self.proc.poll() is not None or self.call("GET", "/healthz")[0] > 0,
                   60)
        assert self.proc.poll() is None, self.log.read_text()

    def call(self, method: str, path: str, body: Any = None, token: str | None = TOKEN,
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            text = e.read()
            if e.code == 401:
                assert e.headers["WWW-Authenticate"].startswith("Bearer")
            return e.code, json.loads(text)
        except (ConnectionError, urllib.error.URLError):
            return 0, None

    def job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            status, job = self.call("GET", f"/v1/jobs/{job_id}")
            assert status == 200, job
            return job if job["status"] != "running" else None
        return wait_until(f"job {job_id} to finish", finished, timeout, 0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)


@pytest.fixture
def serve(dsn: str, tmp_path: Path) -> Iterator[Serve]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table payments (id int primary key, amount numeric(12,2) not null, note text)")
        c.execute("create table orders (id int primary key, item text)")
        c.execute("insert into payments select g, g * 1.5, 'p' || g from generate_series(1, 100) g")
        c.execute("insert into orders select g, 'item ' || g from generate_series(1, 20) g")
    capture_to_now(dsn, tmp_path / "archive", tables="public.payments,public.orders")
    s = Serve(tmp_path, dsn)
    try:
        yield s
    finally:
        s.stop()


def _concrete(path: str) -> str:
    return path.replace("{id}", "x")


def test_auth_and_refusals(serve: Serve) -> None:
    assert serve.call("GET", "/healthz", token=None)[0] in (200, 503)
    for method, path in ROUTES:
        if (method, path) == ("GET", "/healthz"):
            continue
        for token in (None, "wrong", TOKEN + "x", ""):
            status, doc = serve.call(method, _concrete(path), {} if method == "POST" else None, token=token)
            assert status == 401 and "token" in doc["error"], (method, path, token, status, doc)
    assert serve.call("GET", "/v1/status", token=FILE_TOKEN)[0] == 200  # the file's token works too
    status, doc = serve.call("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert serve.call("GET", "/nowhere")[0] == 404
    assert serve.call("DELETE", "/v1/backups")[0] == 405

    def bad(path: str, body: Any, *needles: str, raw: bytes | None = None) -> None:
        status, doc = serve.call("POST", path, body, raw=raw)
        assert status == 400, (path, body, status, doc)
        assert "\n" not in doc["error"] and all(n in doc["error"] for n in needles), doc
    bad("/v1/backups", None, "not valid JSON", raw=b"{not json")
    bad("/v1/backups", {"backup_type": "full", "format": "csv"}, "unknown field", "format")
    bad("/v1/backups", {"backup_type": "tickets"}, "tickets", "payments", "orders")
    bad("/v1/backups", {"tables": ["public.nope"]}, "public.nope", "not captured")
    bad("/v1/backups", {"tables": "payments"}, "Expected `array", "tables")
    bad("/v1/recoveries", {"recovery_type": "point_in_time", "target_time": "yesterday"}, "target_time")
    bad("/v1/recoveries", {"recovery_type": "point_in_time", "target_time": "2026-01-01T00:00:00"}, "zone")
    bad("/v1/recoveries", {"recovery_type": "point_in_time", "target_time": "2026-01-01T00:00:00Z",
                           "tables": ["nope"]}, "public.nope")
    bad("/v1/recoveries", {"recovery_type": "point_in_time", "target_time": "2026-01-01T00:00:00Z",
                           "into": {"schema": "Bad-Name"}}, "schema")
    bad("/v1/recoveries", {"recovery_type": "time_travel"}, "recovery_type")
    bad("/v1/recoveries", {"recovery_type": "backup_restore", "backup_id": "nope"}, "nope")
    bad("/v1/recovery-points", {"name": "x", "at": "2999-01-01T00:00:00Z"}, "future")
    status, doc = serve.call("POST", "/v1/recoveries", raw=b"{}", token=TOKEN)
    assert status == 400 and "recovery_type" in doc["error"]


def test_backup_recoveries_and_capture(serve: Serve, dsn: str, tmp_path: Path) -> None:
    archive = str(tmp_path / "archive")
    status, doc = serve.call("POST", "/v1/backups", {"backup_type": "full"})
    assert status == 202, doc
    backup_id = doc["id"]  # named at once: GET shows it running, then completed
    status, early = serve.call("GET", f"/v1/backups/{backup_id}")
    assert status == 200 and early["id"] == backup_id and early["status"] in ("running", "completed"), early
    job = serve.job(doc["job_id"])
    assert job["status"] == "completed" and job["exit_code"] == 0 and job["result"]["id"] == backup_id, job
    status, rec = serve.call("GET", f"/v1/backups/{backup_id}")
    listed = {r["id"]: r for r in json.loads(run_pgtape("snapshots", "--archive", archive, "--json",
                                                       check=True).stdout)}
    cli = listed[backup_id]
    assert status == 200 and rec["backup_type"] == "full" and rec["status"] == cli["status"] == "completed"
    assert rec["tables"] == cli["tables"] and rec["record_count"] == sum(cli["rows"].values()) == 120
    assert rec["file_size_bytes"] == cli["bytes"] and rec["error_message"] is None
    assert {b["id"] for b in serve.call("GET", "/v1/backups")[1]} == set(listed)
    status, doc = serve.call("POST", "/v1/backups", {"backup_type": "orders"})
    assert status == 202 and serve.job(doc["job_id"])["result"]["rows"] == {"public.orders": 20}

    # Capture runs inside the service: changes reach the tape and /healthz turns 200.
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("update payments set note = 'before' where id <= 10")
        expected = sorted(c.execute("select id, amount::text, note from payments").fetchall())
        target = c.execute("select now()").fetchone()[0]  # type: ignore[index]
        c.execute("update payments set note = 'after', amount = 0 where id <= 50")
        with c.transaction():
            c.execute("delete from payments where id > 90")
            last = c.execute("select txid_current()").fetchone()[0]  # type: ignore[index]

    def on_tape() -> bool:
        r = run_pgtape("log", "--archive", archive, "--xid", str(last), "--json")
        return r.returncode == 0 and bool(r.stdout.strip())
    wait_until("the service's capture to put the last change on the tape", on_tape, 60, 0.3)
    assert wait_until("/healthz 200", lambda: serve.call("GET", "/healthz", token=None) == (200, {"ok": True}), 60, 0.3)
    assert serve.call("GET", "/v1/status")[1]["server"]["capture_connected"] is True

    when = target.astimezone(timezone.utc).isoformat()
    status, doc = serve.call("POST", "/v1/recoveries", {"recovery_type": "point_in_time", "target_time": when,
                                                         "tables": ["payments"], "dry_run": True})
    assert status == 202, doc
    job = serve.job(doc["id"])
    assert job["status"] == "completed" and job["kind"] == "recovery", job
    assert job["result"]["outcome"] == "dry run"
    assert job["result"]["tables"]["public.payments"] == {"rows": 100, "insert": 10, "update": 50, "delete": 0}
    status, doc = serve.call("POST", "/v1/recoveries", {"recovery_type": "point_in_time", "target_time": when,
                                                         "tables": ["payments"], "dry_run": False,
                                                         "into": {"schema": "restored"}})
    job = serve.job(doc["id"])
    assert job["status"] == "completed" and job["result"]["rows"] == {"public.payments": 100}, job
    assert serve.call("GET", f"/v1/recoveries/{doc['id']}")[1]["status"] == "completed"
    with psycopg.connect(dsn) as c:
        assert sorted(c.execute("select id, amount::text, note from restored.payments").fetchall()) == expected

    status, doc = serve.call("POST", "/v1/recoveries", {"recovery_type": "data_verification",
                                                         "tables": ["payments"]})
    job = serve.job(doc["id"])
    assert job["status"] == "completed" and job["kind"] == "verification" and job["result"]["ok"] is True, job

    status, doc = serve.call("POST", "/v1/recovery-points", {"name": "before-upgrade", "description": "v2"})
    assert status == 201 and doc["name"] == "before-upgrade" and doc["description"] == "v2", doc
    status, doc = serve.call("POST", "/v1/recovery-points", {"name": "before-upgrade"})
    assert status == 409 and "already exists" in doc["error"]


def test_jobs_read_interrupted_after_the_service_stops(serve: Serve, dsn: str, tmp_path: Path) -> None:
    serve.stop()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # Without capture, verify --live waits for a position nobody makes durable: a job that keeps running.
        s = Serve(tmp_path, dsn, "--no-capture")
        try:
            status, doc = s.call("POST", "/v1/recoveries", {"recovery_type": "data_verification"})
            assert status == 202, doc
            pid = s.call("GET", f"/v1/jobs/{doc['id']}")[1]["pid"]
            assert pid > 0 and s.call("GET", f"/v1/recoveries/{doc['id']}")[1]["status"] == "running"
            if sig == signal.SIGTERM:  # MAX_RUNNING jobs at once, then 429
                more = [s.call("POST", "/v1/recoveries", {"recovery_type": "data_verification"}) for _ in range(3)]
                assert [m[0] for m in more] == [202] * 3, more
                status, refused = s.call("POST", "/v1/backups", {"backup_type": "full"})
                assert status == 429 and "jobs are running" in refused["error"]
        finally:
            s.stop(sig)
        wait_until(f"job process {pid} to end with the service", lambda: not process_alive(pid), 30)
        s = Serve(tmp_path, dsn, "--no-capture")
        try:
            job = s.call("GET", f"/v1/recoveries/{doc['id']}")[1]
            assert job["status"] == "interrupted" and "interrupted" in job["error"], (sig, job)
        finally:
            s.stop()


def test_refuses_to_start_without_a_safe_token(dsn: str, tmp_path: Path) -> None:
    conf = tmp_path / "pgtape.toml"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops {FILE_TOKEN}\n")
    conf.write_text(f'[archive]\npath = "{tmp_path}"\n[api]\ntoken_file = "{tokens}"\n')
    tokens.chmod(0o644)
    one_line_error(run_pgtape("serve", "--config", str(conf), "--no-capture"), 2, "chmod 600")
    tokens.chmod(0o600)
    tokens.write_text("ops\n")
    one_line_error(run_pgtape("serve", "--config", str(conf), "--no-capture"), 2, "line 1", "NAME TOKEN")
    conf.write_text(f'[archive]\npath = "{tmp_path}"\n')
    one_line_error(run_pgtape("serve", "--config", str(conf), "--no-capture"), 2, "no API token")


def test_capture_failing_keeps_the_api_up_and_is_retried(serve: Serve, dsn: str, tmp_path: Path) -> None:
    serve.stop()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select pg_drop_replication_slot('pgtape')")  # capture cannot continue without it
    s = Serve(tmp_path, dsn)
    try:
        def unhealthy() -> dict[str, Any] | None:
            status, doc = s.call("GET", "/healthz", token=None)
            return doc if status == 503 and "capture stopped" in doc.get("reason", "") else None
        doc = wait_until("/healthz 503 naming why capture stopped", unhealthy, 60, 0.2)
        assert doc["ok"] is False and "slot pgtape has disappeared" in doc["reason"], doc
        assert s.call("GET", "/v1/backups")[0] == 200  # the API answers meanwhile
        wait_until("a second capture attempt", lambda: "starting capture again (attempt 2)" in s.log.read_text(), 60,
                   0.2)
        assert s.proc.poll() is None
    finally:
        s.stop()
    assert s.proc.returncode == 0, s.log.read_text()
