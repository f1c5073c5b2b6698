"""Group commit onto the tape: buffer records, write frames, fsync, rotate segments.

The writer tracks two positions (docs/ARCHITECTURE.md, "LSN rules"):
  tape_lsn     end LSN of the last whole transaction (or Position) handed to the writer
  durable_lsn  the largest LSN up to which everything captured is fsynced: the only LSN
               capture may confirm (a synced tape_lsn: idle progress is recorded by a Position, Rule A3)
A transaction bigger than `frame_bytes` is written in non-boundary frames as it arrives, so
memory stays bounded; they become meaningful only with the boundary frame holding its Commit.
"""

from __future__ import annotations

import logging
import threading
import time

from pgtape import metadata
from pgtape.errors import PgtapeError
from pgtape.tape.archive import Archive
from pgtape.tape.latency import CommitToDurable, LatencyWindow
from pgtape.tape.marks import Mark, parse_mark, save_new_mark
from pgtape.tape.segment import DURABLE_FILE
from pgtape.tape.records import Begin, Change, Commit, Message, Position, Record, Relation, Schema, Truncate
from pgtape.tape.segment import SegmentWriter
from pgtape.timefmt import now_us

logger = logging.getLogger(__name__)

FRAME_BYTES = 4 << 20  # decoded bytes buffered before an unfinished transaction goes to disk

RelationKey = tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]


class TapeWriter:
    def __init__(self, archive: Archive, generation: int, system_id: str, slot: str,
                 segment_size: int, frame_bytes: int = FRAME_BYTES) -> None:
        self.archive = archive
        self.generation = generation
        self._system_id = system_id
        self._slot = slot
        self.segment_size = segment_size
        self.frame_bytes = frame_bytes
        self.repaired_bytes = 0
        self.abandoned = False
        self.segment = self._open_segment()
        self.tape_lsn = self.segment.stats.end_lsn
        self.durable_lsn = self.tape_lsn
        self._buffer: list[Record] = []  # records not yet written
        self._relation_ids: dict[RelationKey, int] = {}
        self._index_relations()
        self._committed = 0  # _buffer[:_committed] ends between transactions
        self._buffer_bytes = 0
        self._txn_on_disk = False  # frames of the open transaction already written
        self._pending_begin: Begin | None = None  # written with the transaction's first record
        self._txn_open = False
        self._txn_changes = 0
        self.unsynced_since: float | None = None  # monotonic time of the oldest unsynced commit
        self._idle_lsn = 0  # latest idle position received (see advance_idle), and its server time
        self._idle_time = 0
        self._noted = 0  # durable position last written to DURABLE.json
        self._marks: list[tuple[int, Mark]] = []  # (end LSN of its transaction, mark): to list once durable
        self.transactions = 0
        self.changes = 0
        self.fsyncs = 0  # of the tape, this run
        self._txn_time = 0  # commit time of the transaction being received (µs UTC, the server's clock)
        self._commit_times: list[int] = []  # those of the whole transactions not yet durable
        self.latency = LatencyWindow()  # commit to durable, published in DURABLE.json (pgtape/tape/latency.py)
        self._published: CommitToDurable | None = None  # the newest window with a transaction
        self._noting: threading.Thread | None = None  # writing DURABLE.json (note_durable)
        self._noting_error: BaseException | None = None

    def _open_segment(self) -> SegmentWriter:
        """Resume the open segment (cutting a torn tail), or start one where the tape ends."""
        for key in self.archive.superseded_open_segments(self.generation):
            self.archive.storage.delete(key)  # a kill while sealing, after its sealed copy was published
        segments = self.archive.segments(self.generation)
        if segments and segments[-1].is_open:
            writer, self.repaired_bytes = SegmentWriter.recover(self.archive.storage, segments[-1].key)
            return writer
        start = segments[-1].end_lsn if segments else self.archive.generation(self.generation).start_lsn
        assert start is not None
        return SegmentWriter.create(self.archive.storage, self.archive.tape_key(self.generation), self.generation,
                                    self._system_id, self._slot, start)

    def _index_relations(self) -> None:
        """Relation ids known in the current segment: written ones plus those still buffered."""
        rels = [*self.segment.relations.values(), *(r for r in self._buffer if isinstance(r, Relation))]
        self._relation_ids = {(r.schema, r.table, tuple(r.columns), tuple(r.types), tuple(r.key)): r.id
                              for r in rels}

    @property
    def in_transaction(self) -> bool:
        """A transaction has records on the tape (buffered or written) but no Commit yet."""
        return self._txn_open

    @property
    def has_unsynced(self) -> bool:
        return self.unsynced_since is not None

    # -- records --------------------------------------------------------------------------
    def begin(self, record: Begin) -> None:
        """A transaction starts; nothing is written unless it has a captured change."""
        self._pending_begin = record
        self._txn_changes = 0
        self._txn_time = record.commit_time

    def _open_txn(self) -> None:
        if self._pending_begin is not None:
            self._buffer.append(self._pending_begin)
            self._pending_begin = None
            self._txn_open = True

    def relation(self, schema: str, table: str, columns: tuple[str, ...], types: tuple[str, ...],
                 key: tuple[str, ...]) -> int:
        """The id of this tuple shape in the current segment, emitting a Relation when new."""
        k = (schema, table, columns, types, key)
        rel = self._relation_ids.get(k)
        if rel is None:
            self._open_txn()
            rel = len(self._relation_ids)
            self._relation_ids[k] = rel
            self._buffer.append(Relation(rel, schema, table, list(columns), list(types), list(key)))
        return rel

    def change(self, record: Change | Truncate | Message | Schema, size_hint: int) -> None:
        self._open_txn()
        self._buffer.append(record)
        if type(record) is Change or type(record) is Truncate:
            self._txn_changes += 1
        self._buffer_bytes += size_hint
        if self._buffer_bytes >= self.frame_bytes:
            self._spill()

    def mark(self, message: Message, txn_end: int, txn_time: int) -> None:
        """A recovery point's message (written with change()): listed in the mark catalog once its
        transaction is durable (pgtape/tape/marks.py)."""
        mark = parse_mark(message, txn_time, self.generation)
        if mark is not None:
            self._marks.append((txn_end, mark))

    def _list_marks(self) -> None:
        durable = [m for end, m in self._marks if end <= self.durable_lsn]
        self._marks = [(end, m) for end, m in self._marks if end > self.durable_lsn]
        for m in durable:
            try:
                save_new_mark(self.archive, m)
            except (OSError, PgtapeError) as e:  # not fatal: replay finds an unlisted mark on the tape
                logger.warning(f"could not list recovery point {m.name!r} in the archive's catalog: {e}")

    def commit(self, end_lsn: int) -> bool:
        """End the transaction; False if it had nothing captured (and so was not written)."""
        self._pending_begin = None
        if not self._txn_open:
            return False
        self._buffer.append(Commit(end_lsn, self._txn_changes))
        self._committed = len(self._buffer)
        self._txn_on_disk = self._txn_open = False
        self.tape_lsn = end_lsn
        self.transactions += 1
        self.changes += self._txn_changes
        self._commit_times.append(self._txn_time)
        if self.unsynced_since is None:
            self.unsynced_since = time.monotonic()
        return True

    def position(self, lsn: int, server_time: int) -> None:
        """Between transactions: the tape is complete up to lsn."""
        assert not self.in_transaction
        self._buffer.append(Position(lsn, server_time))
        self._committed = len(self._buffer)
        self.tape_lsn = max(self.tape_lsn, lsn)
        if self.unsynced_since is None:
            self.unsynced_since = time.monotonic()

    def advance_idle(self, lsn: int, time_us: int) -> None:
        """Between transactions: the end of one with nothing captured, or a keepalive's WAL end. The
        tape is complete up to it once what came before is durable, but it is acknowledged only once
        a Position records it (record_idle): the slot never confirms past the tape (Rule A3)."""
        if lsn > self._idle_lsn:
            self._idle_lsn, self._idle_time = lsn, time_us

    @property
    def idle_lsn(self) -> int:
        return self._idle_lsn

    def record_idle(self) -> bool:
        """Write a Position for idle progress beyond the tape (the next sync makes it durable)."""
        if self.in_transaction or self._idle_lsn <= self.tape_lsn:
            return False
        self.position(self._idle_lsn, self._idle_time)
        return True

    # -- disk -----------------------------------------------------------------------------
    def _spill(self) -> None:
        """Write buffered records so memory stays bounded inside a large transaction."""
        if self._committed:
            self.segment.append(self._buffer[:self._committed], boundary=True)
            del self._buffer[:self._committed]
            self._committed = 0
        if self._buffer:
            self.segment.append(self._buffer, boundary=False)
            self._buffer = []
            self._txn_on_disk = True
        self._buffer_bytes = 0

    def sync(self) -> int:
        """Write every whole transaction and fsync; returns the new durable LSN."""
        if self._committed:
            self.segment.append(self._buffer[:self._committed], boundary=True)
            del self._buffer[:self._committed]
            self._committed = 0
            if not self._buffer:
                self._buffer_bytes = 0
        if self.unsynced_since is not None:
            self.segment.sync()
            self.fsyncs += 1
            self.latency.fsynced(now_us(), self._commit_times)
            self._commit_times = []
        self.durable_lsn = max(self.durable_lsn, self.tape_lsn)
        self.unsynced_since = None
        if self._marks:
            self._list_marks()
        if self.segment.offset >= self.segment_size and not self.in_transaction:
            self.rotate()
        return self.durable_lsn

    def note_durable(self, wait: bool = False) -> None:
        """Record the durable position beside the tape (DURABLE.json), so that verify notices a tape
        that later lost its last writes (docs/ARCHITECTURE.md, the gap rule), with the commit-to-durable
        latency of the transactions made durable since the last time (the newest such window if none).

        The file is replaced atomically (three fsyncs): a thread of its own writes it, so that commits
        arriving meanwhile are not held up (Rule A1), one write at a time; while one is still running
        this call does nothing (the next writes a newer position). Its error, if any (a full disk),
        is raised by the next call. `wait`: written before this returns (capture stopping)."""
        noting = self._noting
        if noting is not None:
            if noting.is_alive() and not wait:
                return
            noting.join()
            self._noting = None
            error, self._noting_error = self._noting_error, None
            if error is not None:
                raise error
        if self.durable_lsn <= self._noted:
            return
        self._published = self.latency.take() or self._published
        doc: dict[str, object] = {"lsn": self.durable_lsn}
        if self._published is not None:
            doc["commit_to_durable"] = self._published
        key = f"{self.archive.generation_key(self.generation)}/{DURABLE_FILE}"
        self._noted = self.durable_lsn
        if wait:
            metadata.write(self.archive.storage, key, doc)
            return
        self._noting = threading.Thread(target=self._write_noted, args=(key, doc), name="pgtape-durable-note")
        self._noting.start()

    def _write_noted(self, key: str, doc: dict[str, object]) -> None:
        try:
            metadata.write(self.archive.storage, key, doc)
        except BaseException as e:  # raised in capture's thread by the next note_durable
            self._noting_error = e

    def rotate(self) -> str:
        sealed = self.segment.seal()
        self.segment = SegmentWriter.create(self.archive.storage, self.archive.tape_key(self.generation),
                                            self.generation,
                                            self._system_id, self._slot, self.segment.stats.end_lsn)
        self._relation_ids.clear()
        return sealed

    def abandon(self) -> None:
        """Stop writing (a full disk): nothing more goes to the tape or gets acknowledged through this
        writer; a new one recovers the open segment as after a crash."""
        self.abandoned = True
        self.segment.abandon()

    def abort_transaction(self) -> None:
        """Forget a transaction the server will send again (the connection was lost in it)."""
        if self.abandoned:
            return
        del self._buffer[self._committed:]
        self._buffer_bytes = 0
        self._pending_begin = None
        self._marks = [(end, m) for end, m in self._marks if end <= self.tape_lsn]  # (the server sends it again)
        if self._txn_on_disk:
            self.sync()  # still inside the transaction, so no rotation; whole transactions are kept
            self.segment.cut_to_boundary()
            self._txn_on_disk = False
        self._txn_open = False
        self._index_relations()  # relations first used by the dropped transaction are gone

    def close(self) -> None:
        """Between transactions only: make everything durable and close the open segment."""
        self.abort_transaction()
        self.sync()
        self.segment.close()
