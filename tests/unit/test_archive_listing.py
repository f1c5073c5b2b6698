"""Archive.segments: which segment files make up a generation's tape."""

from __future__ import annotations

from pathlib import Path

from pgtape.tape.records import Begin, Commit
from pgtape.tape.segment import SegmentWriter
from unit.archive_kit import new_archive, segment


def test_an_open_segment_beside_its_sealed_one_is_superseded(tmp_path: Path) -> None:
    # As a bucket (or a directory pulled from it) holds it after a kill between the uploader's PUT of
    # the sealed segment and its DELETE of the open one, which is a prefix of the sealed one.
    archive = new_archive(tmp_path / "a")
    w = SegmentWriter.create(archive.storage, archive.tape_key(1), 1, "7", "pgtape", 100)
    w.append([Begin(1000, 142, 150, 1), Commit(150, 0)], boundary=True)
    w.sync()
    open_key = archive.segments(1)[0].key
    stale = archive.storage.read(open_key)
    w.append([Begin(1001, 192, 200, 2), Commit(200, 0)], boundary=True)
    w.sync()
    w.seal()
    end = archive.segments(1)[0].end_lsn
    assert end is not None
    segment(archive, 1, end, [(end + 50, 3)], seal=False)
    archive.storage.write_atomic(open_key, stale)
    assert [(s.start_lsn, s.end_lsn) for s in archive.segments(1)] == [(100, end), (end, None)]
    assert archive.continuity_problems(1) == []
