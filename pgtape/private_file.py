"""Files that hold secrets (the API token file, the keyring): refused when group or others may use them."""

from __future__ import annotations

import os
import stat

from pgtape.errors import UsageError


def check_private(path: os.PathLike[str] | str, what: str, st: os.stat_result | None = None) -> None:
    """One line (UsageError) when `path` is accessible by group or others. `what` names the file in it."""
    mode = (st or os.stat(path)).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"{what} {path} is accessible by group or others "
                         f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")
