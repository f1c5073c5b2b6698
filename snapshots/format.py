"""A snapshot table file: one table's rows at the snapshot's as-of LSN, in COPY text format.

    <archive>/generations/NNNN/snapshots/<id>/<schema>.<table>.snap

Frames as on the tape (pgtape/tape/frames.py): a header frame (what the table is: columns, types,
primary key, the as-of position), data frames (zstd-compressed chunks of whole COPY text rows),
and a footer frame (row count, data length and CRC-32). docs/FORMAT.md is the specification.
"""

from __future__ import annotations

import zlib
from typing import Iterator

import msgspec
import zstandard

from pgtape.names import file_stem
from pgtape.storage import Storage
from pgtape.tape.crypto import Encryption, format_version, new_encryption, version_problem
from pgtape.tape.frames import KIND_DATA, KIND_FOOTER, KIND_HEADER, Frame, FrameCipher, encode_frame
from pgtape.tape.segment import FramedReader, SegmentError

CHUNK_BYTES = 4 << 20  # decoded COPY bytes per data frame: bounds memory whatever the table size


class TableHeader(msgspec.Struct, frozen=True, omit_defaults=True):
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
    encryption: Encryption | None = None  # set by TableWriter when the storage has a keyring


class TableFooter(msgspec.Struct, frozen=True):
    rows: int
    data_bytes: int  # offset of the footer frame
    data_crc32: int  # CRC-32 of every byte before the footer frame


def table_file_name(table: str) -> str:
    """`<schema>.<table>.snap` for a canonical table name, percent-encoded (pgtape/names.py)."""
    return f"{file_stem(table)}.snap"


class TableWriter:
    """Writes one table file; `write(data)` takes COPY text output in arbitrary pieces. Encrypted
    with the active key of `storage.keyring` when there is one (pgtape/tape/crypto.py)."""

    def __init__(self, storage: Storage, key: str, header: TableHeader) -> None:
        self._compressor = zstandard.ZstdCompressor(level=3)
        self._pending = bytearray()
        self.rows = 0
        keyring = storage.keyring
        encryption = None if keyring is None else new_encryption(keyring)
        header = msgspec.structs.replace(header, format_version=format_version(encryption), encryption=encryption)
        first = encode_frame(KIND_HEADER, msgspec.msgpack.encode(header), boundary=True)
        self._cipher = None if keyring is None or encryption is None else FrameCipher(keyring.active_key(),
                                                                                      encryption.salt, first)
        self._h = storage.create(key, first)
        self._offset = len(first)
        self._crc = zlib.crc32(first)

    def _emit(self, frame: bytes) -> None:
        self._h.append(frame)
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
        self._emit(encode_frame(KIND_DATA, chunk, boundary=True, compressor=self._compressor, cipher=self._cipher,
                                offset=self._offset))

    def finish(self) -> tuple[int, int]:
        """Footer, fsync, close; returns (rows, bytes)."""
        self._flush(final=True)
        footer = TableFooter(self.rows, self._offset, self._crc)
        self._h.append(encode_frame(KIND_FOOTER, msgspec.msgpack.encode(footer), boundary=True, cipher=self._cipher,
                                    offset=self._offset))
        self._h.sync()
        self._h.close()
        return self.rows, self._h.size()

    def abort(self) -> None:
        self._h.close()


class TableReader(FramedReader):
    """Reads a table file, verifying every frame, the footer and the row count."""

    what = "snapshot file"
    no_footer = "snapshot file ends without a footer (truncated?)"

    def __init__(self, storage: Storage, key: str) -> None:
        self.footer: TableFooter | None = None
        self._rows = 0
        super().__init__(storage, key)

    def _header(self, frame: Frame) -> None:
        try:
            self.header = msgspec.msgpack.decode(frame.payload, type=TableHeader)
        except msgspec.DecodeError as e:
            raise SegmentError(self.path, 0, f"undecodable snapshot header: {e}") from None
        if (problem := version_problem(self.header.format_version, self.header.encryption)) is not None:
            raise SegmentError(self.path, 0, problem)

    def _footer(self, frame: Frame) -> None:
        footer = msgspec.msgpack.decode(frame.payload, type=TableFooter)
        if footer.data_bytes != frame.offset or footer.data_crc32 != self._crc or footer.rows != self._rows:
            raise SegmentError(self.path, frame.offset, "footer does not match the snapshot data")
        self.footer = footer

    def chunks(self) -> Iterator[bytes]:
        """COPY text chunks of whole rows; sets .footer once the last one is read and checked."""
        for frame in self.frames():
            self._rows += frame.payload.count(b"\n")
            yield frame.payload
