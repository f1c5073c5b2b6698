"""PostgreSQL COPY text format: how the tape, the bases and replay hold rows.

A row is its fields joined by TAB (a line; LF ends it in files and COPY streams); NULL is \\N.
Escaping is exactly what COPY TO writes (backslash, and \\b \\f \\n \\r \\t \\v for those control
characters), so a value escaped with it compares byte for byte with the same value in a base file.
"""

from __future__ import annotations

NULL = b"\\N"
NULL_TEXT = "\\N"
# For str.translate; capture escapes with it (capture/wal2json.py, only values that need it).
COPY_ESCAPES = {ord("\\"): "\\\\", ord("\b"): "\\b", ord("\f"): "\\f", ord("\n"): "\\n", ord("\r"): "\\r",
                ord("\t"): "\\t", ord("\v"): "\\v"}
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}


def unescape(field: bytes) -> str | None:
    if field == NULL:
        return None
    text = field.decode()
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in _UNESCAPES:
                out.append(_UNESCAPES[nxt])
                i += 2
                continue
            if nxt in "01234567":  # \ooo octal byte (COPY may write these for control chars)
                j = i + 1
                while j < len(text) and j < i + 4 and text[j] in "01234567":
                    j += 1
                out.append(chr(int(text[i + 1:j], 8)))
                i = j
                continue
        out.append(c)
        i += 1
    return "".join(out)


def split_row(line: bytes) -> list[str | None]:
    """One COPY text line (without its LF) -> values."""
    return [unescape(f) for f in line.split(b"\t")]
