"""A small archive on disk, built without a database: generations, sealed/open segments, catalog."""

from __future__ import annotations

from pathlib import Path

from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.tape.archive import Archive
from pgtape.tape.records import Begin, Commit, Position
from pgtape.tape.segment import SegmentWriter

TABLE = "public.t"


def new_archive(path: Path, start_lsn: int = 100, tables: list[str] | None = None) -> Archive:
    archive = Archive(path)
    archive.start_generation("7", "db", "pgtape", start_lsn, "test", tables or [TABLE])
    return archive


def segment(archive: Archive, gen: int, start: int, commits: list[tuple[int, int]], *, seal: bool = True,
            position: tuple[int, int] | None = None) -> None:
    """A segment from `start` holding one empty transaction per (end LSN, commit time µs)."""
    w = SegmentWriter.create(archive.storage, archive.tape_key(gen), gen, "7", "pgtape", start)
    for i, (end, at) in enumerate(commits):
        w.append([Begin(1000 + i, end - 8, end, at), Commit(end, 0)], boundary=True)
    if position:
        w.append([Position(*position)], boundary=True)
    w.sync()
    if seal:
        w.seal()
    else:
        w.close()


def snapshot(archive: Archive, sid: str, *, gen: int = 1, lsn: int | None = 150, at: int | None = 1500,
             status: str = catalog.COMPLETED, expires: int | None = None, tables: list[str] | None = None
             ) -> SnapshotRecord:
    r = SnapshotRecord(sid, gen, "manual", tables or [TABLE], status, created_at=0, expires_at=expires, pid=1,
                       host="h", as_of_lsn=lsn, as_of_time=at)
    catalog.save(archive, r)
    return r
