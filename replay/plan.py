"""What a replay will read: the recoverable window, the base snapshot, the tape range.

Window of a generation: from its oldest completed base (as-of LSN and time) to where the tape is
known complete (its end LSN; the latest commit or Position time). A target outside it is an
error that prints the window, never a quiet replay to something else.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive
from pgtape.tape.segment import SegmentError, SegmentStats, segment_end
from pgtape.timefmt import format_time
from pgtape.replay.target import Target
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord


@dataclass(frozen=True)
class Window:
    from_lsn: int
    from_time: int
    to_lsn: int
    to_time: int | None

    def describe(self) -> str:
        return (f"recoverable window: {format_time(self.from_time)} ({format_lsn(self.from_lsn)}) .. "
                f"{format_time(self.to_time)} ({format_lsn(self.to_lsn)})")


def tape_extent(archive: Archive, gen: int) -> SegmentStats:
    """End LSN and completeness time of a generation's tape, after checking it has no gap."""
    problems = archive.continuity_problems(gen)
    if problems:
        raise PgtapeError(f"the tape is not contiguous: {problems[0]} (run pgtape verify)")
    g = archive.generation(gen)
    end = SegmentStats(end_lsn=g.start_lsn)
    for s in archive.segments(gen):
        try:
            st = archive.read_segment(s, lambda storage, key: segment_end(storage, key, s.start_lsn))
        except SegmentError as e:
            raise PgtapeError(f"damaged tape: {e} (run pgtape verify)") from None
        end = SegmentStats(end_lsn=max(end.end_lsn, st.end_lsn),
                           complete_time=max(filter(None, (end.complete_time, st.complete_time)), default=None))
    return end


def window(archive: Archive, gen: int, tables: list[str]) -> tuple[Window, dict[str, list[SnapshotRecord]]]:
    """The window in which every one of `tables` is recoverable, and each table's completed bases
    (oldest first). Tables may have bases of their own (`pgtape snapshot --tables`, or a base capture
    took after a schema change): each replays from its own."""
    completed = [r for r in catalog.load_all(archive) if r.generation == gen and r.status == catalog.COMPLETED
                 and r.as_of_lsn is not None and r.as_of_time is not None]
    bases = {t: sorted((r for r in completed if t in r.tables), key=lambda r: r.as_of_lsn or 0) for t in tables}
    missing = [t for t, found in bases.items() if not found]
    if missing:
        raise PgtapeError(f"no completed snapshot of generation {gen} holds {', '.join(missing)}: "
                          "take one with pgtape snapshot (or pgtape init)")
    extent = tape_extent(archive, gen)
    first = max((found[0] for found in bases.values()), key=lambda r: r.as_of_lsn or 0)
    assert first.as_of_lsn is not None and first.as_of_time is not None
    # The window ends where the tape is known complete, even if a newer base exists: a target past
    # the tape's end could be missing transactions committed before it (capture lagging).
    return Window(first.as_of_lsn, first.as_of_time, extent.end_lsn, extent.complete_time), bases


def choose_bases(w: Window, bases: dict[str, list[SnapshotRecord]], target: Target) -> dict[str, SnapshotRecord]:
    """Each table's newest base at or before the target; raises with the window when the target is
    outside it."""
    if target.kind == "time":
        assert target.time is not None
        if target.time < w.from_time or (target.exclusive and target.time == w.from_time):
            raise PgtapeError(f"target time {format_time(target.time)} is before the oldest base; {w.describe()}")
        if w.to_time is None or target.time > w.to_time:
            raise PgtapeError(f"target time {format_time(target.time)} is after what the tape is known to hold; "
                              f"{w.describe()} (use --latest, or wait for capture to catch up)")
    elif target.kind in ("lsn", "name"):
        assert target.lsn is not None
        if target.lsn < w.from_lsn:
            raise PgtapeError(f"target {target.describe()} is before the oldest base; {w.describe()}")
        if target.lsn > w.to_lsn:
            raise PgtapeError(f"target {target.describe()} is beyond the tape's end; {w.describe()}")
    chosen = {}
    for table, found in bases.items():
        usable = [b for b in found if _at_or_before(b, target)]
        if not usable:
            raise PgtapeError(f"no base of {table} at or before {target.describe()}; {w.describe()}")
        chosen[table] = usable[-1]
    return chosen


def _at_or_before(base: SnapshotRecord, target: Target) -> bool:
    """None of the base's transactions is past the target."""
    if target.kind == "time":
        assert target.time is not None
        return (base.as_of_time or 0) < target.time or (not target.exclusive and base.as_of_time == target.time)
    if target.kind in ("lsn", "name"):
        assert target.lsn is not None
        return (base.as_of_lsn or 0) <= target.lsn  # a mark's lsn: its message
    return True
