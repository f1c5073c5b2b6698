"""pgtape verify --live: replay to an exact live position and compare with the live tables there.

A temporary slot exports a snapshot at LSN C (as a snapshot does); once capture has confirmed C
(the slot's confirmed_flush_lsn, advanced only over durable data), the tape is replayed to exactly
C — every transaction whose commit precedes C — and compared, inside that same snapshot, with the
live tables as they were at C.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from pgtape.config import Config
from pgtape.errors import PgtapeError, ProblemsFound
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.pg import column_types, connect, quote_literal
from pgtape.exported_snapshot import create_slot_exporting, temporary_slot_name
from pgtape.slot import gap_message
from pgtape.tape.archive import Archive
from pgtape.tape.window import tape_extent
from pgtape.replay.compare import Side, TableComparison, compare
from pgtape.replay.engine import prepare
from pgtape.replay.sinks import create_table, live_relation, load_rows
from pgtape.replay.target import Target


@dataclass(frozen=True)
class LiveResult:
    as_of_lsn: int  # the exact live position compared at
    base: str  # id of the base replayed from
    transactions: int
    tables: list[TableComparison]  # expected: live, actual: the replay

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.tables)


def verify_live(config: Config, archive: Archive, timeout: float) -> LiveResult:
    gen = archive.generation(archive.identity().generation)
    tables = config.selected_tables(gen.tables)
    repl = connect(config.dsn, replication=True, application_name="pgtape verify")
    try:
        snap = create_slot_exporting(repl, config.dsn, temporary_slot_name(), temporary=True, read_only=False)
    finally:
        repl.close()
    with snap.conn as conn:
        _refuse_gap(conn, archive, gen.id, gen.slot)
        confirmed = _wait_durable(conn, gen.slot, snap.as_of_lsn, timeout)
        with prepare(archive, tables, Target("lsn", lsn=snap.as_of_lsn, exclusive=True), complete_to=confirmed,
                     memory=config.replay_memory, work_dir=config.replay_work_dir) as plan:
            results = []
            for i, (table, fold) in enumerate(plan.present.items()):
                staged = f"pgtape_verify_{i}"
                create_table(conn, staged, fold, temp=True)
                load_rows(conn, staged, plan.rows(table))
                live_rel = live_relation(conn, fold)
                results.append(compare(conn, table, fold.key, Side("live", live_rel, column_types(conn, live_rel)),
                                       Side("replay", staged, column_types(conn, staged))))
        conn.rollback()
    return LiveResult(snap.as_of_lsn, plan.base.id, plan.transactions, results)


def _refuse_gap(conn: psycopg.Connection, archive: Archive, gen: int, slot: str) -> None:
    """A slot confirmed past the tape's end: no replay can equal the live tables (the gap rule)."""
    row = conn.execute(f"SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                       f"WHERE slot_name = {quote_literal(slot)}").fetchone()
    end = tape_extent(archive, gen).end_lsn
    if row is not None and row[0] and parse_lsn(row[0]) > end:
        raise ProblemsFound(gap_message(slot, parse_lsn(row[0]), end))  # what verify looks for: exit 1


def _wait_durable(conn: psycopg.Connection, slot: str, lsn: int, timeout: float) -> int:
    """Wait until capture has confirmed `lsn`; returns the confirmed position."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(f"SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots "
                           f"WHERE slot_name = {quote_literal(slot)}").fetchone()
        if row is None:
            raise PgtapeError(f"replication slot {slot} does not exist: capture cannot have recorded this position")
        confirmed = parse_lsn(row[0]) if row[0] else 0
        if confirmed >= lsn:
            return confirmed
        if time.monotonic() > deadline:
            state = "capture is connected but behind" if row[1] else "pgtape capture is not running"
            raise PgtapeError(f"the tape is not durable up to {format_lsn(lsn)} after {timeout:.0f}s "
                              f"(confirmed {format_lsn(confirmed)}; {state})")
        time.sleep(0.1)
