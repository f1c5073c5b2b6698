"""An independent reading of pg_recvlogical's wal2json (format 2) output, for comparison with the tape.

It shares no code with pgtape's capture or COPY text helpers (only json and datetime from the
standard library), so a value-formatting bug in capture cannot hide by appearing on both sides.
What it encodes is PostgreSQL's, not pgtape's: wal2json sends each value as its type's text output
(numbers as bare JSON numbers, kept here as their exact text; bytea as bare hex, whose output is
\\x<hex>); COPY TO then escapes backslash and the control characters \\b \\f \\n \\r \\t \\v, and
writes NULL as \\N.

A change compares as (op, table, new, old, key, absent), new/old as ((column, type, COPY field), ...);
a TRUNCATE as ("T", table, None, None, (), ()); a transactional logical message as ("M", prefix, content).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

TxnKey = tuple[int, int, int, int]  # xid, commit LSN, end LSN, commit time (µs UTC)
Row = tuple[Any, ...]
Txn = tuple[TxnKey, list[Row]]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_COPY_ESCAPE = {"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return int(hi, 16) << 32 | int(lo, 16)


def micros(timestamp: str) -> int:
    """wal2json's commit timestamp (`2026-11-25 19:58:31.885393+00`) -> µs since 1970 UTC."""
    return (datetime.fromisoformat(timestamp) - _EPOCH) // timedelta(microseconds=1)


def copy_field(value: Any, type_name: str) -> str:
    """A decoded wal2json value as the field COPY TO would write for it."""
    if value is None:
        return "\\N"
    if value is True or value is False:
        return "t" if value else "f"
    text = "\\x" + value if type_name == "bytea" else value  # numbers arrive as their exact JSON text
    return "".join(_COPY_ESCAPE.get(c, c) for c in text)


def _columns(cols: list[dict[str, Any]] | None) -> tuple[tuple[str, str, str], ...] | None:
    if cols is None:
        return None
    return tuple((c["name"], c["type"], copy_field(c["value"], c["type"])) for c in cols)


def decode(line: bytes) -> dict[str, Any]:
    # Every number and non-finite constant stays its JSON text: 0.10 is "0.10", never 0.1.
    return json.loads(line, parse_float=str, parse_int=str, parse_constant=str)


def reference_txns(path: Path, columns: dict[str, tuple[str, ...]], until: int) -> list[Txn]:
    """pg_recvlogical's output as transactions ending at or before `until` with at least one
    change. `columns`: each table's columns in order (for the ones an UPDATE left out)."""
    txns: list[Txn] = []
    key: TxnKey | None = None
    rows: list[Row] = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        m = decode(line)
        action = m["action"]
        if action == "B":
            key = (int(m["xid"]), lsn(m["lsn"]), lsn(m["nextlsn"]), micros(m["timestamp"]))
            rows = []
        elif action == "C":
            assert key is not None and key[0] == int(m["xid"]) and key[2] == lsn(m["nextlsn"]), line
            if rows and key[2] <= until:
                txns.append((key, rows))
            key = None
        elif action == "M":
            if m["transactional"]:
                assert key is not None, line
                rows.append(("M", m["prefix"], m["content"]))
        elif action == "T":
            rows.append(("T", f"{m['schema']}.{m['table']}", None, None, (), ()))
        else:
            table = f"{m['schema']}.{m['table']}"
            new = _columns(m.get("columns"))
            absent: tuple[str, ...] = ()
            if action == "U" and new is not None:  # unchanged TOAST values are left out, not NULL
                present = {c[0] for c in new}
                absent = tuple(c for c in columns[table] if c not in present)
            pk = tuple(k["name"] for k in m.get("pk") or ())
            rows.append((action, table, new, _columns(m.get("identity")), pk, absent))
    return txns  # a trailing unfinished transaction (past endpos) is left out
