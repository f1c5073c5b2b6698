"""Where capture stands, how far behind the server, how much tape, what is recoverable: computed once
by collect() for `pgtape status` (text and --json), the API's GET /v1/status and the metrics.

Unhealthy (problems) when the slot is gone, when the slot has skipped past the tape (a gap), when
capture is not keeping up ([capture] max_lag), or when the server cannot be reached to tell."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import msgspec

from pgtape.capture import ddl_trigger
from pgtape import metadata
from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import connect, quote_literal
from pgtape.slot import gap_message
from pgtape.offsite.upload import read_state
from pgtape.tape.archive import Archive
from pgtape.tape.latency import CommitToDurable
from pgtape.storage import Storage
from pgtape.tape.segment import (DURABLE_FILE, OPEN_SUFFIX, OpenProgress, SegmentError, SegmentStats,
                                  open_segment_progress, segment_stats)
from pgtape.tape.window import Window
from pgtape.timefmt import format_time, now_us
from pgtape.replay.plan import window
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord


@dataclass(frozen=True)
class TapeSummary:
    generation: int
    slot: str
    start_lsn: int
    end_lsn: int  # the tape is complete up to here
    segments: int
    bytes: int
    transactions: int
    changes: int
    first_commit_time: int | None
    last_commit_time: int | None
    complete_time: int | None  # the tape is complete up to this server time (last commit or Position)


@dataclass(frozen=True)
class ServerSummary:
    wal_lsn: int
    slot_confirmed_lsn: int | None  # None: the slot is gone
    capture_connected: bool
    server_time: int  # µs UTC
    exact_schema_changes: bool  # the DDL trigger is installed and enabled (capture/ddl_trigger.py)


class SnapshotRef(msgspec.Struct):
    """The shape of commands.results.SnapshotRef, which this layer cannot import."""
    id: str
    as_of_lsn: str
    as_of_time: str  # '-' when unknown


class ServerStatus(msgspec.Struct):
    wal_lsn: str  # the server's current WAL position
    slot_exists: bool
    slot_confirmed_lsn: str | None  # null when the slot is gone
    capture_connected: bool  # the slot is in use (capture is streaming)
    schema_changes: str  # "exact" (DDL trigger) or "approximate" (polled)


class CommitToDurableReport(msgspec.Struct):
    """Commit-to-durable latency of the transactions capture made durable in its latest window
    (pgtape/tape/latency.py, docs/CLI_JSON.md)."""
    p50_ms: float
    p99_ms: float
    max_ms: float
    transactions: int
    fsyncs: int
    first_durable: str  # the window: its first and last fsync (capture's clock)
    last_durable: str


class OffsiteStatus(msgspec.Struct):
    """The offsite copy as the uploader last recorded it (OFFSITE.json; docs/CLI_JSON.md)."""
    url: str
    generation: int  # the generation whose tape is offsite up to offsite_lsn
    offsite_lsn: str  # the tape is offsite (complete, in the bucket) up to here
    lag_bytes: int | None  # local tape end minus offsite_lsn (WAL bytes); null: another generation is offsite
    lag_seconds: float | None  # local tape's completeness time minus the offsite tape's (server clock); 0: caught up
    objects: int  # objects the bucket holds, confirmed
    last_upload_time: str | None  # the open segment's last upload (this machine's clock)
    caught_up_time: str | None  # the last pass that left nothing pending
    last_error: str | None  # the last failure, while uploads fail (null once a pass succeeds)
    last_error_time: str | None


class StatusReport(msgspec.Struct):
    """`pgtape status --json` and GET /v1/status (docs/CLI_JSON.md)."""
    generation: int
    slot: str
    start_lsn: str  # the tape's first position (later than the generation's start once pruned)
    end_lsn: str  # the tape is complete up to here
    segments: int
    bytes: int  # of the tape's segment files
    transactions: int
    changes: int
    first_commit_time: str | None
    last_commit_time: str | None
    recoverable_window: str | None  # described in words; null when nothing is recoverable yet
    server: ServerStatus | None  # null when the server is unreachable
    server_error: str | None  # why it is unreachable
    lag_bytes: int | None  # WAL the server has beyond the tape
    last_commit_age_seconds: float | None  # server time minus the newest commit on the tape
    gap: str | None  # the slot confirmed past the tape's end: what lies between is lost
    newest_snapshot: dict[str, SnapshotRef | None]  # table -> its newest completed snapshot
    lag_seconds: float | None  # how long ago the tape was complete up to, while the server has more WAL (else 0)
    healthy: bool  # no problems
    problems: list[str]  # why not, one line each
    commit_to_durable: CommitToDurableReport | None = None  # null until capture has published one
    offsite: OffsiteStatus | None = None  # null: no offsite copy configured / made yet (or read from the bucket)


@dataclass(frozen=True)
class Status:
    """Everything status knows, raw (µs, LSNs as ints); report() is the JSON document."""
    archive_path: Path
    tape: TapeSummary
    server: ServerSummary | None  # None: unreachable
    server_error: str | None
    window: Window | None  # None: nothing recoverable yet, for window_error
    window_error: str
    newest: dict[str, SnapshotRecord | None]  # canonical table name -> its newest completed snapshot
    lag_bytes: int | None
    last_commit_age: float | None  # seconds
    gap: str | None
    lag_seconds: float | None
    max_lag: float  # [capture] max_lag, seconds
    problems: list[str]
    collected_at: int  # µs UTC, this machine's clock
    commit_to_durable: CommitToDurable | None = None  # capture's latest window (DURABLE.json)
    offsite: OffsiteStatus | None = None

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def now(self) -> int:
        """µs UTC: the server's clock (which commit times and as-of times come from) when reachable."""
        return self.server.server_time if self.server else self.collected_at

    @property
    def recoverable(self) -> str | None:
        return self.window.describe() if self.window else None

    def behind_message(self) -> str:
        assert self.lag_seconds is not None
        return (f"capture is not keeping up: the tape is complete up to {format_time(self.tape.complete_time)}, "
                f"{self.lag_seconds:.0f}s behind the server ([capture] max_lag = {self.max_lag:g}s)")

    def report(self) -> StatusReport:
        tape, server = self.tape, self.server
        return StatusReport(
            tape.generation, tape.slot, format_lsn(tape.start_lsn), format_lsn(tape.end_lsn), tape.segments,
            tape.bytes, tape.transactions, tape.changes, _time(tape.first_commit_time), _time(tape.last_commit_time),
            self.recoverable, None if server is None else ServerStatus(
                format_lsn(server.wal_lsn), server.slot_confirmed_lsn is not None,
                format_lsn(server.slot_confirmed_lsn) if server.slot_confirmed_lsn else None,
                server.capture_connected, "exact" if server.exact_schema_changes else "approximate"),
            self.server_error, self.lag_bytes, self.last_commit_age, self.gap,
            {t: None if r is None else SnapshotRef(r.id, format_lsn(r.as_of_lsn or 0), format_time(r.as_of_time))
             for t, r in self.newest.items()},
            self.lag_seconds, self.healthy, self.problems, _latency_report(self.commit_to_durable),
            self.offsite)


def collect(config: Config, archive: Archive, open_segments: OpenSegments | None = None) -> Status:
    """Reads the tape and the catalog, asks the server; an unreachable server is part of the answer.
    `open_segments`: what earlier calls read of the open segment (they are many: pgtape serve)."""
    collected_at = now_us()
    try:
        tape = summarize_tape(archive, archive.identity().generation, open_segments)
    except SegmentError as e:
        raise PgtapeError(f"cannot read the tape: {e}") from None
    server: ServerSummary | None = None
    server_error = None
    try:
        server = summarize_server(config, tape.slot)
    except PgtapeError as e:
        server_error = str(e)
    tables = archive.generation(tape.generation).tables
    newest = {t: catalog.newest_completed(archive, tape.generation, t) for t in tables}
    window_error = ""
    try:
        recoverable: Window | None = window(archive, tape.generation, tables)[0]
    except PgtapeError as e:
        recoverable, window_error = None, str(e)
    lag_bytes = max(0, server.wal_lsn - tape.end_lsn) if server else None
    # The gap rule: a slot confirmed past the tape's end lost what lies between (capture refuses to go on).
    gap = (gap_message(tape.slot, server.slot_confirmed_lsn, tape.end_lsn)
           if server and server.slot_confirmed_lsn is not None and server.slot_confirmed_lsn > tape.end_lsn else None)
    age = (max(0, server.server_time - tape.last_commit_time) / 1e6
           if server and tape.last_commit_time is not None else None)
    # Behind: the server has WAL the tape lacks, and the tape is complete only up to a time this long ago.
    # (Idle, capture records a Position every 10 s; an idle server with no new WAL is never behind.)
    behind = (max(0, server.server_time - (tape.complete_time or 0)) / 1e6 if lag_bytes else 0.0) if server else None
    status = Status(archive.path, tape, server, server_error, recoverable, window_error, newest, lag_bytes, age, gap,
                    behind, config.status_max_lag, [], collected_at, commit_to_durable(archive, tape.generation),
                    None if archive.remote else offsite(archive, tape))
    return replace(status, problems=_problems(status))


def offsite(archive: Archive, tape: TapeSummary) -> OffsiteStatus | None:
    """How far the offsite copy is (OFFSITE.json), against the local tape."""
    st = read_state(archive)
    if st is None:
        return None
    same = st.generation == tape.generation
    lag_bytes = max(0, tape.end_lsn - st.tape_lsn) if same else None
    behind = max(0, (tape.complete_time or 0) - (st.tape_time or 0)) / 1e6
    lag_seconds = 0.0 if lag_bytes == 0 else behind if same and tape.complete_time else None
    return OffsiteStatus(st.url, st.generation, format_lsn(st.tape_lsn), lag_bytes, lag_seconds, len(st.objects),
                         _time(st.open_uploaded_at), _time(st.caught_up_at), st.last_error, _time(st.last_error_at))


class OpenSegments:
    """What earlier looks read of open segments, so the next look decodes only what was added
    (pgtape serve looks every few seconds; reading a 64 MiB open segment whole each time would
    take a core)."""

    def __init__(self) -> None:
        self.read: dict[str, OpenProgress] = {}

    def stats(self, storage: Storage, key: str, start_lsn: int) -> SegmentStats:
        if not key.endswith(OPEN_SUFFIX):
            return segment_stats(storage, key, start_lsn)
        progress = open_segment_progress(storage, key, start_lsn, self.read.get(key))
        self.read = {key: progress}  # (one open segment per generation; a sealed one is read by its footer)
        return progress.stats


def summarize_tape(archive: Archive, gen: int, open_segments: OpenSegments | None = None) -> TapeSummary:
    g = archive.generation(gen)
    segments = archive.segments(gen)
    end_lsn, first_time, last_time, complete = g.start_lsn, None, None, None
    transactions = changes = size = 0
    stats = open_segments.stats if open_segments is not None else segment_stats
    for s in segments:
        def read(storage: Storage, key: str, start: int = s.start_lsn) -> tuple[int, SegmentStats]:
            return storage.size(key), stats(storage, key, start)
        n, st = archive.read_segment(s, read)  # (an open segment sealed meanwhile: the sealed one)
        size += n
        transactions += st.transactions
        changes += st.changes
        end_lsn = max(end_lsn, st.end_lsn)
        first_time = first_time if first_time is not None else st.first_commit_time
        last_time = st.last_commit_time if st.last_commit_time is not None else last_time
        complete = max(complete or 0, st.complete_time or 0) or None
    start = segments[0].start_lsn if segments else g.start_lsn  # later than g.start_lsn once pruned
    return TapeSummary(gen, g.slot, start, end_lsn, len(segments), size, transactions, changes,
                       first_time, last_time, complete or g.created_at)


def commit_to_durable(archive: Archive, gen: int) -> CommitToDurable | None:
    """Capture's latest commit-to-durable window, from DURABLE.json; None before capture has written one
    (or when the file is damaged: verify names that)."""
    try:
        doc = metadata.read(archive.storage, f"{archive.generation_key(gen)}/{DURABLE_FILE}", _Durable)
    except (FileNotFoundError, PgtapeError):
        return None
    return doc.commit_to_durable


class _Durable(msgspec.Struct):
    commit_to_durable: CommitToDurable | None = None


def _latency_report(c: CommitToDurable | None) -> CommitToDurableReport | None:
    if c is None:
        return None
    return CommitToDurableReport(c.p50_ms, c.p99_ms, c.max_ms, c.transactions, c.fsyncs,
                                 format_time(c.first_durable), format_time(c.last_durable))


def summarize_server(config: Config, slot: str) -> ServerSummary:
    with connect(config.dsn) as c:
        row = c.execute(
            "SELECT pg_current_wal_lsn()::text, s.confirmed_flush_lsn::text, coalesce(s.active, false), "
            "(extract(epoch from clock_timestamp()) * 1000000)::bigint FROM (SELECT 1) one LEFT JOIN "
            f"pg_replication_slots s ON s.slot_name = {quote_literal(slot)}").fetchone()
        exact = ddl_trigger.installed(c)
    assert row is not None
    return ServerSummary(parse_lsn(row[0]), parse_lsn(row[1]) if row[1] else None, row[2], row[3], exact)


def _problems(s: Status) -> list[str]:
    if s.server is None:
        return [f"server unreachable: {s.server_error}"]
    problems = []
    if s.server.slot_confirmed_lsn is None:
        problems.append(f"replication slot {s.tape.slot} does not exist: capture cannot continue")
    if s.gap:
        problems.append(s.gap)
    if s.lag_seconds is not None and s.lag_seconds > s.max_lag:
        problems.append(s.behind_message())
    return problems


def _time(us: int | None) -> str | None:
    return format_time(us) if us else None
