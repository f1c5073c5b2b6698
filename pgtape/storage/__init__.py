"""Where the archive's files live: every read and write of an archive file goes through a Storage.

base   - the interface and its durability contract (docs/ARCHITECTURE.md, "Storage")
local  - LocalStorage: a directory on a local file system
"""

from pgtape.storage.base import AppendHandle, Entry, Storage
from pgtape.storage.local import LocalStorage, local_file

__all__ = ["AppendHandle", "Entry", "LocalStorage", "Storage", "local_file"]
