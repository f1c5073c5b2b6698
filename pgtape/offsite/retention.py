"""`[offsite] keep_local = "unsent"`: the local archive keeps only what is not offsite yet, and the newest base.

After the ordinary prune (offsite copy first, then local: snapshots/prune.py), a second, local-only
plan: every snapshot counts as expired, so prune's own rules keep just the newest bases of each
generation (and the tape from them on); of that plan only what the bucket holds, confirmed
(OFFSITE.json: same size and SHA-256 as the local file), is deleted, by the same crash-safe steps.
The bucket keeps everything that retention keeps; locally, replay still reaches every target after the
newest base, and older ones are replayed from the bucket (`--archive s3://...`)."""

from __future__ import annotations

from pathlib import Path

from pgtape.offsite.upload import OffsiteState, _walk
from pgtape.snapshots import catalog
from pgtape.snapshots.prune import STEPS, PrunePlan, plan
from pgtape.tape.archive import Archive

FOREVER = 1 << 62  # µs: a "now" after every expiry


def _sent(archive: Archive, state: OffsiteState, key: str) -> bool:
    path = archive.path / key
    known = state.objects.get(key)
    return known is not None and path.exists() and path.stat().st_size == known[0]


def unsent_plan(archive: Archive, state: OffsiteState) -> PrunePlan:
    p = plan(archive, now=FOREVER)
    p.leftovers = []  # the ordinary prune's business
    files = [k for k, _ in _walk(archive.path)]

    def tree_sent(prefix: str) -> bool:
        return all(_sent(archive, state, k) for k in files if k.startswith(prefix + "/"))

    p.generations = [g for g in p.generations if tree_sent(archive.generation_key(g))]
    p.snapshots = [r for r in p.snapshots if (r.generation in p.generations or tree_sent(
        catalog.snapshot_key(archive, r.generation, r.id))) and _sent(archive, state, catalog.record_key(r.id))]
    kept: list = []
    stopped: set[Path] = set()
    for s in p.segments:  # a prefix of each generation's tape: stop at the first one not offsite
        if s.path.parent in stopped or not _sent(archive, state, s.key):
            stopped.add(s.path.parent)
            continue
        kept.append(s)
    p.segments = kept
    pruned = archive.pruned()
    for g in list(p.tape_start):
        mine = [s for s in kept if s.key.startswith(archive.generation_key(g) + "/")]
        if g in p.generations:
            continue
        start = pruned.tape_start_lsn.get(g, archive.generation(g).start_lsn)
        p.tape_start[g] = max(start, mine[-1].end_lsn or 0) if mine else start
        if p.tape_start[g] == pruned.tape_start_lsn.get(g):
            del p.tape_start[g]
    p.sizes = {k: v for k, v in p.sizes.items()
               if any(k == s.key for s in kept) or any(k == catalog.snapshot_key(archive, r.generation, r.id)
                                                      for r in p.snapshots)
               or any(k == archive.generation_key(g) for g in p.generations)}
    return p


def prune_unsent(archive: Archive, state: OffsiteState, dry_run: bool) -> PrunePlan:
    """Run (or, dry, only compute) the local-only plan; the caller holds snapshot.lock when not dry."""
    p = unsent_plan(archive, state)
    if not dry_run:
        for step in STEPS:
            step(archive, p)
    return p
