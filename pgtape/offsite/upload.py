"""The offsite copy: a local archive's files uploaded, byte for byte, to `[offsite] url`.
(docs/ARCHITECTURE.md, "Offsite")

Same keys as the local layout (docs/FORMAT.md), so the bucket is an archive every reading command opens
(`--archive s3://...`). What is uploaded, in this order each pass, so the bucket is a consistent
archive at every instant (data before the records that name it):
  1. sealed segments, published snapshot files and audit entry objects (immutable: uploaded once);
  2. the open segment, up to its last boundary frame, at most every `[offsite] interval`, as the object
     `<start>.tape.open` (sent whole each time: S3 has no append; deleted once its sealed segment is up,
     and readers ignore it beside its sealed segment if a kill came between: Archive.segments);
  3. every other file (GENERATION.json, TABLES.json, SEALED.json, DURABLE.json, the catalog, marks,
     PRUNED.json, the audit log), when its content changed; ARCHIVE.json last.
The bucket's own audit entries (`audit/offsite/`: commands run on the copy, pgtape/tape/audit.py)
are never deleted or replaced here: the uploader deletes only open segments it uploaded, and
a local file of that name (from pgtape pull) is the same immutable object.
Not uploaded: locks, temporary `*.tmp` files, `*.partial` snapshot directories, serve's jobs/, and
OFFSITE.json itself: the upload state (what the bucket holds, confirmed: key -> size and SHA-256).

Every PUT carries the body's SHA-256 (x-amz-checksum-sha256), which the store checks before it keeps
anything; a PUT is atomic, so an object is whole or absent. OFFSITE.json is written after each upload:
after kill -9 the one object in flight is uploaded again, and one that was stored but not yet recorded
is recognised by HEAD (same size and SHA-256: the object's x-amz-meta-sha256, which a multipart object
needs, its store checksum being a composite of its parts') and only recorded, never sent twice.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Hashable

import msgspec

from pgtape import metadata
from pgtape.config import Config
from pgtape.errors import PgtapeError, UsageError
from pgtape.lock import Lock
from pgtape.storage.base import AppendHandle, Entry, Storage
from pgtape.storage.s3 import S3Storage, file_sha256_b64, sha256_b64
from pgtape.tape.archive import IDENTITY_FILE, Archive
from pgtape.tape.frames import KIND_HEADER
from pgtape.tape.segment import OPEN_RE, SEALED_RE, last_boundary, open_segment_end, scan_frame_headers
from pgtape.timefmt import now_us

logger = logging.getLogger(__name__)

STATE_FILE = "OFFSITE.json"
LOCK_FILE = "offsite.lock"  # held for each pass: one uploader at a time per archive (docs/FORMAT.md)
MAX_BACKOFF = 30.0  # seconds between attempts while the store fails
_SKIP_DIRS = ("jobs",)
_SNAPSHOT_FILE = re.compile(r"^generations/\d{4}/snapshots/[^/]+/[^/]+$")
_SEGMENT = re.compile(r"^generations/(\d{4})/tape/([^/]+)$")
_AUDIT_ENTRY = re.compile(r"^audit/offsite/[^/]+\.json$")  # pgtape/tape/audit.py: one object per entry


SAVE_EVERY = 1.0  # seconds between writes of OFFSITE.json within a pass (one at its end)


class OffsiteBusy(PgtapeError):
    """Another process is making an upload pass on this archive."""


class OffsiteState(msgspec.Struct):
    """OFFSITE.json: what the bucket holds (confirmed by the store) and how far the tape is offsite."""
    url: str
    objects: dict[str, tuple[int, str]] = {}  # key -> (size, SHA-256 base64) of the object uploaded
    generation: int = 0
    tape_lsn: int = 0  # the generation's tape is offsite up to this LSN
    tape_time: int | None = None  # µs, server clock: the tape offsite is complete up to this time
    open_uploaded_at: int | None = None  # µs, this machine: the open segment's last upload
    caught_up_at: int | None = None  # µs, this machine: the last pass that left nothing pending
    last_error: str | None = None
    last_error_at: int | None = None


def load_state(archive: Archive, url: str) -> OffsiteState:
    """The state for `url` (another URL's state describes another bucket: start afresh)."""
    try:
        state = metadata.read(archive.storage, STATE_FILE, OffsiteState)
    except (FileNotFoundError, metadata.DamagedMetadata):
        return OffsiteState(url)
    return state if state.url == url else OffsiteState(url)


def read_state(archive: Archive) -> OffsiteState | None:
    """For status: the state as the uploader last wrote it, or None (never uploaded, or unreadable)."""
    try:
        return metadata.read(archive.storage, STATE_FILE, OffsiteState)
    except (FileNotFoundError, metadata.DamagedMetadata):
        return None


@dataclass
class PassResult:
    uploaded: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)  # found already in the bucket (after a crash): not sent again
    deleted: list[str] = field(default_factory=list)
    bytes: int = 0
    pending: int = 0  # files still to upload (the open segment, while its interval has not passed)


def remote_for(config: Config) -> S3Storage:
    if not config.offsite_url:
        raise UsageError("no offsite copy configured: set [offsite] url = \"s3://bucket/prefix\" in pgtape.toml "
                         "or PGTAPE_OFFSITE_URL")
    return S3Storage(config.offsite_url, config.offsite_endpoint_url)


def _walk(root: Path, rel: str = "") -> list[tuple[str, Path]]:
    """Files under the archive directory that belong offsite, by key."""
    out: list[tuple[str, Path]] = []
    try:
        it = os.scandir(root / rel if rel else root)
    except (FileNotFoundError, NotADirectoryError):
        return out
    with it:
        for e in it:
            key = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                if e.name.endswith(".partial") or (not rel and e.name in _SKIP_DIRS):
                    continue
                out.extend(_walk(root, key))
            elif not (e.name.endswith((".tmp", ".lock")) or key == STATE_FILE):
                out.append((key, Path(e.path)))
    return out


class Uploader:
    """One pass at a time (`run_pass`); the thread below and `pgtape push` drive it."""

    def __init__(self, archive: Archive, remote: S3Storage, interval: float) -> None:
        if archive.remote:
            raise UsageError("the offsite copy is made from a local archive: --archive must be a directory")
        self.archive, self.remote, self.interval = archive, remote, interval
        self.state = load_state(archive, remote.where("").rstrip("/"))
        self._listing: dict[str, int] | None = None  # the bucket's objects (key -> size) when first needed
        self._hashes: dict[str, tuple[int, int, str]] = {}  # key -> (size, mtime_ns, sha): unchanged files not re-read
        self._saved = 0.0  # time.monotonic() of the last _save

    def _save(self, now: bool = True) -> None:
        """OFFSITE.json written (two fsyncs). Within a pass (`now` False), at most every SAVE_EVERY: it is a
        record, not the truth: objects uploaded since it was written are found in the bucket by
        _already_there after a kill, not sent again; and each fsync here waits behind capture's."""
        if not now and time.monotonic() - self._saved < SAVE_EVERY:
            return
        metadata.write(self.archive.storage, STATE_FILE, self.state)
        self._saved = time.monotonic()

    def _sha(self, key: str, path: Path) -> tuple[int, str]:
        st = path.stat()
        known = self._hashes.get(key)
        if known and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[0], known[2]
        sha = file_sha256_b64(path)
        self._hashes[key] = (st.st_size, st.st_mtime_ns, sha)
        return st.st_size, sha

    def _put_file(self, key: str, path: Path, result: PassResult) -> None:
        """A sealed segment, a published snapshot file or an audit entry: immutable, uploaded once."""
        known = self.state.objects.get(key)
        if known and known[0] == path.stat().st_size:
            return  # never changes: not read again
        size, sha = self._sha(key, path)
        if self._already_there(key, size, sha, result):
            return
        self.remote.put_file(key, path, sha)
        self.state.objects[key] = (size, sha)
        self._save(now=False)
        result.uploaded.append(key)
        result.bytes += size

    def _already_there(self, key: str, size: int, sha: str, result: PassResult) -> bool:
        """An object not recorded, but in the bucket as it would be sent (uploaded before a crash, or
        OFFSITE.json lost): only recorded now."""
        if key in self.state.objects:
            return False
        if self._listing is None:  # once per uploader: one LIST instead of a HEAD per object
            self._listing = self.remote.list_tree("")
        try:
            if self._listing.get(key) != size or self.remote.head(key) != (size, sha):
                return False
        except FileNotFoundError:
            return False
        self.state.objects[key] = (size, sha)
        self._save(now=False)
        result.recorded.append(key)
        return True

    def _put_open(self, key: str, path: Path, start_lsn: int, result: PassResult, force: bool) -> None:
        """The open segment up to its last boundary frame, if it grew and its interval has passed (or `force`).

        Only frame headers are scanned and only the last boundary frames decoded (for the LSN): the
        thread shares the CPU with capture, which must not pay for a second decoding of the tape."""
        due = force or self.state.open_uploaded_at is None or (
            now_us() - self.state.open_uploaded_at >= self.interval * 1e6)
        known = self.state.objects.get(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return  # sealed meanwhile: the next pass uploads the sealed one
        if known and known[0] == size:
            return
        if not due:
            result.pending += 1
            return
        with open(path, "rb") as f:
            data = f.read(size)
        view = _Bytes(data)
        length = last_boundary(view, key)
        if length == 0:  # no transaction yet: its header frame alone (where the tape goes on)
            length = next((n for _, kind, _, n in scan_frame_headers(io.BytesIO(data)) if kind == KIND_HEADER), 0)
        if length == 0 or (known and known[0] == length):
            return
        data = data[:length]
        end = open_segment_end(_Bytes(data), key, start_lsn)
        sha = sha256_b64(data)
        if not self._already_there(key, len(data), sha, result):
            self.remote.write_atomic(key, data)
            self.state.objects[key] = (len(data), sha)
            result.uploaded.append(key)
            result.bytes += len(data)
        self.state.open_uploaded_at = now_us()
        self._note_tape(key, end.end_lsn, end.complete_time)
        self._save(now=False)

    def _note_tape(self, key: str, end_lsn: int, complete_time: int | None) -> None:
        m = _SEGMENT.match(key)
        if not m:
            return
        gen = int(m.group(1))
        if (gen, end_lsn) > (self.state.generation, self.state.tape_lsn):
            self.state.generation, self.state.tape_lsn = gen, end_lsn
            if complete_time is not None:
                self.state.tape_time = complete_time

    def run_pass(self, force_open: bool = False) -> PassResult:
        """Upload what is pending (the open segment only when due, or `force_open`); raises
        RemoteStorageError when the store fails (what was done stays recorded), OffsiteBusy while
        another process (capture's thread, pgtape push) makes a pass."""
        if not self.archive.path.is_dir():
            return PassResult()  # (capture before it made the archive: nothing to upload yet)
        try:
            lock = Lock(self.archive.path / LOCK_FILE, "another pgtape (capture's uploader or pgtape push) is "
                        "uploading to the offsite copy")
        except PgtapeError as e:
            raise OffsiteBusy(str(e)) from None
        try:
            # What another process uploaded since this one last looked (one OFFSITE.json, one writer at a time).
            self.state = load_state(self.archive, self.state.url)
            return self._pass(force_open)
        finally:
            lock.release()

    def _pass(self, force_open: bool) -> PassResult:
        result = PassResult()
        # Metadata first, read now: whatever it names (a generation, a published snapshot, a sealed
        # segment) exists already, so the walk below finds it and it goes up before the metadata.
        records: list[tuple[str, bytes]] = []
        for key, path in sorted(_walk(self.archive.path)):
            if not (_SEGMENT.match(key) or _SNAPSHOT_FILE.match(key) or _AUDIT_ENTRY.match(key)):
                try:
                    records.append((key, path.read_bytes()))
                except FileNotFoundError:
                    continue
        files = _walk(self.archive.path)
        immutable, opened = [], []
        for key, path in sorted(files):
            m = _SEGMENT.match(key)
            if m and SEALED_RE.match(m.group(2)):
                immutable.append((key, path))
            elif m and OPEN_RE.match(m.group(2)):
                opened.append((key, path))
            elif _SNAPSHOT_FILE.match(key) or _AUDIT_ENTRY.match(key):
                immutable.append((key, path))
        for key, path in immutable:
            try:
                self._put_file(key, path, result)
            except FileNotFoundError:
                continue  # pruned meanwhile
            m = _SEGMENT.match(key)
            if m and (sm := SEALED_RE.match(m.group(2))):
                self._note_tape(key, int(sm.group(2), 16), None)
        for key, path in opened:
            m = OPEN_RE.match(path.name)
            assert m is not None
            self._put_open(key, path, int(m.group(1), 16), result, force_open)
        # Open segments sealed since they were uploaded: their sealed copy is up (step 1), the open one goes.
        # Also one in the bucket that OFFSITE.json forgot (lost after a kill), if its sealed one is here:
        # readers ignore it beside the sealed one, but once prune deleted that, it would read as a stray.
        local = {key for key, _ in files} | {key for key, _ in records}
        superseded = {f"{key.rsplit('/', 1)[0]}/{sm.group(1)}.tape.open" for key, _ in immutable
                      if (m := _SEGMENT.match(key)) and (sm := SEALED_RE.match(m.group(2)))}
        forgotten = {k for k in self._listing or {} if k in superseded and k not in self.state.objects}
        for key in sorted(set(self.state.objects) | forgotten):
            if key.endswith(".tape.open") and key not in local:
                self.remote.delete(key)
                self.state.objects.pop(key, None)
                if self._listing is not None:
                    self._listing.pop(key, None)
                self._save(now=False)
                result.deleted.append(key)
            elif key not in local:  # pruned locally: prune deletes the offsite copy's objects itself
                del self.state.objects[key]
        records.sort(key=lambda kd: kd[0] == IDENTITY_FILE)  # the identity last
        for key, data in records:
            if key.endswith("/DURABLE.json") and result.pending:
                continue  # it may name a position the offsite tape reaches only with the open segment's next upload
            sha = sha256_b64(data)
            if self.state.objects.get(key) == (len(data), sha) or self._already_there(key, len(data), sha, result):
                continue
            self.remote.write_atomic(key, data)
            self.state.objects[key] = (len(data), sha)
            self._save(now=False)
            result.uploaded.append(key)
            result.bytes += len(data)
        now = now_us()
        if result.pending == 0:
            self.state.caught_up_at = now
        self.state.last_error = None
        self._save()
        return result

    def record_error(self, error: str) -> None:
        self.state.last_error, self.state.last_error_at = error, now_us()
        try:
            self._save()
        except OSError:
            pass


class _Bytes(Storage):
    """Bytes read once from the open segment, as a read-only Storage of one object, for segment.py's readers."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def where(self, key: str) -> str:
        return key

    def open_read(self, key: str) -> BinaryIO:
        return io.BytesIO(self.data)

    def read(self, key: str) -> bytes:
        return self.data

    def size(self, key: str) -> int:
        return len(self.data)

    def exists(self, key: str) -> bool:
        return True

    def identity(self) -> Hashable:
        raise NotImplementedError

    def list(self, prefix: str) -> list[Entry]:
        raise NotImplementedError

    def write_atomic(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def create(self, key: str, initial: bytes) -> AppendHandle:
        raise NotImplementedError

    def open_append(self, key: str) -> AppendHandle:
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_tree(self, prefix: str) -> None:
        raise NotImplementedError
