"""pgtape mark: a named recovery point at the exact current position of the stream, or (--at) at an earlier time."""

from __future__ import annotations

import argparse

import msgspec

from pgtape import keys
from pgtape.commands.results import emit
from pgtape.config import Config
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive
from pgtape.replay.marks import create_mark
from pgtape.timefmt import format_time, parse_time

HELP = "create a named recovery point (replay --target-name NAME goes back to it)"


class MarkResult(msgspec.Struct):
    name: str
    lsn: str  # the mark's position in the stream
    time: str  # when it was made (server time, UTC)
    description: str | None
    at: str | None  # a time mark: the instant it names (replay --target-name NAME = --target-time AT)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="letters, digits and _ . : -")
    p.add_argument("--description", metavar="TEXT", help="what the point is for")
    p.add_argument("--at", metavar="TIME", help="name this earlier time instead of now (ISO 8601 with a zone)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, config: Config) -> int:
    at = parse_time(args.at, "--at") if args.at is not None else None
    archive = Archive.existing(config.require_archive(), keys.configured(config))
    mark = create_mark(archive, config.dsn, args.name, args.description, at)
    at_text = format_time(mark.at) if mark.at is not None else None
    if args.json:
        emit(MarkResult(mark.name, format_lsn(mark.lsn), format_time(mark.time), mark.description, at_text))
    elif at_text is not None:
        print(f"recovery point {mark.name!r} at time {at_text}")
    else:
        print(f"recovery point {mark.name!r} at {format_lsn(mark.lsn)} ({format_time(mark.time)})")
    return 0
