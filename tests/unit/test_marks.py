"""The mark catalog and mark messages (pgtape/tape/marks.py), without a database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgtape import metadata
from pgtape.errors import PgtapeError
from pgtape.replay.engine import _mark_name
from pgtape.tape.marks import MARK_PREFIX, Mark, load_mark, mark_content, mark_key, parse_mark, save_new_mark
from pgtape.tape.records import Message
from pgtape.timefmt import parse_time
from .archive_kit import new_archive


def test_content_round_trips_and_the_engine_reads_its_name() -> None:
    at = parse_time("2026-11-25T14:02:59.123456Z")
    for when in (None, at):
        content = mark_content("m-1", "why", when)
        assert _mark_name(content) == "m-1"
        mark = parse_mark(Message(42, True, MARK_PREFIX, content), 7, 3)
        assert mark == Mark("m-1", 42, 7, "why", 3, when)


def test_content_from_sql_and_from_older_pgtape_mark() -> None:
    sql = '{"name": "p", "description": null, "at": "2026-11-25T15:02:59+01:00"}'
    assert parse_mark(Message(1, True, MARK_PREFIX, sql), 5, 1) == Mark("p", 1, 5, None, 1,
                                                                       parse_time("2026-11-25T14:02:59Z"))
    old = json.dumps({"name": "o", "description": "d"})
    assert parse_mark(Message(1, True, MARK_PREFIX, old), 5, 1) == Mark("o", 1, 5, "d", 1, None)
    for bad in ("not json", '{"name": "../x"}', '{"name": "ok", "at": "yesterday"}', '{"description": "x"}'):
        assert parse_mark(Message(1, True, MARK_PREFIX, bad), 5, 1) is None


def test_a_mark_file_without_at_still_loads_and_the_first_of_a_name_stays(tmp_path: Path) -> None:
    archive = new_archive(tmp_path / "a")
    archive.storage.write_atomic(mark_key("old"), metadata.encode(
        {"name": "old", "lsn": 10, "time": 20, "description": None, "generation": 1}))
    assert load_mark(archive, "old") == Mark("old", 10, 20, None, 1)
    assert save_new_mark(archive, Mark("new", 1, 2, "first", 1))
    assert not save_new_mark(archive, Mark("new", 3, 4, "second", 1))
    assert load_mark(archive, "new").description == "first"
    with pytest.raises(PgtapeError, match="no recovery point named 'gone'; known: new, old"):
        load_mark(archive, "gone")
