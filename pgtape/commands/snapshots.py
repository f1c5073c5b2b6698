"""pgtape snapshots: the snapshot catalog (running, completed, failed), from the archive alone."""

from __future__ import annotations

import argparse
import json

import msgspec

from pgtape.config import Config
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive
from pgtape.timefmt import format_time
from pgtape.snapshots import catalog

HELP = "list snapshots: id, tables, rows, size, as-of position, status"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable list")


def run(args: argparse.Namespace, config: Config) -> int:

    records = catalog.load_all(Archive.existing(config.require_archive()))
    if args.json:
        out = []
        for r in records:
            d = msgspec.to_builtins(r)
            d["as_of_lsn"] = format_lsn(r.as_of_lsn) if r.as_of_lsn is not None else None
            for k in ("as_of_time", "created_at", "completed_at", "expires_at"):
                d[k] = format_time(d[k]) if d[k] is not None else None
            out.append(d)
        print(json.dumps(out, indent=2))
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
