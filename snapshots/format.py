"""A snapshot table file: one table's rows at the snapshot's as-of LSN, in COPY text format.

    <archive>/generations/NNNN/snapshots/<id>/<schema>.<table>.snap

Frames as on the tape (pgtape/tape/frames.py): a header frame (what the table is: columns, types,
primary key, the as-of position), data frames (zstd-compressed chunks of whole COPY text rows),
and a footer frame (row count, data length and CRC-32). docs/FORMAT.md is the specification.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import msgspec
import zstandard

from pgtape.names import file_stem
from pgtape.tape import FORMAT_VERSION
from pgtape.tape.frames import (KIND_DATA, KIND_FOOTER, KIND_HEADER, KIND_NAMES, Frame, FrameError, encode_frame,
                                read_frame)
from pgtape.tape.segment import SegmentError

CHUNK_BYTES = 4 << 20  # decoded COPY bytes per data frame: bounds memory whatever the table size


class TableHeader(msgspec.Struct, frozen=True):
    format_version: int
    snapshot_id: str
    generation: int
    schema: str  # the captured table's identity (pgtape/names.py): schema ...
    table: str  # ... and table, as when the generation started
    name: str  # its canonical name at the as-of LSN (differs after a rename)
    oid: int
    columns: list[str]
    types: list[str]  # format_type() with typmod
    attnums: list[int]
    key: list[str]  # the replica key (pgtape.pg.replica_key), [] without one
    as_of_lsn: int
    as_of_time: int  # µs UTC


class TableFooter(msgspec.Struct, frozen=True):
    rows: int
    data_bytes: int  # offset of the footer frame
    data_crc32: int  # CRC-32 of every byte before the footer frame


def table_file_name(table: str) -> str:
    """`<schema>.<table>.snap` for a canonical table name, percent-encoded (pgtape/names.py)."""
    return f"{file_stem(table)}.snap"


class TableWriter:
    """Writes one table file; `write(data)` takes COPY text output in arbitrary pieces."""

    def __init__(self, path: Path, header: TableHeader) -> None:
        self.path = path
        self._f: BinaryIO = open(path, "wb")
        self._compressor = zstandard.ZstdCompressor(level=3)
        self._pending = bytearray()
        self.rows = 0
        self._offset = 0
        self._crc = 0
        self._emit(encode_frame(KIND_HEADER, msgspec.msgpack.encode(header), boundary=True))

    def _emit(self, frame: bytes) -> None:
        self._f.write(frame)
        self._offset += len(frame)
        self._crc = zlib.crc32(frame, self._crc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending += data
        if len(self._pending) >= CHUNK_BYTES:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        # A frame holds whole rows: cut after the last newline (COPY escapes newlines in values).
        cut = len(self._pending) if final else self._pending.rfind(b"\n") + 1
        if cut <= 0:
            return
        chunk = bytes(self._pending[:cut])
        del self._pending[:cut]
        self.rows += chunk.count(b"\n")
        self._emit(encode_frame(KIND_DATA, chunk, boundary=True, compressor=self._compressor))

    def finish(self) -> tuple[int, int]:
        """Footer, fsync, close; returns (rows, bytes)."""
        self._flush(final=True)
        footer = TableFooter(self.rows, self._offset, self._crc)
        self._f.write(encode_frame(KIND_FOOTER, msgspec.msgpack.encode(footer), boundary=True))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self.rows, self.path.stat().st_size

    def abort(self) -> None:
        self._f.close()


class TableReader:
    """Reads a table file, verifying every frame, the footer and the row count."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "rb")
        self._dec = zstandard.ZstdDecompressor()
        first = self._frame(0, 0)
        if first is None or first.kind != KIND_HEADER:
            self._f.close()
            raise SegmentError(path, 0, "snapshot file header is missing")
        try:
            self.header = msgspec.msgpack.decode(first.payload, type=TableHeader)
        except msgspec.DecodeError as e:
            raise SegmentError(path, 0, f"undecodable snapshot header: {e}") from None
        if self.header.format_version != FORMAT_VERSION:
            raise SegmentError(path, 0, f"format version {self.header.format_version}; this pgtape reads "
                                        f"{FORMAT_VERSION}")
        self._offset, self._crc = first.end, first.disk_crc
        self.footer: TableFooter | None = None

    def _frame(self, offset: int, crc: int) -> Frame | None:
        try:
            return read_frame(self._f, offset, self._dec, crc)
        except FrameError as e:
            raise SegmentError(self.path, e.offset, e.reason) from None

    def chunks(self) -> Iterator[bytes]:
        """COPY text chunks of whole rows; sets .footer once the last one is read and checked."""
        rows = 0
        try:
            while (frame := self._frame(self._offset, self._crc)) is not None:
                if frame.kind == KIND_FOOTER:
                    footer = msgspec.msgpack.decode(frame.payload, type=TableFooter)
                    if footer.data_bytes != frame.offset or footer.data_crc32 != self._crc or footer.rows != rows:
                        raise SegmentError(self.path, frame.offset, "footer does not match the snapshot data")
                    if os.fstat(self._f.fileno()).st_size != frame.end:
                        raise SegmentError(self.path, frame.end, "unexpected bytes after the footer")
                    self.footer = footer
                    return
                if frame.kind != KIND_DATA:
                    raise SegmentError(self.path, frame.offset, f"unexpected {KIND_NAMES[frame.kind]} frame")
                self._offset, self._crc = frame.end, frame.disk_crc
                rows += frame.payload.count(b"\n")
                yield frame.payload
            raise SegmentError(self.path, self._offset, "snapshot file ends without a footer (truncated?)")
        finally:
            self._f.close()
