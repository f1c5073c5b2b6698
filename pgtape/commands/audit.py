"""pgtape audit: print the audit trail (who ran what on this archive, with what result)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from pgtape.commands.results import emit
from pgtape.config import Config
from pgtape.errors import OK, PROBLEMS_FOUND
from pgtape.tape import audit
from pgtape.tape.archive import Archive
from pgtape.timefmt import EPOCH, MICROSECOND, parse_time

HELP = "print the audit trail: every operation that read or changed data, by whom, with what result"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="TIME", help="only entries at or after TIME (ISO 8601 with zone)")
    p.add_argument("--until", metavar="TIME", help="only entries at or before TIME")
    p.add_argument("--operation", metavar="OP", help="only this operation (snapshot, replay, prune, ...)")
    p.add_argument("--actor", metavar="A", help="only entries by this actor")
    p.add_argument("--json", action="store_true", help="JSON lines: one entry per line")


def _us(time: str) -> int:
    return (datetime.fromisoformat(time) - EPOCH) // MICROSECOND


def _pairs(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in d.items())


def run(args: argparse.Namespace, config: Config) -> int:
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    entries, problems = audit.read(Archive.reading(config))  # local, or an offsite copy (s3://)
    for e in entries:
        if ((since is not None and _us(e.time) < since) or (until is not None and _us(e.time) > until)
                or (args.operation and e.operation != args.operation) or (args.actor and e.actor != args.actor)):
            continue
        if args.json:
            emit(e)
        else:
            given = _pairs(e.arguments)
            r = e.result  # a command's: exit_code and outcome; pgtape serve's API calls may hold others
            result = f"exit {r['exit_code']}: {r.get('outcome')}" if set(r) == {"exit_code", "outcome"} else _pairs(r)
            print(f"{e.time}  {e.actor}  {e.operation}{' ' + given if given else ''}  -> {result}")
    for p in problems:  # on stderr: stdout stays the entries (one JSON document per line with --json)
        print(f"problem: {p}", file=sys.stderr)
    return PROBLEMS_FOUND if problems else OK
