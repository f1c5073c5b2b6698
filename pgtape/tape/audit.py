"""The audit trail: an append-only, fsynced JSON-lines log in the archive (`audit/audit.log`).

One line per audited operation, each valid JSON with its own checksum as its last field:

    {"time":"2026-12-02T16:30:00.123456Z","actor":"alice","operation":"replay","arguments":{...},
     "result":{"exit_code":0,"outcome":"ok"},"crc32":"1a2b3c4d"}

crc32 is over the line's bytes without `,"crc32":"..."` (so the rest ends in `}`). A flipped byte
fails it; a last line without its newline is a write a crash cut short (docs/ARCHITECTURE.md,
"Audit trail"). Writers (CLI commands, pgtape serve) take an exclusive flock on `audit.lock`, so
lines never interleave; the next writer removes a torn last line before appending.

An offsite copy (s3://) has no append: each command run on it writes its entry, the same line, as an
object of its own, `audit/offsite/<UTC time>-<host>-<pid>-<random>.json`, never replaced. A pulled
archive brings them back as files; read() merges them with audit.log by time.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import re
import secrets
import socket
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import msgspec

from pgtape.tape.archive import Archive

KEY = "audit/audit.log"
OFFSITE_PREFIX = "audit/offsite"  # one object per entry written on an offsite copy
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


def object_key(time: str) -> str:
    """A new entry object's key: its time first (so keys sort by time), then what keeps it unique
    among writers on other machines, processes and instants."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
    return f"{OFFSITE_PREFIX}/{time.replace(':', '')}-{host}-{os.getpid()}-{secrets.token_hex(4)}.json"


def append(archive: Archive, actor: str, operation: str, arguments: dict[str, Any], result: dict[str, Any]) -> None:
    """Append one entry, durably (fsynced when this returns). Raises OSError if it cannot be written
    (RemoteStorageError on an offsite copy).

    `arguments` must hold no secrets (DSNs, passwords, tokens): the log is for anyone who reads the archive."""
    time = now()
    line = encode(time, actor, operation, arguments, result)
    storage = archive.storage
    if archive.remote:  # no append on an object store, no flock across machines: an object of its own
        storage.write_atomic(object_key(time), line)
        return
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
    """Every intact entry (audit.log's and the offsite entry objects', by time), and one problem line
    per damaged or torn line or object (none if there is no trail)."""
    entries, problems = _read_log(archive)
    more, more_problems = _read_objects(archive)
    if more:  # (sorted() is stable: the log's own order among equal times)
        entries = sorted(entries + more, key=lambda e: datetime.fromisoformat(e.time))
    return entries, problems + more_problems


def _read_objects(archive: Archive) -> tuple[list[Entry], list[str]]:
    entries: list[Entry] = []
    problems: list[str] = []
    for o in archive.storage.list(OFFSITE_PREFIX):
        if o.size is None or not o.name.endswith(".json"):
            continue
        key = f"{OFFSITE_PREFIX}/{o.name}"
        try:
            data = archive.storage.read(key)
        except FileNotFoundError:
            continue
        e = decode(data[:-1]) if data.endswith(b"\n") and data.count(b"\n") == 1 else None
        if e is None:
            problems.append(f"{archive.storage.where(key)}: damaged (checksum or content does not match): "
                            "the audit entry was altered or its store corrupted it")
        else:
            e.line = 1
            entries.append(e)
    return entries, problems


def _read_log(archive: Archive) -> tuple[list[Entry], list[str]]:
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
        return [f"{archive.storage.where('audit' if archive.remote else KEY)}: cannot read the audit trail: "
                f"{e.strerror or e}"]
