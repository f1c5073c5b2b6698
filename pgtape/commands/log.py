"""pgtape log: the captured changes in commit order, filtered; one per line or JSON lines."""

from __future__ import annotations

import argparse
import sys

import msgspec

from pgtape.commands.results import encode
from pgtape.config import Config
from pgtape.errors import UsageError
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.names import canonical, resolve
from pgtape.tape.archive import Archive
from pgtape.tape.reader import RowChange, iter_changes
from pgtape.timefmt import format_time, parse_time

HELP = "show captured changes in commit order"
OPS = {"I": "INSERT", "U": "UPDATE", "D": "DELETE", "T": "TRUNCATE", "M": "MESSAGE", "S": "SCHEMA"}


class LoggedChange(msgspec.Struct):
    """One JSON line: the change's transaction, then what the op adds (the subclasses below)."""
    commit_time: str
    commit_lsn: str
    end_lsn: str  # the transaction's end: what --from-lsn/--to-lsn and replay --target-lsn compare
    xid: int
    op: str  # INSERT, UPDATE, DELETE, TRUNCATE, MESSAGE, SCHEMA


class LoggedMessage(LoggedChange):  # op MESSAGE: a logical message (e.g. a recovery point)
    prefix: str
    content: str


class LoggedColumn(msgspec.Struct):
    name: str
    type: str


class LoggedSchema(LoggedChange):  # op SCHEMA: the table's shape from here on
    table: str  # the captured table (its name when the generation began)
    name: str  # its name from here on
    dropped: bool
    columns: list[LoggedColumn]
    key: list[str]


class LoggedRow(LoggedChange):  # INSERT, UPDATE, DELETE, TRUNCATE
    table: str
    new: dict[str, str | None] | None  # column -> text value (null: SQL NULL)
    old: dict[str, str | None] | None
    absent: list[str]  # unchanged TOAST columns of an UPDATE: not sent, not NULL
    types: dict[str, str]
    key: list[str]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", action="append", metavar="T",
                   help='only this captured table, as in SQL: payments, public."Ledger Entries" (repeatable)')
    p.add_argument("--since", metavar="TIME", help="only transactions committed at or after TIME (ISO 8601 with zone)")
    p.add_argument("--until", metavar="TIME", help="only transactions committed at or before TIME")
    p.add_argument("--from-lsn", metavar="LSN", help="only transactions ending after LSN")
    p.add_argument("--to-lsn", metavar="LSN", help="only transactions ending at or before LSN")
    p.add_argument("--xid", type=int, metavar="X", help="only this transaction id")
    p.add_argument("--key", action="append", metavar="COL=VALUE",
                   help="only changes whose new or old row has COL = VALUE (repeatable: all must match)")
    p.add_argument("--json", action="store_true", help="JSON lines")


def run(args: argparse.Namespace, config: Config) -> int:
    archive = Archive.reading(config)
    gen = archive.identity().generation
    tables = set(resolve(args.table or [], archive.generation(gen).tables, "--table"))
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    keys: list[tuple[str, str]] = []
    for k in args.key or []:
        col, sep, value = k.partition("=")
        if not sep or not col:
            raise UsageError(f"invalid --key {k!r}: use COL=VALUE, e.g. --key id=42")
        keys.append((col, value))
    from_lsn = parse_lsn(args.from_lsn) if args.from_lsn else None
    to_lsn = parse_lsn(args.to_lsn) if args.to_lsn else None
    out = sys.stdout
    columns: set[str] = set()  # of the rows looked at: a --key column none of them has is a typo, not "no match"
    for c in iter_changes(archive, gen, from_lsn, to_lsn):
        t = c.txn.commit_time
        if (since is not None and t < since) or (until is not None and t > until):
            continue
        if args.xid is not None and c.txn.xid != args.xid:
            continue
        if tables and canonical(c.schema, c.table) not in tables:
            continue
        if keys:
            columns.update(c.types)
            if not all(_has(c, col, value) for col, value in keys):
                continue
        out.write((encode(as_json(c)) if args.json else as_line(c)) + "\n")
    unknown = [col for col, _ in keys if col not in columns]
    if unknown and columns:
        raise UsageError(f"--key: no change looked at has a column {', '.join(unknown)} (columns: "
                         f"{', '.join(sorted(columns))})")
    return 0


def _has(c: RowChange, col: str, value: str) -> bool:
    return any(row is not None and row.get(col) == value for row in (c.new, c.old))


def as_json(c: RowChange) -> LoggedChange:
    head = (format_time(c.txn.commit_time), format_lsn(c.txn.commit_lsn), format_lsn(c.txn.end_lsn), c.txn.xid,
            OPS[c.op])
    if c.op == "M" and c.message is not None:
        return LoggedMessage(*head, prefix=c.message.prefix, content=c.message.content)
    if c.op == "S" and c.shape is not None:
        s = c.shape
        return LoggedSchema(*head, table=canonical(c.schema, c.table), name=s.name, dropped=s.dropped,
                            columns=[LoggedColumn(n, t) for n, t in zip(s.columns, s.types)], key=s.key)
    return LoggedRow(*head, table=canonical(c.schema, c.table), new=c.new, old=c.old, absent=c.absent,
                     types=c.types, key=c.key)


def as_line(c: RowChange) -> str:
    head = f"{format_time(c.txn.commit_time)}  {format_lsn(c.txn.end_lsn):>12}  xid {c.txn.xid}  {OPS[c.op]:<8}"
    if c.op == "M" and c.message is not None:
        return f"{head} {c.message.prefix}: {c.message.content}"
    if c.op == "S" and c.shape is not None:
        s, table = c.shape, canonical(c.schema, c.table)
        if s.dropped:
            return f"{head} {table}  dropped"
        named = f" (named {s.name})" if s.name != table else ""
        return f"{head} {table}{named}  " + ", ".join(f"{n} {t}" for n, t in zip(s.columns, s.types))
    parts = [canonical(c.schema, c.table)]
    if c.old is not None:
        parts.append("old(" + ", ".join(f"{k}={_v(v)}" for k, v in c.old.items()) + ")")
    if c.new is not None:
        parts.append(", ".join(f"{k}={_v(v)}" for k, v in c.new.items()))
    if c.absent:
        parts.append(", ".join(f"{k}=<unchanged>" for k in c.absent))
    return f"{head} {'  '.join(parts)}"


def _v(value: str | None) -> str:
    if value is None:
        return "NULL"
    if len(value) > 60:
        return repr(value[:57] + "...")
    return repr(value) if (" " in value or not value) else value
