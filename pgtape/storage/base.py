"""The storage interface: objects named by relative keys ("generations/0001/tape/<name>").

A key is a relative path with '/' between its parts. A "directory" is a key prefix: it exists
while it holds objects (locally it is a real directory and may also exist empty).
A missing object raises FileNotFoundError from every operation that needs it; callers rely on
that (a reader that lost a race with prune or with sealing). docs/ARCHITECTURE.md, "Storage",
states what each operation makes durable and what a crash can leave behind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Hashable

from pgtape.keys import Keyring


@dataclass(frozen=True)
class Entry:
    name: str  # the last part of its key
    size: int | None  # bytes of an object; None for a directory (a prefix holding objects)


class AppendHandle(ABC):
    """The one kind of object that grows in place: the open tape segment (and a snapshot table
    file while it is written). Appended bytes are durable only after sync()."""

    key: str

    @abstractmethod
    def append(self, data: bytes) -> None:
        """Add bytes at the end. Not durable until sync(); a crash may keep any prefix of them."""

    @abstractmethod
    def sync(self) -> None:
        """Everything appended so far is durable when this returns (fsync)."""

    @abstractmethod
    def size(self) -> int:
        """Bytes in the object, appended ones included."""

    @abstractmethod
    def truncate(self, length: int) -> None:
        """Cut the object to `length` bytes (a torn or unfinished tail), durably; appends continue there."""

    @abstractmethod
    def still_there(self) -> bool:
        """The key still names this object (not deleted, moved or replaced under the writer)."""

    @abstractmethod
    def close(self) -> None:
        """Release the handle; makes nothing durable (sync first)."""


class Storage(ABC):
    # The configured keyring (pgtape/keys.py), set by Archive: frame readers find a file's key in it, and
    # writers of new segments and snapshot files encrypt with its active key when it is set.
    keyring: Keyring | None = None

    @abstractmethod
    def where(self, key: str) -> str:
        """How messages name the object (locally: its path)."""

    @abstractmethod
    def identity(self) -> Hashable:
        """What distinguishes this archive from one put in its place (deleted and recreated, moved,
        restored): a writer compares it before acknowledging. FileNotFoundError if it is gone."""

    @abstractmethod
    def list(self, prefix: str) -> list[Entry]:
        """The objects and directories directly under the directory `prefix` ("" for the top),
        sorted by name; [] if there is none. Temporary names of writes in flight may show."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """An object, or a directory, with this key."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The whole object."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A seekable reader of the object: seek + read is a range read (a remote store answers
        with ranged requests). Opened once, it keeps reading the object it opened, even if the
        key is renamed meanwhile; bytes appended after opening may or may not be seen."""

    @abstractmethod
    def write_atomic(self, key: str, data: bytes) -> None:
        """Replace the object with `data`: when this returns it is durable, and at any instant a
        reader (or a crash) sees the whole old object or the whole new one, never a mix. A crash
        may leave a temporary object beside it (`<key>.<writer>.tmp`), which readers ignore."""

    @abstractmethod
    def create(self, key: str, initial: bytes) -> AppendHandle:
        """A new object holding `initial`, written as write_atomic does (so it never exists without
        it), then open for appending."""

    @abstractmethod
    def open_append(self, key: str) -> AppendHandle:
        """An existing object, open for appending at its end (the open segment after a restart)."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Publish an object (or a whole directory) under a new key, replacing what was there: durable
        when this returns. Locally one atomic rename; a remote store copies then deletes, so a crash
        may leave both (the catalog record, written after, says which one is published)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object if present; the removal is durable when this returns."""

    @abstractmethod
    def delete_tree(self, prefix: str) -> None:
        """Remove a directory and everything under it, if present; durable when this returns. A crash
        midway leaves part of it (callers make such leftovers harmless and remove them again)."""
