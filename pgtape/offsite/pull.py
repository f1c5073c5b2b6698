"""pgtape pull: an offsite copy brought back to a local directory, which is then an archive like any other.

Every object is downloaded to a temporary file, checked against the SHA-256 the store kept for it,
fsynced and renamed into place; ARCHIVE.json comes last, so an interrupted pull is not taken for an
archive (pull again into an empty directory)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pgtape.errors import PgtapeError
from pgtape.storage.local import create_private, fsync_dir, make_dirs_durably
from pgtape.storage.s3 import S3Storage
from pgtape.tape.archive import IDENTITY_FILE


@dataclass
class PullResult:
    objects: int
    bytes: int


def pull(remote: S3Storage, dest: Path) -> PullResult:
    objects = {k: v for k, v in remote.list_tree("").items() if not k.endswith(".tmp")}
    if IDENTITY_FILE not in objects:
        raise PgtapeError(f"{remote.where('')} holds no pgtape archive (no {IDENTITY_FILE})")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise PgtapeError(f"{dest} exists and is not an empty directory: pull into a new one")
    make_dirs_durably(dest)
    total = 0
    for key in sorted(objects, key=lambda k: (k == IDENTITY_FILE, k)):
        path = dest / key
        make_dirs_durably(path.parent)
        tmp = path.with_name(path.name + ".tmp")
        with os.fdopen(create_private(tmp), "wb") as f:
            size, _ = remote.download(key, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        total += size
    return PullResult(len(objects), total)
