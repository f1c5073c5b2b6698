"""pgtape diff: compare two states of the tables — a recovery schema, the live tables, a replay."""

from __future__ import annotations

import argparse

import msgspec
import psycopg

from pgtape.commands.results import TableComparison, emit
from pgtape.config import Config
from pgtape.errors import OK, PROBLEMS_FOUND, PgtapeError, UsageError
from pgtape.names import canonical, names_in_one_schema, quote_ident, split_table
from pgtape.pg import column_types, connect, relation_oid, replica_key
from pgtape.tape.archive import Archive
from pgtape.replay.compare import Side, compare, render
from pgtape.commands.replay import add_budget_options, log_estimate, stop_on_sigterm
from pgtape.replay.engine import Plan, prepare
from pgtape.replay.sinks import create_table, live_relation, load_rows
from pgtape.replay.target import add_target_options, target_from_args

HELP = "compare a recovery schema or a replay at a target with the live tables (or another schema)"


class DiffResult(msgspec.Struct):
    ok: bool  # every table equal
    expected: str  # label of the reference side: "live" or "schema NAME"
    actual: str  # label of the compared side: "schema NAME" or "replay"
    tables: list[TableComparison]


def add_arguments(p: argparse.ArgumentParser) -> None:
    left = p.add_mutually_exclusive_group(required=True)
    left.add_argument("--schema", metavar="NAME", help="the tables in this schema (e.g. a recovery schema)")
    add_target_options(left, latest=False)  # or a replay to a target
    p.add_argument("--against", default="live", metavar="live|schema:NAME",
                   help="what to compare with (default: live)")
    add_budget_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable result")


def run(args: argparse.Namespace, config: Config) -> int:
    stop_on_sigterm()

    if args.against != "live" and not args.against.startswith("schema:"):
        raise UsageError(f"--against {args.against!r}: use live or schema:NAME")
    archive = Archive.reading(config)
    gen = archive.generation(archive.identity().generation)
    tables = config.selected_tables(gen.tables)
    plan = None
    if not args.schema:
        plan = prepare(archive, tables, target_from_args(args), memory=config.replay_memory,
                       work_dir=config.replay_work_dir, on_estimate=log_estimate)
    try:
        return _diff(args, config, tables, plan)
    finally:
        if plan is not None:
            plan.close()


def _diff(args: argparse.Namespace, config: Config, tables: list[str], plan: Plan | None) -> int:
    left_label = f"schema {args.schema}" if args.schema else "replay"
    right_label = "live" if args.against == "live" else f"schema {args.against[7:]}"
    results = []
    # How replay names them in a recovery schema (by their names at its target when it is replayed here).
    in_schema = plan.names_in_one_schema() if plan is not None else names_in_one_schema(tables)
    if plan is not None:
        tables = list(plan.present)
    with connect(config.dsn, autocommit=False, application_name="pgtape diff") as conn:
        schemas = [s for s in (args.schema, args.against[7:] if args.against != "live" else None) if s]
        missing = [canonical(s, in_schema[t]) for s in schemas for t in tables
                   if relation_oid(conn, f"{quote_ident(s)}.{quote_ident(in_schema[t])}") is None]
        if missing:  # all of them at once, not the first
            raise PgtapeError(f"not found: {', '.join(missing)} (a replay of only some tables? name them with "
                              "--tables)")
        for i, table in enumerate(tables):
            schema, name = split_table(table)
            if args.against != "live":
                right_rel = _existing(conn, args.against[7:], in_schema[table])
            elif plan is not None:
                right_rel = live_relation(conn, plan.folds[table])  # by its object: it may be renamed since
            else:
                right_rel = _existing(conn, schema, name)
            if plan is not None:
                left_rel = f"pgtape_diff_{i}"
                create_table(conn, left_rel, plan.folds[table], temp=True)
                load_rows(conn, left_rel, plan.rows(table))
                key = plan.folds[table].key
            else:
                left_rel = _existing(conn, args.schema, in_schema[table])
                key = replica_key(conn, right_rel) or replica_key(conn, left_rel)
            results.append(compare(conn, table, key, Side(right_label, right_rel, column_types(conn, right_rel)),
                                   Side(left_label, left_rel, column_types(conn, left_rel))))
        conn.rollback()
    ok = all(r.ok for r in results)
    if args.json:
        emit(DiffResult(ok, right_label, left_label, [TableComparison.of(r) for r in results]), indent=2)
    else:
        print("\n".join(render(results, right_label, left_label)))
    return OK if ok else PROBLEMS_FOUND


def _existing(conn: psycopg.Connection, schema: str, name: str) -> str:
    rel = f"{quote_ident(schema)}.{quote_ident(name)}"
    if relation_oid(conn, rel) is None:
        raise PgtapeError(f"table {canonical(schema, name)} does not exist")
    return rel
