"""One segment file: written append-only while open, sealed with a footer, read and verified.

Open segment:   <start>.tape.open      (header frame, data frames; may end in a torn frame)
Sealed segment: <start>-<end>.tape     (the same records in large frames, then a footer frame;
                                        written beside the open one as <start>.tape.open.seal.tmp
                                        and published by rename: pgtape/tape/sealed_copy.py)
<start> and <end> are 16 hex digits of LSN. The segment holds transactions whose end LSN lies
in (start, end]. Only a frame with FLAG_BOUNDARY ends between transactions: a torn tail is cut
back to the end of the last such frame (docs/ARCHITECTURE.md, "Torn tails").
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import msgspec
import zstandard

from pgtape import metadata
from pgtape.lsn import lsn_filename_part
from pgtape.storage import AppendHandle, Storage
from pgtape.tape.crypto import file_cipher, format_version, new_encryption, version_problem
from pgtape.tape.frames import (FLAG_BOUNDARY, HEADER, HEADER_SIZE, KIND_DATA, KIND_FOOTER, KIND_HEADER,
                                KIND_NAMES, MAGIC, AuthenticationFailed, Frame, FrameCipher, FrameError,
                                encode_frame, read_frame)
from pgtape.tape.records import Begin, Change, Commit, Position, Record, Relation, SegmentFooter, SegmentHeader
from pgtape.tape.sealed_copy import SealedCopy
from pgtape.timefmt import now_us

OPEN_SUFFIX = ".tape.open"
SEALED_FILE = "SEALED.json"  # in the generation directory: end LSN of the newest sealed segment
DURABLE_FILE = "DURABLE.json"  # in the generation directory: a durable position capture reached
SEALED_RE = re.compile(r"^([0-9A-F]{16})-([0-9A-F]{16})\.tape$")
OPEN_RE = re.compile(r"^([0-9A-F]{16})\.tape\.open$")

COMPRESS_FROM = 16 << 10  # decoded bytes from which an open segment's frame is compressed

_records_encoder = msgspec.msgpack.Encoder()
_records_decoder = msgspec.msgpack.Decoder(list[Record])
_header_decoder = msgspec.msgpack.Decoder(SegmentHeader)
_footer_decoder = msgspec.msgpack.Decoder(SegmentFooter)


class SegmentError(Exception):
    """A damaged or inconsistent segment: names the file and where."""

    def __init__(self, path: str | Path, offset: int | None, reason: str) -> None:
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"{path}{where}: {reason}")
        self.path, self.offset, self.reason = path, offset, reason


def sealed_name(start_lsn: int, end_lsn: int) -> str:
    return f"{lsn_filename_part(start_lsn)}-{lsn_filename_part(end_lsn)}.tape"


def open_name(start_lsn: int) -> str:
    return f"{lsn_filename_part(start_lsn)}{OPEN_SUFFIX}"


def parent_key(key: str) -> str:
    return key.rpartition("/")[0]


def child_key(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


@dataclass(frozen=True)
class SegmentStats:
    """What a segment holds up to some offset; becomes the footer when sealed."""

    end_lsn: int
    transactions: int = 0
    changes: int = 0
    first_commit_lsn: int | None = None
    last_commit_lsn: int | None = None
    first_commit_time: int | None = None
    last_commit_time: int | None = None
    complete_time: int | None = None  # latest commit time or Position time

    def after(self, records: list[Record]) -> SegmentStats:
        end, txns, changes = self.end_lsn, self.transactions, self.changes
        first_lsn, last_lsn = self.first_commit_lsn, self.last_commit_lsn
        first_time, last_time, complete = self.first_commit_time, self.last_commit_time, self.complete_time
        for r in records:
            # type(r) is X: as fast as comparing a saved type(r), and mypy narrows on it
            if type(r) is Begin:
                if first_lsn is None:
                    first_lsn, first_time = r.end_lsn, r.commit_time
                last_lsn, last_time = r.end_lsn, r.commit_time
                complete = max(r.commit_time, complete or 0)
            elif type(r) is Commit:
                txns += 1
                changes += r.changes
                end = max(end, r.end_lsn)
            elif type(r) is Position:
                end = max(end, r.lsn)
                complete = max(r.time, complete or 0)
        return SegmentStats(end, txns, changes, first_lsn, last_lsn, first_time, last_time, complete)


_STATS_RECORDS = (Begin, Commit, Position)


@dataclass(frozen=True)
class _CutPoint:
    offset: int
    crc: int
    stats: SegmentStats
    relations: dict[int, Relation]


class SegmentWriter:
    """Appends frames to an open segment. Not thread-safe: one capture process owns it."""

    def __init__(self, storage: Storage, handle: AppendHandle, header: SegmentHeader, cut: _CutPoint,
                 cipher: FrameCipher | None, header_frame: bytes) -> None:
        self.storage = storage
        self._cipher = cipher  # the file is encrypted: every frame after the header
        self._header_frame = header_frame  # as on disk
        self.key = handle.key
        self.name = self.key.rpartition("/")[2]
        self.header = header
        self._h = handle
        self._compressor = zstandard.ZstdCompressor(level=3)
        self._cut = cut  # state at the end of the last boundary frame
        self.offset, self._crc, self.stats = cut.offset, cut.crc, cut.stats
        self.relations = dict(cut.relations)  # interned in this segment, by id
        self._since_cut: list[Record] = []
        self._copy: SealedCopy | None = None  # what sealing publishes; create and recover start it

    # -- creation and recovery ------------------------------------------------------------
    @classmethod
    def create(cls, storage: Storage, directory: str, generation: int, system_id: str, slot: str,
               start_lsn: int) -> SegmentWriter:
        """Encrypted with the active key of `storage.keyring` when there is one (pgtape/tape/crypto.py)."""
        keyring = storage.keyring
        encryption = None if keyring is None else new_encryption(keyring)
        header = SegmentHeader(format_version(encryption), generation, system_id, slot, start_lsn, now_us(),
                               encryption)
        frame = encode_frame(KIND_HEADER, msgspec.msgpack.encode(header), boundary=True)
        key = child_key(directory, open_name(start_lsn))
        cipher = None if keyring is None or encryption is None else FrameCipher(keyring.active_key(),
                                                                                encryption.salt, frame)
        # Created with its header, durably (Storage.create): a full disk never leaves an open
        # segment without its header (which recovery would refuse to touch).
        handle = storage.create(key, frame)
        writer = cls(storage, handle, header,
                     _CutPoint(len(frame), zlib.crc32(frame), SegmentStats(end_lsn=start_lsn), {}), cipher, frame)
        writer._copy = SealedCopy(storage, key, frame, cipher)
        return writer

    @classmethod
    def recover(cls, storage: Storage, key: str) -> tuple[SegmentWriter, int]:
        """Reopen an open segment after a crash, cutting a torn or unfinished tail.

        Returns the writer and the number of bytes cut. Raises SegmentError if the header is
        unreadable: pgtape never deletes such a file by itself."""
        with storage.open_read(key) as f:
            header, header_frame, cut, size, cipher = cls._scan(storage, storage.where(key), f)
        handle = storage.open_append(key)
        if size != cut.offset:
            handle.truncate(cut.offset)
        # An encrypted segment goes on with its own key (named in its header), new frames with new nonces.
        writer = cls(storage, handle, header, cut, cipher, header_frame)
        writer._rebuild_copy()
        return writer, size - cut.offset

    @staticmethod
    def _scan(storage: Storage, path: str, f: BinaryIO
              ) -> tuple[SegmentHeader, bytes, _CutPoint, int, FrameCipher | None]:
        """The header (decoded, and its frame as on disk), the state after the last boundary frame that
        holds, the file's size and cipher.

        A frame whose checksum holds but whose authentication fails is no torn write: SegmentError."""
        dec = zstandard.ZstdDecompressor()
        header_frame = _frame_or_none(f, 0, dec)
        if header_frame is None or header_frame.kind != KIND_HEADER:
            raise SegmentError(path, 0, "segment header is missing or damaged")
        header = _decode_header(path, header_frame)
        cipher = file_cipher(storage.keyring, f, header_frame, path)
        crc = header_frame.disk_crc
        cut = _CutPoint(header_frame.end, crc, SegmentStats(end_lsn=header.start_lsn), {})
        relations: dict[int, Relation] = {}
        since_cut: list[Record] = []
        offset = header_frame.end
        last_end = header.start_lsn
        while (frame := _frame_or_none(f, offset, dec, crc, cipher, path)) is not None and frame.kind == KIND_DATA:
            records = _records_decoder.decode(frame.payload)
            ends = [r.end_lsn for r in records if isinstance(r, Begin)]
            if ends and (ends[0] <= last_end or ends != sorted(set(ends))):
                break  # a repeated (e.g. duplicated) frame: the tape must move forward
            last_end = ends[-1] if ends else last_end
            crc = frame.disk_crc
            for r in records:
                if type(r) is Change:
                    continue
                if type(r) is Relation:
                    relations[r.id] = r
                elif type(r) in _STATS_RECORDS:
                    since_cut.append(r)
            offset = frame.end
            if frame.boundary:
                cut = _CutPoint(offset, crc, cut.stats.after(since_cut), dict(relations))
                since_cut = []
        f.seek(0)
        return header, f.read(header_frame.size), cut, f.seek(0, os.SEEK_END), cipher

    # -- writing --------------------------------------------------------------------------
    def append(self, records: list[Record], *, boundary: bool) -> None:
        """Append one frame. `boundary`: the records end between transactions."""
        payload = _records_encoder.encode(records)
        # A small frame (a commit or two) is written as it is: zstd costs ~15 us a call whatever the
        # size, and the sealed copy compresses it within a large frame.
        compressed = self._compressor.compress(payload) if len(payload) >= COMPRESS_FROM else None
        frame = encode_frame(KIND_DATA, payload, boundary=boundary, compressed=compressed, cipher=self._cipher,
                             offset=self.offset)
        self._h.append(frame)
        self.offset += len(frame)
        self._crc = zlib.crc32(frame, self._crc)
        for r in records:
            if type(r) is Change:
                continue
            if type(r) is Relation:
                self.relations[r.id] = r
            elif type(r) in _STATS_RECORDS:
                self._since_cut.append(r)
        if boundary:
            self.stats = self.stats.after(self._since_cut)
            self._since_cut = []
            self._cut = _CutPoint(self.offset, self._crc, self.stats, dict(self.relations))
        assert self._copy is not None
        self._copy.add(records, payload, compressed, boundary=boundary)  # (last: an error leaves this consistent)

    def still_there(self) -> bool:
        """The segment's name still leads to the object being written (AppendHandle.still_there)."""
        return self._h.still_there()

    def sync(self) -> None:
        """Make every appended frame durable."""
        self._h.sync()

    def cut_to_boundary(self) -> None:
        """Drop the frames of an unfinished transaction (e.g. the connection was lost in it)."""
        cut = self._cut
        if self.offset != cut.offset:
            self._h.truncate(cut.offset)
            self._rebuild_copy()  # (it may hold frames of the dropped transaction)
        self.offset, self._crc, self.stats = cut.offset, cut.crc, cut.stats
        self.relations = dict(cut.relations)
        self._since_cut = []

    def _rebuild_copy(self) -> None:
        """Start the sealed copy again from what the open segment holds (read back, every checksum verified)."""
        if self._copy is not None:
            self._copy.close()
        self._copy = copy = SealedCopy(self.storage, self.key, self._header_frame, self._cipher)
        for frame in SegmentReader(self.storage, self.key).frames():  # (an open segment: up to its last boundary)
            copy.add(_records_decoder.decode(frame.payload), frame.payload, None, boundary=frame.boundary)

    def seal(self) -> str:
        """Publish the sealed copy (its footer written, fsynced) under the final name, then delete the open
        segment; closes the writer. Returns the sealed key. A crash in between leaves either the open
        segment alone (its copy is rebuilt on recovery) or both, and readers take the sealed one
        (Archive.segments; the next writer deletes the open one: TapeWriter)."""
        assert self.offset == self._cut.offset, "seal only between transactions"
        assert self._copy is not None
        s = self.stats
        self._copy.finish(SegmentFooter(self.header.start_lsn, s.end_lsn, s.transactions, s.changes,
                                        s.first_commit_lsn, s.last_commit_lsn, s.first_commit_time,
                                        s.last_commit_time, s.complete_time, 0, 0))
        self._h.close()
        directory = parent_key(self.key)
        final = child_key(directory, sealed_name(self.header.start_lsn, s.end_lsn))
        self.storage.rename(self._copy.key, final)
        self.storage.delete(self.key)
        # Remembered beside the tape, so verify notices when the newest sealed segments vanish.
        metadata.write(self.storage, child_key(parent_key(directory), SEALED_FILE), {"end_lsn": s.end_lsn})
        return final

    def close(self) -> None:
        self._h.close()
        if self._copy is not None:
            self._copy.close()

    def abandon(self) -> None:
        """Close without the last buffered bytes (a full disk): recovery cuts back to the last boundary."""
        for h in (self._h, self._copy):
            try:
                if h is not None:
                    h.close()
            except OSError:
                pass


def _frame_or_none(f: BinaryIO, offset: int, dec: zstandard.ZstdDecompressor, crc: int = 0,
                   cipher: FrameCipher | None = None, path: str = "") -> Frame | None:
    """None for a damaged (torn) frame; a frame that fails authentication though its checksum holds
    was changed on purpose (or read with a wrong key): SegmentError."""
    f.seek(offset)
    try:
        return read_frame(f, offset, dec, crc, cipher)
    except AuthenticationFailed as e:
        raise SegmentError(path, e.offset, e.reason) from None
    except FrameError:
        return None


def _cipher_of(storage: Storage, path: str, f: BinaryIO, dec: zstandard.ZstdDecompressor) -> FrameCipher | None:
    """The cipher of a segment from its header frame (None: not encrypted)."""
    header = _frame_or_none(f, 0, dec)
    if header is None or header.kind != KIND_HEADER:
        raise SegmentError(path, 0, "segment header is missing or damaged")
    _decode_header(path, header)
    return file_cipher(storage.keyring, f, header, path)


def _decode_header(path: str, frame: Frame) -> SegmentHeader:
    try:
        header = _header_decoder.decode(frame.payload)
    except msgspec.DecodeError as e:
        raise SegmentError(path, 0, f"undecodable segment header: {e}") from None
    if (problem := version_problem(header.format_version, header.encryption)) is not None:
        raise SegmentError(path, 0, problem)
    return header


# -- reading ----------------------------------------------------------------------------------
def scan_frame_headers(f: BinaryIO) -> Iterator[tuple[int, int, int, int]]:
    """(offset, kind, flags, size on disk) of each whole frame, from headers only (no checksums).

    Stops at the end of the file, at a frame that runs past it, or where no frame starts."""
    size = f.seek(0, os.SEEK_END)
    offset = 0
    while offset + HEADER_SIZE <= size:
        f.seek(offset)
        magic, kind, flags, _, length, _, _ = HEADER.unpack(f.read(HEADER_SIZE))
        if magic != MAGIC or offset + HEADER_SIZE + length > size:
            return
        yield offset, kind, flags, HEADER_SIZE + length
        offset += HEADER_SIZE + length


def _last_boundary(f: BinaryIO) -> int:
    end = 0
    for offset, _, flags, size in scan_frame_headers(f):
        if flags & FLAG_BOUNDARY:
            end = offset + size
    return end


def last_boundary(storage: Storage, key: str) -> int:
    """End offset of the last whole boundary frame of an open segment, from frame headers only.

    A frame being appended right now, or a torn one, ends the scan; checksums are checked later
    by the reader, up to this offset."""
    with storage.open_read(key) as f:
        return _last_boundary(f)


class FramedReader:
    """A framed file read in order (a tape segment or a snapshot table file, docs/FORMAT.md): a
    header frame, data frames, a footer frame. Every frame's checksum is verified, and a CRC-32
    chained over the file's bytes is kept for the subclass's footer check (`_footer`)."""

    what = "file"  # in messages: "<what> header is missing"
    no_footer = "file ends without a footer (truncated?)"

    def __init__(self, storage: Storage, key: str) -> None:
        self.path = storage.where(key)
        self._f = storage.open_read(key)
        self._dec = zstandard.ZstdDecompressor()
        self._cipher: FrameCipher | None = None
        try:
            self._stop = self._stop_offset()
            first = self._next_frame(0)
            if first is None or first.kind != KIND_HEADER:
                raise SegmentError(self.path, 0, f"{self.what} header is missing")
            self._header(first)
            self._cipher = file_cipher(storage.keyring, self._f, first, self.path)
        except BaseException:
            self._f.close()
            raise
        self._offset, self._crc = first.end, first.disk_crc

    def _stop_offset(self) -> int | None:
        """Read only up to here (None: to the footer)."""
        return None

    def _header(self, frame: Frame) -> None:
        raise NotImplementedError

    def _footer(self, frame: Frame) -> None:
        """Decode and check the footer against the data read (self._crc: CRC-32 of every byte before it)."""
        raise NotImplementedError

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

    def _next_frame(self, offset: int, crc: int = 0) -> Frame | None:
        if self._stop is not None and offset >= self._stop:
            return None
        self._f.seek(offset)
        try:
            return read_frame(self._f, offset, self._dec, crc, self._cipher)
        except FrameError as e:
            raise SegmentError(self.path, e.offset, e.reason) from None

    def frames(self) -> Iterator[Frame]:
        """Data frames in order; the footer, when reached, is checked and ends them."""
        try:
            while (frame := self._next_frame(self._offset, self._crc)) is not None:
                if frame.kind == KIND_FOOTER:
                    self._footer(frame)
                    if self._f.seek(0, os.SEEK_END) != frame.end:
                        raise SegmentError(self.path, frame.end, "unexpected bytes after the footer")
                    return
                if frame.kind != KIND_DATA:
                    raise SegmentError(self.path, frame.offset, f"unexpected {KIND_NAMES[frame.kind]} frame")
                self._crc, self._offset = frame.disk_crc, frame.end
                yield frame
            if self._stop is None:
                raise SegmentError(self.path, self._offset, self.no_footer)
        finally:
            self._f.close()


class SegmentReader(FramedReader):
    """Reads one segment's records in order, verifying every frame checksum.

    A sealed segment is checked against its footer (data checksum and length) when the
    records are exhausted; an open one is read up to its last transaction boundary."""

    what = "segment"
    no_footer = "sealed segment ends without a footer (truncated?)"

    def __init__(self, storage: Storage, key: str) -> None:
        self.is_open = key.endswith(OPEN_SUFFIX)
        self.footer: SegmentFooter | None = None
        super().__init__(storage, key)

    def _stop_offset(self) -> int | None:
        return _last_boundary(self._f) if self.is_open else None

    def _header(self, frame: Frame) -> None:
        self.header = _decode_header(self.path, frame)

    def records(self) -> Iterator[Record]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Record]]:
        """The records frame by frame (fewer generator steps for a caller that reads them all)."""
        for frame in self.frames():
            try:
                yield _records_decoder.decode(frame.payload)
            except msgspec.DecodeError as e:
                raise SegmentError(self.path, frame.offset, f"undecodable records: {e}") from None

    def _footer(self, frame: Frame) -> None:
        try:
            footer = _footer_decoder.decode(frame.payload)
        except msgspec.DecodeError as e:
            raise SegmentError(self.path, frame.offset, f"undecodable footer: {e}") from None
        if footer.data_bytes != frame.offset or footer.data_crc32 != self._crc:  # crc up to the footer
            raise SegmentError(self.path, frame.offset, "footer does not match the segment's data")
        self.footer = footer


def read_footer(storage: Storage, key: str) -> SegmentFooter:
    """A sealed segment's footer, found from frame headers alone (no checksum pass: see verify)."""
    path = storage.where(key)
    with storage.open_read(key) as f:
        last, end = None, 0
        for offset, kind, _, size in scan_frame_headers(f):
            last, end = (offset, kind), offset + size
        if last is None or last[1] != KIND_FOOTER or end != f.seek(0, os.SEEK_END):
            raise SegmentError(path, end, "sealed segment has no footer (truncated or damaged)")
        dec = zstandard.ZstdDecompressor()
        frame = _frame_or_none(f, last[0], dec, 0, _cipher_of(storage, path, f, dec), path)
        if frame is None:
            raise SegmentError(path, last[0], "damaged footer frame")
    assert frame is not None
    return _footer_decoder.decode(frame.payload)


def footer_stats(f: SegmentFooter) -> SegmentStats:
    return SegmentStats(f.end_lsn, f.transactions, f.changes, f.first_commit_lsn, f.last_commit_lsn,
                        f.first_commit_time, f.last_commit_time, f.complete_time)


def open_segment_stats(storage: Storage, key: str, start_lsn: int) -> SegmentStats:
    """What an open segment holds up to its last transaction boundary."""
    reader = SegmentReader(storage, key)
    return SegmentStats(end_lsn=start_lsn).after([r for r in reader.records() if isinstance(r, _STATS_RECORDS)])


@dataclass(frozen=True)
class OpenProgress:
    """How far open_segment_progress read an open segment: its stats up to `offset`, the end of the
    boundary frame whose header (its checksum included) is `last_header`."""
    key: str
    offset: int
    stats: SegmentStats
    last_header: bytes = b""


def open_segment_progress(storage: Storage, key: str, start_lsn: int, since: OpenProgress | None = None
                          ) -> OpenProgress:
    """open_segment_stats, decoding only the frames after `since`: an open segment only grows, and a
    repair after a crash cuts it back only to a boundary at or after every frame counted before; a
    `since` whose last frame is not there any more, byte for byte, is ignored (the segment is read
    whole)."""
    path = storage.where(key)
    with storage.open_read(key) as f:
        headers = list(scan_frame_headers(f))

        def header_at(offset: int) -> bytes:
            f.seek(offset)
            return f.read(HEADER_SIZE)
        resume = since is not None and since.key == key and any(
            o + size == since.offset and flags & FLAG_BOUNDARY and header_at(o) == since.last_header
            for o, _, flags, size in headers)
        stats, done = (since.stats, since.offset) if resume and since else (SegmentStats(end_lsn=start_lsn), 0)
        last = since.last_header if resume and since else b""
        dec = zstandard.ZstdDecompressor()
        cipher = _cipher_of(storage, path, f, dec) if headers else None
        pending: list[Record] = []
        for offset, kind, flags, size in headers:
            if offset < done or kind != KIND_DATA:
                continue
            frame = _frame_or_none(f, offset, dec, 0, cipher, path)
            if frame is None:
                raise SegmentError(path, offset, "damaged frame")
            pending.extend(r for r in _records_decoder.decode(frame.payload) if isinstance(r, _STATS_RECORDS))
            if flags & FLAG_BOUNDARY:
                stats, pending, done, last = stats.after(pending), [], offset + size, header_at(offset)
    return OpenProgress(key, done, stats, last)


def segment_end(storage: Storage, key: str, start_lsn: int) -> SegmentStats:
    """End LSN and completeness time of a segment: a sealed one's footer, an open one's last boundary frames."""
    if key.endswith(OPEN_SUFFIX):
        return open_segment_end(storage, key, start_lsn)
    return footer_stats(read_footer(storage, key))


def segment_stats(storage: Storage, key: str, start_lsn: int) -> SegmentStats:
    """Counts, end LSN and times of a segment: a sealed one's footer, an open one read whole."""
    if key.endswith(OPEN_SUFFIX):
        return open_segment_stats(storage, key, start_lsn)
    return footer_stats(read_footer(storage, key))


def open_segment_end(storage: Storage, key: str, start_lsn: int) -> SegmentStats:
    """End LSN and completeness time of an open segment from its last boundary frames only.

    Cheaper than open_segment_stats (no counts); the time may be a little conservative, as
    commit timestamps are not strictly monotonic."""
    path = storage.where(key)
    with storage.open_read(key) as f:
        frames = [(o, size) for o, kind, flags, size in scan_frame_headers(f)
                  if kind == KIND_DATA and flags & FLAG_BOUNDARY]
        dec = zstandard.ZstdDecompressor()
        cipher = _cipher_of(storage, path, f, dec) if frames else None
        end, complete = start_lsn, None
        for frame_offset, _ in reversed(frames):
            frame = _frame_or_none(f, frame_offset, dec, 0, cipher, path)
            if frame is None:
                raise SegmentError(path, frame_offset, "damaged frame")
            for r in _records_decoder.decode(frame.payload):
                if type(r) is Commit:
                    end = max(end, r.end_lsn)
                elif type(r) is Position:
                    end = max(end, r.lsn)
                    complete = max(complete or 0, r.time)
                elif type(r) is Begin:
                    complete = max(complete or 0, r.commit_time)
            if end > start_lsn and complete is not None:
                break
    return SegmentStats(end_lsn=end, complete_time=complete)
