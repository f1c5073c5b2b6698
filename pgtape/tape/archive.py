"""The archive directory: its identity, its generations and each generation's tape.

    <archive>/ARCHIVE.json                  identity: system id, database, slot, current generation
    <archive>/generations/0001/GENERATION.json
    <archive>/generations/0001/tape/<start>-<end>.tape ... <start>.tape.open

A generation is one unbroken stream from one slot; nothing ever joins two generations.
Within a generation, segments are contiguous: each starts where the previous one ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import msgspec

from pgtape import metadata
from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.keys import KEY_FILE_ENV, Keyring
from pgtape.keys import configured as configured_keys
from pgtape.lock import Lock
from pgtape.lsn import format_lsn
from pgtape.storage import LocalStorage, Storage
from pgtape.storage.s3 import RemoteStorageError, S3Storage, is_remote
from pgtape.tape import FORMAT_VERSION
from pgtape.tape.segment import OPEN_RE, SEALED_RE, open_segment_stats
from pgtape.timefmt import now_us

T = TypeVar("T")


class ArchiveIdentity(msgspec.Struct):
    format_version: int
    system_id: str
    database: str
    slot: str
    generation: int  # the current one
    created_at: int  # µs UTC


class Generation(msgspec.Struct, omit_defaults=True):
    id: int
    system_id: str
    database: str
    slot: str
    start_lsn: int  # the slot's consistent point: the tape holds what committed after it
    created_at: int
    reason: str
    tables: list[str]  # captured tables, schema-qualified
    encrypted: bool = False  # its files are encrypted (pgtape/tape/crypto.py); absent in older archives


class Pruned(msgspec.Struct):
    """PRUNED.json: what `pgtape prune` deletes on purpose, so verify tells "pruned" from "missing".

    Written before anything is deleted (snapshots/prune.py), so it may list what still exists."""

    deleted_generations: list[int] = []  # whole older generations (may still be partly present)
    # generation -> where its tape begins: segments ending at or before it may be gone
    tape_start_lsn: dict[int, int] = {}


@dataclass(frozen=True)
class SegmentFile:
    key: str  # in the archive's storage
    path: Path  # for messages
    start_lsn: int
    end_lsn: int | None  # None while open

    @property
    def is_open(self) -> bool:
        return self.end_lsn is None


IDENTITY_FILE = "ARCHIVE.json"
PRUNED_FILE = "PRUNED.json"


class Archive:
    """The archive at `path`: its files are read and written through `storage` only (local
    process locks aside, which live in the directory itself)."""

    def __init__(self, path: Path, keyring: Keyring | None = None, storage: Storage | None = None) -> None:
        self.path = path  # local: the directory; remote: only for messages (see `location`)
        self.storage: Storage = storage or LocalStorage(path)
        self.storage.keyring = keyring  # (pgtape/keys.py: configured(config))
        self.remote = storage is not None and not isinstance(storage, LocalStorage)
        self.location = self.storage.where("") if self.remote else str(path)

    @property
    def keyring(self) -> Keyring | None:
        return self.storage.keyring

    @classmethod
    def at(cls, location: Path | str, keyring: Keyring | None = None, endpoint_url: str | None = None) -> Archive:
        """A local directory, or an offsite copy (`s3://bucket/prefix`, read through S3Storage)."""
        if is_remote(location):
            assert isinstance(location, str)
            return cls(Path(location), keyring, S3Storage(location, endpoint_url))
        return cls(Path(location), keyring)

    @classmethod
    def existing(cls, path: Path | str, keyring: Keyring | None = None, endpoint_url: str | None = None) -> Archive:
        """An archive that must already hold a tape (for readers: log, status, ...)."""
        archive = cls.at(path, keyring, endpoint_url)
        if not archive.remote:
            archive.require_directory()
            if not archive.path.is_dir():
                raise PgtapeError(f"archive {path} does not exist: check --archive / PGTAPE_ARCHIVE")
        try:
            archive.identity()
        except RemoteStorageError as e:
            raise PgtapeError(f"cannot read the archive: {e}") from None
        return archive

    @classmethod
    def reading(cls, config: Config) -> Archive:
        """The archive a reading command (replay, verify, log, status, snapshots, diff) opens: local or s3://."""
        return cls.existing(config.archive_location(), configured_keys(config), config.offsite_endpoint_url)

    def require_directory(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise PgtapeError(f"archive path {self.path} exists but is not a directory: choose another --archive")

    def lock_capture(self) -> Lock:
        """The archive's writer lock (capture, init)."""
        self.require_directory()
        return Lock(self.path / "capture.lock",
                    f"pgtape capture (or init) is running on {self.path}: stop it first")

    def exists(self) -> bool:
        return self.storage.exists(IDENTITY_FILE)

    def identity(self) -> ArchiveIdentity:
        if not self.exists():
            raise PgtapeError(f"{self.location} is not a pgtape archive yet (no ARCHIVE.json): "
                              "run pgtape init (or pgtape capture) first")
        try:
            ident = _load(self.storage, IDENTITY_FILE, ArchiveIdentity)
        except metadata.DamagedMetadata:
            ident = _older_format(self.storage)  # an archive another pgtape wrote reads as damaged
        if ident.format_version != FORMAT_VERSION:
            raise PgtapeError(f"{self.location} holds tape format {ident.format_version}; this pgtape reads format "
                              f"{FORMAT_VERSION} (docs/FORMAT.md): use the pgtape that wrote it, or start a new "
                              "archive with pgtape init --archive NEW_DIR")
        return ident

    def pruned(self) -> Pruned:
        if not self.storage.exists(PRUNED_FILE):
            return Pruned()
        return _load(self.storage, PRUNED_FILE, Pruned)

    def generation_key(self, gen: int) -> str:
        return f"generations/{gen:04d}"

    def tape_key(self, gen: int) -> str:
        return f"{self.generation_key(gen)}/tape"

    def generation_dir(self, gen: int) -> Path:
        """For messages (and tests): where the generation's files are."""
        return self.path / self.generation_key(gen)

    def generation(self, gen: int) -> Generation:
        return _load(self.storage, f"{self.generation_key(gen)}/GENERATION.json", Generation)

    def start_generation(self, system_id: str, database: str, slot: str, start_lsn: int, reason: str,
                         tables: list[str]) -> Generation:
        """Record a new generation and make it current (durably, in that order)."""
        current = self.identity().generation if self.exists() else 0
        now = now_us()
        gen = Generation(current + 1, system_id, database, slot, start_lsn, now, reason, tables,
                         encrypted=self.keyring is not None)
        metadata.write(self.storage, f"{self.generation_key(gen.id)}/GENERATION.json", gen)
        created = self.identity().created_at if self.exists() else now
        metadata.write(self.storage, IDENTITY_FILE,
                       ArchiveIdentity(FORMAT_VERSION, system_id, database, slot, gen.id, created))
        return gen

    def check_encryption(self, gen: Generation) -> None:
        """For writers (capture, snapshot, init): one generation is encrypted throughout or not at all,
        so the configured keyring must match it (one line saying how to switch otherwise)."""
        if gen.encrypted and self.keyring is None:
            raise PgtapeError(f"generation {gen.id} of {self.path} is encrypted, but no key is configured: set "
                              f"{KEY_FILE_ENV} or [archive] key_file to its keyring (or, to stop encrypting, start "
                              "a new generation without one: pgtape init --restart)")
        if not gen.encrypted and self.keyring is not None:
            raise PgtapeError(f"generation {gen.id} of {self.path} is not encrypted, but a key is configured "
                              f"({self.keyring.path}): to encrypt, start a new generation with pgtape init --restart "
                              f"(older generations stay readable as they are); else unset {KEY_FILE_ENV} and "
                              "[archive] key_file")

    def segments(self, gen: int) -> list[SegmentFile]:
        """The generation's segment files ordered by start LSN (an open one sorts last).

        An open segment beside a sealed one of the same start is left out: the sealed one supersedes it
        (it holds the open one's records and more). Sealing publishes the sealed file before it deletes
        the open one (SegmentWriter.seal), and so does the offsite uploader: a kill between leaves both."""
        files: list[SegmentFile] = []
        directory = self.tape_key(gen)
        for e in self.storage.list(directory):
            key = f"{directory}/{e.name}"
            if m := SEALED_RE.match(e.name):
                files.append(SegmentFile(key, self.path / key, int(m.group(1), 16), int(m.group(2), 16)))
            elif m := OPEN_RE.match(e.name):
                files.append(SegmentFile(key, self.path / key, int(m.group(1), 16), None))
        sealed = {s.start_lsn for s in files if not s.is_open}
        files = [s for s in files if not (s.is_open and s.start_lsn in sealed)]
        files.sort(key=lambda s: (s.start_lsn, s.is_open))
        return files

    def superseded_open_segments(self, gen: int) -> list[str]:
        """Keys of open segments beside a sealed one of the same start (left by a kill while sealing:
        SegmentWriter.seal), which `segments` leaves out; only capture deletes them."""
        directory = self.tape_key(gen)
        names = [e.name for e in self.storage.list(directory)]
        sealed = {m.group(1) for n in names if (m := SEALED_RE.match(n))}
        return [f"{directory}/{n}" for n in names if (m := OPEN_RE.match(n)) and m.group(1) in sealed]

    def read_segment(self, seg: SegmentFile, read: Callable[[Storage, str], T]) -> T:
        """`read(storage, key)` of a listed segment. Readers take no lock, so an open segment may have
        been sealed (replaced by <start>-<end>.tape) since it was listed: then the sealed one is read.
        (Once opened, a reader keeps reading what it opened: Storage.open_read.)"""
        try:
            return read(self.storage, seg.key)
        except FileNotFoundError:
            if seg.is_open:
                directory, _, name = seg.key.rpartition("/")
                start = name.split(".")[0]
                for e in self.storage.list(directory):
                    if (m := SEALED_RE.match(e.name)) and m.group(1) == start:
                        return read(self.storage, f"{directory}/{e.name}")
            raise

    def tape_is_empty(self, gen: int) -> bool:
        """No transaction captured yet in this generation."""
        return all(s.is_open and open_segment_stats(self.storage, s.key, s.start_lsn).transactions == 0
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


def _load(storage: Storage, key: str, kind: type[metadata.T]) -> metadata.T:
    try:
        return metadata.read(storage, key, kind)
    except FileNotFoundError:
        raise PgtapeError(f"{storage.where(key)} is missing: the archive is incomplete") from None


def _older_format(storage: Storage) -> ArchiveIdentity:
    """ARCHIVE.json of another format version (no checksum envelope), for the message that says so."""
    try:
        ident = msgspec.json.decode(storage.read(IDENTITY_FILE), type=ArchiveIdentity)
    except msgspec.DecodeError:
        ident = None
    if ident is None or ident.format_version == FORMAT_VERSION:
        return _load(storage, IDENTITY_FILE, ArchiveIdentity)  # (raises: damaged)
    return ident
