"""pgtape verify: prove the archive is whole (or one file), or that replay equals the live tables."""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec

from pgtape import keys
from pgtape.commands.results import TableComparison, emit
from pgtape.config import Config
from pgtape.errors import OK, PROBLEMS_FOUND, ProblemsFound, UsageError
from pgtape.lsn import format_lsn
from pgtape.metadata import DamagedMetadata
from pgtape.tape.archive import Archive
from pgtape.tape.segment import SegmentError
from pgtape.replay.compare import render
from pgtape.commands.replay import add_budget_options, stop_on_sigterm
from pgtape.replay.live import LiveResult, verify_live
from pgtape.replay.verify import verify_archive, verify_file, verify_snapshot

HELP = "check every tape segment and snapshot (or one FILE); --live compares a replay with the live tables"


class VerifyReport(msgspec.Struct):
    ok: bool  # no problems
    problems: list[str]  # one line each, naming the file
    segments: int  # tape segments checked
    snapshots: int
    transactions: int
    changes: int
    bytes: int  # read


class LiveVerifyReport(msgspec.Struct):  # --live
    ok: bool  # every table of the replay equals the live table
    as_of_lsn: str  # the exact live position compared at
    base: str  # id of the base replayed from
    transactions: int  # replayed after it
    tables: list[TableComparison]  # expected: live, actual: the replay


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", metavar="FILE", help="check only this segment (.tape) or snapshot (.snap) file")
    p.add_argument("--live", action="store_true", help="replay to an exact live position and compare with it")
    p.add_argument("--snapshot", metavar="ID", help="check only this snapshot: its catalog record and files")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="with --live: how long to wait for capture to make the position durable (default 60)")
    add_budget_options(p)  # with --live
    p.add_argument("--json", action="store_true", help="machine-readable result")


def run(args: argparse.Namespace, config: Config) -> int:
    """Damage verify meets before it can list it (ARCHIVE.json, a segment's header) is what it looks
    for, so it is a finding (exit 1), in one line, as elsewhere."""
    try:
        return _run(args, config)
    except DamagedMetadata as e:
        raise ProblemsFound(str(e)) from None
    except SegmentError as e:
        raise ProblemsFound(f"damaged archive file: {e}") from None


def _run(args: argparse.Namespace, config: Config) -> int:
    if args.snapshot and (args.file or args.live):
        raise UsageError("--snapshot ID checks one snapshot: give no FILE and no --live")
    if args.live:
        if args.file:
            raise UsageError("--live compares the archive with the live tables: give no FILE")
        stop_on_sigterm()
        return _live(verify_live(config, Archive.reading(config), args.timeout), args.json)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"{path} is not a file")
        report = verify_file(path, keys.configured(config))
    elif args.snapshot:
        report = verify_snapshot(Archive.reading(config), args.snapshot)
    else:
        report = verify_archive(Archive.reading(config))
    if args.json:
        emit(VerifyReport(report.ok, report.problems, report.segments, report.snapshots, report.transactions,
                          report.changes, report.bytes), indent=2)
    else:
        for p in report.problems:
            print(f"problem: {p}")
        what = (args.file or (f"snapshot {args.snapshot}" if args.snapshot else
                              f"{report.segments} segment(s), {report.snapshots} snapshot(s)"))
        print(f"{'ok' if report.ok else 'FAILED'}: {what}, {report.transactions} transactions, "
              f"{report.changes} changes, {report.bytes} bytes read"
              + ("" if report.ok else f"; {len(report.problems)} problem(s)"))
    return OK if report.ok else PROBLEMS_FOUND


def _live(result: LiveResult, as_json: bool) -> int:
    if as_json:
        emit(LiveVerifyReport(result.ok, format_lsn(result.as_of_lsn), result.base, result.transactions,
                              [TableComparison.of(r) for r in result.tables]), indent=2)
    else:
        print(f"live position {format_lsn(result.as_of_lsn)}; replayed base {result.base} + "
              f"{result.transactions} transactions")
        print("\n".join(render(result.tables, "live", "replay")))
        print("ok: the replay equals the live tables" if result.ok else
              "FAILED: the replay differs from the live tables")
    return OK if result.ok else PROBLEMS_FOUND
