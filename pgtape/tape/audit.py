"""The audit trail: an append-only, fsynced JSON-lines log in the archive (`audit/audit.log`).

One line per audited operation, each valid JSON with its own checksum as its last field:

    {"time":"2026-12-02T16:30:00.123456Z","actor":"alice","operation":"replay","arguments":{...},
     "result":{"exit_code":0,"outcome":"ok"},"crc32":"1a2b3c4d"}

crc32 is over the line's bytes without `,"crc32":"..."` (so the rest ends in `}`). A flipped byte
fails it; a last line without its newline is a write a crash cut short (docs/ARCHITECTURE.md,
"Audit trail"). Writers (CLI commands, pgtape serve) take an exclusive flock on `audit.lock`, so
lines never interleave; the next writer removes a torn last line before appending.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import msgspec

from pgtape.tape.archive import Archive

KEY = "audit/audit.log"
LOCK_FILE = "audit.lock"  # beside ARCHIVE.json: a local lock, like capture.lock
_CRC = re.compile(rb',"crc32":"([0-9a-f]{8})"}$')

logger = logging.getLogger(__name__)


class Entry(msgspec.Struct):
    time: str  # ISO 8601 UTC, µs: 2026-12-02T16:30:00.123456Z
    actor: str
    operation: str
    arguments: dict[str, Any]
    result: dict[str, Any]  # exit_code, outcome
    line: int = 0  # where it was read (1-based); not stored


def actor() -> str:
    """PGTAPE_ACTOR (pgtape serve sets `api:<token name>` for its jobs), else the OS user."""
    if os.environ.get("PGTAPE_ACTOR", "").strip():
        return os.environ["PGTAPE_ACTOR"].strip()
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no LOGNAME/USER (a container's arbitrary uid)
        return str(os.getuid())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def encode(time: str, actor: str, operation: str, arguments: dict[str, Any], result: dict[str, Any]) -> bytes:
    """One whole line, newline included."""
    body = json.dumps({"time": time, "actor": actor, "operation": operation, "arguments": arguments,
                       "result": result}, separators=(",", ":"), default=str).encode()
    return body[:-1] + b',"crc32":"%08x"}\n' % zlib.crc32(body)


def decode(line: bytes) -> Entry | None:
    """The entry of one line (without its newline), or None if its checksum or content is wrong."""
    m = _CRC.search(line)
    if m is None or zlib.crc32(line[:m.start()] + b"}") != int(m.group(1), 16):
        return None
    try:
        d = json.loads(line)
        d.pop("crc32")
        entry = msgspec.convert(d, Entry)
        datetime.fromisoformat(entry.time)  # pgtape audit --since compares it
        return entry
    except (ValueError, KeyError, TypeError, msgspec.ValidationError):
        return None


@contextmanager
def _locked(archive: Archive) -> Iterator[None]:
    fd = os.open(archive.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: writers queue for the few ms of one append
        yield
    finally:
        os.close(fd)


def _complete_length(archive: Archive, size: int) -> int:
    """Bytes up to and including the last newline: what precedes a torn last line."""
    with archive.storage.open_read(KEY) as f:
        end = size
        while end > 0:
            start = max(0, end - 4096)
            f.seek(start)
            chunk = f.read(end - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                return start + i + 1
            end = start
    return 0


def append(archive: Archive, actor: str, operation: str, arguments: dict[str, Any], result: dict[str, Any]) -> None:
    """Append one entry, durably (fsynced when this returns). Raises OSError if it cannot be written.

    `arguments` must hold no secrets (DSNs, passwords, tokens): the log is for anyone who reads the archive."""
    line = encode(now(), actor, operation, arguments, result)
    storage = archive.storage
    with _locked(archive):
        h = storage.open_append(KEY) if storage.exists(KEY) else storage.create(KEY, b"")  # created durably
        try:
            size = h.size()
            keep = _complete_length(archive, size)
            if keep < size:  # a writer died mid-line: never acknowledged, and it would corrupt the next line
                logger.warning(f"audit log {storage.where(KEY)}: removed a torn last line ({size - keep} bytes, "
                               "a write cut short by a crash)")
                h.truncate(keep)
            h.append(line)
            h.sync()
        finally:
            h.close()


def read(archive: Archive) -> tuple[list[Entry], list[str]]:
    """Every intact entry, and one problem line per damaged or torn line (none if there is no log)."""
    try:
        data = archive.storage.read(KEY)
    except FileNotFoundError:
        return [], []
    where = archive.storage.where(KEY)
    entries: list[Entry] = []
    problems: list[str] = []
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the log ends with a newline, as it should
    for n, raw in enumerate(lines, 1):
        e = decode(raw)
        if e is None:
            problems.append(f"{where} line {n}: damaged (checksum or content does not match): "
                            "the audit log was altered or its disk corrupted it")
        else:
            e.line = n
            entries.append(e)
    if torn:
        problems.append(f"{where} line {len(lines) + 1}: torn last line ({len(torn)} bytes without a newline): "
                        "a write cut short by a crash (or in progress); the next audit write removes it")
    return entries, problems


def check(archive: Archive) -> list[str]:
    """What pgtape verify reports about the audit log."""
    try:
        return read(archive)[1]
    except OSError as e:
        return [f"{archive.storage.where(KEY)}: cannot read the audit log: {e.strerror or e}"]
