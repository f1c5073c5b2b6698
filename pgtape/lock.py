"""The archive's locks: each an exclusive, non-blocking flock held for the life of its holder.

A second holder is refused, never queued (docs/ARCHITECTURE.md, "Concurrency and locks").
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pgtape.errors import PgtapeError


class Lock:
    def __init__(self, path: Path, busy: str) -> None:
        """Take the lock on `path` (created if need be), or raise PgtapeError(`busy`)."""
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise PgtapeError(busy) from None

    def release(self) -> None:
        os.close(self._fd)
