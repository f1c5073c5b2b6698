"""pgtape/tape/frames.py and records.py: framing, checksums, compression and the record encoding."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Callable

import msgspec
import pytest
import zstandard

from pgtape.tape.frames import (FLAG_BOUNDARY, FLAG_ZSTD, HEADER_SIZE, KIND_DATA, KIND_FOOTER, FrameError,
                                encode_frame, read_frame)
from pgtape.tape.records import (Begin, Change, Commit, Message, Position, Record, Relation, Schema,
                                 SegmentFooter, Truncate)

DEC = zstandard.ZstdDecompressor()


def test_uncompressed_frame_layout_by_hand() -> None:
    frame = encode_frame(KIND_DATA, b"hello", boundary=True)
    head = b"PGTF" + bytes([2, FLAG_BOUNDARY]) + b"\x00\x00" + struct.pack(">II", 5, 5)
    assert frame == head + struct.pack(">I", zlib.crc32(b"hello", zlib.crc32(head))) + b"hello"
    f = read_frame(io.BytesIO(frame), 0, DEC)
    assert f is not None and (f.kind, f.payload, f.size, f.boundary, f.end) == (KIND_DATA, b"hello", 25, True, 25)
    assert f.disk_crc == zlib.crc32(frame)


def test_compressed_round_trip_and_chained_crc() -> None:
    payload = b"x" * 10_000
    first = encode_frame(KIND_DATA, b"a", boundary=False)
    second = encode_frame(KIND_FOOTER, payload, boundary=True, compressor=zstandard.ZstdCompressor())
    assert second[5] == FLAG_ZSTD | FLAG_BOUNDARY and len(second) < 200
    buf = io.BytesIO(first + second)
    a = read_frame(buf, 0, DEC)
    assert a is not None and not a.boundary
    b = read_frame(buf, a.end, DEC, a.disk_crc)
    assert b is not None and b.payload == payload and b.kind == KIND_FOOTER
    assert b.disk_crc == zlib.crc32(first + second)
    assert read_frame(buf, b.end, DEC) is None  # a clean end


@pytest.mark.parametrize("damage, reason", [
    (lambda f: f[:10], "truncated frame header (10 of 20 bytes)"),
    (lambda f: f[:-1], "truncated frame (4 of 5 payload bytes)"),
    (lambda f: b"XGTF" + f[4:], "no frame starts here (bad magic)"),
    (lambda f: f[:4] + b"\x09" + f[5:], "corrupt frame header"),
    (lambda f: f[:-1] + b"H", "checksum mismatch"),
    (lambda f: f[:HEADER_SIZE - 1] + bytes([f[HEADER_SIZE - 1] ^ 1]) + f[HEADER_SIZE:], "checksum mismatch"),
    (lambda f: f[:12] + struct.pack(">I", 6) + f[16:], "checksum mismatch"),  # the header is covered too
])
def test_damage_is_named_with_its_offset(damage: Callable[[bytes], bytes], reason: str) -> None:
    good = encode_frame(KIND_DATA, b"hello", boundary=True)
    with pytest.raises(FrameError) as e:
        read_frame(_at(damage(good), 7), 7, DEC)
    assert e.value.offset == 7 and e.value.reason == reason and str(e.value) == f"offset 7: {reason}"


def _at(data: bytes, offset: int) -> io.BytesIO:
    buf = io.BytesIO(b"\0" * offset + data)
    buf.seek(offset)
    return buf


def test_a_lying_decoded_length_is_caught() -> None:
    body = zstandard.ZstdCompressor().compress(b"abcdef")
    head = b"PGTF" + bytes([KIND_DATA, FLAG_ZSTD]) + b"\0\0" + struct.pack(">II", len(body), 5)
    frame = head + struct.pack(">I", zlib.crc32(body, zlib.crc32(head))) + body
    with pytest.raises(FrameError) as e:
        read_frame(io.BytesIO(frame), 0, DEC)
    assert "decompress" in e.value.reason or "differs from header" in e.value.reason


RECORDS: list[Record] = [
    Relation(3, "public", "t", ["id", "v"], ["integer", "numeric(12,2)"], ["id"]),
    Begin(771, 0x100, 0x128, 1795615379885393),
    Change("I", 3, b"1\t0.10", -1, None),
    Change("U", 3, b"1\t\\N", 4, b"1", ["big"]),
    Change("D", 4, None, 4, b"1"),
    Truncate("public", "t"),
    Message(0x120, True, "pgtape", "before release"),
    Schema("public.t", 'public."T2"', ["id"], ["integer"], [1], [None], ["id"], False),
    Commit(0x128, 4),
    Position(0x200, 1795615380000000),
]


def test_records_round_trip_through_msgpack() -> None:
    data = msgspec.msgpack.encode(RECORDS)
    assert msgspec.msgpack.decode(data, type=list[Record]) == RECORDS
    # array-like with a one-letter tag: a Begin is ["B", xid, commit_lsn, end_lsn, commit_time]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(RECORDS[1])) == ["B", 771, 0x100, 0x128, 1795615379885393]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(RECORDS[2])) == ["C", "I", 3, b"1\t0.10", -1, None, None]


def test_unknown_record_tag_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode([["Z", 1]]), type=list[Record])
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode(["B", "x", 1, 2, 3]), type=Begin)
    f = SegmentFooter(1, 2, 3, 4, None, None, None, None, None, 5, 6)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(f), type=SegmentFooter) == f
