"""snapshots/prune.py planning: what may be deleted, decided from an archive built on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgtape.errors import PgtapeError
from pgtape.snapshots import catalog
from pgtape.snapshots.prune import plan
from pgtape.tape.archive import Archive

from .archive_kit import TABLE, new_archive, segment, snapshot

NOW = 10_000
PAST, FUTURE = NOW - 1, NOW + 1


def four_segments(archive: Archive, gen: int = 1) -> None:
    """100-200, 200-300, 300-400 sealed, 400.. open."""
    for start in (100, 200, 300):
        segment(archive, gen, start, [(start + 100, start * 10 + 1000)])
    segment(archive, gen, 400, [(450, 5500)], seal=False)


def names(segs: list) -> list[tuple[int, int | None]]:
    return [(s.start_lsn, s.end_lsn) for s in segs]


def test_expired_snapshots_and_the_tape_before_the_oldest_remaining_base(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    four_segments(archive)
    snapshot(archive, "a", lsn=150, expires=PAST)
    snapshot(archive, "b", lsn=250, expires=PAST)
    snapshot(archive, "c", lsn=350, expires=FUTURE)
    snapshot(archive, "failed", lsn=None, at=None, status=catalog.FAILED, expires=PAST)
    snapshot(archive, "running", lsn=None, at=None, status=catalog.RUNNING, expires=PAST)
    snapshot(archive, "young", lsn=120, expires=FUTURE)
    p = plan(archive, NOW)
    assert sorted(r.id for r in p.snapshots) == ["a", "b", "failed"]
    # the oldest base left is "young" (as of 120): no segment ends at or before it
    assert p.segments == [] and p.generations == []


def test_segments_up_to_the_oldest_remaining_base_go(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    four_segments(archive)
    snapshot(archive, "a", lsn=150, expires=PAST)
    snapshot(archive, "c", lsn=300, expires=FUTURE)
    p = plan(archive, NOW)
    assert [r.id for r in p.snapshots] == ["a"]
    assert names(p.segments) == [(100, 200), (200, 300)]  # 300-400 ends after 300: it stays
    assert p.tape_start == {1: 300}
    assert p.window is not None and (p.window.from_lsn, p.window.to_lsn) == (300, 450)


def test_the_newest_completed_base_stays_even_when_expired(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    four_segments(archive)
    snapshot(archive, "a", lsn=150, expires=PAST)
    snapshot(archive, "b", lsn=450, expires=PAST)
    p = plan(archive, NOW)
    assert [r.id for r in p.snapshots] == ["a"]
    # never the last segment, even though the base is past every sealed segment's end
    assert names(p.segments) == [(100, 200), (200, 300), (300, 400)]


def test_the_newest_full_base_stays_beside_a_newer_partial_one(tmp_path: Path) -> None:
    archive = new_archive(tmp_path, tables=[TABLE, "public.u"])
    four_segments(archive)
    snapshot(archive, "full", lsn=150, expires=PAST, tables=[TABLE, "public.u"])
    snapshot(archive, "only_t", lsn=350, expires=PAST, tables=[TABLE])
    p = plan(archive, NOW)
    assert p.snapshots == [] and p.segments == []


def test_nothing_expired_nothing_deleted(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    four_segments(archive)
    snapshot(archive, "a", lsn=150, expires=FUTURE)
    snapshot(archive, "b", lsn=None, at=None, status=catalog.FAILED, expires=None)
    p = plan(archive, NOW)
    assert p.empty and p.bytes == 0


def test_an_old_generation_all_expired_goes_entirely_the_current_never(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    four_segments(archive, 1)
    snapshot(archive, "g1", gen=1, lsn=150, expires=PAST)
    archive.start_generation("7", "db", "pgtape", 1000, "test", [TABLE])
    segment(archive, 2, 1000, [(1100, 9000)], seal=False)
    snapshot(archive, "g2", gen=2, lsn=1000, at=8000, expires=PAST)
    p = plan(archive, NOW)
    assert p.generations == [1]
    assert [r.id for r in p.snapshots] == ["g1"]
    assert archive.generation_key(1) in p.sizes and p.sizes[archive.generation_key(1)] > 0


def test_an_old_generation_with_a_live_snapshot_stays(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    four_segments(archive, 1)
    snapshot(archive, "g1", gen=1, lsn=150, expires=FUTURE)
    archive.start_generation("7", "db", "pgtape", 1000, "test", [TABLE])
    snapshot(archive, "g2", gen=2, lsn=1000, at=8000, expires=PAST)
    assert plan(archive, NOW).generations == []


def test_an_old_generation_without_records_is_not_taken_for_expired(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    four_segments(archive, 1)
    archive.start_generation("7", "db", "pgtape", 1000, "test", [TABLE])
    assert plan(archive, NOW).generations == []


def test_a_snapshot_directory_without_a_record_is_a_leftover(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    four_segments(archive)
    snapshot(archive, "a", lsn=150, expires=FUTURE)
    stray = catalog.snapshot_dir(archive, 1, "stray")
    stray.mkdir(parents=True)
    (stray / "x").write_bytes(b"12345")
    catalog.snapshot_dir(archive, 1, "half.partial").mkdir()
    p = plan(archive, NOW)
    assert p.leftovers == ["generations/0001/snapshots/stray"] and p.bytes == 5


def test_a_gap_refuses_to_delete_segments(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    segment(archive, 1, 100, [(200, 2000)])
    segment(archive, 1, 250, [(300, 3000)])
    segment(archive, 1, 300, [(350, 3500)], seal=False)
    snapshot(archive, "a", lsn=150, expires=PAST)
    snapshot(archive, "b", lsn=320, expires=FUTURE)
    with pytest.raises(PgtapeError, match="prune deletes nothing from a tape with a gap"):
        plan(archive, NOW)


def test_the_last_segment_stays_even_when_sealed_and_before_every_base(tmp_path: Path) -> None:
    archive = new_archive(tmp_path)
    segment(archive, 1, 100, [(200, 2000)])
    segment(archive, 1, 200, [(300, 3000)])  # capture stopped after sealing: no open segment
    snapshot(archive, "a", lsn=150, expires=PAST)
    snapshot(archive, "b", lsn=300, at=3000, expires=PAST)
    p = plan(archive, NOW)
    assert [r.id for r in p.snapshots] == ["a"]
    assert names(p.segments) == [(100, 200)]  # 200-300 tells where the tape ends
    assert p.tape_start == {1: 200}
