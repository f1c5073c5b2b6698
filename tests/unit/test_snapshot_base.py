"""replay --snapshot ID without a database: which snapshot may be named, and the target it makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgtape.errors import PgtapeError, UsageError
from pgtape.replay.plan import choose_bases, find_snapshot, snapshot_tables
from pgtape.replay.target import Target
from pgtape.snapshots.catalog import COMPLETED, FAILED, SnapshotRecord
from pgtape.tape.window import Window

from .archive_kit import TABLE, new_archive, snapshot


def rec(sid: str, lsn: int, at: int) -> SnapshotRecord:
    return SnapshotRecord(sid, 1, "manual", [TABLE], COMPLETED, 0, None, 1, "h", as_of_lsn=lsn, as_of_time=at)


W = Window(from_lsn=100, from_time=1000, to_lsn=500, to_time=5000)
OLD, NEW = rec("old", 100, 1000), rec("new", 300, 3000)
BASES = {TABLE: [OLD, NEW]}


@pytest.mark.parametrize("target", [Target("latest"), Target("time", time=4000), Target("lsn", lsn=100),
                                    Target("snapshot", lsn=100, name="old")])
def test_the_named_snapshot_is_the_base_instead_of_the_newest(target: Target) -> None:
    assert choose_bases(W, BASES, target, OLD)[TABLE].id == "old"


@pytest.mark.parametrize("target", [Target("time", time=2999), Target("lsn", lsn=299),
                                    Target("time", time=3000, exclusive=True)])
def test_a_snapshot_after_the_target_is_refused(target: Target) -> None:
    with pytest.raises(PgtapeError, match="snapshot new is as of .* after the target"):
        choose_bases(W, BASES, target, NEW)


def test_a_snapshot_target_applies_nothing_and_names_it() -> None:
    t = Target("snapshot", lsn=300, name="20261125T140000.123456Z-42")
    assert t.last_allowed() == (-1, -1)
    assert t.describe() == "snapshot 20261125T140000.123456Z-42 (LSN 0/12C)"
    assert t.slug() == "snapshot_20261125t140000_123456z_42"


def test_which_snapshots_can_be_named(tmp_path: Path) -> None:
    archive = new_archive(tmp_path / "a")
    snapshot(archive, "ok")
    snapshot(archive, "broken", status=FAILED)
    snapshot(archive, "other", gen=2)
    assert find_snapshot(archive, 1, "ok").id == "ok"
    with pytest.raises(UsageError, match="no snapshot 'nope'; newest: .*ok"):
        find_snapshot(archive, 1, "nope")
    with pytest.raises(PgtapeError, match="snapshot broken is failed; only a completed"):
        find_snapshot(archive, 1, "broken")
    with pytest.raises(PgtapeError, match="belongs to generation 2, not the current generation 1"):
        find_snapshot(archive, 1, "other")
    r = find_snapshot(archive, 1, "ok")
    assert snapshot_tables(r, None) == [TABLE] and snapshot_tables(r, [TABLE]) == [TABLE]
    with pytest.raises(UsageError, match="does not hold public.x; it holds public.t"):
        snapshot_tables(r, ["public.x"])
