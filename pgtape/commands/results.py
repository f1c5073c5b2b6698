"""--json results: every command's JSON document is one of these typed structures (or a Struct in the
command's own module), printed by emit(). docs/CLI_JSON.md documents them field by field.

Conventions: LSNs are 'X/Y' text; times are pgtape's UTC text (`2026-11-25 14:02:59.123456Z`),
'-' or null where unknown as each field says; sizes are bytes; counts are integers.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from pgtape.lsn import format_lsn
from pgtape.timefmt import format_time


def encode(result: Any, indent: int | None = None) -> str:
    """One result (a Struct, or a list of them) as JSON text: keys in field order, ASCII only, as
    json.dumps writes them (the documents' format before they were typed)."""
    return json.dumps(msgspec.to_builtins(result, enc_hook=str), indent=indent)


def emit(result: Any, indent: int | None = None) -> None:
    """Print one result on stdout."""
    print(encode(result, indent))


def lsn_or_none(lsn: int | None) -> str | None:
    return format_lsn(lsn) if lsn is not None else None


def time_or_none(us: int | None) -> str | None:
    return format_time(us) if us is not None else None


class TableComparison(msgspec.Struct):
    """One table compared (diff, verify --live): counts of rows, and up to 5 samples of each kind."""
    table: str
    key: list[str]
    rows_expected: int
    rows_actual: int
    equal: int
    missing: int  # in expected, not in actual
    extra: int  # in actual, not in expected
    different: int
    samples_missing: list[dict[str, str | None]]
    samples_extra: list[dict[str, str | None]]
    samples_different: list[dict[str, Any]]  # {"key": {col: value}, "columns": {col: {label: value}}}
    columns_only_expected: list[str]
    columns_only_actual: list[str]
    ok: bool

    @classmethod
    def of(cls, r: Any) -> TableComparison:  # replay.compare.TableComparison
        return cls(**{f: getattr(r, f) for f in cls.__struct_fields__})


class SnapshotRef(msgspec.Struct):
    id: str
    as_of_lsn: str
    as_of_time: str  # '-' when unknown


class PrunedSnapshot(msgspec.Struct):
    id: str
    generation: int
    kind: str
    status: str
    as_of_lsn: str | None
    as_of_time: str | None
    bytes: int


class PrunedSegment(msgspec.Struct):
    file: str
    generation: int
    start_lsn: str
    end_lsn: str
    bytes: int


class PrunedGeneration(msgspec.Struct):
    id: int
    bytes: int


class PrunedLeftover(msgspec.Struct):
    path: str
    bytes: int


class RecoverableWindow(msgspec.Struct):
    from_: str = msgspec.field(name="from")  # commit time; '-' when unknown
    from_lsn: str
    to: str
    to_lsn: str
    text: str


class PruneSummary(msgspec.Struct):
    """What prune deleted (or with dry_run would delete), and the recoverable window after it."""
    dry_run: bool
    nothing_to_prune: bool
    snapshots: list[PrunedSnapshot]
    segments: list[PrunedSegment]
    generations: list[PrunedGeneration]
    leftovers: list[PrunedLeftover]
    bytes_freed: int
    window: RecoverableWindow | None
    unused_keys: list[str] = []  # ids of configured keys no remaining archive file uses (they may be removed)
