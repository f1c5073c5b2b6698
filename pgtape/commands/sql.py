"""pgtape sql: the SQL monitoring catalog, views and create_recovery_point() (pgtape/service/sql_monitor.py)."""

from __future__ import annotations

import argparse
import dataclasses

import msgspec

from pgtape import keys
from pgtape.commands.results import emit
from pgtape.config import Config, parse_schema
from pgtape.pg import redact_dsn
from pgtape.service import sql_monitor
from pgtape.service.sql_monitor import Installed
from pgtape.tape.archive import Archive

HELP = "SQL monitoring: install the backup catalog, views and create_recovery_point(), or sync the catalog"


class SqlInstallResult(msgspec.Struct):
    database: str  # the monitoring DSN, without a password
    schema: str
    objects: list[Installed]
    grants: list[str]  # what a monitoring role needs; install grants nothing


class SqlSyncResult(msgspec.Struct):
    database: str
    table: str  # schema-qualified
    snapshots: int  # rows the table now holds: one per snapshot in the archive's catalog


def _schema(text: str) -> str:
    try:
        return parse_schema(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("install", "sync"),
                   help="install: create or update the objects (idempotent); sync: bring payment_backups up to "
                        "date with the archive's snapshot catalog once (pgtape serve does it continuously)")
    p.add_argument("--schema", type=_schema, help="schema of the objects (default: [sql] schema, else pgtape)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, config: Config) -> int:
    if args.schema:
        config = dataclasses.replace(config, sql_schema=args.schema)
    database = redact_dsn(sql_monitor.monitoring_dsn(config))
    if args.action == "sync":
        count = sql_monitor.sync(config, Archive.existing(config.require_archive(), keys.configured(config)))
        table = f"{config.sql_schema}.{sql_monitor.TABLE}"
        if args.json:
            emit(SqlSyncResult(database, table, count))
        else:
            print(f"{table}: {count} snapshot{'s' if count != 1 else ''} in {database}")
        return 0
    objects = sql_monitor.install(config)
    grants = sql_monitor.grants(config.sql_schema)
    if args.json:
        emit(SqlInstallResult(database, config.sql_schema, objects, grants), indent=2)
        return 0
    for o in objects:
        print(f"{o.kind} {o.name}: {o.action}")
    print("granted nothing; a monitoring role (here 'monitoring') needs:")
    for g in grants:
        print(f"  {g}")
    print("keep payment_backups current with pgtape serve, or pgtape sql sync (e.g. from cron)")
    return 0
