"""pgtape verify: prove the archive is whole (or one file), or that replay equals the live tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pgtape.config import Config
from pgtape.errors import PgtapeError, UsageError
from pgtape.tape.archive import Archive
from pgtape.replay.live import verify_live
from pgtape.replay.verify import verify_archive, verify_file

HELP = "check every tape segment and snapshot (or one FILE); --live compares a replay with the live tables"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", metavar="FILE", help="check only this segment (.tape) or snapshot (.snap) file")
    p.add_argument("--live", action="store_true", help="replay to an exact live position and compare with it")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="with --live: how long to wait for capture to make the position durable (default 60)")
    p.add_argument("--json", action="store_true", help="machine-readable result")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.live:
        if args.file:
            raise UsageError("--live compares the archive with the live tables: give no FILE")
        return verify_live(config, Archive.existing(config.require_archive()), args.timeout, args.json)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise PgtapeError(f"{path} is not a file")
        report = verify_file(path)
    else:
        report = verify_archive(Archive.existing(config.require_archive()))
    if args.json:
        print(json.dumps({"ok": report.ok, "problems": report.problems, "segments": report.segments,
                          "snapshots": report.snapshots, "transactions": report.transactions,
                          "changes": report.changes, "bytes": report.bytes}, indent=2))
    else:
        for p in report.problems:
            print(f"problem: {p}")
        what = f"{report.segments} segment(s), {report.snapshots} snapshot(s)" if not args.file else args.file
        print(f"{'ok' if report.ok else 'FAILED'}: {what}, {report.transactions} transactions, "
              f"{report.changes} changes, {report.bytes} bytes read"
              + ("" if report.ok else f"; {len(report.problems)} problem(s)"))
    return 0 if report.ok else 1
