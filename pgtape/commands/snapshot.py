"""pgtape snapshot: an exact copy of the captured tables (or some of them) as of one LSN, now."""

from __future__ import annotations

import argparse

import msgspec

from pgtape import keys
from pgtape.commands.prune import report, summary
from pgtape.commands.results import PruneSummary, emit
from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive
from pgtape.timefmt import format_time
from pgtape.snapshots.prune import prune
from pgtape.snapshots.take import take_snapshot

HELP = "take a snapshot of the captured tables now (capture keeps running)"


class SnapshotSummary(msgspec.Struct, omit_defaults=True):
    id: str
    as_of_lsn: str
    as_of_time: str
    rows: dict[str, int]  # per table
    bytes: int  # of the snapshot's files
    prune: PruneSummary | None = None  # only with --prune


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("manual", "scheduled", "rebase"), default="manual", help=argparse.SUPPRESS)
    p.add_argument("--prune", action="store_true",
                   help="then apply the retention: what pgtape prune does (scheduled snapshots always do)")
    p.add_argument("--id", metavar="ID", help="the new snapshot's id, named in advance (default: from the time; "
                   "pgtape serve names a backup before it starts)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def run(args: argparse.Namespace, config: Config) -> int:
    archive = Archive.existing(config.require_archive(), keys.configured(config))
    # --tables picks a subset of the captured tables (default: all of them).
    captured = archive.generation(archive.identity().generation).tables
    rec = take_snapshot(config, archive, config.selected_tables(captured), args.kind, args.id)
    if not args.json:
        print(f"snapshot {rec.id} completed: as of {format_lsn(rec.as_of_lsn or 0)} "
              f"({format_time(rec.as_of_time)}), {sum(rec.rows.values())} rows, {rec.bytes} bytes", flush=True)
    pruned: PruneSummary | None = None
    if args.prune:  # after the new base is complete, so it counts as the newest one prune keeps
        try:
            plan = prune(archive, dry_run=False)
        except PgtapeError as e:
            raise PgtapeError(f"snapshot {rec.id} completed, but applying the retention failed: {e}") from None
        pruned = summary(archive, plan, dry_run=False)
        if not args.json:
            report(archive, plan, dry_run=False, as_json=False)
    if args.json:
        emit(SnapshotSummary(rec.id, format_lsn(rec.as_of_lsn or 0), format_time(rec.as_of_time), rec.rows, rec.bytes,
                             pruned))
    return 0
