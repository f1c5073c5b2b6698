"""pgtape/service/metrics.py: the exposition text, read back with prometheus_client's own parser.

The Status comes from collect() on a small archive with no server to reach (a socket directory that
does not exist), then, for the reachable case, gets a server answer written by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgtape.config import load_config
from pgtape.service.metrics import Metrics
from pgtape.service.status import ServerSummary, Status, collect
from pgtape.snapshots import catalog
from pgtape.tape.archive import Archive
from .archive_kit import new_archive, segment, snapshot

ODD = 'public."Ledger ""x"" \\ y"'  # quotes and a backslash: the label value must be escaped
S = 1_000_000  # µs per second


@pytest.fixture
def status(tmp_path: Path) -> Status:
    archive = new_archive(tmp_path / "a", tables=["public.t", ODD])
    segment(archive, 1, 100, [(200, 1000 * S), (300, 2000 * S)], position=(300, 2500 * S))
    snapshot(archive, "s1", lsn=150, at=900 * S, tables=["public.t", ODD])
    snapshot(archive, "s2", lsn=250, at=1500 * S, tables=["public.t"])
    snapshot(archive, "s3", lsn=None, at=None, status=catalog.FAILED)
    config = load_config(None, {"archive": str(tmp_path / "a"), "dsn": f"host={tmp_path}/none dbname=x"}, {})
    return collect(config, archive)


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def test_server_unreachable_leaves_what_it_would_tell_absent(status: Status) -> None:
    assert status.server is None and status.problems[0].startswith("server unreachable: cannot connect")
    m = Metrics()
    m.observe(status, [], {})
    body, content_type = m.render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    got = samples(body)
    assert got[("pgtape_server_reachable", ())] == 0
    assert got[("pgtape_status_problems", ())] == 1
    assert got[("pgtape_tape_bytes", ())] == status.tape.bytes > 0
    assert got[("pgtape_last_durable_commit_timestamp_seconds", ())] == 2000
    assert got[("pgtape_recoverable_window_start_timestamp_seconds", ())] == 900  # s1 is the oldest base of ODD
    assert got[("pgtape_recoverable_window_end_timestamp_seconds", ())] == 2500  # the Position
    for absent in ("pgtape_capture_connected", "pgtape_capture_lag_bytes", "pgtape_capture_lag_seconds"):
        assert not [k for k in got if k[0] == absent], absent
    # Without the server's clock, the age is by this machine's clock: decades since 1970.
    assert got[("pgtape_snapshot_age_seconds", (("table", "public.t"),))] > 50 * 365 * 86400
    assert got[("pgtape_snapshots", (("status", "running"),))] == 0  # every catalog status, 0 when none


def test_every_metric_with_the_server_reachable(status: Status) -> None:
    server = ServerSummary(wal_lsn=1300, slot_confirmed_lsn=300, capture_connected=True, server_time=3000 * S,
                           exact_schema_changes=True)
    status = dataclasses.replace(status, server=server, server_error=None, lag_bytes=1000, lag_seconds=500.0,
                                 problems=[], newest={**status.newest, "public.never": None})
    records = catalog.load_all(Archive(status.archive_path))
    m = Metrics()
    m.observe(status, records, {("recovery", "running"): 1, ("recovery", "failed"): 2, ("backup", "completed"): 3})
    m.changes_captured.inc(7)
    m.changes_captured.inc(5)
    body, _ = m.render()
    got = samples(body)
    assert got[("pgtape_server_reachable", ())] == 1
    assert got[("pgtape_capture_connected", ())] == 1
    assert got[("pgtape_capture_lag_bytes", ())] == 1000
    assert got[("pgtape_capture_lag_seconds", ())] == 500
    assert got[("pgtape_status_problems", ())] == 0
    # Server time 3000 s: s2 (1500 s) is public.t's newest, s1 (900 s) ODD's; public.never has none.
    assert got[("pgtape_snapshot_age_seconds", (("table", "public.t"),))] == 1500
    assert got[("pgtape_snapshot_age_seconds", (("table", ODD),))] == 2100
    assert not [k for k in got if k == ("pgtape_snapshot_age_seconds", (("table", "public.never"),))]
    assert {k[1]: v for k, v in got.items() if k[0] == "pgtape_snapshots"} == {
        (("status", "completed"),): 2, (("status", "failed"),): 1, (("status", "running"),): 0}
    assert {k[1]: v for k, v in got.items() if k[0] == "pgtape_jobs"} == {
        (("kind", "recovery"), ("status", "running")): 1, (("kind", "recovery"), ("status", "failed")): 2,
        (("kind", "backup"), ("status", "completed")): 3}
    assert got[("pgtape_changes_captured_total", ())] == 12
    text = body.decode()
    assert '{table="public.\\"Ledger \\"\\"x\\"\\" \\\\ y\\""}' in text  # escaped as the format says
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("pgtape_") and family.documentation, family.name


def test_a_new_observation_replaces_the_old_one_whole(status: Status) -> None:
    m = Metrics()
    m.observe(status, [], {("recovery", "running"): 1})
    m.observe(dataclasses.replace(status, newest={}, window=None), [], {})
    got = samples(m.render()[0])
    assert not [k for k in got if k[0] in ("pgtape_snapshot_age_seconds", "pgtape_jobs")
                or k[0].startswith("pgtape_recoverable_window")]
    fresh = samples(Metrics().render()[0])  # before any observation: only the counter, at 0
    assert fresh[("pgtape_changes_captured_total", ())] == 0
    assert {k[0] for k in fresh} == {"pgtape_changes_captured_total", "pgtape_changes_captured_created"}
