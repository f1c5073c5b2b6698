"""The archive's locks: each an exclusive, non-blocking flock held for the life of its holder.

A second holder is refused, never queued (docs/ARCHITECTURE.md, "Concurrency and locks"). Records
that name a process instead (a running snapshot, a service's job) ask `process_alive`.
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


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
