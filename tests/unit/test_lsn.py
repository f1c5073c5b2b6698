"""pgtape/lsn.py: the X/Y text form of LSNs and the fixed-width file-name form."""

from __future__ import annotations

import pytest

from pgtape.errors import UsageError
from pgtape.lsn import format_lsn, lsn_filename_part, parse_lsn


@pytest.mark.parametrize("text, value", [("0/0", 0), ("0/1", 1), ("16/B374D848", 0x16_B374D848),
                                         ("16/b374d848", 0x16_B374D848), (" 1/0 ", 1 << 32),
                                         ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1)])
def test_parse(text: str, value: int) -> None:
    assert parse_lsn(text) == value


@pytest.mark.parametrize("bad", ["", "16", "/1", "1/", "1/2/3", "x/1", "123456789/0", "0/123456789"])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(UsageError, match="expected the form 16/B374D848"):
        parse_lsn(bad)


# int(x, 16) also takes a sign, a 0x prefix, underscores and spaces: -1/0 once parsed as a negative LSN.
@pytest.mark.parametrize("bad", ["-1/0", "+1/0", "1_0/0", "0x1/0", "1/ 0", "1/-0"])
def test_parse_refuses_what_int_would_take(bad: str) -> None:
    with pytest.raises(UsageError, match="expected the form 16/B374D848"):
        parse_lsn(bad)


def test_format_and_file_names() -> None:
    assert format_lsn(0x16_B374D848) == "16/B374D848"
    assert format_lsn(0x1_0000000A) == "1/A"
    assert format_lsn(0) == "0/0"
    assert lsn_filename_part(0x16_B374D848) == "00000016B374D848"
