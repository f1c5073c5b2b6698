"""Durable file operations: atomic whole-file writes, renames and directory fsyncs.

Writers of append-only files (tape segments, snapshot table files) fsync their own data.

A file is durable when its data is fsynced; a new name for it is durable only once its
directory is fsynced too. See docs/ARCHITECTURE.md, "Durability".
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a whole file so that a reader sees the old content or the new, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def rename_durably(src: Path, dst: Path) -> None:
    os.replace(src, dst)
    fsync_dir(dst.parent)


def make_dirs_durably(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entry list changed."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        fsync_dir(d.parent)
