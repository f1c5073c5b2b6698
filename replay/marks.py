"""Named recovery points: a transactional logical message that capture records on the tape.

`pgtape mark NAME` emits pg_logical_emit_message(true, MARK_PREFIX, '{"name": ...}') and lists the
point in <archive>/catalog/marks/<name>.json. Replaying to it applies every transaction up to and
including the one that carried the message: the exact position in the stream.
"""

from __future__ import annotations

import json
import re

import msgspec

from pgtape import metadata
from pgtape.errors import PgtapeError, UsageError
from pgtape.lsn import parse_lsn
from pgtape.pg import connect
from pgtape.tape.archive import Archive
from pgtape.tape.records import MARK_PREFIX


class Mark(msgspec.Struct):
    name: str
    lsn: int  # of the message; its transaction commits right after
    time: int  # µs UTC, server clock
    description: str | None
    generation: int


MARKS_KEY = "catalog/marks"


def _key(name: str) -> str:
    return f"{MARKS_KEY}/{name}.json"


def create_mark(archive: Archive, dsn: str | None, name: str, description: str | None) -> Mark:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}", name):
        raise UsageError(f"invalid recovery point name {name!r}: use letters, digits and _ . : - (at most 100)")
    if archive.storage.exists(_key(name)):
        raise UsageError(f"recovery point {name!r} already exists: choose another name")
    content = json.dumps({"name": name, "description": description})
    with connect(dsn) as c:
        row = c.execute("SELECT pg_logical_emit_message(true, %s, %s)::text, "
                        "(extract(epoch from clock_timestamp()) * 1000000)::bigint", (MARK_PREFIX, content)).fetchone()
    assert row is not None
    mark = Mark(name, parse_lsn(row[0]), int(row[1]), description, archive.identity().generation)
    metadata.write(archive.storage, _key(name), mark)
    return mark


def load_mark(archive: Archive, name: str) -> Mark:
    try:
        return metadata.read(archive.storage, _key(name), Mark)
    except FileNotFoundError:
        known = sorted(e.name[:-5] for e in archive.storage.list(MARKS_KEY)
                       if e.size is not None and e.name.endswith(".json"))
        raise PgtapeError(f"no recovery point named {name!r}; known: {', '.join(known) or 'none'} "
                          "(create one with pgtape mark NAME)") from None
