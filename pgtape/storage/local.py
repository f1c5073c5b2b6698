"""LocalStorage: the archive as a directory on a local file system.

A file is durable once fsynced; a new, renamed or removed name only once its directory is fsynced
too. Every operation here does both before it returns (docs/ARCHITECTURE.md, "Durability").
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import BinaryIO

from pgtape.storage.base import AppendHandle, Entry, Storage


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The archive holds every payment: what pgtape creates is its owner's alone, whatever the umask.
FILE_MODE = 0o600
DIR_MODE = 0o700


def create_private(path: Path) -> int:
    """Open `path` for writing, created or emptied, mode FILE_MODE exactly (not umask's); an fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def make_dirs_durably(path: Path) -> None:
    """mkdir -p (each new directory mode DIR_MODE), fsyncing each parent whose entry list changed."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=DIR_MODE)
        os.chmod(d, DIR_MODE)
        fsync_dir(d.parent)


class _LocalAppend(AppendHandle):
    def __init__(self, key: str, path: Path, f: BinaryIO) -> None:
        self.key, self._path, self._f = key, path, f
        self._size = f.seek(0, os.SEEK_END)

    def append(self, data: bytes) -> None:
        self._f.write(data)
        self._size += len(data)

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def size(self) -> int:
        return self._size

    def truncate(self, length: int) -> None:
        self._f.flush()
        self._f.truncate(length)
        self._f.seek(length)
        os.fsync(self._f.fileno())
        self._size = length

    def still_there(self) -> bool:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._f.fileno())
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def close(self) -> None:
        self._f.close()


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def where(self, key: str) -> str:
        return str(self._path(key))

    def identity(self) -> tuple[int, int]:
        st = os.stat(self.root)
        return st.st_dev, st.st_ino

    def list(self, prefix: str) -> list[Entry]:
        entries: list[Entry] = []
        try:
            it = os.scandir(self._path(prefix))
        except (FileNotFoundError, NotADirectoryError):
            return entries
        with it:
            for e in it:
                try:
                    entries.append(Entry(e.name, None if e.is_dir() else e.stat().st_size))
                except FileNotFoundError:
                    continue  # deleted since the listing
        return sorted(entries, key=lambda e: e.name)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int:
        return os.stat(self._path(key)).st_size

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open_read(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def write_atomic(self, key: str, data: bytes) -> None:
        path = self._path(key)
        make_dirs_durably(path.parent)
        # A name of this writer's own: two writers of one key (the service's API and its capture both
        # list a new recovery point) must not rename each other's temporary file away.
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        with os.fdopen(create_private(tmp), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def create(self, key: str, initial: bytes) -> AppendHandle:
        # Under a temporary name first: a full disk never leaves the object without `initial`
        # (an open segment without its header is one recovery refuses to touch).
        self.write_atomic(key, initial)
        return self.open_append(key)

    def open_append(self, key: str) -> AppendHandle:
        path = self._path(key)
        return _LocalAppend(key, path, open(path, "r+b"))

    def rename(self, src: str, dst: str) -> None:
        os.replace(self._path(src), self._path(dst))
        fsync_dir(self._path(dst).parent)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def delete_tree(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.exists():
            shutil.rmtree(path)
            fsync_dir(path.parent)


def local_file(path: Path) -> tuple[LocalStorage, str]:
    """A single file outside any archive (`pgtape verify FILE`) as a storage and key."""
    return LocalStorage(path.parent), path.name
