"""pgtape status: where capture stands, how far behind the server, how much tape, what is recoverable.

Exit 1 (unhealthy) when the slot is gone, when the slot has skipped past the tape (a gap), when
capture is not keeping up ([capture] max_lag), or when the server cannot be reached to tell."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import msgspec

from pgtape.capture import ddl_trigger
from pgtape.commands.results import SnapshotRef, emit
from pgtape.config import Config
from pgtape.errors import OK, PROBLEMS_FOUND, PgtapeError
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import connect, quote_literal
from pgtape.slot import gap_message
from pgtape.tape.archive import Archive
from pgtape.storage import Storage
from pgtape.tape.segment import SegmentError, SegmentStats, segment_stats
from pgtape.timefmt import format_time
from pgtape.replay.plan import window
from pgtape.snapshots import catalog

HELP = "show capture position, lag, tape size and the recoverable window"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


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


class ServerStatus(msgspec.Struct):
    wal_lsn: str  # the server's current WAL position
    slot_exists: bool
    slot_confirmed_lsn: str | None  # null when the slot is gone
    capture_connected: bool  # the slot is in use (capture is streaming)
    schema_changes: str  # "exact" (DDL trigger) or "approximate" (polled)


class StatusReport(msgspec.Struct):
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


def summarize_tape(archive: Archive, gen: int) -> TapeSummary:
    g = archive.generation(gen)
    segments = archive.segments(gen)
    end_lsn, first_time, last_time, complete = g.start_lsn, None, None, None
    transactions = changes = size = 0
    for s in segments:
        def read(storage: Storage, key: str, start: int = s.start_lsn) -> tuple[int, SegmentStats]:
            return storage.size(key), segment_stats(storage, key, start)
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


def summarize_server(config: Config, slot: str) -> ServerSummary:
    with connect(config.dsn) as c:
        row = c.execute(
            "SELECT pg_current_wal_lsn()::text, s.confirmed_flush_lsn::text, coalesce(s.active, false), "
            "(extract(epoch from clock_timestamp()) * 1000000)::bigint FROM (SELECT 1) one LEFT JOIN "
            f"pg_replication_slots s ON s.slot_name = {quote_literal(slot)}").fetchone()
        exact = ddl_trigger.installed(c)
    assert row is not None
    return ServerSummary(parse_lsn(row[0]), parse_lsn(row[1]) if row[1] else None, row[2], row[3], exact)


def run(args: argparse.Namespace, config: Config) -> int:
    archive = Archive.existing(config.require_archive())
    try:
        tape = summarize_tape(archive, archive.identity().generation)
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
        recoverable: str | None = window(archive, tape.generation, tables)[0].describe()
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
    problems = _problems(config, tape, server, server_error, gap, lag_bytes, behind)
    if args.json:
        emit(StatusReport(
            tape.generation, tape.slot, format_lsn(tape.start_lsn), format_lsn(tape.end_lsn), tape.segments,
            tape.bytes, tape.transactions, tape.changes, _time(tape.first_commit_time), _time(tape.last_commit_time),
            recoverable, None if server is None else ServerStatus(
                format_lsn(server.wal_lsn), server.slot_confirmed_lsn is not None,
                format_lsn(server.slot_confirmed_lsn) if server.slot_confirmed_lsn else None,
                server.capture_connected, "exact" if server.exact_schema_changes else "approximate"),
            server_error, lag_bytes, age, gap,
            {t: None if r is None else SnapshotRef(r.id, format_lsn(r.as_of_lsn or 0), format_time(r.as_of_time))
             for t, r in newest.items()},
            behind, not problems, problems), indent=2)
        return PROBLEMS_FOUND if problems else OK
    print(f"archive            {archive.path} (generation {tape.generation}, slot {tape.slot})")
    print(f"tape               {tape.segments} segment(s), {_size(tape.bytes)}, "
          f"{tape.transactions} transactions, {tape.changes} changes")
    print(f"durable up to      {format_lsn(tape.end_lsn)}, last commit {format_time(tape.last_commit_time)}")
    print(f"tape covers        {format_lsn(tape.start_lsn)} .. {format_lsn(tape.end_lsn)} "
          f"(commits {format_time(tape.first_commit_time)} .. {format_time(tape.last_commit_time)})")
    print(f"recoverable        {recoverable or 'NOTHING YET: ' + window_error}".replace("recoverable window: ", ""))
    for t, r in newest.items():
        print(f"newest snapshot    {t}: " + ("none: replay is not possible without one" if r is None else
                                            f"{r.id} as of {format_lsn(r.as_of_lsn or 0)} "
                                            f"({format_time(r.as_of_time)})"))
    if server is None:
        print(f"server             unreachable: {server_error}")
        return PROBLEMS_FOUND
    slot = "MISSING: capture cannot continue" if server.slot_confirmed_lsn is None else (
        f"confirmed {format_lsn(server.slot_confirmed_lsn)}, capture "
        f"{'connected' if server.capture_connected else 'NOT connected'}")
    print(f"server             WAL at {format_lsn(server.wal_lsn)}; slot {slot}")
    print(f"lag                {_size(lag_bytes or 0)} of WAL behind the server"
          + (f", newest commit on tape {age:.1f}s old" if age is not None else ""))
    if gap:
        print(f"GAP                {gap}")
    if behind is not None and behind > config.status_max_lag:
        print(f"BEHIND             {_behind(tape, behind, config)}")
    print("schema changes     " + ("recorded at their exact position (DDL trigger)" if server.exact_schema_changes else
                                   "APPROXIMATE: noticed by polling the catalog (no DDL trigger: run pgtape init once "
                                   "as a superuser); replay refuses targets around each until a new base"))
    return PROBLEMS_FOUND if problems else OK


def _problems(config: Config, tape: TapeSummary, server: ServerSummary | None, server_error: str | None,
              gap: str | None, lag_bytes: int | None, behind: float | None) -> list[str]:
    if server is None:
        return [f"server unreachable: {server_error}"]
    problems = []
    if server.slot_confirmed_lsn is None:
        problems.append(f"replication slot {tape.slot} does not exist: capture cannot continue")
    if gap:
        problems.append(gap)
    if behind is not None and behind > config.status_max_lag:
        problems.append(_behind(tape, behind, config))
    return problems


def _behind(tape: TapeSummary, behind: float, config: Config) -> str:
    return (f"capture is not keeping up: the tape is complete up to {format_time(tape.complete_time)}, {behind:.0f}s "
            f"behind the server ([capture] max_lag = {config.status_max_lag:g}s)")


def _time(us: int | None) -> str | None:
    return format_time(us) if us else None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
