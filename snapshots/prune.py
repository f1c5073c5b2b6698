"""What may be deleted: expired snapshots, the tape no remaining base needs, whole old generations.

Rules (docs/ARCHITECTURE.md, "Retention"), whatever the clock says:
- A snapshot goes only when its `expires_at` has passed and its status is completed or failed (an
  interrupted one reads as failed); a running one is never touched.
- In every generation that stays, its newest completed snapshot and its newest completed snapshot
  holding all the tables the generation captures stay, expired or not: replay needs a base.
- An older generation whose snapshots are all expired goes entirely; the current one never does.
- Tape: a prefix of the sealed segments whose end LSN is at or before the as-of LSN of the oldest
  completed snapshot that stays. Never an open segment, never the last segment (it tells where the
  tape ends and where capture continues), never past a gap (a damaged tape is refused).

Crash-safe order (`STEPS`, run in turn by `prune`), so that a kill -9 at any instant leaves an
archive verify accepts and replay can use, and a re-run of prune finishes the job:
1. PRUNED.json (atomic rewrite + directory fsync) records the intent first: the generations to
   delete and where each pruned tape will begin. Verify accepts their absence from then on, and
   until they are gone, their presence.
2. Catalog records are unlinked (catalog directory fsynced): no reader chooses those bases any more.
3. Their snapshot directories, then whole generation directories, are removed. A directory left
   without a record is a leftover the next prune removes (snapshot.lock is held, so no snapshot is
   being written).
4. Segments are unlinked oldest first, the tape directory fsynced after each: what remains is
   always a contiguous suffix of the tape.
Locking: prune holds snapshot.lock (as every snapshot and init do), so it never races a snapshot
or a new generation; capture keeps running, as it only appends to the open segment and seals it,
and prune only deletes segments that were sealed when it listed them. Readers take no lock: a
replay reading a base that prune deletes under it fails with an error, never a wrong result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from pgtape import metadata
from pgtape.errors import PgtapeError
from pgtape.storage import Storage
from pgtape.tape.archive import PRUNED_FILE, Archive, SegmentFile
from pgtape.tape.window import Window, tape_extent
from pgtape.timefmt import now_us
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.snapshots.take import SnapshotLock


@dataclass
class PrunePlan:
    now: int  # µs UTC: expiry is judged against it
    snapshots: list[SnapshotRecord] = field(default_factory=list)  # records (and directories) to delete
    leftovers: list[str] = field(default_factory=list)  # snapshot directories without a record (keys)
    generations: list[int] = field(default_factory=list)  # older generations to delete entirely
    segments: list[SegmentFile] = field(default_factory=list)  # per generation, oldest first
    tape_start: dict[int, int] = field(default_factory=dict)  # generation -> where its tape will begin
    sizes: dict[str, int] = field(default_factory=dict)  # bytes each deleted key (object or directory) holds
    window: Window | None = None  # the current generation's recoverable window afterwards

    @property
    def empty(self) -> bool:
        return not (self.snapshots or self.leftovers or self.generations or self.segments)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


def plan(archive: Archive, now: int | None = None) -> PrunePlan:
    """Decide what may be deleted, from one view of the archive (take snapshot.lock first)."""
    now = now_us() if now is None else now
    current = archive.identity().generation
    pruned = archive.pruned()
    records = catalog.load_all(archive)
    known = {r.id for r in records}
    p = PrunePlan(now)

    def expired(r: SnapshotRecord) -> bool:
        return r.status in (catalog.COMPLETED, catalog.FAILED) and r.expires_at is not None and r.expires_at < now

    for g in range(1, current + 1):
        recs = [r for r in records if r.generation == g]
        gdir = archive.generation_key(g)
        present = archive.storage.exists(gdir)
        # An old generation with no records at all is not "all expired": its catalog may be damaged.
        if g in pruned.deleted_generations or (g < current and present and recs and all(map(expired, recs))):
            if not (recs or present):
                continue  # already gone
            p.generations.append(g)  # (again, if an earlier prune was interrupted)
            p.snapshots += recs
            if present:
                p.sizes[gdir] = _tree_size(archive.storage, gdir)
            continue
        if not present:
            continue  # missing, not pruned: verify's to report, not ours to hide
        gen = archive.generation(g)
        done = sorted((r for r in recs if r.status == catalog.COMPLETED and r.as_of_lsn is not None),
                      key=lambda r: r.as_of_lsn or 0)
        full = [r for r in done if set(gen.tables) <= set(r.tables)]
        # What any replay of this generation needs: each table replays from its own newest base (after a
        # schema change that needed one, capture's base of that table alone: snapshots/rebase.py).
        newest_of_each = [[r for r in done if t in r.tables][-1:] for t in gen.tables]
        keep = {r.id for r in done[-1:] + full[-1:] + [r for rs in newest_of_each for r in rs]}
        doomed = [r for r in recs if expired(r) and r.id not in keep]
        p.snapshots += doomed
        for r in doomed:
            d = catalog.snapshot_key(archive, g, r.id)
            p.sizes[d] = _tree_size(archive.storage, d)
        sdir = f"{gdir}/snapshots"
        for e in archive.storage.list(sdir):
            if e.size is None and not e.name.endswith(".partial") and e.name not in known:
                d = f"{sdir}/{e.name}"
                p.leftovers.append(d)
                p.sizes[d] = _tree_size(archive.storage, d)
        gone = {r.id for r in doomed}
        remaining = [r for r in done if r.id not in gone]
        segs = _deletable_segments(archive, g, remaining[0].as_of_lsn or 0) if remaining else []
        p.segments += segs
        for s in segs:
            try:
                p.sizes[s.key] = archive.storage.size(s.key)
            except FileNotFoundError:
                p.sizes[s.key] = 0
        if doomed or segs:
            # where the first segment left will start (never moving back over an earlier prune's point)
            first = segs[-1].end_lsn if segs else min((s.start_lsn for s in archive.segments(g)), default=None)
            p.tape_start[g] = max(pruned.tape_start_lsn.get(g, gen.start_lsn), first or gen.start_lsn)
        if g == current:
            bases = [r for r in full if r.id not in gone]
            if bases:
                extent = tape_extent(archive, g)
                p.window = Window(bases[0].as_of_lsn or 0, bases[0].as_of_time or 0, extent.end_lsn,
                                  extent.complete_time)
    return p


def _deletable_segments(archive: Archive, g: int, oldest_base_lsn: int) -> list[SegmentFile]:
    problems = archive.continuity_problems(g)
    if problems:
        raise PgtapeError(f"{problems[0]}: prune deletes nothing from a tape with a gap (run pgtape verify)")
    segs = archive.segments(g)
    out: list[SegmentFile] = []
    for s in segs[:-1]:  # never the last: it tells where the tape ends (and capture continues)
        if s.end_lsn is None or s.end_lsn > oldest_base_lsn:
            break  # only a prefix goes, so no hole is ever made
        out.append(s)
    return out


def _tree_size(storage: Storage, directory: str) -> int:
    """Bytes of every object under a directory (0 if it is gone)."""
    return sum(e.size if e.size is not None else _tree_size(storage, f"{directory}/{e.name}")
               for e in storage.list(directory))


# -- the crash-safe steps, in order (each is idempotent) ------------------------------------------
def record_intent(archive: Archive, p: PrunePlan) -> None:
    """Step 1: PRUNED.json says what is about to go, before anything goes."""
    if not (p.generations or p.tape_start):
        return
    old = archive.pruned()
    new = msgspec.structs.replace(old, deleted_generations=sorted(set(old.deleted_generations) | set(p.generations)),
                                  tape_start_lsn={**old.tape_start_lsn, **p.tape_start})
    if new != old:
        metadata.write(archive.storage, PRUNED_FILE, new)


def forget_snapshots(archive: Archive, p: PrunePlan) -> None:
    """Step 2: the catalog records go (each removal durable), so no replay chooses those snapshots any more."""
    for r in p.snapshots:
        archive.storage.delete(catalog.record_key(r.id))


def delete_directories(archive: Archive, p: PrunePlan) -> None:
    """Step 3: snapshot directories (of records already forgotten), then whole old generations."""
    dirs = [catalog.snapshot_key(archive, r.generation, r.id) for r in p.snapshots if r.generation not in p.generations]
    for d in dirs + p.leftovers:
        archive.storage.delete_tree(d)
    for g in p.generations:
        archive.storage.delete_tree(archive.generation_key(g))


def delete_segments(archive: Archive, p: PrunePlan) -> None:
    """Step 4: oldest first, one durable unlink at a time: the tape left is a contiguous suffix."""
    for s in p.segments:
        archive.storage.delete(s.key)


STEPS = (record_intent, forget_snapshots, delete_directories, delete_segments)


def prune(archive: Archive, *, dry_run: bool, now: int | None = None, offsite: Archive | None = None) -> PrunePlan:
    """`offsite`: the archive's offsite copy, pruned first by the same plan and the same steps (each
    idempotent: a re-run after a crash or a failure of the store finishes both; the local copy is
    touched only once the offsite one is done, so the bucket never holds less than retention keeps)."""
    if dry_run:  # a reader: takes no lock and changes nothing
        return plan(archive, now)
    try:
        lock = SnapshotLock(archive)
    except PgtapeError:
        raise PgtapeError(f"a snapshot, init or another prune is running on {archive.path}: "
                          "run pgtape prune when it ends") from None
    try:
        p = plan(archive, now)
        for copy in ([offsite] if offsite else []) + [archive]:
            for step in STEPS:
                step(copy, p)
        return p
    finally:
        lock.release()


def segment_generation(s: SegmentFile) -> int:
    """The generation a segment file belongs to: generations/<NNNN>/tape/<file>."""
    return int(s.path.parent.parent.name)
