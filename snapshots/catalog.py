"""The snapshot catalog, kept in the archive so the archive describes itself without the source.

    <archive>/catalog/snapshots/<id>.json    one record per snapshot, replaced atomically

A record is written `running` before any data, then replaced by `completed` (only after the
snapshot's files are fsynced and published) or `failed` with the error. A `running` record whose
process is gone (kill -9, power loss) is reported as failed ("interrupted") by `stale_as_failed`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import msgspec

from pgtape import metadata
from pgtape.tape.archive import Archive
from pgtape.timefmt import now_us
from pgtape.lock import process_alive

RUNNING, COMPLETED, FAILED = "running", "completed", "failed"
CATALOG_KEY = "catalog/snapshots"


class SnapshotRecord(msgspec.Struct):
    id: str
    generation: int
    kind: str  # initial, scheduled, manual
    tables: list[str]
    status: str
    created_at: int  # µs UTC
    expires_at: int | None
    pid: int
    host: str
    as_of_lsn: int | None = None
    as_of_time: int | None = None
    rows: dict[str, int] = {}
    bytes: int = 0
    completed_at: int | None = None
    error: str | None = None


def failed(record: SnapshotRecord, error: str) -> SnapshotRecord:
    return msgspec.structs.replace(record, status=FAILED, error=error, completed_at=now_us())


def record_key(snapshot_id: str) -> str:
    return f"{CATALOG_KEY}/{snapshot_id}.json"


def snapshot_key(archive: Archive, generation: int, snapshot_id: str) -> str:
    return f"{archive.generation_key(generation)}/snapshots/{snapshot_id}"


def snapshot_dir(archive: Archive, generation: int, snapshot_id: str) -> Path:
    """For messages (and tests): where the snapshot's files are."""
    return archive.path / snapshot_key(archive, generation, snapshot_id)


def save(archive: Archive, record: SnapshotRecord) -> None:
    metadata.write(archive.storage, record_key(record.id), record)


def load_all(archive: Archive, damaged: list[str] | None = None) -> list[SnapshotRecord]:
    """Every record, oldest first; interrupted ones shown as failed. A record that fails its
    checksum is an error (no replay chooses a base from what it cannot trust), or, given `damaged`,
    is named there and left out (verify)."""
    records = []
    for e in archive.storage.list(CATALOG_KEY):
        if e.size is None or not e.name.endswith(".json"):
            continue
        try:
            records.append(metadata.read(archive.storage, f"{CATALOG_KEY}/{e.name}", SnapshotRecord))
        except FileNotFoundError:
            continue  # pgtape prune deleted it since the listing: readers take no lock
        except metadata.DamagedMetadata as e:
            if damaged is None:
                raise
            damaged.append(str(e))
    return [stale_as_failed(r) for r in records]


def stale_as_failed(r: SnapshotRecord) -> SnapshotRecord:
    if r.status == RUNNING and r.host == os.uname().nodename and not process_alive(r.pid):
        return msgspec.structs.replace(r, status=FAILED, error=f"interrupted: process {r.pid} ended "
                                                                 "before the snapshot completed")
    return r



ID_RE = re.compile(r"\d{8}T\d{6}\.\d{6}Z-\d+")


def new_id() -> str:
    """Sortable and unique enough for one archive: UTC time to the microsecond plus the pid."""
    t = now_us()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t // 1_000_000)) + f".{t % 1_000_000:06d}Z-{os.getpid()}"


def newest_completed(archive: Archive, generation: int, table: str | None = None) -> SnapshotRecord | None:
    done = [r for r in load_all(archive) if r.status == COMPLETED and r.generation == generation
            and (table is None or table in r.tables)]
    return max(done, key=lambda r: r.as_of_lsn or 0, default=None)
