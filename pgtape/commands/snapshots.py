"""pgtape snapshots: the snapshot catalog (running, completed, failed), from the archive alone."""

from __future__ import annotations

import argparse

import msgspec

from pgtape.commands.results import emit, lsn_or_none, time_or_none
from pgtape.config import Config
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive
from pgtape.timefmt import format_time
from pgtape.snapshots import catalog

HELP = "list snapshots: id, tables, rows, size, as-of position, status"


class SnapshotEntry(msgspec.Struct):
    """One catalog record (snapshots/catalog.py), its positions and times as text."""
    id: str
    generation: int
    kind: str  # initial, scheduled, manual, rebase
    tables: list[str]
    status: str  # running, completed, failed
    created_at: str
    expires_at: str | None
    pid: int  # of the process that took it
    host: str
    as_of_lsn: str | None
    as_of_time: str | None
    rows: dict[str, int]
    bytes: int
    completed_at: str | None
    error: str | None  # why it failed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable list")


def run(args: argparse.Namespace, config: Config) -> int:

    records = catalog.load_all(Archive.reading(config))
    if args.json:
        emit([SnapshotEntry(r.id, r.generation, r.kind, r.tables, r.status, format_time(r.created_at),
                            time_or_none(r.expires_at), r.pid, r.host, lsn_or_none(r.as_of_lsn),
                            time_or_none(r.as_of_time), r.rows, r.bytes, time_or_none(r.completed_at), r.error)
              for r in records], indent=2)
        return 0
    if not records:
        print("no snapshots")
        return 0
    print(f"{'id':<34} {'gen':>3} {'kind':<9} {'status':<9} {'as of LSN':>12}  {'as of time':<27} {'rows':>10} "
          f"{'bytes':>11}  tables / error")
    for r in records:
        lsn = format_lsn(r.as_of_lsn) if r.as_of_lsn is not None else "-"
        tail = r.error if r.status == catalog.FAILED else ",".join(r.tables)
        print(f"{r.id:<34} {r.generation:>3} {r.kind:<9} {r.status:<9} {lsn:>12}  {format_time(r.as_of_time):<27} "
              f"{sum(r.rows.values()):>10} {r.bytes:>11}  {tail}")
    return 0
