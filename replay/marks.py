"""Making recovery points: `pgtape mark NAME [--at TIME]` (the catalog and the message: pgtape/tape/marks.py).

`pgtape mark` emits pg_logical_emit_message(true, MARK_PREFIX, '{"name": ...}') and lists the
point in <archive>/catalog/marks/<name>.json. Replaying to it applies every transaction up to and
including the one that carried the message: the exact position in the stream. With --at the mark
names an earlier instant instead, and replaying to it is replaying to that time (inclusive).
"""

from __future__ import annotations

from pgtape import metadata
from pgtape.errors import PgtapeError, UsageError
from pgtape.lsn import parse_lsn
from pgtape.pg import connect
from pgtape.privileges import mark_grant
from pgtape.tape.archive import Archive
from pgtape.tape.marks import MARK_PREFIX, Mark, check_name, load_mark, mark_content, mark_key
from pgtape.timefmt import format_time

__all__ = ["Mark", "create_mark", "load_mark"]


def create_mark(archive: Archive, dsn: str | None, name: str, description: str | None,
                at: int | None = None) -> Mark:
    """`at` (µs UTC): a time mark, which must lie in the past (server clock) and in the current generation."""
    check_name(name)
    if archive.storage.exists(mark_key(name)):
        raise UsageError(f"recovery point {name!r} already exists: choose another name")
    gen = archive.generation(archive.identity().generation)
    if at is not None and at < gen.created_at:
        raise UsageError(f"--at {format_time(at)} is before the archive's current generation began "
                         f"({format_time(gen.created_at)}): nothing before it can be recovered")
    with connect(dsn) as c:
        now = c.execute("SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint").fetchone()
        assert now is not None
        if at is not None and at > now[0]:
            raise UsageError(f"--at {format_time(at)} is in the future (the server's time is {format_time(now[0])}): "
                             "a recovery point names a time that has passed")
        grant = mark_grant(c)
        if grant is not None:
            raise PgtapeError(f"pgtape mark emits a logical message, which this role may not: as a superuser run "
                              f"{grant}")
        row = c.execute("SELECT pg_logical_emit_message(true, %s, %s)::text",
                        (MARK_PREFIX, mark_content(name, description, at))).fetchone()
    assert row is not None
    mark = Mark(name, parse_lsn(row[0]), int(now[0]), description, gen.id, at)
    metadata.write(archive.storage, mark_key(name), mark)
    return mark
