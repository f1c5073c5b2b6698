"""pgtape/copytext.py: COPY text fields, escapes and NULL."""

from __future__ import annotations

import pytest

from pgtape.copytext import COPY_ESCAPES, NULL, split_row, unescape


@pytest.mark.parametrize("field, value", [
    (b"plain", "plain"),
    (b"", ""),
    (b"\\N", None),
    (b"\\\\N", "\\N"),  # the two characters backslash N, not NULL
    (b"NULL", "NULL"),
    (b"a\\tb\\nc\\rd", "a\tb\nc\rd"),
    (b"\\b\\f\\v", "\b\f\v"),
    (b"back\\\\slash", "back\\slash"),
    (b"\\\\x00ff", "\\x00ff"),  # bytea's output, escaped
    (b"\\101\\0012", "A\x012"),  # octal: at most three digits
    (b"trailing\\", "trailing\\"),
    (b"\\q", "\\q"),  # an unknown escape stays as it is
    ("ünï\\tcødé".encode(), "ünï\tcødé"),
])
def test_unescape(field: bytes, value: str | None) -> None:
    assert unescape(field) == value


def test_split_row() -> None:
    assert split_row(b"1\t\\N\tx\\ny\t") == ["1", None, "x\ny", ""]
    assert split_row(b"") == [""]
    assert NULL == b"\\N"


def test_escapes_are_what_copy_to_writes() -> None:
    assert "a\\b\tc\nd\re\bf\fg\vh".translate(COPY_ESCAPES) == "a\\\\b\\tc\\nd\\re\\bf\\fg\\vh"
    assert "no escapes; 'quoted' \"x\" ünï".translate(COPY_ESCAPES) == "no escapes; 'quoted' \"x\" ünï"
