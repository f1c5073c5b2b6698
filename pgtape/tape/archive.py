"""The archive directory: its identity, its generations and each generation's tape.

    <archive>/ARCHIVE.json                  identity: system id, database, slot, current generation
    <archive>/generations/0001/GENERATION.json
    <archive>/generations/0001/tape/<start>-<end>.tape ... <start>.tape.open

A generation is one unbroken stream from one slot; nothing ever joins two generations.
Within a generation, segments are contiguous: each starts where the previous one ended.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from pgtape import metadata
from pgtape.durable import make_dirs_durably
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn
from pgtape.tape import FORMAT_VERSION
from pgtape.tape.segment import OPEN_RE, SEALED_RE


class ArchiveIdentity(msgspec.Struct):
    format_version: int
    system_id: str
    database: str
    slot: str
    generation: int  # the current one
    created_at: int  # µs UTC


class Generation(msgspec.Struct):
    id: int
    system_id: str
    database: str
    slot: str
    start_lsn: int  # the slot's consistent point: the tape holds what committed after it
    created_at: int
    reason: str
    tables: list[str]  # captured tables, schema-qualified


class Pruned(msgspec.Struct):
    """PRUNED.json: what `pgtape prune` deletes on purpose, so verify tells "pruned" from "missing".

    Written before anything is deleted (snapshots/prune.py), so it may list what still exists."""

    deleted_generations: list[int] = []  # whole older generations (may still be partly present)
    # generation -> where its tape begins: segments ending at or before it may be gone
    tape_start_lsn: dict[int, int] = {}


@dataclass(frozen=True)
class SegmentFile:
    path: Path
    start_lsn: int
    end_lsn: int | None  # None while open

    @property
    def is_open(self) -> bool:
        return self.end_lsn is None


class Archive:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def existing(cls, path: Path) -> Archive:
        """An archive that must already hold a tape (for readers: log, status, ...)."""
        archive = cls(path)
        archive.require_directory()
        if not path.is_dir():
            raise PgtapeError(f"archive {path} does not exist: check --archive / PGTAPE_ARCHIVE")
        archive.identity()
        return archive

    def require_directory(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise PgtapeError(f"archive path {self.path} exists but is not a directory: choose another --archive")

    def lock_capture(self) -> int:
        """The archive's writer lock (capture, init): returns the fd that holds it."""
        self.require_directory()
        fd = os.open(self.path / "capture.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PgtapeError(f"pgtape capture (or init) is running on {self.path}: stop it first") from None
        return fd

    @property
    def identity_file(self) -> Path:
        return self.path / "ARCHIVE.json"

    def exists(self) -> bool:
        return self.identity_file.exists()

    def identity(self) -> ArchiveIdentity:
        if not self.exists():
            raise PgtapeError(f"{self.path} is not a pgtape archive yet (no ARCHIVE.json): "
                              "run pgtape init (or pgtape capture) first")
        try:
            ident = _load(self.identity_file, ArchiveIdentity)
        except metadata.DamagedMetadata:
            ident = _older_format(self.identity_file)  # an archive another pgtape wrote reads as damaged
        if ident.format_version != FORMAT_VERSION:
            raise PgtapeError(f"{self.path} holds tape format {ident.format_version}; this pgtape reads format "
                              f"{FORMAT_VERSION} (docs/FORMAT.md): use the pgtape that wrote it, or start a new "
                              "archive with pgtape init --archive NEW_DIR")
        return ident

    @property
    def pruned_file(self) -> Path:
        return self.path / "PRUNED.json"

    def pruned(self) -> Pruned:
        return _load(self.pruned_file, Pruned) if self.pruned_file.exists() else Pruned()

    def generation_dir(self, gen: int) -> Path:
        return self.path / "generations" / f"{gen:04d}"

    def tape_dir(self, gen: int) -> Path:
        return self.generation_dir(gen) / "tape"

    def generation(self, gen: int) -> Generation:
        return _load(self.generation_dir(gen) / "GENERATION.json", Generation)

    def start_generation(self, system_id: str, database: str, slot: str, start_lsn: int, reason: str,
                         tables: list[str]) -> Generation:
        """Record a new generation and make it current (durably, in that order)."""
        current = self.identity().generation if self.exists() else 0
        now = time.time_ns() // 1000
        gen = Generation(current + 1, system_id, database, slot, start_lsn, now, reason, tables)
        make_dirs_durably(self.tape_dir(gen.id))
        metadata.write(self.generation_dir(gen.id) / "GENERATION.json", gen)
        created = self.identity().created_at if self.exists() else now
        metadata.write(self.identity_file, ArchiveIdentity(FORMAT_VERSION, system_id, database, slot, gen.id, created))
        return gen

    def segments(self, gen: int) -> list[SegmentFile]:
        """The generation's segment files ordered by start LSN (an open one sorts last)."""
        files: list[SegmentFile] = []
        directory = self.tape_dir(gen)
        if not directory.is_dir():
            return files
        for p in directory.iterdir():
            if m := SEALED_RE.match(p.name):
                files.append(SegmentFile(p, int(m.group(1), 16), int(m.group(2), 16)))
            elif m := OPEN_RE.match(p.name):
                files.append(SegmentFile(p, int(m.group(1), 16), None))
        files.sort(key=lambda s: (s.start_lsn, s.is_open))
        return files

    def tape_is_empty(self, gen: int) -> bool:
        """No transaction captured yet in this generation."""
        from pgtape.tape.segment import open_segment_stats
        return all(s.is_open and open_segment_stats(s.path, s.start_lsn).transactions == 0
                   for s in self.segments(gen))

    def continuity_problems(self, gen: int) -> list[str]:
        """Gaps, overlaps and misplaced open segments in a generation's tape, one line each."""
        problems: list[str] = []
        expected = self.generation(gen).start_lsn
        pruned_to = self.pruned().tape_start_lsn.get(gen, expected)
        segs = self.segments(gen)
        for i, s in enumerate(segs):
            if i == 0 and expected < s.start_lsn <= pruned_to:
                expected = s.start_lsn  # prune deleted the segments before it, oldest first
            if s.start_lsn != expected:
                kind = "gap" if s.start_lsn > expected else "overlap"
                problems.append(f"{kind} in generation {gen}: tape covers up to {format_lsn(expected)} "
                                f"but {s.path.name} starts at {format_lsn(s.start_lsn)}")
            if s.is_open and i != len(segs) - 1:
                problems.append(f"{s.path.name} is open but is not the last segment of generation {gen}")
            if s.end_lsn is not None:
                expected = s.end_lsn
        return problems


def _load(path: Path, kind: type[metadata.T]) -> metadata.T:
    try:
        return metadata.read(path, kind)
    except FileNotFoundError:
        raise PgtapeError(f"{path} is missing: the archive is incomplete") from None


def _older_format(path: Path) -> ArchiveIdentity:
    """ARCHIVE.json of another format version (no checksum envelope), for the message that says so."""
    try:
        ident = msgspec.json.decode(path.read_bytes(), type=ArchiveIdentity)
    except msgspec.DecodeError:
        ident = None
    if ident is None or ident.format_version == FORMAT_VERSION:
        return _load(path, ArchiveIdentity)  # (raises: damaged)
    return ident
