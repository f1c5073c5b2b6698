"""pgtape status: where capture stands, how far behind the server, how much tape, what is recoverable.

Exit 1 (unhealthy) when the slot is gone, when the slot has skipped past the tape (a gap), when
capture is not keeping up ([capture] max_lag), or when the server cannot be reached to tell. The
computation is pgtape/service/status.py, shared with pgtape serve; this prints it."""

from __future__ import annotations

import argparse

from pgtape.commands.results import emit
from pgtape.config import Config
from pgtape.errors import OK, PROBLEMS_FOUND
from pgtape.lsn import format_lsn
from pgtape.service.status import collect
from pgtape.tape.archive import Archive
from pgtape.timefmt import format_time

HELP = "show capture position, lag, tape size and the recoverable window"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, config: Config) -> int:
    archive = Archive.reading(config)
    status = collect(config, archive)
    code = OK if status.healthy else PROBLEMS_FOUND
    if args.json:
        emit(status.report(), indent=2)
        return code
    tape, server = status.tape, status.server
    print(f"archive            {archive.location} (generation {tape.generation}, slot {tape.slot})")
    print(f"tape               {tape.segments} segment(s), {_size(tape.bytes)}, "
          f"{tape.transactions} transactions, {tape.changes} changes")
    print(f"durable up to      {format_lsn(tape.end_lsn)}, last commit {format_time(tape.last_commit_time)}")
    print(f"tape covers        {format_lsn(tape.start_lsn)} .. {format_lsn(tape.end_lsn)} "
          f"(commits {format_time(tape.first_commit_time)} .. {format_time(tape.last_commit_time)})")
    lat = status.commit_to_durable
    if lat is not None:
        print(f"commit->durable    p50 {lat.p50_ms:g} ms, p99 {lat.p99_ms:g} ms over {lat.transactions} transactions "
              f"({lat.fsyncs} fsyncs) made durable {format_time(lat.first_durable)} .. {format_time(lat.last_durable)}")
    print(f"recoverable        {status.recoverable or 'NOTHING YET: ' + status.window_error}"
          .replace("recoverable window: ", ""))
    for t, r in status.newest.items():
        print(f"newest snapshot    {t}: " + ("none: replay is not possible without one" if r is None else
                                            f"{r.id} as of {format_lsn(r.as_of_lsn or 0)} "
                                            f"({format_time(r.as_of_time)})"))
    if (o := status.offsite) is not None:
        lag = "caught up" if o.lag_bytes == 0 else (
            f"{_size(o.lag_bytes)} behind" if o.lag_bytes is not None else "another generation")
        if o.lag_seconds:
            lag += f", {o.lag_seconds:.1f}s"
        print(f"offsite            {o.url}: tape up to {o.offsite_lsn} ({lag})"
              + (f"; FAILING since {o.last_error_time}: {o.last_error}" if o.last_error else ""))
    if server is None:
        print(f"server             unreachable: {status.server_error}")
        return PROBLEMS_FOUND
    slot = "MISSING: capture cannot continue" if server.slot_confirmed_lsn is None else (
        f"confirmed {format_lsn(server.slot_confirmed_lsn)}, capture "
        f"{'connected' if server.capture_connected else 'NOT connected'}")
    print(f"server             WAL at {format_lsn(server.wal_lsn)}; slot {slot}")
    age = status.last_commit_age
    print(f"lag                {_size(status.lag_bytes or 0)} of WAL behind the server"
          + (f", newest commit on tape {age:.1f}s old" if age is not None else ""))
    if status.gap:
        print(f"GAP                {status.gap}")
    if status.lag_seconds is not None and status.lag_seconds > status.max_lag:
        print(f"BEHIND             {status.behind_message()}")
    print("schema changes     " + ("recorded at their exact position (DDL trigger)" if server.exact_schema_changes else
                                   "APPROXIMATE: noticed by polling the catalog (no DDL trigger: run pgtape init once "
                                   "as a superuser); replay refuses targets around each until a new base"))
    return code


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
