"""Replay's spill files: the folded state, and base rows being sorted, written to disk in sorted runs.

Every byte replay writes outside the target goes through this module. A run is a sequence of
(key, value) pairs, keys ascending in byte order: a run of folded state holds each key once (a
fold's dict), a run of base rows being sorted may repeat one (`sorted_pairs`). Keys are bytes (a
row's key fields as the fold keys it, or a whole line); values are what msgpack holds (a line, None,
a count, a list). A run's file is a sequence of blocks, each: length and CRC-32 of the payload (two
big-endian u32), then the payload: a zstd-compressed msgpack array [keys, values], column by column.
A column whose items are all bytes without LF (keys, COPY text lines: the usual case) is one bytes
string, the items joined by LF, so that writing and reading a block make no per-record object but
the items themselves; any other column is a msgpack array (values: nil when a run has none).
Blocks hold about BLOCK_BYTES of keys and values, at most twice that (or one record), so what a merge
holds per run, one decoded block, is bounded (`Run.block_cost`), and `reduce_runs` keeps the runs
merged at once within a memory allowance.

When the archive is encrypted at rest (`SpillDir(encrypt=True)`), the payload is that, sealed with
AES-256-GCM under a key made for this replay and held only in its memory: a 12-byte random nonce,
then the ciphertext and tag, authenticated with the file's name and the block's offset. The spill
files then hold no row value in the clear, and no key of the keyring is used for them.

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
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import msgspec
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pgtape.durable import create_private, make_dirs_durably
from pgtape.errors import PgtapeError

Keys = list[bytes]
Values = list[Any]
Pair = tuple[bytes, Any]

_BLOCK = struct.Struct(">II")  # payload length, CRC-32 of the payload
BLOCK_BYTES = 64 << 10  # keys and values per block (a block holds one record at least)
RECORD_OVERHEAD = 100  # bytes of Python objects per decoded record besides its data (two bytes objects, two slots)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[Any, Any])
# zstandard's (de)compressors must not be used by two threads at once, and tables load on threads of their
# own (sinks/schema.py), each sorting its base into runs and merging them: one pair per thread.
_zstd = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    try:
        return _zstd.compressor
    except AttributeError:
        _zstd.compressor = zstandard.ZstdCompressor(level=1)
        return _zstd.compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    try:
        return _zstd.decompressor
    except AttributeError:
        _zstd.decompressor = zstandard.ZstdDecompressor()
        return _zstd.decompressor


@dataclass
class Run:
    id: int  # runs of one fold count up: a higher id holds newer states
    path: Path
    records: int
    size: int  # bytes on disk
    aead: AESGCM | None = None  # its blocks are sealed with this (SpillDir.encrypt)
    block_cost: int = 0  # memory one decoded block of it takes at most: what a merge holds of it


@dataclass
class SpillDir:
    """Where one replay's runs go: a private directory created on first use, removed by close()."""

    work_dir: Path | None = None  # None: the system's temporary directory (TMPDIR)
    encrypt: bool = False  # seal the blocks with a key of this replay's own (the archive is encrypted)
    path: Path | None = None
    runs_written: int = 0
    bytes_written: int = 0
    peak_bytes: int = 0  # most bytes on disk at once
    merge_passes: int = 0  # runs merged into one to keep a merge within its memory (reduce_runs)
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

    def write_run(self, run_id: int, keys: Keys, values: Values | None, table: str = "") -> Run:
        """`keys` ascending (for a fold's state: each once), `values` beside them (None: a run of keys only)."""
        return self.write_chunks(run_id, [(keys, values)], table)

    def write_chunks(self, run_id: int, chunks: Iterable[tuple[Keys, Values | None]], table: str = "") -> Run:
        """A run from consecutive chunks of (keys, values), cut into blocks of about BLOCK_BYTES (the
        chunks' records together in key order)."""
        directory = self._dir()
        with self._lock:
            self._seq += 1
            path = directory / f"run-{self._seq:06d}.spill"
        n = size = cost = 0
        try:
            with os.fdopen(create_private(path), "wb") as f:
                for keys, values in chunks:
                    for data, records in _encoded(keys, values):
                        size += _write_block(f, data, self._aead, path.name, size)
                        n += records
                        cost = max(cost, len(data) + records * RECORD_OVERHEAD)
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
        return Run(run_id, path, n, size, self._aead, cost)

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


def _encoded(keys: Keys, values: Values | None) -> Iterator[tuple[bytes, int]]:
    """(msgpack of a block, its records) for consecutive records of about BLOCK_BYTES each: as many
    records a block as the run's average size gives; a block more than twice that (rows of uneven
    sizes) is split in two, again if need be."""
    n = len(keys)
    if not n:
        return
    try:
        size = sum(map(len, keys)) + (sum(map(len, filter(None, values))) if values is not None else 0)
    except TypeError:  # (values that are not bytes: counts, partial rows)
        size = sum(map(len, keys)) + 16 * n
    per = max(1, BLOCK_BYTES * n // max(size, 1))
    for lo in range(0, n, per):
        yield from _split(keys[lo:lo + per], values[lo:lo + per] if values is not None else None)


def _split(keys: Keys, values: Values | None) -> Iterator[tuple[bytes, int]]:
    data = _encoder.encode((_column(keys), _column(values) if values is not None else None))
    if len(data) <= 2 * BLOCK_BYTES or len(keys) == 1:
        yield data, len(keys)
        return
    half = len(keys) // 2
    yield from _split(keys[:half], values[:half] if values is not None else None)
    yield from _split(keys[half:], values[half:] if values is not None else None)


def _column(items: Sequence[Any]) -> Any:
    """Items joined by LF when all are bytes without LF (read back with split), else themselves."""
    try:
        joined = b"\n".join(items)
    except TypeError:
        return items
    return joined if joined.count(b"\n") == len(items) - 1 else items


def _items(column: Any) -> list[Any]:
    return column.split(b"\n") if type(column) is bytes else column


def _aad(name: str, offset: int) -> bytes:
    return name.encode() + offset.to_bytes(8, "big")


def _write_block(f: Any, data: bytes, aead: AESGCM | None, name: str, offset: int) -> int:
    payload = _compressor().compress(data)
    if aead is not None:
        nonce = os.urandom(12)
        payload = nonce + aead.encrypt(nonce, payload, _aad(name, offset))
    f.write(_BLOCK.pack(len(payload), zlib.crc32(payload)))
    f.write(payload)
    return _BLOCK.size + len(payload)


def read_blocks(run: Run) -> Iterator[tuple[Keys, Values | None]]:
    """The run's blocks as (keys, values) (values None: a run of keys only)."""
    path, aead = run.path, run.aead
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
            keys, values = _decoder.decode(_decompressor().decompress(payload))
            yield _items(keys), _items(values) if values is not None else None


def read_run(run: Run) -> Iterator[Pair]:
    for keys, values in read_blocks(run):
        yield from zip(keys, values if values is not None else repeat(None))


def merge_runs(runs: list[Run]) -> Iterator[tuple[bytes, list[tuple[int, Any]]]]:
    """Every key of the runs once, ascending, with its values newest run first: (key, [(run id, value)])."""
    def tagged(run: Run) -> Iterator[tuple[bytes, int, int, Any]]:
        neg = -run.id
        for i, (k, v) in enumerate(read_run(run)):
            yield k, neg, i, v  # (i: values are never compared)

    current: bytes | None = None
    group: list[tuple[int, Any]] = []
    for key, neg, _, value in heapq.merge(*[tagged(r) for r in runs]):
        if key != current:
            if current is not None:
                yield current, group
            current, group = key, []
        group.append((-neg, value))
    if current is not None:
        yield current, group


@dataclass
class Window:
    """A key range of the merged runs: every record of every run with a key in it, run by run, oldest
    run first (so dict.update with each in turn keeps the newest state of each key)."""

    runs: list[tuple[int, Keys, Values]]  # (run id, keys, values), keys ascending in each
    bound: bytes | None  # the range's last key (None: the last window, to the end)


def merge_windows(runs: list[Run]) -> Iterator[Window]:
    """The runs a key range at a time: every record up to the smallest last key of the runs' current
    blocks is in those blocks, so each range is complete; handed over as slices, per run, oldest first.
    Holds one decoded block per run (`Run.block_cost`; see reduce_runs)."""
    blocks = [read_blocks(r) for r in runs]
    buffers: list[tuple[Keys, Values, int]] = []  # per run: keys, values, next index
    live: list[int] = []
    for i, it in enumerate(blocks):
        ks, vs = next(it, ([], []))
        buffers.append((ks, vs or [None] * len(ks), 0))
        if ks:
            live.append(i)
    while live:
        bound: bytes | None = min(buffers[i][0][-1] for i in live)
        parts: list[tuple[int, Keys, Values]] = []
        still: list[int] = []
        for i in live:
            ks, vs, start = buffers[i]
            end = bisect.bisect_right(ks, bound, start) if bound is not None else len(ks)
            parts.append((runs[i].id, ks[start:end], vs[start:end]))
            if end == len(ks):
                ks, nvs = next(blocks[i], ([], []))
                if not ks:
                    continue
                buffers[i] = (ks, nvs or [None] * len(ks), 0)
            else:
                buffers[i] = (ks, vs, end)
            still.append(i)
        live = still
        parts.sort(key=itemgetter(0))
        yield Window(parts, bound if live else None)


def reduce_runs(runs: list[Run], allowance: int, spill: SpillDir,
                squash: Callable[[Window], tuple[Keys, Values | None]] | None = None,
                barriers: Iterable[int] = ()) -> list[Run]:
    """Runs few enough that a merge of them holds at most `allowance` bytes of decoded blocks (two runs
    at least): consecutive runs merged into one, oldest first, in passes of as many as fit at once
    (a merge of many runs takes a few passes: log of their number). `squash` gives the merged keys
    and values of a window (a fold's rules: each key once); None keeps every record. A merged run
    takes its newest run's id, and never spans a barrier b (runs below b with runs at or above it):
    something still needs the state as of before run b."""
    runs = sorted(runs, key=lambda r: r.id)
    walls = sorted(set(barriers))
    while len(runs) > 1 and sum(r.block_cost for r in runs) > allowance:
        fan_in = max(2, allowance // max(max(r.block_cost for r in runs), 1))
        excess = len(runs) - fan_in  # runs to do away with (at least one: the sum is over the allowance)
        out: list[Run] = []
        i = 0
        while i < len(runs):
            group = [runs[i]]
            span = bisect.bisect_right(walls, runs[i].id)
            while (i + len(group) < len(runs) and len(group) < fan_in and len(group) <= max(excess, 1)
                   and bisect.bisect_right(walls, runs[i + len(group)].id) == span):
                group.append(runs[i + len(group)])
            i += len(group)
            if len(group) == 1 or excess <= 0:
                out.extend(group)
                continue
            out.append(spill.write_chunks(group[-1].id, _merged_chunks(group, squash)))
            spill.merge_passes += 1
            excess -= len(group) - 1
            for r in group:
                spill.remove(r)
        if len(out) == len(runs):
            break  # (barriers between all of them: a merge beyond the allowance, rather than no result)
        runs = out
    return runs


def _merged_chunks(group: list[Run], squash: Callable[[Window], tuple[Keys, Values | None]] | None
                   ) -> Iterator[tuple[Keys, Values | None]]:
    for w in merge_windows(group):
        if squash is not None:
            yield squash(w)
            continue
        pairs = sorted((p for _, ks, vs in w.runs for p in zip(ks, vs)), key=itemgetter(0))
        yield [k for k, _ in pairs], [v for _, v in pairs]


def sorted_pairs(pairs: Iterable[Pair], spill: SpillDir, chunk_bytes: int, size_of: Callable[[Pair], int],
                 merge_bytes: int) -> Iterator[Pair]:
    """`pairs` (key, value) in ascending key order (keys may repeat: equal keys come out in any order),
    sorted in memory up to `chunk_bytes` at a time (by `size_of`), in runs on disk beyond, merged
    holding at most `merge_bytes` of their blocks (reduce_runs)."""
    chunk: list[Pair] = []
    used = 0
    runs: list[Run] = []

    def write(chunk: list[Pair]) -> None:
        chunk.sort(key=itemgetter(0))
        runs.append(spill.write_run(len(runs), [k for k, _ in chunk], [v for _, v in chunk]))

    try:
        for p in pairs:
            chunk.append(p)
            used += size_of(p)
            if used >= chunk_bytes:
                write(chunk)
                chunk, used = [], 0
        if not runs:
            chunk.sort(key=itemgetter(0))
            yield from chunk
            return
        if chunk:
            write(chunk)
        del chunk
        runs[:] = reduce_runs(runs, merge_bytes, spill)
        yield from heapq.merge(*[read_run(run) for run in runs], key=itemgetter(0))
    finally:
        for run in runs:
            spill.remove(run)


def join(base: Iterator[Pair], groups: Iterator[tuple[bytes, list[tuple[int, Any]]]]
         ) -> Iterator[tuple[bytes, list[tuple[int, Any]] | None, Pair | None]]:
    """Two key-ordered streams, each key once in each, side by side: (key, its group or None, its base
    pair or None)."""
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
