"""Prometheus metrics of pgtape serve (GET /metrics): docs/ARCHITECTURE.md, "Metrics".

The gauges are one observation of the status (observe(), called by the service as often as it
likes); a scrape renders the newest one whole, so it never mixes two. A value that is unknown, such
as the lag while the server is unreachable, is absent from the output rather than 0: a 0 would read
as "no lag". Only changes_captured counts, incremented by capture as it writes."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pgtape.service.status import Status
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord

SNAPSHOT_STATUSES = (catalog.RUNNING, catalog.COMPLETED, catalog.FAILED)  # always exposed, 0 when none


class Metrics:
    """The service's metrics, in a registry of their own (not prometheus_client's global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.changes_captured = Counter(
            "pgtape_changes_captured", "Row changes capture has written to the tape since the service started.",
            registry=self.registry)
        self._observed = _Observed()
        self.registry.register(self._observed)

    def observe(self, status: Status, snapshots: list[SnapshotRecord], jobs: dict[tuple[str, str], int]) -> None:
        """Replaces the gauges with these: the status, every catalog record, the count of jobs per
        (kind, status)."""
        self._observed.families = gauges(status, snapshots, jobs)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its Content-Type: the classic text format (version 0.0.4), which
        every Prometheus reads, as prometheus_client serves a scraper that asks for nothing else."""
        encode, content_type = choose_encoder("")
        return encode(self.registry), content_type


class _Observed(Collector):
    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return self.families


def gauges(status: Status, snapshots: list[SnapshotRecord], jobs: dict[tuple[str, str], int]) -> list[Metric]:
    tape, server, w, lat = status.tape, status.server, status.window, status.commit_to_durable
    out: list[Metric | None] = [
        _gauge("pgtape_server_reachable", "1 when the status could reach the PostgreSQL server, else 0.",
               server is not None),
        _gauge("pgtape_capture_connected", "1 while the replication slot is in use (capture streaming), else 0.",
               None if server is None else server.capture_connected),
        _gauge("pgtape_capture_lag_bytes", "WAL the server has beyond the durable end of the tape.",
               status.lag_bytes),
        _gauge("pgtape_capture_lag_seconds", "While the server has WAL beyond the tape: how long ago (server "
               "clock) the tape was last known complete; 0 when it has none.", status.lag_seconds),
        _gauge("pgtape_last_durable_commit_timestamp_seconds", "Commit time of the newest transaction on the "
               "tape, Unix seconds.", _seconds(tape.last_commit_time)),
        _gauge("pgtape_tape_bytes", "Size of the current generation's tape segment files.", tape.bytes),
        _gauge("pgtape_recoverable_window_start_timestamp_seconds", "Earliest recoverable time (the oldest "
               "base every table has), Unix seconds.", _seconds(w.from_time) if w else None),
        _gauge("pgtape_recoverable_window_end_timestamp_seconds", "Latest recoverable time (the tape is "
               "known complete up to it), Unix seconds.", _seconds(w.to_time) if w else None),
        _gauge("pgtape_status_problems", "Problems pgtape status reports (0: healthy).", len(status.problems)),
        _gauge("pgtape_commit_to_durable_p50_seconds", "Median time from a transaction's commit (server clock) to "
               "its fsync on the tape, over capture's latest window (about 10 s).",
               None if lat is None else lat.p50_ms / 1000),
        _gauge("pgtape_commit_to_durable_p99_seconds", "99th percentile of the same.",
               None if lat is None else lat.p99_ms / 1000),
        _gauge("pgtape_offsite_lag_bytes", "The local tape's end minus how far the offsite copy holds it.",
               status.offsite.lag_bytes if status.offsite else None),
        _gauge("pgtape_offsite_lag_seconds", "How far (server clock) the offsite tape trails the local one; 0 when "
               "caught up.", status.offsite.lag_seconds if status.offsite else None),
        _gauge("pgtape_offsite_failing", "1 while uploads to the offsite copy fail, else 0.",
               (status.offsite.last_error is not None) if status.offsite else None),
    ]
    age = GaugeMetricFamily("pgtape_snapshot_age_seconds", "Now minus the as-of time of the table's newest "
                            "completed snapshot.", labels=["table"])
    for table, r in status.newest.items():
        if r is not None and r.as_of_time is not None:
            age.add_metric([table], max(0, status.now - r.as_of_time) / 1e6)
    counts = Tally(r.status for r in snapshots)
    for s in SNAPSHOT_STATUSES:
        counts.setdefault(s, 0)
    by_status = GaugeMetricFamily("pgtape_snapshots", "Snapshots in the catalog, by status.", labels=["status"])
    for s, n in sorted(counts.items()):
        by_status.add_metric([s], n)
    by_job = GaugeMetricFamily("pgtape_jobs", "Jobs of the service, by kind and status.", labels=["kind", "status"])
    for (kind, job_status), n in sorted(jobs.items()):
        by_job.add_metric([kind, job_status], n)
    return [m for m in out if m is not None] + [age, by_status, by_job]


def _gauge(name: str, help: str, value: float | None) -> GaugeMetricFamily | None:
    return None if value is None else GaugeMetricFamily(name, help, value=float(value))


def _seconds(us: int | None) -> float | None:
    return None if us is None else us / 1e6
