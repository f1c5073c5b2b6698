"""Points in time: ISO 8601 with an explicit zone in, UTC out; µs since 1970 in between."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from pgtape.errors import UsageError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)


def parse_time(text: str, what: str = "time") -> int:
    """`2026-11-25T14:02:59+01:00` -> µs UTC. A time without a zone is refused: it is ambiguous."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"invalid {what} {text!r}: use ISO 8601 with a zone, e.g. 2026-11-25T14:02:59Z") from None
    if dt.tzinfo is None:
        raise UsageError(f"{what} {text!r} has no time zone: add one, e.g. {text.strip()}Z or {text.strip()}+01:00")
    return (dt - EPOCH) // MICROSECOND


def format_time(us: int | None) -> str:
    if us is None:
        return "-"
    return (EPOCH + us * MICROSECOND).isoformat(sep=" ", timespec="microseconds").replace("+00:00", "Z")


def now_us() -> int:
    """Now, in µs UTC."""
    return time.time_ns() // 1000
