"""The service's periodic look at itself: one thread that every REFRESH seconds collects the status
(pgtape/service/status.py), updates the metrics, raises notifications on what changed, and keeps
the SQL monitoring catalog current. Requests read what it last collected, so a scrape of /metrics
or a call to /healthz never reads the tape; what they answer is at most REFRESH seconds old.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from pgtape import notify
from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.service import sql_monitor
from pgtape.service.jobs import JobManager, JobRecord
from pgtape.service.metrics import Metrics
from pgtape.service.status import OpenSegments, Status, StatusReport, collect
from pgtape.snapshots import catalog
from pgtape.tape.archive import Archive

logger = logging.getLogger(__name__)

REFRESH = 5.0  # seconds between looks (status, metrics, health, notifications)
SQL_SYNC_EVERY = 60.0  # seconds between syncs of the SQL catalog (and after every backup job)
SQL_RETRY_MISSING = 600.0  # seconds before trying again when `pgtape sql install` has not run


class Monitor:
    def __init__(self, config: Config, archive: Archive, jobs: JobManager, notifier: notify.Notifier,
                 capture_error: Callable[[], str | None], changes_written: Callable[[], int]) -> None:
        self.config, self.archive, self.jobs, self.notifier = config, archive, jobs, notifier
        self.capture_error = capture_error  # why the in-process capture is down (None: it is not)
        self.changes_written = changes_written  # by the in-process capture, since the service started
        self.metrics = Metrics()
        self.watch = notify.Watch(notifier, config.notify_disconnected_after, config.status_max_lag)
        self.open_segments = OpenSegments()  # each look decodes only what the open segment gained
        self.status: Status | None = None
        self.status_error: str | None = None  # why the last look failed
        self._changes_seen = 0
        self._failed_seen: set[str] | None = None  # failed snapshots already known (None: not looked yet)
        self._next_sync = 0.0
        self._sync_now = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)

    def start(self) -> None:
        self.refresh()  # the first answers are real ones
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def health(self) -> str | None:
        """Why the service is not healthy (None: it is): capture down, not connected, or behind."""
        error = self.capture_error()
        if error:
            return f"capture stopped: {error} (retrying)"
        if self.status is None:
            return self.status_error or "no status yet"
        s = self.status
        if s.problems:
            return "; ".join(s.problems)
        if s.server is None or not s.server.capture_connected:
            return "capture is not connected"
        return None

    def status_document(self) -> StatusReport | None:
        return None if self.status is None else self.status.report()

    def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render()

    def after_job(self, job: JobRecord) -> None:
        """A job ended (JobManager calls this from the job's thread)."""
        if job.kind == "backup":
            self._sync_now.set()
        if job.kind == "verification":
            problems = _problems(job)
            if job.status == "completed" and not problems:
                return
            self.notifier.emit(notify.verify_failed(problems or [job.error or f"verification {job.status}"]))
        elif job.kind == "recovery":
            rtype = str(job.request.get("recovery_type", "recovery"))
            if job.status == "completed":
                tables = job.request.get("tables") or []
                self.notifier.emit(notify.recovery_completed(job.id, rtype, job.request.get("target_time")
                                                             or job.request.get("backup_id"), tables))
            else:
                self.notifier.emit(notify.recovery_failed(job.id, rtype, job.error or f"the job is {job.status}"))

    # -- the loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(REFRESH):
            self.refresh()

    def refresh(self) -> None:
        try:
            self._look()
        except Exception as e:  # a bad look must not end the service's looking
            self.status_error = f"{type(e).__name__}: {e}" if not isinstance(e, PgtapeError) else str(e)
            logger.warning(f"status: {self.status_error}")

    def _look(self) -> None:
        written = self.changes_written()
        if written > self._changes_seen:
            self.metrics.changes_captured.inc(written - self._changes_seen)
        self._changes_seen = written
        status = collect(self.config, self.archive, self.open_segments)
        snapshots = catalog.load_all(self.archive)
        jobs = Counter((j.kind, j.status) for j in self.jobs.all())
        self.metrics.observe(status, snapshots, dict(jobs))
        self.status, self.status_error = status, None
        connected = self.capture_error() is None and status.server is not None and status.server.capture_connected
        self.watch.observe(connected, status.lag_seconds, time.monotonic(),
                           self.capture_error() or status.server_error)
        failed = {r.id: r for r in snapshots if r.status == catalog.FAILED}
        if self._failed_seen is not None:  # (failures from before the service started are old news)
            for sid in failed.keys() - self._failed_seen:
                r = failed[sid]
                self.notifier.emit(notify.snapshot_failed(r.id, r.tables, r.error or "failed"))
        self._failed_seen = set(failed)
        if self._sync_now.is_set() or time.monotonic() >= self._next_sync:
            self._sync_now.clear()
            self._sync_sql()

    def _sync_sql(self) -> None:
        try:
            sql_monitor.sync(self.config, self.archive)
            self._next_sync = time.monotonic() + SQL_SYNC_EVERY
        except PgtapeError as e:  # not installed (or the database refuses): say so, seldom
            self._next_sync = time.monotonic() + SQL_RETRY_MISSING
            logger.info(f"SQL monitoring not kept current: {e}")


def _problems(job: JobRecord) -> list[str]:
    """The problems a verification job's --json document lists (verify and verify --live)."""
    doc = job.result if isinstance(job.result, dict) else {}
    problems = [str(p) for p in doc.get("problems") or []]
    for t in doc.get("tables") or []:
        if isinstance(t, dict) and t.get("ok") is False:
            problems.append(f"{t.get('table')}: differs from the live table")
    return problems
