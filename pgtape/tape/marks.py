"""Recovery points (marks): the catalog <archive>/catalog/marks/<name>.json and their messages on the tape.

A mark is a transactional logical message with prefix MARK_PREFIX whose content is the JSON text
{"name": N, "description": D, "at": null | "<ISO 8601 time>"}, emitted by `pgtape mark` or by the
SQL function create_recovery_point. With "at" null it names its own transaction's position; with a
time it is a *time mark*: replay to it is replay to that time. Capture lists each mark it writes to
the tape in the catalog once it is durable; a mark with no catalog file (a tape written by an older
capture) is found by scanning the tape. Here, below capture, so that capture can record them.
"""

from __future__ import annotations

import json
import logging
import re

import msgspec

from pgtape import metadata
from pgtape.errors import PgtapeError, UsageError
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive
from pgtape.tape.records import MARK_PREFIX, Begin, Message
from pgtape.tape.segment import SegmentError, SegmentReader
from pgtape.timefmt import format_time, parse_time

__all__ = ["MARK_PREFIX", "MARKS_KEY", "Mark", "MarkMessage", "check_name", "load_mark", "mark_content",
           "mark_key", "parse_mark", "save_new_mark"]

logger = logging.getLogger(__name__)

MARKS_KEY = "catalog/marks"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")


class Mark(msgspec.Struct):
    name: str
    lsn: int  # of the message; its transaction commits right after
    time: int  # µs UTC, server clock: when the mark was made
    description: str | None
    generation: int
    at: int | None = None  # a time mark: the earlier instant it names (µs UTC); None: its position (lsn)


class MarkMessage(msgspec.Struct):
    """A mark message's content."""
    name: str
    description: str | None = None
    at: str | None = None  # ISO 8601 with a zone


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise UsageError(f"invalid recovery point name {name!r}: use letters, digits and _ . : - (at most 100)")


def mark_key(name: str) -> str:
    return f"{MARKS_KEY}/{name}.json"


def mark_content(name: str, description: str | None, at: int | None) -> str:
    """The message text: JSON that json.loads, as replay's engine does, reads the name from."""
    return json.dumps({"name": name, "description": description,
                       "at": format_time(at).replace(" ", "T") if at is not None else None})


def parse_mark(message: Message, txn_time: int, generation: int) -> Mark | None:
    """The mark a message on the tape records (its transaction committed at txn_time); None when its
    content is not a valid mark (written by hand, a bad name or time): it is no recovery point."""
    try:
        m = msgspec.json.decode(message.content, type=MarkMessage)
        check_name(m.name)
        at = parse_time(m.at, "time") if m.at is not None else None
    except (msgspec.DecodeError, UsageError) as e:
        logger.warning(f"ignoring a recovery point message at {format_lsn(message.lsn)}: {e}")
        return None
    return Mark(m.name, message.lsn, txn_time, m.description, generation, at)


def save_new_mark(archive: Archive, mark: Mark) -> bool:
    """List the mark unless one of its name exists (the first one named so stays); True if written."""
    key = mark_key(mark.name)
    if archive.storage.exists(key):
        return False
    metadata.write(archive.storage, key, mark)
    return True


def load_mark(archive: Archive, name: str) -> Mark:
    """The catalog's mark, or (none listed) the first mark of that name on the current generation's tape."""
    try:
        return metadata.read(archive.storage, mark_key(name), Mark)
    except FileNotFoundError:
        pass
    found = _scan_tape(archive, name) if _NAME.fullmatch(name) else None
    if found is not None:
        return found
    known = sorted(e.name[:-5] for e in archive.storage.list(MARKS_KEY)
                   if e.size is not None and e.name.endswith(".json"))
    raise PgtapeError(f"no recovery point named {name!r}; known: {', '.join(known) or 'none'} "
                      "(create one with pgtape mark NAME)")


def _scan_tape(archive: Archive, name: str) -> Mark | None:
    gen = archive.identity().generation
    try:
        for seg in archive.segments(gen):
            txn_time = 0
            for r in archive.read_segment(seg, SegmentReader).records():
                if type(r) is Begin:
                    txn_time = r.commit_time
                elif type(r) is Message and r.prefix == MARK_PREFIX and _quick_name(r.content) == name:
                    mark = parse_mark(r, txn_time, gen)
                    if mark is not None:
                        return mark
    except SegmentError as e:
        raise PgtapeError(f"damaged tape while looking for recovery point {name!r}: {e} (run pgtape verify)") from None
    return None


def _quick_name(content: str) -> str | None:
    try:
        return json.loads(content).get("name")
    except (ValueError, AttributeError):
        return None
