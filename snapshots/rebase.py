"""Rebase points: where a table's rows changed without row changes on the tape.

A table rewritten by ALTER TABLE, a partition attached or detached, a key changed, or a schema
change capture noticed only by polling the catalog (at an approximate position): the tape cannot
carry the table's rows across such a point, so a replay to a target after it needs a base of the
table taken after it. Capture records each point here before its position can be durable, and takes
that base by itself; replay refuses a target between the point and the next base, naming both.

    <archive>/generations/NNNN/REBASES.json   {"points": [RebasePoint, ...]}
"""

from __future__ import annotations

import msgspec

from pgtape import metadata
from pgtape.tape.archive import Archive

REBASES_FILE = "REBASES.json"


class RebasePoint(msgspec.Struct, frozen=True):
    table: str  # the captured table (its identity)
    since_lsn: int  # the change happened after this position ...
    since_time: int | None  # (µs UTC: the commit time of the last transaction at or before it)
    at_lsn: int  # ... and at or before this one; a usable base has an as-of LSN at or after it
    at_time: int | None
    reason: str


class _File(msgspec.Struct):
    points: list[RebasePoint]


def load(archive: Archive, gen: int) -> list[RebasePoint]:
    try:
        return metadata.read(archive.storage, f"{archive.generation_key(gen)}/{REBASES_FILE}", _File).points
    except FileNotFoundError:
        return []


def add(archive: Archive, gen: int, point: RebasePoint) -> None:
    """Durably, before the position `at_lsn` can be acknowledged. A point recorded again (its
    transaction sent again after a reconnect) is kept once."""
    points = load(archive, gen)
    if any(p.table == point.table and p.at_lsn == point.at_lsn for p in points):
        return
    metadata.write(archive.storage, f"{archive.generation_key(gen)}/{REBASES_FILE}", _File([*points, point]))
