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
from pgtape.tape.segment import SegmentError, SegmentStats, footer_stats, open_segment_end, read_footer
from pgtape.timefmt import format_time
from replay.target import Target
from snapshots import catalog
from snapshots.catalog import SnapshotRecord


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
            st = open_segment_end(s.path, s.start_lsn) if s.is_open else footer_stats(read_footer(s.path))
        except SegmentError as e:
            raise PgtapeError(f"damaged tape: {e} (run pgtape verify)") from None
        end = SegmentStats(end_lsn=max(end.end_lsn, st.end_lsn),
                           complete_time=max(filter(None, (end.complete_time, st.complete_time)), default=None))
    return end


def window(archive: Archive, gen: int, tables: list[str]) -> tuple[Window, list[SnapshotRecord]]:
    bases = sorted((r for r in catalog.load_all(archive) if r.generation == gen and r.status == catalog.COMPLETED
                    and set(tables) <= set(r.tables) and r.as_of_lsn is not None and r.as_of_time is not None),
                   key=lambda r: r.as_of_lsn or 0)
    if not bases:
        raise PgtapeError(f"no completed snapshot of generation {gen} holds {', '.join(tables)}: "
                          "take one with pgtape snapshot (or pgtape init)")
    extent = tape_extent(archive, gen)
    first = bases[0]
    assert first.as_of_lsn is not None and first.as_of_time is not None
    # The window ends where the tape is known complete, even if a newer base exists: a target past
    # the tape's end could be missing transactions committed before it (capture lagging).
    return Window(first.as_of_lsn, first.as_of_time, extent.end_lsn, extent.complete_time), bases


def choose_base(w: Window, bases: list[SnapshotRecord], target: Target) -> SnapshotRecord:
    """The newest base at or before the target; raises with the window when the target is outside it."""
    if target.kind == "time":
        assert target.time is not None
        if target.time < w.from_time or (target.exclusive and target.time == w.from_time):
            raise PgtapeError(f"target time {format_time(target.time)} is before the oldest base; {w.describe()}")
        if w.to_time is None or target.time > w.to_time:
            raise PgtapeError(f"target time {format_time(target.time)} is after what the tape is known to hold; "
                              f"{w.describe()} (use --latest, or wait for capture to catch up)")
        usable = [b for b in bases if (b.as_of_time or 0) < target.time or
                  (not target.exclusive and b.as_of_time == target.time)]
    elif target.kind in ("lsn", "name"):
        assert target.lsn is not None
        if target.lsn < w.from_lsn:
            raise PgtapeError(f"target {target.describe()} is before the oldest base; {w.describe()}")
        if target.lsn > w.to_lsn:
            raise PgtapeError(f"target {target.describe()} is beyond the tape's end; {w.describe()}")
        usable = [b for b in bases if (b.as_of_lsn or 0) <= target.lsn]  # a mark's lsn: its message
    else:
        usable = bases
    if not usable:
        raise PgtapeError(f"no base at or before {target.describe()}; {w.describe()}")
    return usable[-1]
