"""Replay targets and the stop rule (docs/ARCHITECTURE.md, "Replay targets").

Like PostgreSQL's own point-in-time recovery, transactions apply in commit order and replay
stops before the first transaction that is past the target:
  --target-time T   past = commit time > T  (>= T with --target-exclusive)
  --target-lsn L    past = commit LSN > L   (>= L with --target-exclusive)
  --target-name N   the transaction that recorded mark N is the last one applied
  --latest          everything on the tape
  --snapshot ID     alone: that snapshot as it is (nothing from the tape applied)
A time mark (pgtape mark NAME --at TIME) resolves to --target-time TIME, keeping its name.
Stopping at the first transaction past the target, rather than filtering by timestamp, always
yields a state the database really was in (commit timestamps are not monotonic in commit order).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pgtape.errors import UsageError
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.timefmt import format_time, parse_time


_NO_LIMIT = 1 << 64  # beyond any LSN or µs timestamp


@dataclass(frozen=True)
class Target:
    kind: str  # time, lsn, name, latest, snapshot
    time: int | None = None  # µs UTC
    lsn: int | None = None
    name: str | None = None  # a mark's name (also of a time mark, kind time); a snapshot's id
    exclusive: bool = False

    def last_allowed(self) -> tuple[int, int]:
        """(commit time, commit LSN) a transaction may have and still be applied: the stop rule as
        two bounds, checked per transaction on replay's hot path. Times are whole µs, so
        `>= T` is `> T - 1`; a mark bounds nothing here (prepare() stops after its transaction)."""
        if self.kind == "time":
            assert self.time is not None
            return self.time - 1 if self.exclusive else self.time, _NO_LIMIT
        if self.kind == "snapshot":
            return -1, -1  # every transaction after the base is past it
        if self.kind == "lsn":
            assert self.lsn is not None
            return _NO_LIMIT, self.lsn - 1 if self.exclusive else self.lsn
        return _NO_LIMIT, _NO_LIMIT

    def describe(self) -> str:
        rel = "before" if self.exclusive else "up to"
        if self.kind == "time" and self.name is not None:
            return f"recovery point {self.name!r} (time {format_time(self.time)})"
        if self.kind == "time":
            return f"{rel} time {format_time(self.time)}"
        if self.kind == "snapshot":
            return f"snapshot {self.name} (LSN {format_lsn(self.lsn or 0)})"
        if self.kind == "lsn":
            return f"{rel} LSN {format_lsn(self.lsn or 0)}"
        if self.kind == "name":
            return f"recovery point {self.name!r} (LSN {format_lsn(self.lsn or 0)})"
        return "latest"

    def slug(self) -> str:
        """For default schema names: pgtape_recovered_<slug>."""
        if self.kind in ("snapshot", "time") and self.name is not None:
            slug = "".join(c if c.isalnum() else "_" for c in self.name).lower()[:40]
            return f"snapshot_{slug}" if self.kind == "snapshot" else slug
        if self.kind == "time":
            return format_time(self.time).replace("-", "").replace(":", "").replace(" ", "t").split(".")[0].lower()
        if self.kind == "lsn":
            return format_lsn(self.lsn or 0).replace("/", "_").lower()
        if self.kind == "name":  # (a time mark: above)
            return "".join(c if c.isalnum() else "_" for c in (self.name or "")).lower()[:40]
        return "latest"


def add_target_options(group: argparse._MutuallyExclusiveGroup, latest: bool = True) -> None:
    """The target flags, shared by replay and diff."""
    group.add_argument("--target-time", metavar="TIME", help="ISO 8601 with a zone, e.g. 2026-11-25T14:02:59Z")
    group.add_argument("--target-lsn", metavar="LSN", help="e.g. 16/B374D848")
    group.add_argument("--target-name", metavar="NAME", help="a recovery point made with pgtape mark")
    if latest:
        group.add_argument("--latest", action="store_true", help="everything on the tape")


def target_from_args(args: argparse.Namespace) -> Target:
    exclusive = getattr(args, "target_exclusive", False)
    if args.target_time is not None:
        return Target("time", time=parse_time(args.target_time, "--target-time"), exclusive=exclusive)
    if args.target_lsn is not None:
        return Target("lsn", lsn=parse_lsn(args.target_lsn), exclusive=exclusive)
    if exclusive:
        raise UsageError("--target-exclusive needs --target-time or --target-lsn")
    if args.target_name is not None:
        return Target("name", name=args.target_name)
    return Target("latest")
