"""Replay: a base snapshot plus the tape up to the target, folded per table.

`prepare()` reads the tape once (from the base's as-of LSN to the target) into TableFolds and
returns the plan; `TableResult.rows()` then streams each table's final rows out of its base file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn
from pgtape.timefmt import format_time
from pgtape.names import canonical, names_in_one_schema
from pgtape.storage import Storage
from pgtape.tape.archive import Archive
from pgtape.tape.crypto import generation_mismatch
from pgtape.tape.marks import MARK_PREFIX, load_mark
from pgtape.tape.records import Begin, Change, Commit, Message, Relation, Schema, Truncate
from pgtape.tape.segment import SegmentError, SegmentReader, read_footer
from pgtape.replay.fold import BagFold, Budget, RelInfo, TableFold
from pgtape.replay.spill import SpillDir
from pgtape.tape.window import Window
from pgtape.replay.plan import choose_bases, window
from pgtape.replay.target import Target
from pgtape.snapshots import catalog, rebase
from pgtape.snapshots.catalog import SnapshotRecord
from pgtape.snapshots.format import TableReader, table_file_name


@dataclass
class Progress:
    """What a replay has done so far: updated as it goes (the tape per segment, rows per COPY write),
    read by a reporter on another thread (pgtape/commands/replay.py) and summed up in --json."""

    phase: str = "planning"  # planning | reading tape | loading | done
    started: float = field(default_factory=time.monotonic)
    segments: int = 0  # read
    segments_total: int = 0
    tape_bytes: int = 0  # compressed, read
    tape_bytes_total: int = 0
    transactions: int = 0
    changes: int = 0
    fold_seconds: float = 0.0
    load_started: float = 0.0
    load_seconds: float = 0.0
    rows_expected: int = 0  # the bases' rows: about what the load writes
    rows_loaded: dict[str, int] = field(default_factory=dict)  # per table (each written by one thread)

    def loaded(self, table: str) -> Callable[[int], None]:
        """A counter for the rows of `table` (sinks.load_rows calls it per write)."""
        if not self.load_started:
            self.phase, self.load_started = "loading", time.monotonic()
        self.rows_loaded.setdefault(table, 0)

        def add(n: int) -> None:
            self.rows_loaded[table] += n
        return add

    def done(self) -> None:
        if self.load_started:
            self.load_seconds = time.monotonic() - self.load_started
        self.phase = "done"


@dataclass
class Plan:
    generation: int
    window: Window
    bases: dict[str, SnapshotRecord]  # each table's base
    target: Target
    folds: dict[str, TableFold]
    last_txn: Begin | None  # the last transaction applied (None: the bases alone)
    transactions: int
    changes: int
    base_dirs: dict[str, str]  # keys in the archive's storage
    storage: Storage
    spill: SpillDir = field(default_factory=SpillDir)  # runs written past the memory budget
    budget: Budget | None = None
    estimate: SpillEstimate | None = None  # made before the tape was read (memory budget given)
    progress: Progress = field(default_factory=Progress)

    def close(self) -> None:
        """Removes the spill files (callers: in a finally, once the rows have been read)."""
        self.spill.close()

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base(self) -> SnapshotRecord:
        """The oldest of the bases: where the tape is read from."""
        return min(self.bases.values(), key=lambda b: b.as_of_lsn or 0)

    def rows(self, table: str) -> Iterator[bytes]:
        """The table's rows at the target, COPY text lines without LF."""
        return self.folds[table].rows(_base_lines(self.storage, self.base_dirs[table], table))

    def blocks(self, table: str) -> Iterator[bytes]:
        """rows(), as blocks of whole lines each ending with LF (for COPY: TableFold.blocks)."""
        return self.folds[table].blocks(_base_chunks(self.storage, self.base_dirs[table], table))

    @property
    def present(self) -> dict[str, TableFold]:
        """The tables that exist at the target (a table dropped before it has no rows to restore)."""
        return {t: f for t, f in self.folds.items() if not f.dropped}

    def names_in_one_schema(self) -> dict[str, str]:
        """Each present table's name in a recovery schema: its name at the target (pgtape/names.py)."""
        at_target = {f.relname: t for t, f in self.present.items()}
        return {at_target[n]: name for n, name in names_in_one_schema(list(at_target)).items()}


def _base_lines(storage: Storage, base_dir: str, table: str) -> Iterator[bytes]:
    for chunk in _base_chunks(storage, base_dir, table):
        lines = chunk.split(b"\n")
        lines.pop()  # chunks end with LF
        yield from lines


def _base_chunks(storage: Storage, base_dir: str, table: str) -> Iterator[bytes]:
    """The base file's data: chunks of whole COPY text lines, each ending with LF."""
    key = f"{base_dir}/{table_file_name(table)}"
    try:
        reader = TableReader(storage, key)
    except FileNotFoundError:
        raise PgtapeError(f"base file {storage.where(key)} is missing (run pgtape verify)") from None
    except SegmentError as e:
        raise PgtapeError(f"damaged base: {e}") from None
    try:
        yield from reader.chunks()
    except SegmentError as e:
        raise PgtapeError(f"damaged base: {e}") from None


@dataclass(frozen=True)
class SpillEstimate:
    """Before folding: what the tape and bases to read weigh, and the disk spilling may need."""

    memory: int  # the budget
    state_limit: int  # of it, for the folded state
    tape_bytes: int  # compressed tape from the oldest base on
    base_bytes: int  # compressed base files of the tables
    may_spill: bool  # the folded state may outgrow state_limit
    disk_bytes: int  # spill files at most, if it does: every change's row once, each base once (both compressed)

    def describe(self) -> str:
        if not self.may_spill:
            return (f"memory budget {_mib(self.memory)}: the tape to read ({_mib(self.tape_bytes)} compressed) "
                    "should fold in memory; no spill files expected")
        return (f"memory budget {_mib(self.memory)}: the tape to read ({_mib(self.tape_bytes)} compressed) may "
                f"not fold in memory; spilling needs up to {_mib(self.disk_bytes)} on disk")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# Estimates, used only to say beforehand whether spilling is likely: the folded state of a change
# takes at least about STATE_PER_CHANGE bytes (a key changed once: dict slot, key and row objects), and
# about STATE_PER_TAPE_BYTE times its compressed tape bytes (measured: BENCHMARKS.md, "Replay memory").
STATE_PER_CHANGE = 120
STATE_PER_TAPE_BYTE = 3


def estimate_spill(archive: Archive, gen: int, folds: dict[str, TableFold], base_dirs: dict[str, str],
                   memory: int) -> SpillEstimate:
    from_lsn = min(f.from_lsn for f in folds.values())
    segments = [seg for seg in archive.segments(gen) if seg.end_lsn is None or seg.end_lsn > from_lsn]
    tape = sum(_size(archive.storage, seg.key) for seg in segments)
    limit = state_limit(memory)
    changes = 0
    if tape * STATE_PER_TAPE_BYTE <= limit:  # a small tape: its footers say how many changes it holds
        for seg in segments:
            try:
                changes += read_footer(archive.storage, seg.key).changes if seg.end_lsn is not None else 0
            except (FileNotFoundError, SegmentError):  # sealed meanwhile, or damaged: folding will say
                pass
    base = 0
    for t in folds:
        try:
            base += archive.storage.size(f"{base_dirs[t]}/{table_file_name(t)}")
        except FileNotFoundError:
            pass
    may = max(tape * STATE_PER_TAPE_BYTE, changes * STATE_PER_CHANGE) > limit
    return SpillEstimate(memory, limit, tape, base, may, tape + base if may else 0)


# Of the memory budget, what the folded state may use: the rest is the interpreter, its libraries and
# the tape's frames being decoded (docs/ARCHITECTURE.md, "Replay memory").
RESERVED = 48 << 20


def state_limit(memory: int) -> int:
    return max(memory - RESERVED, memory // 2)


def prepare(archive: Archive, tables: list[str], target: Target,
            progress: Progress | None = None, complete_to: int | None = None,
            snapshot: SnapshotRecord | None = None, memory: int | None = None, work_dir: Path | None = None,
            on_estimate: Callable[[SpillEstimate], None] | None = None) -> Plan:
    """`complete_to`: an LSN up to which the tape is known complete although no record says so
    yet (the slot's confirmed position, which capture advances only over durable data).
    `snapshot` (plan.find_snapshot): the base of every table, instead of the newest before the
    target; with a Target of kind "snapshot", the tables exactly as it holds them.
    `memory`: the budget in bytes (None: unbounded); past it the folded state goes to sorted runs in
    `work_dir` (default: TMPDIR). The caller closes the plan (Plan.close) to remove them. `on_estimate`
    hears the disk spilling may need (estimate_spill) before the tape is read."""
    spill = SpillDir(work_dir, encrypt=archive.keyring is not None)
    try:
        return _prepare(archive, tables, target, progress or Progress(), complete_to, snapshot, memory, spill,
                        on_estimate)
    except BaseException:
        spill.close()
        raise


def _prepare(archive: Archive, tables: list[str], target: Target, progress: Progress,
             complete_to: int | None, snapshot: SnapshotRecord | None, memory: int | None, spill: SpillDir,
             on_estimate: Callable[[SpillEstimate], None] | None) -> Plan:
    gen = archive.identity().generation
    w, bases = window(archive, gen, tables)
    if complete_to is not None and complete_to > w.to_lsn:
        w = Window(w.from_lsn, w.from_time, complete_to, w.to_time)
    if target.kind == "name":
        target = resolve_mark(archive, target)
    elif target.kind == "snapshot":
        assert snapshot is not None
        target = Target("snapshot", lsn=snapshot.as_of_lsn, name=snapshot.id)
    chosen = choose_bases(w, bases, target, snapshot)
    encrypted = archive.generation(gen).encrypted
    base_dirs = {t: catalog.snapshot_key(archive, gen, b.id) for t, b in chosen.items()}
    folds: dict[str, TableFold] = {}
    for t in tables:
        try:
            base = TableReader(archive.storage, f"{base_dirs[t]}/{table_file_name(t)}")
            if problem := generation_mismatch(base.encrypted, gen, encrypted):
                raise SegmentError(base.path, 0, problem)
        except (FileNotFoundError, SegmentError) as e:
            raise PgtapeError(f"base {chosen[t].id} is unreadable for {t}: {e} (run pgtape verify)") from None
        h = base.header
        # Without a key (REPLICA IDENTITY FULL) rows are matched as whole rows, duplicates and all.
        fold_class = TableFold if h.key else BagFold
        folds[t] = fold_class(t, list(h.columns), list(h.types), list(h.key), list(h.columns),
                              from_lsn=chosen[t].as_of_lsn or 0, attnums=list(h.attnums), relname=h.name,
                              oid=h.oid)
    budget = estimate = None
    if memory is not None:
        estimate = estimate_spill(archive, gen, folds, base_dirs, memory)
        if on_estimate is not None:
            on_estimate(estimate)
        budget = Budget(state_limit(memory), memory)
        for f in folds.values():
            # Up to eight tables load at once (sinks/schema.py PARALLEL), each sorting its base if it spilled:
            # together half the limit (the other half: what the folds still hold, cut to that before loading).
            f.spill, f.sort_bytes = spill, max(budget.limit // 16, 64 << 10)
    from_lsn = min(f.from_lsn for f in folds.values())
    last: Begin | None = None
    transactions = changes = 0
    stop_after: int | None = None  # end LSN of the transaction holding the named mark
    segments = [seg for seg in archive.segments(gen) if seg.end_lsn is None or seg.end_lsn > from_lsn]
    sizes = [_size(archive.storage, seg.key) for seg in segments]
    progress.phase, progress.segments_total, progress.tape_bytes_total = "reading tape", len(segments), sum(sizes)
    progress.rows_expected = sum(chosen[t].rows.get(t, 0) for t in tables)
    folding = time.monotonic()
    try:
        for seg, size in zip(segments, sizes):
            reader = archive.read_segment(seg, SegmentReader)
            if problem := generation_mismatch(reader.encrypted, gen, encrypted):
                raise SegmentError(seg.path, 0, problem)
            result = _fold_segment(reader, folds, from_lsn, target, last, stop_after, budget)
            last, stop_after, stopped = result.last, result.stop_after, result.stopped
            transactions += result.transactions
            changes += result.changes
            progress.segments += 1
            progress.tape_bytes += size
            progress.transactions, progress.changes = transactions, changes
            if stopped:
                break
    except SegmentError as e:
        raise PgtapeError(f"damaged tape: {e} (run pgtape verify)") from None
    if target.kind == "name" and stop_after is None:
        raise PgtapeError(f"recovery point {target.name!r} is not on the tape yet: is capture running?")
    if target.kind != "snapshot":  # (nothing from the tape applied: the snapshot's rows are as read)
        _refuse_unreplayable(archive, gen, folds, chosen, bases, last.end_lsn if last else from_lsn, target)
    progress.fold_seconds = time.monotonic() - folding
    if budget is not None and spill.runs_written:
        # Before the load: what stays in memory leaves room for sorting bases (see sort_bytes above).
        budget.limit //= 2
        budget.check(list(folds.values()))
    return Plan(gen, w, chosen, target, folds, last, transactions, changes, base_dirs, archive.storage, spill, budget,
                estimate, progress)


def _size(storage: Storage, key: str) -> int:
    try:
        return storage.size(key)
    except FileNotFoundError:  # an open segment sealed since it was listed: read_segment finds it
        return 0


def _refuse_unreplayable(archive: Archive, gen: int, folds: dict[str, TableFold], chosen: dict[str, SnapshotRecord],
                         bases: dict[str, list[SnapshotRecord]], stop_lsn: int, target: Target) -> None:
    """A table whose rows changed without row changes on the tape between its base and the stop
    point (snapshots/rebase.py) needs a base taken after that: refuse, naming the window."""
    for point in rebase.load(archive, gen):
        fold, base = folds.get(point.table), chosen.get(point.table)
        if fold is None or base is None:
            continue
        # Past the point: a transaction after it is applied, or (the change itself may not be on the
        # tape: a DDL noticed by polling) the target lies after where it may have happened.
        past = max(stop_lsn, base.as_of_lsn or 0) > point.since_lsn or _target_after(target, point)
        if past and (base.as_of_lsn or 0) < point.at_lsn:
            after = next((b for b in bases[point.table] if (b.as_of_lsn or 0) >= point.at_lsn), None)
            since = format_time(point.since_time) if point.since_time else format_lsn(point.since_lsn)
            until = (f"a base of it taken {format_time(after.as_of_time)} ({format_lsn(after.as_of_lsn or 0)})"
                     if after else "a new base of it (none has completed yet: capture takes one by itself; see "
                                   "pgtape snapshots)")
            raise PgtapeError(f"{point.table} cannot be replayed to {target.describe()}: {point.reason} at "
                              f"{format_time(point.at_time)} ({format_lsn(point.at_lsn)}), and the tape holds no row "
                              f"changes for that; choose a target before {since}, or at or after {until}")
    for fold in folds.values():
        if fold.stale:  # a rebase point names this too; without one (an older capture) still refuse
            raise PgtapeError(f"{fold.name} cannot be replayed to {target.describe()}: {fold.stale}; take a new "
                              f"base of it (pgtape snapshot --tables {fold.name}) and replay to a target after it")


def _target_after(target: Target, point: rebase.RebasePoint) -> bool:
    if target.kind == "time":
        return point.since_time is None or (target.time or 0) > point.since_time
    if target.kind in ("lsn", "name"):
        return (target.lsn or 0) > point.since_lsn
    return True  # latest


@dataclass
class _SegmentResult:
    last: Begin | None
    stop_after: int | None
    stopped: bool
    transactions: int
    changes: int


def _fold_segment(reader: SegmentReader, folds: dict[str, TableFold], from_lsn: int, target: Target,
                  last: Begin | None, stop_after: int | None, budget: Budget | None = None) -> _SegmentResult:
    """Apply one segment's transactions after `from_lsn` until the target says stop; `budget` is
    checked after each frame."""
    fold_list = list(folds.values())
    for f in folds.values():
        f.new_segment()
    fold: TableFold | None
    # Relation id (small: they count up from 0 in each segment) -> its table's fold and what the
    # fold knows of it; None: a table not replayed.
    rels: list[tuple[TableFold, RelInfo] | None] = []
    wanted = False
    # Until the newest base's position, a table whose base is newer skips what its base holds.
    lag_until = max(f.from_lsn for f in folds.values())
    lagging = False
    txn_end = 0
    transactions = changes = 0
    name_target = target.kind == "name"
    max_time, max_lsn = target.last_allowed()
    for batch in reader.batches():
        for r in batch:
            # type(r) is X: as fast as comparing a saved type(r), and mypy narrows on it
            if type(r) is Change:
                if not wanted:
                    continue
                h = rels[r.rel]
                if h is None:
                    continue
                fold, info = h
                if lagging and txn_end <= fold.from_lsn:
                    continue
                changes += 1
                op = r.op
                # The common cases inline (whole rows, keys where the fold expects them);
                # TableFold.apply has the same rules for every case.
                # (A row is there exactly when op is not "D"; a fast info has a key reader.)
                if info.fast and r.absent is None and (row := r.row) is not None and info.key_of is not None:
                    new_key = row.partition(b"\t")[0] if info.key_first else info.key_of(row)
                    if op == "I":
                        fold.entries[new_key] = row
                        continue
                    if op == "U" and (old := r.old) is not None:
                        old_h = rels[r.old_rel]
                        if old_h is not None and old_h[1].key_is_line:
                            if old != new_key:
                                fold.entries[old] = None
                            fold.entries[new_key] = row
                            continue
                elif op == "D" and info.key_is_line and (old := r.old) is not None:
                    fold.entries[old] = None
                    continue
                old_rel = rels[r.old_rel] if r.old_rel >= 0 else None
                fold.apply(r, info, old_rel[1] if old_rel is not None else None)
            elif type(r) is Commit:
                continue
            elif type(r) is Begin:
                if r.end_lsn <= from_lsn:
                    wanted = False
                    continue
                # The stop rule (replay/target.py)
                if stop_after is not None or r.commit_time > max_time or r.commit_lsn > max_lsn:
                    return _SegmentResult(last, stop_after, True, transactions, changes)
                last, wanted = r, True
                txn_end = r.end_lsn
                lagging = txn_end <= lag_until
                transactions += 1
            elif type(r) is Relation:
                fold = folds.get(canonical(r.schema, r.table))
                rels.extend([None] * (r.id + 1 - len(rels)))
                rels[r.id] = (fold, fold.info(r)) if fold is not None else None
            elif type(r) is Schema:
                fold = folds.get(r.table)
                if wanted and fold is not None and not (lagging and txn_end <= fold.from_lsn):
                    fold.apply_schema(r)
            elif type(r) is Truncate:
                fold = folds.get(canonical(r.schema, r.table))
                if wanted and fold is not None and not (lagging and txn_end <= fold.from_lsn):
                    fold.truncate()
                    changes += 1
            elif type(r) is Message:
                if wanted and name_target and r.prefix == MARK_PREFIX and _mark_name(r.content) == target.name:
                    stop_after = last.end_lsn if last else None
        if budget is not None:
            budget.check(fold_list)
    return _SegmentResult(last, stop_after, False, transactions, changes)


def _mark_name(content: str) -> str | None:
    try:
        return json.loads(content).get("name")
    except (ValueError, AttributeError):
        return None


def resolve_mark(archive: Archive, target: Target) -> Target:
    """A time mark is its time (inclusive), named; a mark at a position stops after its transaction."""
    mark = load_mark(archive, target.name or "")
    if mark.generation != archive.identity().generation:
        raise PgtapeError(f"recovery point {mark.name!r} belongs to generation {mark.generation}, before the "
                          "archive's current one: its tape is not replayed any more")
    if mark.at is not None:
        return Target("time", time=mark.at, name=target.name)
    return Target("name", lsn=mark.lsn, name=target.name)
