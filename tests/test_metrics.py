"""The shared status and the metrics on a real cluster: collect() says what `pgtape status --json`
prints, and Metrics exposes the same numbers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from conftest import capture_to_now, run_pgtape, run_sql
from pgtape.config import load_config
from pgtape.service.metrics import Metrics
from pgtape.service.status import collect
from pgtape.snapshots import catalog
from pgtape.tape.archive import Archive
from pgtape.timefmt import parse_time

STABLE = ("generation", "slot", "start_lsn", "end_lsn", "segments", "bytes", "transactions", "changes",
          "first_commit_time", "last_commit_time", "recoverable_window", "gap", "newest_snapshot", "healthy",
          "problems")  # (not the lag and ages, which move with the clock and the server's WAL)


def test_collect_and_metrics_agree_with_pgtape_status(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive)]
    run_sql(dsn, "create table t (id int primary key)", "insert into t select generate_series(1, 10)")
    run_pgtape("init", *cli, "--tables", "t", check=True)
    run_sql(dsn, "insert into t values (11)", "update t set id = id + 100 where id <= 3")
    capture_to_now(dsn, archive)
    before = time.time()
    snap = json.loads(run_pgtape("snapshot", *cli, "--json", check=True).stdout)
    run_sql(dsn, "delete from t where id = 11")
    capture_to_now(dsn, archive)

    printed = json.loads(run_pgtape("status", *cli, "--json").stdout)
    status = collect(load_config(None, {"dsn": dsn, "archive": str(archive)}, {}), Archive.existing(archive))
    elapsed = time.time() - before
    report = msgspec.to_builtins(status.report())
    assert {k: report[k] for k in STABLE} == {k: printed[k] for k in STABLE}
    assert printed["newest_snapshot"]["public.t"]["id"] == snap["id"]
    assert printed["changes"] == 5  # 1 insert, 3 updates, 1 delete
    assert status.server is not None and not status.server.capture_connected and status.healthy

    m = Metrics()
    records = catalog.load_all(Archive.existing(archive))
    m.observe(status, records, {("recovery", "completed"): 1})
    got = {(s.name, tuple(s.labels.values())): s.value
           for f in text_string_to_metric_families(m.render()[0].decode()) for s in f.samples}
    assert got[("pgtape_tape_bytes", ())] == printed["bytes"]
    assert got[("pgtape_server_reachable", ())] == 1
    assert got[("pgtape_capture_connected", ())] == 0  # capture is not running
    assert got[("pgtape_status_problems", ())] == 0
    assert got[("pgtape_capture_lag_bytes", ())] >= 0 and ("pgtape_capture_lag_seconds", ()) in got
    assert got[("pgtape_last_durable_commit_timestamp_seconds", ())] == parse_time(printed["last_commit_time"]) / 1e6
    assert status.window is not None and status.window.describe() == printed["recoverable_window"]
    initial = min((r for r in records if r.status == catalog.COMPLETED), key=lambda r: r.as_of_lsn or 0)
    assert initial.id != snap["id"] and initial.as_of_time is not None
    assert got[("pgtape_recoverable_window_start_timestamp_seconds", ())] == initial.as_of_time / 1e6
    assert status.window.to_time is not None and status.window.to_time > parse_time(snap["as_of_time"])
    assert got[("pgtape_recoverable_window_end_timestamp_seconds", ())] == status.window.to_time / 1e6
    assert 0 <= got[("pgtape_snapshot_age_seconds", ("public.t",))] <= elapsed
    assert got[("pgtape_snapshots", ("completed",))] == 2 and got[("pgtape_snapshots", ("failed",))] == 0
    assert got[("pgtape_jobs", ("recovery", "completed"))] == 1
