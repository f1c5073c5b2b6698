"""Durable directory operations outside the archive's storage: creating the archive directory
(where the process locks live) and the files replay writes (replay/sinks/files.py). Archive files
themselves are written through pgtape.storage, which owns these primitives.

A file is durable when its data is fsynced; a new name for it is durable only once its
directory is fsynced too. See docs/ARCHITECTURE.md, "Durability".
"""

from __future__ import annotations

from pgtape.storage.local import create_private, fsync_dir, make_dirs_durably

__all__ = ["create_private", "fsync_dir", "make_dirs_durably"]
