"""The recoverable window and the tape's extent: how far a generation's tape is known complete.

Shared by replay (the window a target must lie in), prune (the window it leaves) and verify --live.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive
from pgtape.tape.segment import SegmentError, SegmentStats, segment_end
from pgtape.timefmt import format_time


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
