"""PostgreSQL COPY text format: the form rows take inside replay (snapshots store it, COPY loads it).

A row is fields joined by TAB and ended by LF; NULL is \\N; backslash, TAB, LF and CR inside a
value are escaped. Tape values (plain text) are escaped once on the way in, so keys compare
byte for byte with snapshot fields.
"""

from __future__ import annotations

NULL = b"\\N"
_ESCAPES = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}


def escape(value: str | None) -> bytes:
    if value is None:
        return NULL
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_ESCAPES).encode()
    return value.encode()


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


def split_row(line: bytes) -> list[bytes]:
    """One COPY text line (without its LF) -> raw fields."""
    return line.split(b"\t")
