"""pgtape replay: the tables as they were at a target, into a recovery schema, files, or in place."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator
from pathlib import Path

import msgspec
from msgspec import UNSET, UnsetType

from pgtape.commands.results import SnapshotRef, emit
from pgtape.config import Config
from pgtape.errors import UsageError
from pgtape.lsn import format_lsn
from pgtape.names import sql_name
from pgtape.tape.archive import Archive
from pgtape.timefmt import format_time
from pgtape.replay import sinks
from pgtape.replay.engine import Plan, Progress, SpillEstimate, prepare
from pgtape.replay.plan import find_snapshot, snapshot_tables
from pgtape.replay.target import Target, add_target_options, target_from_args

HELP = "rebuild tables as of a time, LSN or recovery point (dry run, recovery schema, files or in place)"


logger = logging.getLogger(__name__)


class ReplayWindow(msgspec.Struct):
    from_: str = msgspec.field(name="from")  # commit times: the recoverable window of the archive
    to: str  # '-' when unknown


class TableChanges(msgspec.Struct):  # --dry-run, --in-place
    rows: int  # replayed rows
    insert: int  # what turns live into replayed
    update: int
    delete: int


class MemoryReport(msgspec.Struct):
    """The memory budget and spilling (docs/ARCHITECTURE.md, "Replay memory")."""
    budget: int  # bytes (--memory, [replay] memory)
    state_limit: int  # of it, for the folded state
    estimated_disk_bytes: int  # before reading the tape: what spilling may need (0: not expected)
    may_spill: bool  # the estimate: the state may outgrow state_limit
    runs: int  # spill files written (folded state and base rows being sorted)
    spilled_bytes: int  # written to them in all
    peak_disk_bytes: int  # most on disk at once
    spilled_tables: list[str]


class ProgressReport(msgspec.Struct):
    """The figures the progress line shows, at the end."""
    segments: int  # tape segments read
    transactions: int
    changes: int
    rows_loaded: int
    fold_seconds: float  # reading and folding the tape
    load_seconds: float  # writing the result
    seconds: float  # in all
    changes_per_s: float
    rows_per_s: float

    @classmethod
    def of(cls, p: Progress) -> ProgressReport:
        rows = sum(p.rows_loaded.values())
        return cls(p.segments, p.transactions, p.changes, rows, round(p.fold_seconds, 3), round(p.load_seconds, 3),
                   round(time.monotonic() - p.started, 3), round(p.changes / p.fold_seconds if p.fold_seconds else 0),
                   round(rows / p.load_seconds if p.load_seconds else 0))


class ReplayResult(msgspec.Struct):
    """Fields after `absent` are there only for the output they belong to (UNSET: not in the JSON)."""
    outcome: str  # dry run | applied in place | in place, NOT applied: ... | written to DIR | recovered into ...
    target: str  # the target as asked, described
    base: SnapshotRef  # the base replayed from
    bases: dict[str, str]  # table -> id of its base (a table may have a newer base of its own)
    tape_from_lsn: str
    resolved_lsn: str  # end of the last transaction applied
    resolved_commit_time: str | None
    transactions: int  # applied after the base
    changes: int
    window: ReplayWindow
    absent: list[str]  # tables dropped before the target: nothing of them to restore
    tables: dict[str, TableChanges] | UnsetType = UNSET  # --dry-run, --in-place
    applied: bool | UnsetType = UNSET  # --dry-run, --in-place: the live tables were changed
    backup_schema: str | None | UnsetType = UNSET  # --in-place: where overwritten rows were kept
    output: str | UnsetType = UNSET  # --output
    format: str | UnsetType = UNSET  # --output: csv or jsonl
    schema: str | UnsetType = UNSET  # recovery schema
    rows: dict[str, int] | UnsetType = UNSET  # --output, recovery schema: rows per table
    relations: dict[str, str] | UnsetType = UNSET  # recovery schema: table -> relation it was written to
    memory: MemoryReport | UnsetType = UNSET
    progress: ProgressReport | UnsetType = UNSET


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target_options(p.add_mutually_exclusive_group())  # one is required, unless --snapshot (run)
    p.add_argument("--snapshot", metavar="ID",
                   help="restore this snapshot as it is; with a target: replay from it instead of the base "
                        "replay would choose")
    p.add_argument("--target-exclusive", action="store_true",
                   help="stop before a transaction committed exactly at the target")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--output", metavar="DIR", help="write one file per table instead of a recovery schema")
    out.add_argument("--in-place", action="store_true",
                     help="replace the live rows (after backing up what changes); needs --yes to act")
    out.add_argument("--dry-run", action="store_true", help="print the plan and the difference from live only")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                   help="file format with --output: csv (a header line, every value quoted, NULL an empty unquoted "
                        "field, as COPY ... CSV HEADER FORCE_QUOTE * writes it) or jsonl")
    p.add_argument("--into", metavar="DSN", help="database for the recovery schema (default: the source)")
    p.add_argument("--schema", metavar="NAME", help="recovery schema (default: pgtape_recovered_<target>)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty recovery schema")
    p.add_argument("--yes", action="store_true", help="with --in-place: really change the live tables")
    p.add_argument("--lock-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="with --in-place --yes: how long to wait for the lock that holds writers off the tables "
                        "(default 30)")
    add_budget_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr (shown only on a terminal)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def add_budget_options(p: argparse.ArgumentParser) -> None:
    """--memory and --work-dir: pgtape.config's [replay] options (cli.py reads opt_<name> as an override)."""
    p.add_argument("--memory", dest="opt_replay_memory", metavar="SIZE",
                   help="memory budget of the replay (its resident memory), e.g. 512MiB (default: [replay] memory, "
                        "512MiB); past it the folded state spills to sorted runs on disk")
    p.add_argument("--work-dir", dest="opt_replay_work_dir", metavar="DIR",
                   help="directory for spill files (default: [replay] work_dir, else TMPDIR)")


def stop_on_sigterm() -> None:
    """SIGTERM (the service stopping a job) ends the command as Ctrl-C does: its finally blocks run, so
    spill files (row values) and a staging schema are removed, not left behind."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def log_estimate(e: SpillEstimate) -> None:
    """Before the tape is read, on stderr: the disk spilling may need, when it is likely (a dry run's
    output says it in any case)."""
    if e.may_spill:
        logger.info(e.describe())


def memory_report(plan: Plan) -> MemoryReport | UnsetType:
    e = plan.estimate
    if e is None:
        return UNSET
    return MemoryReport(e.memory, e.state_limit, e.disk_bytes, e.may_spill, plan.spill.runs_written,
                        plan.spill.bytes_written, plan.spill.peak_bytes, plan.spill.tables)


def run(args: argparse.Namespace, config: Config) -> int:
    stop_on_sigterm()

    if args.format != "csv" and not args.output:
        raise UsageError("--format goes with --output DIR")
    if args.yes and not args.in_place:
        raise UsageError("--yes goes with --in-place")
    if args.lock_timeout <= 0:
        raise UsageError("--lock-timeout must be a positive number of seconds")
    if (args.into or args.schema or args.force) and (args.output or args.in_place or args.dry_run):
        raise UsageError("--into, --schema and --force are for a recovery schema (not --output, --in-place, --dry-run)")
    no_target = args.target_time is None and args.target_lsn is None and args.target_name is None and not args.latest
    if no_target and not args.snapshot:
        raise UsageError("give a target: one of --target-time, --target-lsn, --target-name, --latest "
                         "(or --snapshot ID)")
    if no_target and args.target_exclusive:
        raise UsageError("--target-exclusive needs --target-time or --target-lsn")
    archive = Archive.reading(config)
    gen = archive.generation(archive.identity().generation)
    tables = config.selected_tables(gen.tables)
    target = Target("snapshot", name=args.snapshot) if no_target else target_from_args(args)
    snapshot = None
    if args.snapshot:
        snapshot = find_snapshot(archive, gen.id, args.snapshot)
        # All its tables, or those --tables names (tables configured for capture do not narrow it).
        tables = snapshot_tables(snapshot, tables if getattr(args, "opt_tables", None) is not None else None)
    progress = Progress()
    # A progress line for someone watching (stderr a terminal), unless --quiet.
    with _progress_line(progress, sys.stderr.isatty() and not args.quiet), \
            prepare(archive, tables, target, progress=progress, snapshot=snapshot, memory=config.replay_memory,
                    work_dir=config.replay_work_dir or (Path(args.output) if args.output else None),
                    on_estimate=log_estimate) as plan:
        logger.debug(f"replayed {plan.transactions} transactions", extra={"transactions": plan.transactions})
        s = _replay(args, config, plan)
        progress.done()
        s.memory = memory_report(plan)
        s.progress = ProgressReport.of(progress)
    if args.json:
        emit(s, indent=2)
    else:
        _print(s)
    return 0


@contextmanager
def _progress_line(p: Progress, shown: bool) -> Iterator[None]:
    """Rewrites one line of stderr twice a second while the replay runs; erased at the end."""
    if not shown:
        yield
        return
    stop = threading.Event()

    def show() -> None:
        while not stop.wait(0.5):
            sys.stderr.write("\r\033[K" + progress_text(p, time.monotonic()))
            sys.stderr.flush()
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    thread = threading.Thread(target=show, name="pgtape progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def progress_text(p: Progress, now: float) -> str:
    """`reading tape: segment 3/10, 1,234,567 changes, 456,789/s, ETA 12s` or `loading: ...`."""
    if p.phase == "reading tape":
        elapsed = now - p.started
        rate = p.changes / elapsed if elapsed > 0 else 0
        left = p.tape_bytes_total - p.tape_bytes
        eta = f"{elapsed * left / p.tape_bytes:.0f}s" if p.tape_bytes else "?"
        return (f"replay: reading tape: segment {p.segments + 1}/{p.segments_total}, {p.changes:,} changes, "
                f"{rate:,.0f}/s, ETA {eta}")
    if p.phase == "loading":
        elapsed = now - p.load_started
        rows = sum(p.rows_loaded.values())
        rate = rows / elapsed if elapsed > 0 else 0
        eta = f"{max(p.rows_expected - rows, 0) / rate:.0f}s" if rate and p.rows_expected > rows else "?"
        return f"replay: loading: {rows:,} rows (base: {p.rows_expected:,}), {rate:,.0f}/s, ETA {eta}"
    return f"replay: {p.phase}"


def _replay(args: argparse.Namespace, config: Config, plan: Plan) -> ReplayResult:
    s = ReplayResult(
        outcome="", target=plan.target.describe(),
        base=SnapshotRef(plan.base.id, format_lsn(plan.base.as_of_lsn or 0), format_time(plan.base.as_of_time)),
        bases={t: b.id for t, b in plan.bases.items()},
        tape_from_lsn=format_lsn(plan.base.as_of_lsn or 0),
        resolved_lsn=format_lsn(plan.last_txn.end_lsn) if plan.last_txn else format_lsn(plan.base.as_of_lsn or 0),
        resolved_commit_time=format_time(plan.last_txn.commit_time) if plan.last_txn else None,
        transactions=plan.transactions, changes=plan.changes,
        window=ReplayWindow(format_time(plan.window.from_time), format_time(plan.window.to_time)),
        absent=sorted(t for t in plan.folds if t not in plan.present))
    if args.dry_run or args.in_place:
        diffs, backup = sinks.diff_live(plan, config.dsn, apply=args.in_place and args.yes,
                                        lock_timeout=args.lock_timeout)
        s.tables = {d.table: TableChanges(d.rows, d.to_insert, d.to_update, d.to_delete) for d in diffs}
        s.applied = backup is not None
        s.backup_schema = backup
        s.outcome = "dry run" if args.dry_run else ("applied in place" if backup else
                                                    "in place, NOT applied: pass --yes to apply")
    elif args.output:
        s.rows = sinks.to_files(plan, Path(args.output), args.format)
        s.output, s.format, s.outcome = args.output, args.format, f"written to {args.output}"
    else:
        schema = args.schema or f"pgtape_recovered_{plan.target.slug()}"
        s.rows = sinks.to_schema(plan, args.into or config.dsn, schema, args.force)
        s.schema, s.outcome = schema, f"recovered into schema {schema}"
        s.relations = {t: f"{sql_name(schema)}.{sql_name(n)}" for t, n in plan.names_in_one_schema().items()}
    return s


def _print(s: ReplayResult) -> None:
    print(f"target      {s.target}: last transaction applied ends at {s.resolved_lsn}"
          f" (committed {s.resolved_commit_time or '-'})")
    print(f"base        snapshot {s.base.id} as of {s.base.as_of_lsn} ({s.base.as_of_time})")
    for t, b in s.bases.items():
        if b != s.base.id:
            print(f"            {t} from its newer snapshot {b}")
    print(f"tape        {s.transactions} transactions, {s.changes} changes after the base")
    if s.tables is not UNSET:
        print(f"{'table':<24} {'rows':>10} {'insert':>8} {'update':>8} {'delete':>8}   (live -> replayed)")
        for t, d in s.tables.items():
            print(f"{t:<24} {d.rows:>10} {d.insert:>8} {d.update:>8} {d.delete:>8}")
        if s.backup_schema:
            print(f"locked      {', '.join(s.tables)} against writes while restoring (reads went on; writes waited "
                  "and applied after it)")
            print(f"backup      rows overwritten or deleted are in schema {s.backup_schema}")
    if s.rows is not UNSET:
        print("rows        " + ", ".join(f"{t} {n}" for t, n in s.rows.items()))
    if s.absent:
        print(f"absent      {', '.join(s.absent)} (dropped before the target: nothing to restore)")
    if s.relations is not UNSET and len({t.rsplit(".", 1)[-1] for t in s.relations}) < len(s.relations):
        # Two tables share a name: each went in as "schema.table" (pgtape/names.py).
        print("tables      " + ", ".join(f"{t} as {r}" for t, r in s.relations.items()))
    if s.memory is not UNSET:
        m = s.memory
        if m.runs:
            print(f"memory      budget {m.budget >> 20} MiB: spilled {m.runs} runs, {m.spilled_bytes} bytes "
                  f"({', '.join(m.spilled_tables)}; at most {m.peak_disk_bytes} bytes on disk at once; removed)")
        elif m.may_spill or s.outcome == "dry run":
            print(f"memory      budget {m.budget >> 20} MiB: estimated disk for spilling {m.estimated_disk_bytes} "
                  f"bytes; none was needed")
    print(s.outcome)
