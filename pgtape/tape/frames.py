"""Frames: the unit of writing, checksumming and compression in a segment file.

    offset 0  4s  magic b"PGTF"
           4  B   kind      (KIND_HEADER, KIND_DATA, KIND_FOOTER)
           5  B   flags     (FLAG_ZSTD, FLAG_BOUNDARY)
           6  H   reserved  (0)
           8  I   payload length in bytes
          12  I   decoded payload length in bytes
          16  I   crc32 of bytes 0..15 and the payload
          20      payload: msgpack, zstd-compressed when FLAG_ZSTD

All integers big-endian. A torn or flipped frame fails its checksum; see docs/FORMAT.md.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

MAGIC = b"PGTF"
HEADER = struct.Struct(">4sBBHIII")
HEADER_SIZE = HEADER.size

KIND_HEADER = 1
KIND_DATA = 2
KIND_FOOTER = 3
KIND_NAMES = {KIND_HEADER: "header", KIND_DATA: "data", KIND_FOOTER: "footer"}

FLAG_ZSTD = 1
FLAG_BOUNDARY = 2  # the frame ends between transactions: the file may be cut right after it

MAX_PAYLOAD = 256 << 20  # refuse absurd lengths from a corrupt header before allocating


class FrameError(Exception):
    """A frame that cannot be trusted. `offset` is where it starts in its file."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    offset: int
    kind: int
    flags: int
    payload: bytes  # decoded (decompressed)
    size: int  # bytes on disk, header included
    disk_crc: int  # crc32 of the file's bytes up to this frame's end (chained from crc_in)

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def boundary(self) -> bool:
        return bool(self.flags & FLAG_BOUNDARY)


def encode_frame(kind: int, payload: bytes, *, boundary: bool,
                 compressor: zstandard.ZstdCompressor | None = None) -> bytes:
    flags = FLAG_BOUNDARY if boundary else 0
    body = payload
    if compressor is not None:
        body = compressor.compress(payload)
        flags |= FLAG_ZSTD
    head = HEADER.pack(MAGIC, kind, flags, 0, len(body), len(payload), 0)[:16]
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + crc.to_bytes(4, "big") + body


def read_frame(f: BinaryIO, offset: int, decompressor: zstandard.ZstdDecompressor, crc_in: int = 0) -> Frame | None:
    """The frame at `offset`, or None at a clean end of file. Raises FrameError if damaged.

    `crc_in` is the crc32 of the file's bytes before `offset`, so callers get a whole-file checksum."""
    head = f.read(HEADER_SIZE)
    if not head:
        return None
    if len(head) < HEADER_SIZE:
        raise FrameError(offset, f"truncated frame header ({len(head)} of {HEADER_SIZE} bytes)")
    magic, kind, flags, _, length, raw_length, crc = HEADER.unpack(head)
    if magic != MAGIC:
        raise FrameError(offset, "no frame starts here (bad magic)")
    if kind not in KIND_NAMES or length > MAX_PAYLOAD or raw_length > MAX_PAYLOAD:
        raise FrameError(offset, "corrupt frame header")
    body = f.read(length)
    if len(body) < length:
        raise FrameError(offset, f"truncated frame ({len(body)} of {length} payload bytes)")
    if zlib.crc32(body, zlib.crc32(head[:16])) != crc:
        raise FrameError(offset, "checksum mismatch")
    if flags & FLAG_ZSTD:
        try:
            payload = decompressor.decompress(body, max_output_size=raw_length)
        except zstandard.ZstdError as e:
            raise FrameError(offset, f"cannot decompress: {e}") from None
    else:
        payload = body
    if len(payload) != raw_length:
        raise FrameError(offset, f"decoded length {len(payload)} differs from header {raw_length}")
    return Frame(offset, kind, flags, payload, HEADER_SIZE + length, zlib.crc32(body, zlib.crc32(head, crc_in)))
