"""Encryption keys: the keyring file (docs/FORMAT.md, "Keyring") and key ids.

    # pgtape keyring ...
    <key id> <key, base64>
    <key id> <key, base64>      <- the last line is the active key: new files are encrypted with it

A key is 32 random bytes (AES-256). Its id is the first 8 bytes, in hex, of SHA-256(b"pgtape key id"
+ key): an archive file names the id of its key, so a wrong or missing key shows up as an unknown id,
never as garbage. The keyring is created mode 0600 and refused when group or others may use it.
Key material appears nowhere else: not in output, logs, errors or any other file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from typing import Protocol
from pathlib import Path

from pgtape.errors import PgtapeError, UsageError
from pgtape.private_file import check_private

KEY_BYTES = 32
KEY_FILE_ENV = "PGTAPE_KEY_FILE"
_FILE_HEADER = ("# pgtape keyring: one key a line, '<key id> <key, base64>'; the last one is active.\n"
                "# Keep this file secret and backed up apart from the archive: without it the archive is unreadable.\n")


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"pgtape key id" + key).digest()[:8].hex()


class Keyring:
    """The keys of one keyring file, by id; the last one is active. Its repr shows ids only."""

    def __init__(self, path: Path, keys: list[bytes]) -> None:
        if not keys:
            raise UsageError(f"keyring {path} holds no key: make one with pgtape key generate FILE")
        self.path = path
        self._keys = {key_id(k): k for k in keys}
        self.active_id = key_id(keys[-1])

    @property
    def ids(self) -> list[str]:
        """Oldest first; the last is the active one."""
        return list(self._keys)

    def key(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def active_key(self) -> bytes:
        return self._keys[self.active_id]

    def __repr__(self) -> str:
        return f"Keyring({str(self.path)!r}, ids={self.ids})"


def load(path: Path) -> Keyring:
    """The keyring at `path`: one line (UsageError) if it is missing, unreadable, readable by others or malformed
    (never quoting a key)."""
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"cannot read the keyring {path}: {e.strerror or e} (make one with pgtape key generate "
                         f"{path}, or fix {KEY_FILE_ENV} / [archive] key_file)") from None
    check_private(path, "keyring", st)
    keys: list[bytes] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            key = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise UsageError(f"keyring {path} line {n}: expected '<key id> <{KEY_BYTES}-byte key, base64>'")
        if key_id(key) != parts[0]:
            raise UsageError(f"keyring {path} line {n}: the key does not match its id {parts[0]} (damaged?)")
        keys.append(key)
    return Keyring(path, keys)


class KeyFileOption(Protocol):
    """What `configured` reads of pgtape.config.Config (not imported: config reads storage, which reads keys)."""
    @property
    def key_file(self) -> Path | None: ...


def configured(config: KeyFileOption) -> Keyring | None:
    """The keyring named by PGTAPE_KEY_FILE or [archive] key_file, or None when none is."""
    return None if config.key_file is None else load(config.key_file)


def _line(key: bytes) -> str:
    return f"{key_id(key)} {base64.b64encode(key).decode()}\n"


def _write_new(path: Path, text: str) -> None:
    """Create `path` (mode 0600 whatever the umask; never replacing a file) holding `text`, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def generate(path: Path) -> str:
    """A new keyring at `path` holding one new random key; returns its id. Refuses an existing file."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        _write_new(path, _FILE_HEADER + _line(key))
    except FileExistsError:
        raise PgtapeError(f"{path} exists already: pgtape key generate never replaces a keyring "
                          f"(to add a key to it: pgtape key rotate {path})") from None
    except OSError as e:
        raise PgtapeError(f"cannot create the keyring {path}: {e.strerror or e}") from None
    return key_id(key)


def rotate(path: Path) -> str:
    """Append a new random key to the keyring at `path`, making it the active one (atomically); returns its id."""
    ring = load(path)
    key = secrets.token_bytes(KEY_BYTES)
    text = path.read_text()
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        _write_new(tmp, text + ("" if text.endswith("\n") else "\n") + _line(key))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise PgtapeError(f"cannot update the keyring {path}: {e.strerror or e}") from None
    assert key_id(key) not in ring.ids
    return key_id(key)
