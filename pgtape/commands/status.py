"""pgtape status: where capture stands, how far behind the server, how much tape, what is recoverable."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from pgtape.capture import ddl_trigger
from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import connect, quote_literal
from pgtape.slot import gap_message
from pgtape.tape.archive import Archive
from pgtape.tape.segment import SegmentError, footer_stats, open_segment_stats, read_footer
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


@dataclass(frozen=True)
class ServerSummary:
    wal_lsn: int
    slot_confirmed_lsn: int | None  # None: the slot is gone
    capture_connected: bool
    server_time: int  # µs UTC
    exact_schema_changes: bool  # the DDL trigger is installed and enabled (capture/ddl_trigger.py)


def summarize_tape(archive: Archive, gen: int) -> TapeSummary:
    g = archive.generation(gen)
    segments = archive.segments(gen)
    end_lsn, first_time, last_time = g.start_lsn, None, None
    transactions = changes = size = 0
    for s in segments:
        try:
            size += archive.storage.size(s.key)
            if s.is_open:
                st = open_segment_stats(archive.storage, s.key, s.start_lsn)
            else:
                st = footer_stats(read_footer(archive.storage, s.key))
        except FileNotFoundError:
            continue  # sealed while we looked; the next status shows it
        transactions += st.transactions
        changes += st.changes
        end_lsn = max(end_lsn, st.end_lsn)
        first_time = first_time if first_time is not None else st.first_commit_time
        last_time = st.last_commit_time if st.last_commit_time is not None else last_time
    start = segments[0].start_lsn if segments else g.start_lsn  # later than g.start_lsn once pruned
    return TapeSummary(gen, g.slot, start, end_lsn, len(segments), size, transactions, changes,
                       first_time, last_time)


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
    if args.json:
        out = {k: (format_lsn(v) if k.endswith("lsn") else format_time(v) if k.endswith("time") and v else v)
               for k, v in asdict(tape).items()}
        out["recoverable_window"] = recoverable
        out["server"] = None if server is None else {
            "wal_lsn": format_lsn(server.wal_lsn), "slot_exists": server.slot_confirmed_lsn is not None,
            "slot_confirmed_lsn": format_lsn(server.slot_confirmed_lsn) if server.slot_confirmed_lsn else None,
            "capture_connected": server.capture_connected,
            "schema_changes": "exact" if server.exact_schema_changes else "approximate"}
        out.update(server_error=server_error, lag_bytes=lag_bytes, last_commit_age_seconds=age, gap=gap)
        out["newest_snapshot"] = {t: None if r is None else {"id": r.id, "as_of_lsn": format_lsn(r.as_of_lsn or 0),
                                                             "as_of_time": format_time(r.as_of_time)}
                                  for t, r in newest.items()}
        print(json.dumps(out, indent=2))
        return 1 if gap else 0
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
        return 0
    slot = "MISSING: capture cannot continue" if server.slot_confirmed_lsn is None else (
        f"confirmed {format_lsn(server.slot_confirmed_lsn)}, capture "
        f"{'connected' if server.capture_connected else 'NOT connected'}")
    print(f"server             WAL at {format_lsn(server.wal_lsn)}; slot {slot}")
    print(f"lag                {_size(lag_bytes or 0)} of WAL behind the server"
          + (f", newest commit on tape {age:.1f}s old" if age is not None else ""))
    if gap:
        print(f"GAP                {gap}")
    print("schema changes     " + ("recorded at their exact position (DDL trigger)" if server.exact_schema_changes else
                                   "APPROXIMATE: noticed by polling the catalog (no DDL trigger: run pgtape init once "
                                   "as a superuser); replay refuses targets around each until a new base"))
    return 1 if gap else 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
