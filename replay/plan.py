"""What a replay will read: the recoverable window, the base snapshot, the tape range.

Window of a generation (pgtape/tape/window.py): from its oldest completed base (as-of LSN and time)
to where the tape is known complete (its end LSN; the latest commit or Position time). A target
outside it is an error that prints the window, never a quiet replay to something else.
"""

from __future__ import annotations

from pgtape.errors import PgtapeError, UsageError
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive
from pgtape.tape.window import Window, tape_extent
from pgtape.timefmt import format_time
from pgtape.replay.target import Target
from pgtape.snapshots import catalog
from pgtape.snapshots.catalog import SnapshotRecord


def window(archive: Archive, gen: int, tables: list[str]) -> tuple[Window, dict[str, list[SnapshotRecord]]]:
    """The window in which every one of `tables` is recoverable, and each table's completed bases
    (oldest first). Tables may have bases of their own (`pgtape snapshot --tables`, or a base capture
    took after a schema change): each replays from its own."""
    completed = [r for r in catalog.load_all(archive) if r.generation == gen and r.status == catalog.COMPLETED
                 and r.as_of_lsn is not None and r.as_of_time is not None]
    bases = {t: sorted((r for r in completed if t in r.tables), key=lambda r: r.as_of_lsn or 0) for t in tables}
    missing = [t for t, found in bases.items() if not found]
    if missing:
        raise PgtapeError(f"no completed snapshot of generation {gen} holds {', '.join(missing)}: "
                          "take one with pgtape snapshot (or pgtape init)")
    extent = tape_extent(archive, gen)
    first = max((found[0] for found in bases.values()), key=lambda r: r.as_of_lsn or 0)
    assert first.as_of_lsn is not None and first.as_of_time is not None
    # The window ends where the tape is known complete, even if a newer base exists: a target past
    # the tape's end could be missing transactions committed before it (capture lagging).
    return Window(first.as_of_lsn, first.as_of_time, extent.end_lsn, extent.complete_time), bases


def find_snapshot(archive: Archive, gen: int, snapshot_id: str) -> SnapshotRecord:
    """The completed snapshot `replay --snapshot ID` names, of the current generation."""
    records = catalog.load_all(archive)
    record = next((r for r in records if r.id == snapshot_id), None)
    if record is None:
        newest = [r.id for r in sorted(records, key=lambda r: r.created_at)[-3:]]
        raise UsageError(f"no snapshot {snapshot_id!r}; newest: {', '.join(newest) or 'none'} "
                         "(pgtape snapshots lists them all)")
    if record.status != catalog.COMPLETED or record.as_of_lsn is None or record.as_of_time is None:
        why = f": {record.error}" if record.error else ""
        raise PgtapeError(f"snapshot {snapshot_id} is {record.status}{why}; only a completed snapshot can be restored")
    if record.generation != gen:
        raise PgtapeError(f"snapshot {snapshot_id} belongs to generation {record.generation}, not the current "
                          f"generation {gen}: its tables cannot be recovered from this archive's tape")
    return record


def snapshot_tables(record: SnapshotRecord, asked: list[str] | None) -> list[str]:
    """The tables to restore from `record`: those asked for (each must be in it), else all of its."""
    if asked is None:
        return list(record.tables)
    missing = [t for t in asked if t not in record.tables]
    if missing:
        raise UsageError(f"snapshot {record.id} does not hold {', '.join(missing)}; "
                         f"it holds {', '.join(record.tables)}")
    return asked


def choose_bases(w: Window, bases: dict[str, list[SnapshotRecord]], target: Target,
                 snapshot: SnapshotRecord | None = None) -> dict[str, SnapshotRecord]:
    """Each table's newest base at or before the target (or `snapshot`, which must be); raises with
    the window when the target is outside it."""
    if target.kind == "time":
        assert target.time is not None
        if target.time < w.from_time or (target.exclusive and target.time == w.from_time):
            raise PgtapeError(f"target time {format_time(target.time)} is before the oldest base; {w.describe()}")
        if w.to_time is None or target.time > w.to_time:
            raise PgtapeError(f"target time {format_time(target.time)} is after what the tape is known to hold; "
                              f"{w.describe()} (use --latest, or wait for capture to catch up)")
    elif target.kind in ("lsn", "name"):
        assert target.lsn is not None
        if target.lsn < w.from_lsn:
            raise PgtapeError(f"target {target.describe()} is before the oldest base; {w.describe()}")
        if target.lsn > w.to_lsn:
            raise PgtapeError(f"target {target.describe()} is beyond the tape's end; {w.describe()}")
    if snapshot is not None:
        if not _at_or_before(snapshot, target):
            raise PgtapeError(f"snapshot {snapshot.id} is as of {format_time(snapshot.as_of_time)} "
                              f"({format_lsn(snapshot.as_of_lsn or 0)}), after the target {target.describe()}: "
                              "choose a target at or after it, or an older snapshot (pgtape snapshots)")
        return {t: snapshot for t in bases}
    chosen = {}
    for table, found in bases.items():
        usable = [b for b in found if _at_or_before(b, target)]
        if not usable:
            raise PgtapeError(f"no base of {table} at or before {target.describe()}; {w.describe()}")
        chosen[table] = usable[-1]
    return chosen


def _at_or_before(base: SnapshotRecord, target: Target) -> bool:
    """None of the base's transactions is past the target."""
    if target.kind == "time":
        assert target.time is not None
        return (base.as_of_time or 0) < target.time or (not target.exclusive and base.as_of_time == target.time)
    if target.kind in ("lsn", "name", "snapshot"):
        assert target.lsn is not None
        return (base.as_of_lsn or 0) <= target.lsn  # a mark's lsn: its message
    return True
