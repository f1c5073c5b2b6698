"""Replay's spill files: the folded state, and base rows being sorted, written to disk in sorted runs.

Every byte replay writes outside the target goes through this module. A run is a file of blocks, each:
length and CRC-32 of the payload (two big-endian u32), then the payload: a zstd-compressed msgpack
array of records. When the archive is encrypted at rest (`SpillDir(encrypt=True)`), the payload is
that, sealed with AES-256-GCM under a key made for this replay and held only in its memory: a 12-byte
random nonce, then the ciphertext and tag, authenticated with the file's name and the block's offset.
The spill files then hold no row value in the clear, and no key of the keyring is used for them. A record is a
list whose first element is its sort key (bytes: a row's key fields as the fold keys it, or a whole
line), in ascending byte order; a run of folded state holds each key once (`merge_runs`), a run of
base rows being sorted may repeat one (`sorted_records`).

Files are created 0600 in a directory of their own (0700) under the work directory; `SpillDir.close()`
removes the directory and everything in it, and replay calls it at the end and on any error.
"""

from __future__ import annotations

import bisect
import heapq
import os
import shutil
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import msgspec
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pgtape.durable import create_private, make_dirs_durably
from pgtape.errors import PgtapeError

Record = list[Any]  # [sort key: bytes, ...]

_BLOCK = struct.Struct(">II")  # payload length, CRC-32 of the payload
BLOCK_RECORDS = 8192
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[list[Any]])
_compress = zstandard.ZstdCompressor(level=1)
_decompress = zstandard.ZstdDecompressor()
RECORD_OVERHEAD = 160  # bytes of Python objects per sorted record held in memory (list, tuple slot, two bytes)


@dataclass
class Run:
    id: int  # runs of one fold count up: a higher id holds newer states
    path: Path
    records: int
    size: int  # bytes on disk
    aead: AESGCM | None = None  # its blocks are sealed with this (SpillDir.encrypt)


@dataclass
class SpillDir:
    """Where one replay's runs go: a private directory created on first use, removed by close()."""

    work_dir: Path | None = None  # None: the system's temporary directory (TMPDIR)
    encrypt: bool = False  # seal the blocks with a key of this replay's own (the archive is encrypted)
    path: Path | None = None
    runs_written: int = 0
    bytes_written: int = 0
    peak_bytes: int = 0  # most bytes on disk at once
    _live_bytes: int = 0
    _seq: int = 0
    _tables: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # tables load on threads of their own
    _aead: AESGCM | None = None

    def __post_init__(self) -> None:
        if self.encrypt:
            self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def _dir(self) -> Path:
        with self._lock:
            return self._make_dir()

    def _make_dir(self) -> Path:
        if self.path is None:
            base = self.work_dir or Path(tempfile.gettempdir())
            try:
                make_dirs_durably(base)  # (the --output directory, say: its files must outlive a crash)
                self.path = Path(tempfile.mkdtemp(prefix="pgtape-spill-", dir=base))  # mode 0700
                os.chmod(self.path, 0o700)
            except OSError as e:
                raise PgtapeError(f"cannot create a spill directory in {base}: {e.strerror or e} "
                                  "(choose another with --work-dir)") from None
        return self.path

    def write_run(self, run_id: int, records: Iterable[Record], table: str = "") -> Run:
        """`records` in ascending key order, each key once."""
        directory = self._dir()
        with self._lock:
            self._seq += 1
            path = directory / f"run-{self._seq:06d}.spill"
        n = size = 0
        try:
            with os.fdopen(create_private(path), "wb") as f:
                it = iter(records)
                while block := list(islice(it, BLOCK_RECORDS)):
                    size += _write_block(f, block, self._aead, path.name, size)
                    n += len(block)
        except OSError as e:
            self.remove(Run(run_id, path, 0, 0))
            raise PgtapeError(f"cannot write spill file {path}: {e.strerror or e} (free space, or --work-dir "
                              "elsewhere, or a larger --memory)") from None
        with self._lock:
            self.runs_written += 1
            self.bytes_written += size
            self._live_bytes += size
            self.peak_bytes = max(self.peak_bytes, self._live_bytes)
            if table:
                self._tables.add(table)
        return Run(run_id, path, n, size, self._aead)

    def remove(self, run: Run) -> None:
        try:
            os.unlink(run.path)
        except FileNotFoundError:
            return
        with self._lock:
            self._live_bytes -= run.size

    @property
    def tables(self) -> list[str]:
        return sorted(self._tables)

    def close(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
            self._live_bytes = 0


def _aad(name: str, offset: int) -> bytes:
    return name.encode() + offset.to_bytes(8, "big")


def _write_block(f: Any, block: list[Record], aead: AESGCM | None, name: str, offset: int) -> int:
    payload = _compress.compress(_encoder.encode(block))
    if aead is not None:
        nonce = os.urandom(12)
        payload = nonce + aead.encrypt(nonce, payload, _aad(name, offset))
    f.write(_BLOCK.pack(len(payload), zlib.crc32(payload)))
    f.write(payload)
    return _BLOCK.size + len(payload)


def _read_blocks(path: Path, aead: AESGCM | None) -> Iterator[list[Record]]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise PgtapeError(f"cannot read spill file {path}: {e.strerror or e}") from None
    with f:
        offset = 0
        while head := f.read(_BLOCK.size):
            if len(head) < _BLOCK.size:
                raise PgtapeError(f"spill file {path} is damaged at offset {offset}: truncated block header")
            length, crc = _BLOCK.unpack(head)
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                raise PgtapeError(f"spill file {path} is damaged at offset {offset}: checksum mismatch "
                                  "(is the work directory's disk failing?)")
            if aead is not None:
                try:
                    payload = aead.decrypt(payload[:12], payload[12:], _aad(path.name, offset))
                except InvalidTag:
                    raise PgtapeError(f"spill file {path} is damaged at offset {offset}: "
                                      "authentication failed") from None
            offset += _BLOCK.size + length
            yield _decoder.decode(_decompress.decompress(payload))


def read_run(run: Run) -> Iterator[Record]:
    for block in _read_blocks(run.path, run.aead):
        yield from block


def merge_runs(runs: list[Run]) -> Iterator[tuple[bytes, list[tuple[int, Record]]]]:
    """Every key of the runs once, ascending, with its records newest run first: (key, [(run id, record)])."""
    def tagged(run: Run) -> Iterator[tuple[bytes, int, Record]]:
        neg = -run.id
        for r in read_run(run):
            yield r[0], neg, r

    # Within a run a key is unique, so (key, -run id) never ties and records are never compared.
    merged = heapq.merge(*[tagged(r) for r in runs])
    current: bytes | None = None
    group: list[tuple[int, Record]] = []
    for key, neg, rec in merged:
        if key != current:
            if current is not None:
                yield current, group
            current, group = key, []
        group.append((-neg, rec))
    if current is not None:
        yield current, group


@dataclass
class Window:
    """A key range of the merged runs: every record of every run with a key in it, run by run, oldest
    run first (so dict.update with each in turn keeps the newest state of each key)."""

    runs: list[tuple[int, list[bytes], list[Record]]]  # (run id, keys, records), keys ascending in each
    bound: bytes | None  # the range's last key (None: the last window, to the end)


def merge_windows(runs: list[Run]) -> Iterator[Window]:
    """The runs a key range at a time: every record up to the smallest last key of the runs' current
    blocks is in those blocks, so each range is complete; handed over as slices, per run, oldest first."""
    blocks = [_read_blocks(r.path, r.aead) for r in runs]
    buffers: list[tuple[list[bytes], list[Record], int]] = []  # per run: keys, records, next index
    live: list[int] = []
    for i, it in enumerate(blocks):
        block = next(it, None)
        if block is not None:
            buffers.append(([r[0] for r in block], block, 0))
            live.append(i)
        else:
            buffers.append(([], [], 0))
    while live:
        bound: bytes | None = min(buffers[i][0][-1] for i in live)
        parts: list[tuple[int, list[bytes], list[Record]]] = []
        still: list[int] = []
        for i in live:
            ks, recs, start = buffers[i]
            end = bisect.bisect_right(ks, bound, start) if bound is not None else len(ks)
            parts.append((runs[i].id, ks[start:end], recs[start:end]))
            if end == len(ks):
                block = next(blocks[i], None)
                if block is None:
                    continue
                buffers[i] = ([r[0] for r in block], block, 0)
            else:
                buffers[i] = (ks, recs, end)
            still.append(i)
        live = still
        parts.sort(key=lambda p: p[0])
        yield Window(parts, bound if live else None)


def sorted_records(records: Iterable[Record], spill: SpillDir, chunk_bytes: int,
                   size_of: Callable[[Record], int]) -> Iterator[Record]:
    """`records` in ascending key order (keys may repeat: equal keys come out in any order), sorted in
    memory up to `chunk_bytes` at a time (by `size_of`), in runs on disk beyond."""
    chunk: list[Record] = []
    used = 0
    runs: list[Run] = []
    try:
        for r in records:
            chunk.append(r)
            used += size_of(r)
            if used >= chunk_bytes:
                chunk.sort(key=_first)
                runs.append(spill.write_run(len(runs), chunk))
                chunk, used = [], 0
        chunk.sort(key=_first)
        if not runs:
            yield from chunk
            return
        if chunk:
            runs.append(spill.write_run(len(runs), chunk))
        del chunk
        yield from heapq.merge(*[read_run(run) for run in runs], key=_first)
    finally:
        for run in runs:
            spill.remove(run)


def _first(r: Record) -> bytes:
    k: bytes = r[0]
    return k



def join(base: Iterator[Record], groups: Iterator[tuple[bytes, list[tuple[int, Record]]]]
         ) -> Iterator[tuple[bytes, list[tuple[int, Record]] | None, Record | None]]:
    """Two key-ordered streams, each key once in each, side by side: (key, its group or None, its base
    record or None)."""
    b = next(base, None)
    g = next(groups, None)
    while b is not None or g is not None:
        if g is None or (b is not None and b[0] < g[0]):
            assert b is not None
            yield b[0], None, b
            b = next(base, None)
        elif b is None or g[0] < b[0]:
            yield g[0], g[1], None
            g = next(groups, None)
        else:
            yield g[0], g[1], b
            b = next(base, None)
            g = next(groups, None)
