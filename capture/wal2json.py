"""wal2json format-version 2: the plugin options pgtape asks for and how its messages decode.

Numbers are decoded from their JSON text without ever becoming a binary float (float_hook=str):
numeric 0.10 stays "0.10". Every value becomes PostgreSQL's canonical text output as a COPY text
field, which is what the tape stores. The plugin's known limits: docs/ARCHITECTURE.md, "Values".
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

from pgtape.copytext import COPY_ESCAPES, NULL_TEXT
from pgtape.names import split_table
from pgtape.pg import quote_literal
from pgtape.tape.records import MARK_PREFIX

DDL_PREFIX = "pgtape_schema"  # the DDL trigger's (capture/ddl_trigger.py): they become Schema records


def plugin_options(tables: list[str]) -> dict[str, str]:
    """`tables`: the names wal2json reports the captured rows under (a partition's own, not its
    partitioned table's)."""
    return {
        "format-version": "2",
        "include-xids": "1",
        "include-timestamp": "1",
        "include-lsn": "1",
        "include-types": "1",
        "include-typmod": "1",
        "include-pk": "1",
        "add-tables": ",".join(_add_tables_entry(t) for t in tables),
        "add-msg-prefixes": f"{MARK_PREFIX},{DDL_PREFIX}",
    }


def _add_tables_entry(qualified: str) -> str:
    # wal2json splits on "," and "." and unescapes backslashes: escape those in names.
    def esc(part: str) -> str:
        return "".join("\\" + c if c in ",.\\ *" else c for c in part)
    schema, table = split_table(qualified)
    return f"{esc(schema)}.{esc(table)}"


def options_sql(options: dict[str, str]) -> str:
    return ", ".join(f'"{k}" {quote_literal(v)}' for k, v in options.items())


class Column(msgspec.Struct, gc=False):
    name: str
    type: str
    value: Any = None


class KeyColumn(msgspec.Struct, gc=False):
    name: str
    type: str


class W2JMessage(msgspec.Struct, gc=False):
    action: str
    xid: int | None = None
    timestamp: str | None = None
    lsn: str | None = None
    nextlsn: str | None = None
    schema: str | None = None
    table: str | None = None
    columns: list[Column] | None = None
    identity: list[Column] | None = None
    pk: list[KeyColumn] | None = None
    transactional: bool | None = None
    prefix: str | None = None
    content: str | None = None


decoder = msgspec.json.Decoder(W2JMessage, float_hook=str)


def to_field(value: Any, type_name: str) -> str:
    """A wal2json value as its COPY text field: PostgreSQL's text output, escaped; \\N for NULL."""
    if type(value) is str:
        if type_name == "bytea":  # wal2json prints bare hex; the output is \\x<hex>, whose backslash COPY escapes
            return "\\\\x" + value
        # isprintable() is False for every control character: most values skip translate().
        return value.translate(COPY_ESCAPES) if "\\" in value or not value.isprintable() else value
    if value is None:
        return NULL_TEXT
    if value is True:
        return "t"
    if value is False:
        return "f"
    return str(value)  # int, or a float/numeric already kept as its JSON text: never needs escaping


def parse_commit_time(text: str) -> int:
    """`2026-11-25 19:58:31.885393+00` -> microseconds since 1970-01-01 UTC."""
    return (datetime.fromisoformat(text) - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def lsn(text: str | None) -> int:
    """wal2json's X/Y text (always well formed) -> int; on the hot path, so no validation beyond it."""
    if text is None:
        raise ValueError("wal2json message without lsn: include-lsn is required")
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)
