"""Following the captured tables through schema changes while capture streams.

The Follower holds capture's view of the tables (capture/tables.py) as of the last transaction
handed to the tape, and a working copy while a transaction changes it: a transaction sent again
(after a reconnect) is decoded against the view of its own start, so names always map to the
table they meant at that point of the stream. It turns the DDL trigger's messages into Schema
records, partition truncations into a Truncate of the partitioned table (or a rebase point when
only some partitions were emptied), and asks for a restart of the stream when wal2json's table
filter needs a name it lacks (a renamed table, a new partition). Without the trigger it polls the
catalog and compares, once the stream has passed the position of the poll (docs/ARCHITECTURE.md,
"Schema changes").
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Callable

import psycopg

from pgtape.capture import ddl_trigger
from pgtape.capture.tables import Effects, apply_message, apply_polled, columns_of, names_of, owner
from pgtape.names import canonical, split_table
from pgtape.pg import connect
from pgtape.shapes import TableShape, View, read_shapes
from pgtape.tape.archive import Archive
from pgtape.tape.records import Schema, Truncate
from pgtape.tape.views import save_view
from pgtape.snapshots import rebase
from pgtape.snapshots.rebase import RebasePoint

POLL_EVERY = 1.0  # seconds between catalog polls without the DDL trigger
POLL_EVERY_EXACT = 10.0  # with it: only to notice a trigger that failed or was dropped


class FilterChanged(Exception):
    """wal2json's table filter lacks a name the stream now needs: restart the stream with it."""


class Follower:
    def __init__(self, archive: Archive, generation: int, view: View, tape_lsn: int, tape_time: int | None,
                 dsn: str | None, want_base: Callable[[str], None]) -> None:
        """`view`: the tables as of the tape's end, `tape_lsn` (whose last commit time is `tape_time`)."""
        self.archive, self.generation, self.dsn, self.log = archive, generation, dsn, logging.getLogger(__name__).info
        self.want_base = want_base  # asks for a new base of a table (a rebase point was recorded)
        self._committed = view
        self._pending: View | None = None  # changed by the transaction being decoded
        self.filter: set[str] = {canonical(*n) for n in names_of(view)}  # wal2json's add-tables
        self._set_active(view)
        self._truncated: dict[str, set[str]] = {}  # this transaction: partitioned table -> leaves emptied
        self._conn: psycopg.Connection | None = None
        self.exact: bool | None = None  # the DDL trigger is installed (None: not polled yet)
        self._next_poll = 0.0
        self._poll: tuple[int, dict[int, TableShape]] | None = None  # (WAL position after it, shapes)
        # Where the view was last known to match the catalog: the tape's end, then each matching poll.
        self._clean: tuple[int, int | None] = (tape_lsn, tape_time)
        self._history: list[tuple[int, View]] = [(tape_lsn, view)]  # committed views, by position

    def _set_active(self, view: View) -> None:
        self.names = names_of(view)
        # reported (schema, table) -> (identity, its schema, its table): what a change is filed under
        self.targets = {name: (identity, *split_table(identity)) for name, identity in self.names.items()}
        self.full_columns = columns_of(view)

    # -- a transaction ----------------------------------------------------------------------
    def begin(self) -> None:
        self._pending = None
        self._truncated.clear()

    def abort(self) -> None:
        """The transaction will be sent again: forget what it did to the view."""
        self.begin()
        self._set_active(self._committed)

    def identity(self, schema: str, table: str) -> str | None:
        """The captured table a reported name belongs to at this point of the stream."""
        return self.names.get((schema, table))

    def message(self, content: str, txn_end: int, txn_time: int) -> list[Schema]:
        """A DDL trigger message inside the current transaction: the Schema records to write here."""
        try:
            followed = owner(self._pending or self._committed, int(json.loads(content)["oid"])) is not None
        except (ValueError, KeyError, TypeError):
            followed = True  # apply_message says what is wrong with it
        if not followed:
            return []  # DDL on a table capture does not follow (the common case): nothing to copy or save
        if self._pending is None:
            self._pending = copy.deepcopy(self._committed)
        effects = apply_message(self._pending, content)
        self._set_active(self._pending)
        self._effects(effects, txn_end - 1, txn_time, txn_end, txn_time)
        missing = {canonical(*n) for n in self.names} - self.filter
        if missing:
            self.filter |= missing
            raise FilterChanged(f"the stream's table filter now needs {', '.join(sorted(missing))}")
        return effects.records

    def truncate(self, schema: str, table: str, identity: str) -> Truncate | None:
        """A TRUNCATE of a reported table: of the captured table, once every partition is emptied."""
        shape = (self._pending or self._committed).get(identity)
        if shape is None or shape.kind != "p":
            return Truncate(*split_table(identity))
        emptied = self._truncated.setdefault(identity, set())
        emptied.add(canonical(schema, table))
        if emptied >= set(shape.leaves.values()):
            del self._truncated[identity]
            return Truncate(*split_table(identity))
        return None

    def commit(self, txn_end: int, txn_time: int, durable_lsn: int) -> None:
        for identity, emptied in self._truncated.items():
            self._rebase(identity, f"some of its partitions were truncated ({', '.join(sorted(emptied))})",
                         txn_end - 1, txn_time, txn_end, txn_time)
        self._truncated.clear()
        if self._pending is not None:
            self._committed, self._pending = self._pending, None
            self._history.append((txn_end, self._committed))
            save_view(self.archive, self.generation, txn_end, self._committed, keep_from=durable_lsn)

    # -- without the trigger: polling the catalog ---------------------------------------------
    def housekeeping(self, received: int, in_txn: bool, tape_lsn: int, tape_time: int | None,
                     durable_lsn: int) -> None:
        """Between messages: poll the catalog when due; compare a poll once the stream is past it."""
        now = time.monotonic()
        if self._poll is None and now >= self._next_poll:
            self._next_poll = now + (POLL_EVERY_EXACT if self.exact else POLL_EVERY)
            self._take_poll()
        if self._poll is None or in_txn or received < self._poll[0]:
            return
        position, shapes = self._poll
        self._poll = None
        # The views the stream held from the last matching poll's position to this poll's: the catalog
        # read may fall anywhere among them (its snapshot lies between the two positions).
        start = max((p for p, _ in self._history if p <= self._clean[0]), default=None)
        seen = [v for p, v in self._history if (start is None or p >= start) and p <= position] or [self._committed]
        view = copy.deepcopy(self._committed)
        effects = apply_polled(view, shapes, seen)
        self._history = [(p, v) for p, v in self._history if start is None or p >= start]
        if not effects:
            self._clean = (position, tape_time)
            return
        if self.exact:
            self.log("the DDL trigger did not report a schema change; noticed it by polling the catalog")
        self._committed = view
        self._history.append((received, view))
        self._set_active(view)
        save_view(self.archive, self.generation, tape_lsn, view, keep_from=durable_lsn)
        self._effects(effects, self._clean[0], self._clean[1], position, tape_time)
        missing = {canonical(*n) for n in self.names} - self.filter
        self._clean = (position, tape_time)
        if missing:
            self.filter |= missing
            raise FilterChanged(f"the stream's table filter now needs {', '.join(sorted(missing))}")

    def _take_poll(self) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.dsn, application_name="pgtape capture")
            exact = ddl_trigger.installed(self._conn)
            if exact != self.exact:
                self.log("schema changes: recorded at their exact position (DDL trigger)" if exact else
                         "schema changes: noticed by polling the catalog every second, at an approximate position "
                         "(the DDL trigger is not installed: run pgtape init once as a superuser)")
                self.exact = exact
            shapes = read_shapes(self._conn, [s.oid for s in self._committed.values() if s is not None])
            row = self._conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()  # after the shapes
        except Exception as e:  # the catalog is a second source: a failed poll never stops capture
            self.log(f"could not poll the catalog for schema changes ({e}); retrying")
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return
        assert row is not None
        hi, _, lo = row[0].partition("/")
        self._poll = ((int(hi, 16) << 32) | int(lo, 16), shapes)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    # -- effects ------------------------------------------------------------------------------
    def _effects(self, effects: Effects, since_lsn: int, since_time: int | None, at_lsn: int,
                 at_time: int | None) -> None:
        for note in effects.notes:
            self.log(note)
        for table, reason in effects.rebases:
            self._rebase(table, reason, since_lsn, since_time, at_lsn, at_time)

    def _rebase(self, table: str, reason: str, since_lsn: int, since_time: int | None, at_lsn: int,
                at_time: int | None) -> None:
        rebase.add(self.archive, self.generation, RebasePoint(table, since_lsn, since_time, at_lsn, at_time, reason))
        self.log(f"{table}: {reason}; taking a new base of it (replay cannot carry its rows across this point)")
        self.want_base(table)
