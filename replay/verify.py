"""pgtape verify: is the archive whole? Every file read, every problem named with where it is.

Checks, per generation: every segment (frame checksums, decodability, footer against contents,
transactions moving forward, commit counts), LSN continuity from the generation's start (once
pruned: from where PRUNED.json lets its tape begin) to its newest segment, every snapshot table
file (frames, footer, row count), and the catalog against the files (completed snapshots exist
with the recorded rows and bytes), and every line of the audit trail. Like pgBackRest's verify,
it reports every broken range, not just the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from pgtape import metadata
from pgtape.errors import PgtapeError, UsageError
from pgtape.keys import Keyring
from pgtape.tape.crypto import generation_mismatch
from pgtape.lsn import format_lsn
from pgtape.storage import Storage, local_file
from pgtape.tape import audit
from pgtape.tape.archive import Archive
from pgtape.tape.records import Begin, Change, Commit, Record, Relation, Truncate
from pgtape.tape.views import load_view
from pgtape.tape.segment import DURABLE_FILE, OPEN_RE, SEALED_FILE, SEALED_RE, SegmentError, SegmentReader, segment_end
from pgtape.snapshots import catalog, rebase
from pgtape.snapshots.format import TableReader, table_file_name


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    segments: int = 0
    snapshots: int = 0
    transactions: int = 0
    changes: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_segment(storage: Storage, key: str, report: Report, expect_start: int | None = None,
                   generation: tuple[int, bool] | None = None) -> int | None:
    """Check one segment file; returns its end LSN (None if unreadable). `generation`: its id and
    whether it is encrypted (so must the file be)."""
    path, name = storage.where(key), key.rpartition("/")[2]
    sealed = SEALED_RE.match(name)
    named = sealed or OPEN_RE.match(name)
    if named is None:
        report.problems.append(f"{path}: not a segment file name (<start>-<end>.tape or <start>.tape.open)")
        return None
    size = storage.size(key)  # (first: a segment sealed meanwhile raises before anything is counted)
    report.segments += 1
    report.bytes += size
    start = int(named.group(1), 16)
    try:
        reader = SegmentReader(storage, key)
    except SegmentError as e:
        report.problems.append(str(e))
        return None
    if reader.header.start_lsn != start:
        report.problems.append(f"{path}: header says it starts at {format_lsn(reader.header.start_lsn)}, "
                               f"its name says {format_lsn(start)}")
    if generation is not None and (problem := generation_mismatch(reader.encrypted, *generation)):
        report.problems.append(f"{path}: {problem}")
    last_end, txns, changes, in_txn, txn_changes = start, 0, 0, None, 0
    relations: set[int] = set()
    try:
        for frame in reader.frames():
            for r in msgspec.msgpack.decode(frame.payload, type=list[Record]):
                if isinstance(r, Begin):
                    if in_txn is not None:
                        report.problems.append(f"{path} at offset {frame.offset}: transaction {in_txn.xid} has no "
                                               "commit before the next one begins")
                    if r.end_lsn <= last_end:
                        report.problems.append(f"{path} at offset {frame.offset}: transaction {r.xid} ends at "
                                               f"{format_lsn(r.end_lsn)}, not after {format_lsn(last_end)}")
                    in_txn, txn_changes = r, 0
                elif isinstance(r, Commit):
                    if in_txn is None or r.end_lsn != in_txn.end_lsn or r.changes != txn_changes:
                        report.problems.append(f"{path} at offset {frame.offset}: commit record at "
                                               f"{format_lsn(r.end_lsn)} does not match its transaction")
                    last_end, txns, changes, in_txn = r.end_lsn, txns + 1, changes + r.changes, None
                elif isinstance(r, Relation):
                    relations.add(r.id)
                elif isinstance(r, (Change, Truncate)):
                    txn_changes += 1
                    if isinstance(r, Change) and (r.rel not in relations
                                                  or (r.old_rel >= 0 and r.old_rel not in relations)):
                        report.problems.append(f"{path} at offset {frame.offset}: change refers to an unknown relation")
    except SegmentError as e:
        report.problems.append(str(e))
        return None
    except msgspec.DecodeError as e:
        report.problems.append(f"{path}: undecodable records: {e}")
        return None
    if in_txn is not None and not reader.is_open:
        report.problems.append(f"{path}: sealed segment ends inside transaction {in_txn.xid}")
    if reader.footer is not None:
        f = reader.footer
        if (f.transactions, f.changes) != (txns, changes):
            report.problems.append(f"{path}: footer counts {f.transactions} transactions / {f.changes} changes, "
                                   f"the data holds {txns} / {changes}")
        if sealed and int(sealed.group(2), 16) != f.end_lsn:
            report.problems.append(f"{path}: footer ends at {format_lsn(f.end_lsn)}, its name says "
                                   f"{format_lsn(int(sealed.group(2), 16))}")
        last_end = f.end_lsn
    report.transactions += txns
    report.changes += changes
    return last_end


def verify_table_file(storage: Storage, key: str, report: Report,
                      generation: tuple[int, bool] | None = None) -> int | None:
    """Check one snapshot table file; returns its row count (None if damaged). `generation` as verify_segment's."""
    path = storage.where(key)
    report.bytes += storage.size(key)
    try:
        reader = TableReader(storage, key)
        if generation is not None and (problem := generation_mismatch(reader.encrypted, *generation)):
            report.problems.append(f"{path}: {problem}")
        for _ in reader.chunks():
            pass
    except SegmentError as e:
        report.problems.append(str(e))
        return None
    except msgspec.DecodeError as e:
        report.problems.append(f"{path}: undecodable: {e}")
        return None
    return reader.footer.rows if reader.footer else None


def verify_file(path: Path, keyring: Keyring | None = None) -> Report:
    report = Report()
    storage, key = local_file(path)
    storage.keyring = keyring
    if path.name.endswith(".snap"):
        verify_table_file(storage, key, report)
    else:
        verify_segment(storage, key, report)
    return report


def _check_durable(archive: Archive, gen_id: int, report: Report) -> None:
    """The tape must reach the durable position capture recorded (the gap rule): else it lost writes."""
    key = f"{archive.generation_key(gen_id)}/{DURABLE_FILE}"
    try:
        recorded = metadata.read(archive.storage, key, dict).get("lsn", 0)
    except FileNotFoundError:
        return
    except PgtapeError as e:
        report.problems.append(f"generation {gen_id}: {e}")
        return
    end = archive.generation(gen_id).start_lsn
    for s in archive.segments(gen_id):
        try:
            end = max(end, segment_end(archive.storage, s.key, s.start_lsn).end_lsn)
        except SegmentError:
            pass  # named already, by verify_segment
    if end < recorded:
        report.problems.append(f"generation {gen_id}: the tape ends at {format_lsn(end)}, but capture recorded it "
                               f"durable up to {format_lsn(recorded)} ({DURABLE_FILE}): the tape lost its last writes "
                               f"in ({format_lsn(end)}, {format_lsn(recorded)}]")


def _verify_snapshot(archive: Archive, r: catalog.SnapshotRecord, report: Report, gen_start: int,
                     pruned_from: int | None) -> None:
    """A completed snapshot: its files against its catalog record. `pruned_from`: where the pruned tape begins."""
    report.snapshots += 1
    d = catalog.snapshot_key(archive, r.generation, r.id)
    if not archive.storage.exists(d):
        report.problems.append(f"snapshot {r.id}: catalog says completed but "
                               f"{archive.storage.where(d)} is missing")
        return
    size = 0
    encrypted = archive.generation(r.generation).encrypted
    for table in r.tables:
        key = f"{d}/{table_file_name(table)}"
        f = archive.storage.where(key)
        if not archive.storage.exists(key):
            report.problems.append(f"snapshot {r.id}: {f} is missing")
            continue
        size += archive.storage.size(key)
        rows = verify_table_file(archive.storage, key, report, (r.generation, encrypted))
        if rows is not None and rows != r.rows.get(table):
            report.problems.append(f"{f}: holds {rows} rows, the catalog records {r.rows.get(table)}")
    if size != r.bytes and not any(archive.storage.where(d) in p for p in report.problems):
        report.problems.append(f"snapshot {r.id}: files hold {size} bytes, the catalog records {r.bytes}")
    if r.as_of_lsn is not None and r.as_of_lsn < gen_start:
        report.problems.append(f"snapshot {r.id}: as of {format_lsn(r.as_of_lsn)}, before generation "
                               f"{r.generation} starts ({format_lsn(gen_start)})")
    elif pruned_from is not None and r.as_of_lsn is not None and r.as_of_lsn < pruned_from:
        report.problems.append(f"snapshot {r.id}: as of {format_lsn(r.as_of_lsn)}, but the pruned tape of "
                               f"generation {r.generation} begins at {format_lsn(pruned_from)}")


def verify_snapshot(archive: Archive, snapshot_id: str) -> Report:
    """One snapshot (verify --snapshot ID): its catalog record and every file of it."""
    report = Report()
    if "/" in snapshot_id or snapshot_id.startswith("."):
        raise UsageError(f"invalid snapshot id {snapshot_id!r} (pgtape snapshots lists them)")
    try:
        r = catalog.stale_as_failed(metadata.read(archive.storage, catalog.record_key(snapshot_id),
                                                  catalog.SnapshotRecord))
    except FileNotFoundError:
        raise UsageError(f"no snapshot {snapshot_id!r} (pgtape snapshots lists them)") from None
    except PgtapeError as e:  # the record fails its checksum
        report.problems.append(str(e))
        return report
    if r.status != catalog.COMPLETED:
        report.problems.append(f"snapshot {r.id} is {r.status}" + (f": {r.error}" if r.error else "")
                               + "; it holds nothing to restore")
        return report
    if r.generation in archive.pruned().deleted_generations:
        report.problems.append(f"snapshot {r.id}: its generation {r.generation} was deleted by pgtape prune")
        return report
    segments = archive.segments(r.generation)
    start = archive.generation(r.generation).start_lsn
    pruned_from = archive.pruned().tape_start_lsn.get(r.generation)
    _verify_snapshot(archive, r, report, start,
                     (segments[0].start_lsn if segments else start) if pruned_from is not None else None)
    return report


def verify_archive(archive: Archive) -> Report:
    report = Report()
    ident = archive.identity()
    records = catalog.load_all(archive, damaged=report.problems)
    pruned = archive.pruned()
    report.problems.extend(audit.check(archive))  # damaged or torn lines of the audit trail
    for gen_id in range(1, ident.generation + 1):
        if gen_id in pruned.deleted_generations:
            continue  # deleted by pgtape prune (what an interrupted prune left is the next prune's)
        if not archive.storage.exists(archive.generation_key(gen_id)):
            report.problems.append(f"generation {gen_id}: directory {archive.generation_dir(gen_id)} is missing")
            continue
        gen = archive.generation(gen_id)
        report.problems.extend(archive.continuity_problems(gen_id))
        sealed_file = f"{archive.generation_key(gen_id)}/{SEALED_FILE}"
        missing_sealed = False
        if archive.storage.exists(sealed_file):
            try:
                recorded = metadata.read(archive.storage, sealed_file, dict).get("end_lsn", 0)
            except PgtapeError as e:
                report.problems.append(str(e))
                recorded = 0
            present = max((s.end_lsn for s in archive.segments(gen_id) if s.end_lsn is not None), default=0)
            present = max(present, pruned.tape_start_lsn.get(gen_id, 0))  # every sealed one may be pruned
            if present < recorded:
                missing_sealed = True
                report.problems.append(f"generation {gen_id}: sealed segments up to {format_lsn(recorded)} were "
                                       f"written, but the newest present ends at {format_lsn(present)}: the tape's "
                                       "newest segments are missing")
        segments = archive.segments(gen_id)
        for seg in segments:  # (an open segment sealed meanwhile: the sealed one)
            archive.read_segment(seg, lambda storage, key: verify_segment(storage, key, report, None,
                                                                          (gen_id, gen.encrypted)))
        if not missing_sealed:  # (else that is why the tape ends early: said once)
            _check_durable(archive, gen_id, report)
        # What capture resumes with, and where replay needs newer bases (pgtape/tape/views.py, snapshots/rebase.py).
        for read in (lambda: load_view(archive, gen_id, 2**64 - 1), lambda: rebase.load(archive, gen_id)):
            try:
                read()
            except PgtapeError as e:
                report.problems.append(f"generation {gen_id}: {e}")
        tape_from = segments[0].start_lsn if segments else gen.start_lsn
        for r in (r for r in records if r.generation == gen_id and r.status == catalog.COMPLETED):
            _verify_snapshot(archive, r, report, gen.start_lsn, tape_from if gen_id in pruned.tape_start_lsn else None)
        if gen_id in pruned.tape_start_lsn:  # the initial base may be pruned: some complete base must remain
            if not any(r.generation == gen_id and r.status == catalog.COMPLETED and set(gen.tables) <= set(r.tables)
                       for r in records):
                report.problems.append(f"generation {gen_id}: pruned, and no completed snapshot of all its tables "
                                       "remains (the tape cannot be replayed)")
        elif not any(r.kind == "initial" and r.generation == gen_id and r.status == catalog.COMPLETED
                   and r.as_of_lsn == gen.start_lsn for r in records):
            report.problems.append(f"generation {gen_id}: no completed initial base at {format_lsn(gen.start_lsn)} "
                                   "(the tape cannot be replayed from its start)")
    return report
