"""PostgreSQL log sequence numbers: parse and format the `X/Y` text form.

An LSN is handled as a plain int everywhere in pgtape; these helpers are the only place
that knows the text form. File names use the fixed-width form so they sort by LSN.
"""

import re

from pgtape.errors import UsageError

# Exactly hex digits: int(x, 16) alone would also take a sign, 0x, underscores and inner spaces.
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """Parse `16/B374D848` into an int; raise UsageError on anything else."""
    m = _LSN.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"invalid LSN {text!r}: expected the form 16/B374D848")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_filename_part(lsn: int) -> str:
    """Fixed-width, sortable form used in file names: 00000016B374D848."""
    return f"{lsn:016X}"
