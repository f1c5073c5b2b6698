"""pgtape replay: the tables as they were at a target, into a recovery schema, files, or in place."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgtape.config import Config
from pgtape.errors import UsageError
from pgtape.lsn import format_lsn
from pgtape.names import sql_name
from pgtape.tape.archive import Archive
from pgtape.timefmt import format_time
from pgtape.replay import sinks
from pgtape.replay.engine import prepare
from pgtape.replay.target import add_target_options, target_from_args

HELP = "rebuild tables as of a time, LSN or recovery point (dry run, recovery schema, files or in place)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target_options(p.add_mutually_exclusive_group(required=True))
    p.add_argument("--target-exclusive", action="store_true",
                   help="stop before a transaction committed exactly at the target")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--output", metavar="DIR", help="write one file per table instead of a recovery schema")
    out.add_argument("--in-place", action="store_true",
                     help="replace the live rows (after backing up what changes); needs --yes to act")
    out.add_argument("--dry-run", action="store_true", help="print the plan and the difference from live only")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="file format with --output")
    p.add_argument("--into", metavar="DSN", help="database for the recovery schema (default: the source)")
    p.add_argument("--schema", metavar="NAME", help="recovery schema (default: pgtape_recovered_<target>)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty recovery schema")
    p.add_argument("--yes", action="store_true", help="with --in-place: really change the live tables")
    p.add_argument("--lock-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="with --in-place --yes: how long to wait for the lock that holds writers off the tables "
                        "(default 30)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def run(args: argparse.Namespace, config: Config) -> int:

    if args.format != "csv" and not args.output:
        raise UsageError("--format goes with --output DIR")
    if args.yes and not args.in_place:
        raise UsageError("--yes goes with --in-place")
    if args.lock_timeout <= 0:
        raise UsageError("--lock-timeout must be a positive number of seconds")
    if (args.into or args.schema or args.force) and (args.output or args.in_place or args.dry_run):
        raise UsageError("--into, --schema and --force are for a recovery schema (not --output, --in-place, --dry-run)")
    archive = Archive.existing(config.require_archive())
    gen = archive.generation(archive.identity().generation)
    tables = config.selected_tables(gen.tables)
    target = target_from_args(args)
    tty = sys.stderr.isatty() and not args.json
    plan = prepare(archive, tables, target,
                   progress=(lambda n: print(f"\rreplaying: {n} transactions", end="", file=sys.stderr)) if tty
                   else None)
    if tty:
        print("\r", end="", file=sys.stderr)
    summary: dict[str, object] = {
        "target": plan.target.describe(),
        "base": {"id": plan.base.id, "as_of_lsn": format_lsn(plan.base.as_of_lsn or 0),
                 "as_of_time": format_time(plan.base.as_of_time)},
        "bases": {t: b.id for t, b in plan.bases.items()},  # a table may have a newer base of its own
        "tape_from_lsn": format_lsn(plan.base.as_of_lsn or 0),
        "resolved_lsn": format_lsn(plan.last_txn.end_lsn) if plan.last_txn else format_lsn(plan.base.as_of_lsn or 0),
        "resolved_commit_time": format_time(plan.last_txn.commit_time) if plan.last_txn else None,
        "transactions": plan.transactions, "changes": plan.changes,
        "window": {"from": format_time(plan.window.from_time), "to": format_time(plan.window.to_time)},
        # Tables dropped before the target: there was nothing of them to restore at it.
        "absent": sorted(t for t in plan.folds if t not in plan.present),
    }
    if args.dry_run or args.in_place:
        diffs, backup = sinks.diff_live(plan, config.dsn, apply=args.in_place and args.yes,
                                        lock_timeout=args.lock_timeout)
        summary["tables"] = {d.table: {"rows": d.rows, "insert": d.to_insert, "update": d.to_update,
                                       "delete": d.to_delete} for d in diffs}
        summary["applied"] = backup is not None
        summary["backup_schema"] = backup
        _print(args, summary, "dry run" if args.dry_run else ("applied in place" if backup else
                                                             "in place, NOT applied: pass --yes to apply"))
        return 0
    if args.output:
        counts = sinks.to_files(plan, Path(args.output), args.format)
        summary.update(output=args.output, format=args.format, rows=counts)
        _print(args, summary, f"written to {args.output}")
        return 0
    schema = args.schema or f"pgtape_recovered_{plan.target.slug()}"
    counts = sinks.to_schema(plan, args.into or config.dsn, schema, args.force)
    summary.update(schema=schema, rows=counts,
                   relations={t: f"{sql_name(schema)}.{sql_name(n)}" for t, n in plan.names_in_one_schema().items()})
    _print(args, summary, f"recovered into schema {schema}")
    return 0


def _print(args: argparse.Namespace, s: dict[str, object], outcome: str) -> None:
    if args.json:
        print(json.dumps({"outcome": outcome, **s}, indent=2))
        return
    base = s["base"]
    assert isinstance(base, dict)
    print(f"target      {s['target']}: last transaction applied ends at {s['resolved_lsn']}"
          f" (committed {s['resolved_commit_time'] or '-'})")
    print(f"base        snapshot {base['id']} as of {base['as_of_lsn']} ({base['as_of_time']})")
    bases = s["bases"]
    assert isinstance(bases, dict)
    for t, b in bases.items():
        if b != base["id"]:
            print(f"            {t} from its newer snapshot {b}")
    print(f"tape        {s['transactions']} transactions, {s['changes']} changes after the base")
    tables = s.get("tables")
    if isinstance(tables, dict):
        print(f"{'table':<24} {'rows':>10} {'insert':>8} {'update':>8} {'delete':>8}   (live -> replayed)")
        for t, d in tables.items():
            print(f"{t:<24} {d['rows']:>10} {d['insert']:>8} {d['update']:>8} {d['delete']:>8}")
        if s.get("backup_schema"):
            print(f"locked      {', '.join(tables)} against writes while restoring (reads went on; writes waited "
                  "and applied after it)")
            print(f"backup      rows overwritten or deleted are in schema {s['backup_schema']}")
    rows = s.get("rows")
    if isinstance(rows, dict):
        print("rows        " + ", ".join(f"{t} {n}" for t, n in rows.items()))
    absent = s.get("absent")
    if isinstance(absent, list) and absent:
        print(f"absent      {', '.join(absent)} (dropped before the target: nothing to restore)")
    relations = s.get("relations")
    if isinstance(relations, dict) and len({t.rsplit(".", 1)[-1] for t in relations}) < len(relations):
        # Two tables share a name: each went in as "schema.table" (pgtape/names.py).
        print("tables      " + ", ".join(f"{t} as {r}" for t, r in relations.items()))
    print(outcome)
