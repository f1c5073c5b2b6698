"""Sealing publishes the open segment's records in large frames (pgtape/tape/sealed_copy.py): the same
records, in order, whatever happened to the open segment (a cut tail, a restart, a kill while sealing)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import zstandard

from pgtape.keys import generate, load
from pgtape.storage import LocalStorage
from pgtape.capture.tape_writer import TapeWriter
from pgtape.tape.frames import FLAG_ZSTD, Frame, read_frame
from pgtape.tape.records import Begin, Change, Commit, Record, Relation
from pgtape.tape.sealed_copy import COPY_SUFFIX, SEALED_FRAME_BYTES
from pgtape.tape.segment import SegmentReader, SegmentWriter, read_footer
from unit.archive_kit import new_archive

RELATION = Relation(0, "public", "payments", ["id", "amount", "note"], ["integer", "numeric(12,2)", "text"], ["id"])


def _txn(xid: int, rng: random.Random, rows: int = 2) -> list[Record]:
    end = 1000 + xid * 100
    changes: list[Record] = [Change("I", 0, f"{xid * 10 + i}\t{rng.randrange(10**6)}.{rng.randrange(100):02d}\t"
                                            f"{rng.randbytes(rng.randrange(40)).hex()}".encode(), -1, None)
                             for i in range(rows)]
    return [Begin(xid, end - 8, end, 1_700_000_000_000_000 + xid), *changes, Commit(end, rows)]


def _frames(path: Path) -> list[Frame]:
    """The file's frames (read with checksums; unencrypted files only)."""
    frames, dec, offset = [], zstandard.ZstdDecompressor(), 0
    with open(path, "rb") as f:
        while (frame := read_frame(f, offset, dec)) is not None:
            frames.append(frame)
            offset = frame.end
    return frames


def _records(storage: LocalStorage, key: str) -> list[Record]:
    return list(SegmentReader(storage, key).records())


def _small_txns(w: SegmentWriter, rng: random.Random, first: int, n: int) -> list[Record]:
    """n transactions, each in a frame of its own (as adaptive group commit writes them)."""
    written: list[Record] = []
    for xid in range(first, first + n):
        t = _txn(xid, rng)
        w.append(t, boundary=True)
        written += t
    return written


def test_many_small_frames_are_sealed_in_few_large_ones(tmp_path: Path) -> None:
    seed = int(os.environ.get("PGTAPE_TEST_SEED") or random.randrange(2**32))
    print(f"seed {seed} (repeat with PGTAPE_TEST_SEED={seed})")
    rng = random.Random(seed)
    storage = LocalStorage(tmp_path)
    w = SegmentWriter.create(storage, "tape", 1, "42", "slot", 100)
    w.append([RELATION], boundary=True)
    written = [RELATION, *_small_txns(w, rng, 1, 12_000)]
    w.sync()
    open_path = tmp_path / w.key
    open_frames = len(_frames(open_path))
    assert (tmp_path / (w.key + COPY_SUFFIX)).exists()
    sealed = w.seal()
    assert not open_path.exists() and not (tmp_path / (w.key + COPY_SUFFIX)).exists()
    assert _records(storage, sealed) == written  # (the reader checks the footer's length and checksum)
    kinds = _frames(tmp_path / sealed)
    assert open_frames == 12_002 and len(kinds) <= 2 + open_frames // 1000, (open_frames, len(kinds))
    footer = read_footer(storage, sealed)
    assert footer.transactions == 12_000 and footer.changes == 24_000 and footer.end_lsn == 1000 + 12_000 * 100


def test_sealed_file_is_smaller_than_the_open_one_was(tmp_path: Path) -> None:
    rng = random.Random(7)
    storage = LocalStorage(tmp_path)
    w = SegmentWriter.create(storage, "tape", 1, "42", "slot", 100)
    w.append([RELATION], boundary=True)
    _small_txns(w, rng, 1, 5_000)
    w.sync()
    open_size = (tmp_path / w.key).stat().st_size
    sealed = w.seal()
    assert (tmp_path / sealed).stat().st_size < 0.8 * open_size


def test_a_transaction_larger_than_a_frame_is_sealed_whole(tmp_path: Path) -> None:
    rng = random.Random(11)
    storage = LocalStorage(tmp_path)
    w = SegmentWriter.create(storage, "tape", 1, "42", "slot", 100)
    w.append([RELATION], boundary=True)
    big = _txn(1, rng, rows=60_000)  # ~2.5 MiB: written in pieces, as capture does past frame_bytes
    pieces = [big[i:i + 7_000] for i in range(0, len(big), 7_000)]
    for piece in pieces[:-1]:
        w.append(piece, boundary=False)
    w.append(pieces[-1], boundary=True)
    after = _small_txns(w, rng, 2, 50)
    w.sync()
    sealed = w.seal()
    assert _records(storage, sealed) == [RELATION, *big, *after]
    assert len(_frames(tmp_path / sealed)) >= 2 + (len(b"".join(c.row or b"" for c in big if isinstance(c, Change)))
                                                   // SEALED_FRAME_BYTES)


def test_a_cut_transaction_never_reaches_the_sealed_segment(tmp_path: Path) -> None:
    """The connection lost inside a large transaction: the open segment is cut back; frames of it that
    the sealed copy had already written must go too."""
    rng = random.Random(3)
    storage = LocalStorage(tmp_path)
    w = SegmentWriter.create(storage, "tape", 1, "42", "slot", 100)
    w.append([RELATION], boundary=True)
    kept = _small_txns(w, rng, 1, 100)
    dropped = _txn(500, rng, rows=40_000)
    w.append(dropped[:-1], boundary=False)  # more than a sealed frame: the copy wrote it out
    w.sync()
    w.cut_to_boundary()
    kept += _small_txns(w, rng, 600, 100)  # the server sends it again later; others meanwhile
    w.sync()
    sealed = w.seal()
    records = _records(storage, sealed)
    assert records == [RELATION, *kept]
    assert not any(isinstance(r, Begin) and r.xid == 500 for r in records)


@pytest.mark.parametrize("stale_copy", [b"", b"PGTF garbage from a copy cut by the kill"])
def test_after_a_kill_the_copy_is_rebuilt_from_the_open_segment(tmp_path: Path, stale_copy: bytes) -> None:
    rng = random.Random(5)
    storage = LocalStorage(tmp_path)
    w = SegmentWriter.create(storage, "tape", 1, "42", "slot", 100)
    w.append([RELATION], boundary=True)
    written = [RELATION, *_small_txns(w, rng, 1, 3_000)]
    w.append(_txn(9_000, rng)[:2], boundary=False)  # unfinished at the kill
    w.sync()
    w.close()
    copy = tmp_path / (w.key + COPY_SUFFIX)
    copy.write_bytes(copy.read_bytes()[:len(copy.read_bytes()) // 2] + stale_copy)  # whatever it held
    recovered, cut = SegmentWriter.recover(storage, w.key)
    assert cut > 0
    written += _small_txns(recovered, rng, 4_000, 10)
    recovered.sync()
    sealed = recovered.seal()
    assert _records(storage, sealed) == written
    assert sorted(p.name for p in (tmp_path / "tape").iterdir()) == [Path(sealed).name]


def test_encrypted_segment_is_sealed_encrypted(tmp_path: Path) -> None:
    generate(tmp_path / "keyring")
    storage = LocalStorage(tmp_path)
    storage.keyring = load(tmp_path / "keyring")
    rng = random.Random(9)
    w = SegmentWriter.create(storage, "tape", 1, "42", "slot", 100)
    w.append([RELATION], boundary=True)
    written = [RELATION, *_small_txns(w, rng, 1, 2_000)]
    w.sync()
    sealed = w.seal()
    reader = SegmentReader(storage, sealed)
    assert list(reader.records()) == written and reader.encrypted
    assert b"payments" not in (tmp_path / sealed).read_bytes()[200:]  # (the header frame names no table)
    plain = LocalStorage(tmp_path)  # no keyring: the sealed file cannot be read
    with pytest.raises(Exception, match="key"):
        list(SegmentReader(plain, sealed).records())


def test_a_kill_between_publishing_and_deleting_leaves_the_sealed_one_read(tmp_path: Path) -> None:
    """Sealing renames the copy to the sealed name, then deletes the open segment; killed between, both
    are there: readers take the sealed one, and the next capture deletes the open one."""
    archive = new_archive(tmp_path / "a")
    w = SegmentWriter.create(archive.storage, archive.tape_key(1), 1, "7", "pgtape", 100)
    for i in range(50):
        w.append([Begin(1000 + i, 142 + i * 10, 150 + i * 10, 1 + i), Commit(150 + i * 10, 0)], boundary=True)
    w.sync()
    open_key = w.key

    class Killed(Exception):
        pass

    def killed(key: str) -> None:
        raise Killed(key)

    archive.storage.delete = killed  # type: ignore[method-assign]
    with pytest.raises(Killed):
        w.seal()
    del archive.storage.delete
    assert archive.storage.exists(open_key)
    assert [(s.start_lsn, s.end_lsn) for s in archive.segments(1)] == [(100, 640)]
    assert archive.superseded_open_segments(1) == [open_key]
    assert archive.continuity_problems(1) == []
    writer = TapeWriter(archive, 1, "7", "pgtape", 1 << 20)
    assert not archive.storage.exists(open_key) and archive.superseded_open_segments(1) == []
    assert [(s.start_lsn, s.end_lsn) for s in archive.segments(1)] == [(100, 640), (640, None)]
    writer.close()


def test_small_frames_are_left_uncompressed_until_sealed(tmp_path: Path) -> None:
    """zstd costs ~15 us a call whatever the size: a frame of a commit or two goes to the open segment as
    it is, a large one compressed; the sealed segment's frames are all compressed."""
    rng = random.Random(17)
    storage = LocalStorage(tmp_path)
    w = SegmentWriter.create(storage, "tape", 1, "42", "slot", 100)
    w.append([RELATION], boundary=True)
    small = _small_txns(w, rng, 1, 3_000)
    big = _txn(5_000, rng, rows=2_000)  # one frame of ~80 KiB decoded
    w.append(big, boundary=True)
    w.sync()
    flags = _flags(tmp_path / w.key)
    assert all(not f & FLAG_ZSTD for f in flags[1:-1]) and flags[-1] & FLAG_ZSTD
    sealed = w.seal()
    assert _records(storage, sealed) == [RELATION, *small, *big]
    assert all(f & FLAG_ZSTD for f in _flags(tmp_path / sealed)[1:-1])


def _flags(path: Path) -> list[int]:
    return [frame.flags for frame in _frames(path)]
