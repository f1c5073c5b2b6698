"""pgtape status: where capture stands, how far behind the server, how much tape, what is recoverable."""

from __future__ import annotations

import argparse
import json
import time

from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import connect, quote_literal
from pgtape.tape.archive import Archive
from pgtape.tape.segment import SegmentError, SegmentStats, open_segment_stats, read_footer
from pgtape.timefmt import format_time

HELP = "show capture position, lag, tape size and the recoverable window"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def open_archive(config: Config) -> tuple[Archive, int]:
    archive = Archive(config.require_archive())
    if not archive.path.is_dir():
        raise PgtapeError(f"archive {archive.path} does not exist: check --archive / PGTAPE_ARCHIVE")
    return archive, archive.identity().generation


def tape_summary(archive: Archive, gen: int) -> dict[str, object]:
    g = archive.generation(gen)
    segments = archive.segments(gen)
    total = SegmentStats(end_lsn=g.start_lsn)
    size = 0
    for s in segments:
        try:
            size += s.path.stat().st_size
            if s.end_lsn is not None:
                f = read_footer(s.path)
                st = SegmentStats(f.end_lsn, f.transactions, f.changes, f.first_commit_lsn, f.last_commit_lsn,
                                  f.first_commit_time, f.last_commit_time)
            else:
                st = open_segment_stats(s.path, s.start_lsn)
        except FileNotFoundError:
            continue  # sealed while we looked; the next status shows it
        total = SegmentStats(
            end_lsn=max(total.end_lsn, st.end_lsn), transactions=total.transactions + st.transactions,
            changes=total.changes + st.changes,
            first_commit_lsn=total.first_commit_lsn if total.first_commit_lsn is not None else st.first_commit_lsn,
            first_commit_time=total.first_commit_time if total.first_commit_time is not None else st.first_commit_time,
            last_commit_lsn=st.last_commit_lsn if st.last_commit_lsn is not None else total.last_commit_lsn,
            last_commit_time=st.last_commit_time if st.last_commit_time is not None else total.last_commit_time)
    return {
        "generation": gen, "slot": g.slot, "start_lsn": g.start_lsn, "tape_end_lsn": total.end_lsn,
        "segments": len(segments), "tape_bytes": size, "transactions": total.transactions,
        "changes": total.changes, "first_commit_time": total.first_commit_time,
        "last_commit_time": total.last_commit_time,
    }


def server_summary(config: Config, slot: str) -> dict[str, object]:
    try:
        with connect(config.dsn) as c:
            row = c.execute(
                "SELECT pg_current_wal_lsn()::text, (SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                f"WHERE slot_name = {quote_literal(slot)}), (SELECT active FROM pg_replication_slots WHERE slot_name = "
                f"{quote_literal(slot)}), (extract(epoch from clock_timestamp()) * 1000000)::bigint").fetchone()
    except PgtapeError as e:
        return {"reachable": False, "error": str(e)}
    assert row is not None
    return {"reachable": True, "wal_lsn": parse_lsn(row[0]), "slot_exists": row[1] is not None,
            "slot_confirmed_lsn": parse_lsn(row[1]) if row[1] else None, "capture_connected": bool(row[2]),
            "server_time": row[3]}


def run(args: argparse.Namespace, config: Config) -> int:
    archive, gen = open_archive(config)
    try:
        tape = tape_summary(archive, gen)
    except SegmentError as e:
        raise PgtapeError(f"cannot read the tape: {e} (run pgtape verify)") from None
    server = server_summary(config, str(tape["slot"]))
    lag_bytes = lag_seconds = None
    if server.get("reachable"):
        lag_bytes = max(0, int(server["wal_lsn"]) - int(tape["tape_end_lsn"]))  # type: ignore[call-overload]
        if tape["last_commit_time"] is not None:
            lag_seconds = max(0.0, (int(server["server_time"]) - int(tape["last_commit_time"])) / 1e6)  # type: ignore[call-overload]
    if args.json:
        out = {**{k: (format_lsn(v) if k.endswith("_lsn") and isinstance(v, int) else v) for k, v in tape.items()},
               "first_commit_time": format_time(tape["first_commit_time"]) if tape["first_commit_time"] else None,  # type: ignore[arg-type]
               "last_commit_time": format_time(tape["last_commit_time"]) if tape["last_commit_time"] else None,  # type: ignore[arg-type]
               "recoverable_window": {"from_lsn": format_lsn(int(tape["start_lsn"])),  # type: ignore[call-overload]
                                      "to_lsn": format_lsn(int(tape["tape_end_lsn"]))},  # type: ignore[call-overload]
               "server": {k: (format_lsn(v) if k.endswith("_lsn") and isinstance(v, int) else v)
                          for k, v in server.items() if k != "server_time"},
               "lag_bytes": lag_bytes, "last_commit_age_seconds": lag_seconds}
        print(json.dumps(out, indent=2))
        return 0
    print(f"archive            {archive.path} (generation {gen}, slot {tape['slot']})")
    print(f"tape               {tape['segments']} segment(s), {_size(int(tape['tape_bytes']))}, "  # type: ignore[call-overload]
          f"{tape['transactions']} transactions, {tape['changes']} changes")
    print(f"durable up to      {format_lsn(int(tape['tape_end_lsn']))}, last commit "  # type: ignore[call-overload]
          f"{format_time(tape['last_commit_time'])}")  # type: ignore[arg-type]
    print(f"recoverable window {format_lsn(int(tape['start_lsn']))} .. {format_lsn(int(tape['tape_end_lsn']))} "  # type: ignore[call-overload]
          f"(commits {format_time(tape['first_commit_time'])} .. {format_time(tape['last_commit_time'])})")  # type: ignore[arg-type]
    if server.get("reachable"):
        slot = "missing!" if not server["slot_exists"] else (
            f"confirmed {format_lsn(int(server['slot_confirmed_lsn']))}, capture "  # type: ignore[call-overload]
            f"{'connected' if server['capture_connected'] else 'NOT connected'}")
        print(f"server             WAL at {format_lsn(int(server['wal_lsn']))}; slot {slot}")  # type: ignore[call-overload]
        age = f", newest commit on tape {lag_seconds:.1f}s old" if lag_seconds is not None else ""
        print(f"lag                {_size(lag_bytes or 0)} of WAL behind the server{age}")
    else:
        print(f"server             unreachable: {server['error']}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
