"""PostgreSQL log sequence numbers: parse and format the `X/Y` text form.

An LSN is handled as a plain int everywhere in pgtape; these helpers are the only place
that knows the text form. File names use the fixed-width form so they sort by LSN.
"""

from pgtape.errors import UsageError


def parse_lsn(text: str) -> int:
    """Parse `16/B374D848` into an int; raise UsageError on anything else."""
    hi, sep, lo = text.strip().partition("/")
    try:
        if not sep or not hi or not lo or len(hi) > 8 or len(lo) > 8:
            raise ValueError
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        raise UsageError(f"invalid LSN {text!r}: expected the form 16/B374D848") from None


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_filename_part(lsn: int) -> str:
    """Fixed-width, sortable form used in file names: 00000016B374D848."""
    return f"{lsn:016X}"
