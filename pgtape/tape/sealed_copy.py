"""The open segment's records in large frames, written beside it: what sealing publishes.

Capture writes a frame at every group commit, so that a commit is durable at once (Rule A1). Under
small transactions those frames hold one or two transactions each (~0.5 KiB on disk): compressed
alone they take twice the bytes, and a reader pays per frame (a zstd call that rebuilds its tables,
checksums, a decode call), which made a fold of such a tape 1.7-1.9x slower (BENCHMARKS.md, "Sealed
segments in large frames"). So the same records also go into `<start>.tape.open.seal.tmp`: small frames
gathered into frames of about SEALED_FRAME_BYTES, large ones (compressed in the open segment already)
as they are; sealing gives that file its footer and renames it to the sealed name.

It is never needed for durability: the open segment is the durable record until the sealed file
replaces it (docs/ARCHITECTURE.md, "Sealing"). So it is fsynced only when sealed, and rebuilt from
the open segment when the two may differ (a restart, a cut tail).
"""

from __future__ import annotations

import zlib

import msgspec
import zstandard

from pgtape.storage import Storage
from pgtape.tape.frames import KIND_DATA, KIND_FOOTER, FrameCipher, encode_frame
from pgtape.tape.records import Record, SegmentFooter

SEALED_FRAME_BYTES = 1 << 20  # decoded bytes gathered from small frames before one is written
COPY_SUFFIX = ".seal.tmp"  # after the open segment's name; `.tmp`: the offsite copy and readers skip it

_encoder = msgspec.msgpack.Encoder()


def copy_key(open_key: str) -> str:
    return open_key + COPY_SUFFIX


class SealedCopy:
    """The open segment's frames, the small ones gathered into frames of at least SEALED_FRAME_BYTES
    decoded, written as they come; `finish` ends the file with its footer and fsyncs it. Starts with
    the open segment's own header frame, so an encrypted segment's cipher (bound to that frame)
    serves both files."""

    def __init__(self, storage: Storage, open_key: str, header_frame: bytes, cipher: FrameCipher | None) -> None:
        self.storage = storage
        self.key = copy_key(open_key)
        self._h = storage.create(self.key, header_frame)  # (replaces one left by a crash)
        self._cipher = cipher
        self._compressor = zstandard.ZstdCompressor(level=3)
        self.offset = len(header_frame)
        self._crc = zlib.crc32(header_frame)
        self._records: list[Record] = []  # gathered from small frames
        self._bytes = 0  # their encoded size
        self._boundary = True  # the last of them ends between transactions
        self.frames = 0

    def add(self, records: list[Record], payload: bytes, compressed: bytes | None, *, boundary: bool) -> None:
        """Records as appended to the open segment: `payload` their encoding there, `compressed` its zstd
        frame if the open segment compressed it (a large frame: written again as it is, after what has
        gathered). Small ones gather until a frame's worth, which ends where that append ends (`boundary`:
        between transactions), so memory stays at one frame even inside a transaction of any size."""
        if compressed is not None:
            if self._records:
                self._write(self._boundary)
            self._write_frame(payload, compressed, boundary)
            return
        self._records.extend(records)
        self._bytes += len(payload)
        self._boundary = boundary
        if self._bytes >= SEALED_FRAME_BYTES:
            self._write(boundary)

    def _write(self, boundary: bool) -> None:
        payload = _encoder.encode(self._records)
        self._write_frame(payload, self._compressor.compress(payload), boundary)
        self._records = []
        self._bytes = 0

    def _write_frame(self, payload: bytes, compressed: bytes, boundary: bool) -> None:
        frame = encode_frame(KIND_DATA, payload, boundary=boundary, compressed=compressed, cipher=self._cipher,
                             offset=self.offset)
        self._h.append(frame)
        self.offset += len(frame)
        self._crc = zlib.crc32(frame, self._crc)
        self.frames += 1

    def finish(self, footer: SegmentFooter) -> None:
        """Write what is gathered (sealing happens between transactions), then `footer` with this file's
        data length and checksum; fsync and close."""
        if self._records:
            self._write(self._boundary)
        footer = msgspec.structs.replace(footer, data_bytes=self.offset, data_crc32=self._crc)
        self._h.append(encode_frame(KIND_FOOTER, _encoder.encode(footer), boundary=True,
                                    cipher=self._cipher, offset=self.offset))
        self._h.sync()
        self._h.close()

    def close(self) -> None:
        self._h.close()
