"""The segment format on its own: checksums catch damage and name where; torn tails are cut."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgtape.storage import LocalStorage, local_file
from pgtape.tape import FORMAT_VERSION
from pgtape.tape.records import Begin, Change, Commit, Relation
from pgtape.tape.segment import (SegmentError, SegmentReader, SegmentWriter, last_boundary, open_segment_progress,
                                 open_segment_stats, read_footer)


def _txn(xid: int, end: int) -> list:
    return [Begin(xid, end - 8, end, 1_700_000_000_000_000 + xid),
            Change("I", 0, f"{xid}\t0.10".encode(), -1, None), Commit(end, 1)]


def _segment(tmp_path: Path, n: int = 5) -> SegmentWriter:
    # In "tape/" as in an archive: sealing records its end in the parent directory.
    w = SegmentWriter.create(LocalStorage(tmp_path), "tape", 1, "42", "slot", 100)
    w.append([Relation(0, "public", "t", ["id", "amount"], ["integer", "numeric(12,2)"], ["id"])], boundary=True)
    for i in range(n):
        w.append(_txn(i + 1, 200 + i * 100), boundary=True)
    w.sync()
    return w


def test_sealed_segment_reads_back_and_footer_counts(tmp_path: Path) -> None:
    path = tmp_path / _segment(tmp_path).seal()
    assert path.name == f"{100:016X}-{600:016X}.tape"
    reader = SegmentReader(*local_file(path))
    records = list(reader.records())
    assert [r.xid for r in records if isinstance(r, Begin)] == [1, 2, 3, 4, 5]
    assert reader.footer is not None and reader.footer.transactions == 5 and reader.footer.changes == 5
    assert read_footer(*local_file(path)) == reader.footer


@pytest.mark.parametrize("where", ["header", "middle", "footer"])
def test_flipped_byte_is_detected_with_its_offset(tmp_path: Path, where: str) -> None:
    path = tmp_path / _segment(tmp_path).seal()
    data = bytearray(path.read_bytes())
    pos = {"header": 30, "middle": len(data) // 2, "footer": len(data) - 3}[where]
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(SegmentError) as e:
        list(SegmentReader(*local_file(path)).records())
    assert str(path) in str(e.value) and "offset" in str(e.value)
    assert e.value.offset is not None and e.value.offset <= pos


def test_truncated_sealed_segment_is_detected(tmp_path: Path) -> None:
    path = tmp_path / _segment(tmp_path).seal()
    os.truncate(path, path.stat().st_size - 10)
    with pytest.raises(SegmentError, match="truncated"):
        list(SegmentReader(*local_file(path)).records())


@pytest.mark.parametrize("tail", [b"PGTF\x02", b"garbage that is not a frame", None])
def test_torn_tail_is_cut_back_to_last_transaction(tmp_path: Path, tail: bytes | None) -> None:
    w = _segment(tmp_path, n=3)
    good = w.offset
    # An unfinished transaction written in a non-boundary frame, then a torn frame.
    w.append([Begin(9, 990, 1000, 0), Change("I", 0, b"9\t1.00", -1, None)], boundary=False)
    w.sync()
    w.close()
    path = tmp_path / w.key
    if tail is None:
        os.truncate(path, path.stat().st_size - 3)  # tear the unfinished frame itself
    else:
        with open(path, "ab") as f:
            f.write(tail)
    recovered, cut = SegmentWriter.recover(LocalStorage(tmp_path), w.key)
    assert cut > 0 and recovered.offset == good == path.stat().st_size
    assert recovered.stats.transactions == 3 and recovered.stats.end_lsn == 400
    recovered.append(_txn(10, 1100), boundary=True)
    recovered.sync()
    assert [r.xid for r in SegmentReader(*local_file(path)).records() if isinstance(r, Begin)] == [1, 2, 3, 10]


def test_open_segment_is_read_up_to_last_boundary(tmp_path: Path) -> None:
    w = _segment(tmp_path, n=2)
    w.append([Begin(7, 690, 700, 0), Change("I", 0, b"7\t1.00", -1, None)], boundary=False)
    w.sync()
    path = tmp_path / w.key
    assert last_boundary(*local_file(path)) < path.stat().st_size
    assert [r.xid for r in SegmentReader(*local_file(path)).records() if isinstance(r, Begin)] == [1, 2]


def test_archive_of_another_format_version_is_refused_in_one_line(tmp_path: Path) -> None:
    from conftest import run_pgtape
    (tmp_path / "ARCHIVE.json").write_text('{"format_version":1,"system_id":"1","database":"d","slot":"s",'
                                           '"generation":1,"created_at":0}')
    r = run_pgtape("status", "--archive", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "tape format 1" in r.stderr \
        and f"reads format {FORMAT_VERSION}" in r.stderr, r.stderr


def test_open_segment_progress_decodes_only_what_was_added(tmp_path: Path) -> None:
    """pgtape serve looks at the open segment every few seconds: each look continues where the last
    stopped, and must equal reading the segment whole, also after a repair cut the tail back."""
    storage = LocalStorage(tmp_path)
    w = _segment(tmp_path, n=3)
    key = f"tape/{w.name}"
    first = open_segment_progress(storage, key, 100)
    assert first.stats == open_segment_stats(storage, key, 100) and first.stats.transactions == 3
    assert first.offset == last_boundary(storage, key)
    w.append(_txn(4, 500)[:2], boundary=False)  # a transaction under way: not counted yet
    w.sync()
    assert open_segment_progress(storage, key, 100, first) == first
    w.append(_txn(4, 500)[2:], boundary=True)
    w.append(_txn(5, 600), boundary=True)
    w.sync()
    second = open_segment_progress(storage, key, 100, first)
    assert second.stats == open_segment_stats(storage, key, 100) and second.stats.transactions == 5
    assert second.stats.changes == 5 and second.stats.end_lsn == 600 and second.offset > first.offset
    w.close()
    # Cut back before what `second` counted (a repair, then other transactions): read whole again.
    os.truncate(tmp_path / key, first.offset)
    w2, _ = SegmentWriter.recover(storage, key)
    w2.append(_txn(9, 900), boundary=True)
    w2.sync()
    third = open_segment_progress(storage, key, 100, second)
    assert third.stats == open_segment_stats(storage, key, 100) and third.stats.transactions == 4
    assert third.stats.end_lsn == 900
    w2.close()
