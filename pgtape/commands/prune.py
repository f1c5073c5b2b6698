"""pgtape prune: delete expired snapshots and the tape no remaining base needs (snapshots/prune.py)."""

from __future__ import annotations

import argparse

from pgtape import keys
from pgtape.commands.results import (PrunedGeneration, PrunedLeftover, PrunedSegment, PrunedSnapshot, PruneSummary,
                                     RecoverableWindow, emit, lsn_or_none, time_or_none)
from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn
from pgtape.offsite.retention import prune_unsent
from pgtape.offsite.upload import load_state, remote_for
from pgtape.storage.s3 import RemoteStorageError
from pgtape.tape.archive import Archive
from pgtape.tape.crypto import key_ids_in_use
from pgtape.timefmt import format_time
from pgtape.snapshots import catalog
from pgtape.snapshots.prune import PrunePlan, prune, segment_generation
from pgtape.snapshots.take import SnapshotLock

HELP = "delete expired snapshots, the tape before the oldest remaining base, and expired old generations"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    p.add_argument("--json", action="store_true", help="machine-readable result")


def run(args: argparse.Namespace, config: Config) -> int:
    archive = Archive.existing(config.require_archive(), keys.configured(config))
    # The offsite copy is pruned by the same plan, first (snapshots/prune.py); a failing store leaves
    # the local archive untouched, and prune again finishes both.
    offsite = Archive(archive.path, archive.keyring, remote_for(config)) if config.offsite_url else None
    try:
        p = prune(archive, dry_run=args.dry_run, offsite=offsite)
    except RemoteStorageError as e:
        raise PgtapeError(f"cannot prune the offsite copy (the local archive is untouched; prune again): {e}") from None
    if config.offsite_url and config.offsite_keep_local == "unsent":
        # Locally, only what is not offsite yet and the newest base (pgtape/offsite/retention.py).
        state = load_state(archive, config.offsite_url)
        lock = None if args.dry_run else SnapshotLock(archive)
        try:
            local = prune_unsent(archive, state, args.dry_run)
        finally:
            if lock:
                lock.release()
        _merge(p, local)
    report(archive, p, args.dry_run, args.json)
    return 0


def _merge(p: PrunePlan, local: PrunePlan) -> None:
    """One report: the ordinary prune and the local-only one (whose dry run may list the same items)."""
    p.snapshots += [r for r in local.snapshots if r.id not in {x.id for x in p.snapshots}]
    p.segments += [s for s in local.segments if s.key not in {x.key for x in p.segments}]
    p.generations += [g for g in local.generations if g not in p.generations]
    p.sizes.update(local.sizes)


def summary(archive: Archive, p: PrunePlan, dry_run: bool) -> PruneSummary:
    """What was (or would be) deleted, as --json prints it."""
    snaps = [PrunedSnapshot(r.id, r.generation, r.kind, r.status, lsn_or_none(r.as_of_lsn), time_or_none(r.as_of_time),
                            p.sizes.get(catalog.snapshot_key(archive, r.generation, r.id), 0)) for r in p.snapshots]
    segs = [PrunedSegment(s.path.name, segment_generation(s), format_lsn(s.start_lsn), format_lsn(s.end_lsn or 0),
                          p.sizes[s.key]) for s in p.segments]
    gens = [PrunedGeneration(g, p.sizes.get(archive.generation_key(g), 0)) for g in p.generations]
    leftovers = [PrunedLeftover(archive.storage.where(d), p.sizes[d]) for d in p.leftovers]
    w = p.window
    window = None if w is None else RecoverableWindow(format_time(w.from_time), format_lsn(w.from_lsn),
                                                      format_time(w.to_time), format_lsn(w.to_lsn), w.describe())
    return PruneSummary(dry_run, p.empty, snaps, segs, gens, leftovers, p.bytes, window, unused_keys(archive, p))


def unused_keys(archive: Archive, p: PrunePlan) -> list[str]:
    """Keys of the configured keyring that no archive file uses once `p` is done (their files pruned)."""
    if archive.keyring is None:
        return []
    used = key_ids_in_use(archive.storage, p.sizes)
    return [k for k in archive.keyring.ids if k not in used and k != archive.keyring.active_id]


def report(archive: Archive, p: PrunePlan, dry_run: bool, as_json: bool) -> None:
    out = summary(archive, p, dry_run)
    if as_json:
        emit(out, indent=2)
        return
    verb = "would delete" if dry_run else "deleted"
    for s in out.snapshots:
        when = f"as of {s.as_of_time} ({s.as_of_lsn})" if s.status == catalog.COMPLETED else s.status
        print(f"{verb} snapshot {s.id} (generation {s.generation}, {when}, {s.bytes} bytes)")
    for g in out.generations:
        print(f"{verb} generation {g.id} ({archive.generation_dir(g.id)}, {g.bytes} bytes)")
    for d in out.leftovers:
        print(f"{verb} leftover snapshot directory {d.path} ({d.bytes} bytes)")
    for seg in out.segments:
        print(f"{verb} segment {seg.file} (generation {seg.generation}, {seg.start_lsn} .. {seg.end_lsn}, "
              f"{seg.bytes} bytes)")
    if p.empty:
        print("nothing to prune: no snapshot has expired and no tape is unneeded")
    else:
        print(f"{'would free' if dry_run else 'freed'} {p.bytes} bytes")
    print(p.window.describe() if p.window else "recoverable window: none (no completed snapshot holds every captured "
          "table)")
    for kid in out.unused_keys:
        print(f"key {kid} of {archive.keyring.path if archive.keyring else ''} is used by no archive file"
              f"{' once this is pruned' if dry_run else ''}: it may be removed from the keyring")
