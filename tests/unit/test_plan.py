"""replay/plan.py: the recoverable window and which base a target replays from."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgtape.errors import PgtapeError
from pgtape.replay.plan import choose_bases, window
from pgtape.tape.window import Window, tape_extent
from pgtape.replay.target import Target
from pgtape.snapshots.catalog import COMPLETED, FAILED, SnapshotRecord

from .archive_kit import TABLE, new_archive, segment, snapshot


def rec(sid: str, lsn: int, at: int) -> SnapshotRecord:
    return SnapshotRecord(sid, 1, "manual", [TABLE], COMPLETED, 0, None, 1, "h", as_of_lsn=lsn, as_of_time=at)


W = Window(from_lsn=100, from_time=1000, to_lsn=500, to_time=5000)
BASES = {TABLE: [rec("old", 100, 1000), rec("new", 300, 3000)]}


@pytest.mark.parametrize("target, chosen", [
    (Target("time", time=1000), "old"),
    (Target("time", time=2999), "old"),
    (Target("time", time=3000), "new"),  # a base as of T holds nothing past an inclusive T
    (Target("time", time=3000, exclusive=True), "old"),
    (Target("time", time=5000), "new"),
    (Target("lsn", lsn=299), "old"),
    (Target("lsn", lsn=300), "new"),
    (Target("lsn", lsn=500), "new"),
    (Target("name", name="m", lsn=100), "old"),
    (Target("latest"), "new"),
])
def test_newest_base_at_or_before_the_target(target: Target, chosen: str) -> None:
    assert choose_bases(W, BASES, target)[TABLE].id == chosen


@pytest.mark.parametrize("target, message", [
    (Target("time", time=999), "target time 1970-01-01 00:00:00.000999Z is before the oldest base"),
    (Target("time", time=1000, exclusive=True), "is before the oldest base"),
    (Target("time", time=5001), "is after what the tape is known to hold"),
    (Target("lsn", lsn=99), "target up to LSN 0/63 is before the oldest base"),
    (Target("lsn", lsn=501), "target up to LSN 0/1F5 is beyond the tape's end"),
    (Target("name", name="m", lsn=501), "is beyond the tape's end"),
])
def test_target_outside_the_window_names_it(target: Target, message: str) -> None:
    with pytest.raises(PgtapeError) as e:
        choose_bases(W, BASES, target)
    assert message in str(e.value)
    assert ("recoverable window: 1970-01-01 00:00:00.001000Z (0/64) .. 1970-01-01 00:00:00.005000Z (0/1F4)"
            in str(e.value))


def test_time_target_when_the_tape_end_time_is_unknown() -> None:
    with pytest.raises(PgtapeError, match="after what the tape is known to hold"):
        choose_bases(Window(100, 1000, 100, None), BASES, Target("time", time=1000))


def test_window_from_an_archive_on_disk(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    segment(archive, 1, 100, [(180, 1800), (200, 2000)])
    segment(archive, 1, 200, [(260, 2600)], seal=False, position=(290, 2900))
    snapshot(archive, "a", lsn=150, at=1500)
    snapshot(archive, "b", lsn=250, at=2500)
    snapshot(archive, "f", lsn=120, at=1200, status=FAILED)
    snapshot(archive, "r", lsn=110, at=1100, status="running")
    w, bases = window(archive, 1, [TABLE])
    assert w == Window(150, 1500, 290, 2900)  # from the oldest completed base to the open segment's Position
    assert [b.id for b in bases[TABLE]] == ["a", "b"]
    assert tape_extent(archive, 1).end_lsn == 290


def test_window_needs_a_completed_base_of_each_table(tmp_path: Path) -> None:
    archive = new_archive(tmp_path, tables=[TABLE, "public.u"])
    segment(archive, 1, 100, [(180, 1800)])
    snapshot(archive, "a")
    with pytest.raises(PgtapeError, match="no completed snapshot of generation 1 holds public.u"):
        window(archive, 1, [TABLE, "public.u"])


def test_a_gap_in_the_tape_is_refused(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    segment(archive, 1, 100, [(180, 1800)])
    segment(archive, 1, 200, [(260, 2600)])  # 180..200 is missing
    snapshot(archive, "a")
    with pytest.raises(PgtapeError, match="the tape is not contiguous: gap in generation 1"):
        window(archive, 1, [TABLE])
