"""pgtape prune: delete expired snapshots and the tape no remaining base needs (snapshots/prune.py)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from pgtape.config import Config
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive
from pgtape.timefmt import format_time

if TYPE_CHECKING:
    from pgtape.snapshots.prune import PrunePlan

HELP = "delete expired snapshots, the tape before the oldest remaining base, and expired old generations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    p.add_argument("--json", action="store_true", help="machine-readable result")


def run(args: argparse.Namespace, config: Config) -> int:
    from pgtape.snapshots.prune import prune

    archive = Archive.existing(config.require_archive())
    report(archive, prune(archive, dry_run=args.dry_run), args.dry_run, args.json)
    return 0


def summary(archive: Archive, p: PrunePlan, dry_run: bool) -> dict[str, Any]:
    """What was (or would be) deleted, as --json prints it."""
    from pgtape.snapshots import catalog
    from pgtape.snapshots.prune import segment_generation

    snaps = [{"id": r.id, "generation": r.generation, "kind": r.kind, "status": r.status,
              "as_of_lsn": format_lsn(r.as_of_lsn) if r.as_of_lsn is not None else None,
              "as_of_time": format_time(r.as_of_time) if r.as_of_time is not None else None,
              "bytes": p.sizes.get(catalog.snapshot_dir(archive, r.generation, r.id), 0)} for r in p.snapshots]
    segs = [{"file": s.path.name, "generation": segment_generation(s), "start_lsn": format_lsn(s.start_lsn),
             "end_lsn": format_lsn(s.end_lsn or 0), "bytes": p.sizes[s.path]} for s in p.segments]
    gens = [{"id": g, "bytes": p.sizes.get(archive.generation_dir(g), 0)} for g in p.generations]
    leftovers = [{"path": str(d), "bytes": p.sizes[d]} for d in p.leftovers]
    w = p.window
    window = None if w is None else {"from": format_time(w.from_time), "from_lsn": format_lsn(w.from_lsn),
                                     "to": format_time(w.to_time), "to_lsn": format_lsn(w.to_lsn),
                                     "text": w.describe()}
    return {"dry_run": dry_run, "nothing_to_prune": p.empty, "snapshots": snaps, "segments": segs,
            "generations": gens, "leftovers": leftovers, "bytes_freed": p.bytes, "window": window}


def report(archive: Archive, p: PrunePlan, dry_run: bool, as_json: bool) -> None:
    from pgtape.snapshots import catalog

    out = summary(archive, p, dry_run)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    for s in out["snapshots"]:
        when = f"as of {s['as_of_time']} ({s['as_of_lsn']})" if s["status"] == catalog.COMPLETED else s["status"]
        print(f"{verb} snapshot {s['id']} (generation {s['generation']}, {when}, {s['bytes']} bytes)")
    for g in out["generations"]:
        print(f"{verb} generation {g['id']} ({archive.generation_dir(g['id'])}, {g['bytes']} bytes)")
    for d in out["leftovers"]:
        print(f"{verb} leftover snapshot directory {d['path']} ({d['bytes']} bytes)")
    for seg in out["segments"]:
        print(f"{verb} segment {seg['file']} (generation {seg['generation']}, {seg['start_lsn']} .. {seg['end_lsn']}, "
              f"{seg['bytes']} bytes)")
    if p.empty:
        print("nothing to prune: no snapshot has expired and no tape is unneeded")
    else:
        print(f"{'would free' if dry_run else 'freed'} {p.bytes} bytes")
    print(p.window.describe() if p.window else "recoverable window: none (no completed snapshot holds every captured "
          "table)")
