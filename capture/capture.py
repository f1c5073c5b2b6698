"""The long-running capture: stream wal2json changes onto the tape, confirm only what is durable.

One thread, one loop: read a message, hand it to the TapeWriter, and between messages (or
while waiting) fsync when group commit says so (as soon as the stream is drained, at the latest
after fsync_interval) and report the durable position.
The LSN rules it follows are in docs/ARCHITECTURE.md; each is cited where it is applied.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import Callable

import psycopg

from pgtape import keys
from pgtape.capture import wal2json
from pgtape.capture.protocol import (KEEPALIVE, KEEPALIVE_MSG, XLOG_DATA, XLOG_HEADER, XLOG_PAYLOAD_OFFSET,
                              ConnectionLost, ReplicationStream, pg_time_to_unix_us)
from pgtape.capture.follow import Follower, FilterChanged
from pgtape.capture.generation import check_slot, initialize, open_generation
from pgtape.capture.schedule import SnapshotScheduler
from pgtape.capture.tape_writer import FRAME_BYTES, TapeWriter
from pgtape.config import Config
from pgtape.durable import make_dirs_durably
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn
from pgtape.pg import connect, first_line
from pgtape.plugin_allowlist import is_refusal, refusal_message
from pgtape.slot import check_no_gap, find_slot, identify_system
from pgtape.tape.archive import Archive
from pgtape.tape.marks import MARK_PREFIX
from pgtape.tape.records import Begin, Change, Message, Truncate
from pgtape.tape.views import load_view

POSITION_EVERY = 10.0  # seconds between Position records (the idle progress acknowledged, Rule A3)
HOUSEKEEPING = 0.005  # seconds between clock checks (fsync due, status due, stop) while messages flow
MAX_BACKOFF = 30.0


@dataclass
class CaptureResult:
    durable_lsn: int
    transactions: int
    changes: int
    fsyncs: int  # of the tape (group commits and Positions)


class ArchiveGone(PgtapeError):
    """The archive directory or its open segment is not the one capture opened."""


class Capture:
    def __init__(self, config: Config, until_lsn: int | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.archive = Archive(config.require_archive(), keys.configured(config))
        self.until_lsn = until_lsn
        self.log = log or logging.getLogger(__name__).info
        self.stopping = False
        self.writer: TapeWriter | None = None  # the tape being written (pgtape serve counts its changes)

    def stop(self, *_: object) -> None:
        self.stopping = True

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> CaptureResult:
        self.archive.require_directory()
        make_dirs_durably(self.archive.path)
        if self.archive.exists() and "tables" in self.config.defaulted:
            gen = self.archive.generation(self.archive.identity().generation)
            self.config = replace(self.config, tables=tuple(gen.tables))
        lock = self.archive.lock_capture()
        try:
            initialize(self.config, self.archive, restart=False)  # no-op once initialised
            conn: psycopg.Connection | None  # None while disconnected
            conn = connect(self.config.dsn, replication=True)
            system, gen = open_generation(conn, self.archive, self.config)
            self.scheduler = SnapshotScheduler(self.config, self.archive, gen.id)
            writer = self.writer = self._open_tape(conn, system.system_id, gen.id)
            # A long-lived loop allocating millions of short-lived objects: keep start-up objects out of
            # the collector's scans and collect young objects less often (about 10% less CPU).
            gc.freeze()
            gc.set_threshold(100_000, 50, 100)
            self.log(f"capturing {', '.join(self.config.tables)} through slot {self.config.slot} from "
                     f"{format_lsn(writer.durable_lsn)} into {self.archive.path} (generation {gen.id})")
            backoff = disk_backoff = 0.5
            writable = True  # False after a full disk, until the tape is opened again
            while not self.stopping and not (writable and self._reached(writer)):
                try:
                    if conn is None:
                        conn = connect(self.config.dsn, replication=True)
                        slot = find_slot(conn, self.config.slot)
                        check_slot(slot, self.config.slot, identify_system(conn).database, gen)
                        if writable:
                            check_no_gap(slot, writer.durable_lsn)
                        self.log(f"reconnected; resuming at {format_lsn(writer.durable_lsn)}")
                    if not writable:  # as after a crash: the open segment cut back to its last boundary
                        writer = self.writer = self._open_tape(conn, system.system_id, gen.id)
                        writable = True
                        self.log(f"tape reopened after a full disk; resuming at {format_lsn(writer.durable_lsn)}")
                    stream = self._start(conn, writer.durable_lsn)
                    conn = None
                    try:
                        self._stream(stream, writer)
                        backoff = 0.5
                    finally:
                        stream.close()
                except FilterChanged as e:  # the transaction comes again, decoded with the new filter
                    writer.abort_transaction()
                    self.follower.abort()
                    self.log(f"{e}; restarting the stream at {format_lsn(writer.durable_lsn)}")
                except (ConnectionLost, psycopg.OperationalError) as e:
                    _close(conn)
                    conn = None
                    self._retry_later(writer, f"replication connection lost: {first_line(e)}", backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                except PgtapeError as e:
                    if "cannot connect" not in str(e):
                        raise
                    _close(conn)
                    conn = None
                    self._retry_later(writer, str(e), backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                except OSError as e:
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    _close(conn)
                    conn = None
                    if writable:
                        writer.abandon()  # nothing more is written or acknowledged through this writer
                        self.follower.close()
                        writable = False
                    self._disk_full(e, disk_backoff)
                    disk_backoff = min(disk_backoff * 2, MAX_BACKOFF)
            _close(conn)
            if not writable:  # stopped while the disk was full: the tape stays as recovery will cut it
                return CaptureResult(writer.durable_lsn, writer.transactions, writer.changes, writer.fsyncs)
            writer.close()
            writer.note_durable(wait=True)
            self.follower.close()
            self.scheduler.stop()
            self.log(f"stopped; tape durable up to {format_lsn(writer.durable_lsn)} "
                     f"({writer.transactions} transactions, {writer.changes} changes this run)")
            return CaptureResult(writer.durable_lsn, writer.transactions, writer.changes, writer.fsyncs)
        finally:
            lock.release()

    def _retry_later(self, writer: TapeWriter, why: str, delay: float) -> None:
        writer.abort_transaction()  # the server sends it again from its beginning
        self.follower.abort()
        if self.stopping:
            return
        self.log(f"{why}; reconnecting in {delay:g}s")
        deadline = time.monotonic() + delay
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)

    def _reached(self, writer: TapeWriter) -> bool:
        return self.until_lsn is not None and writer.durable_lsn >= self.until_lsn

    def _start(self, conn: psycopg.Connection, from_lsn: int) -> ReplicationStream:
        opts = wal2json.options_sql(wal2json.plugin_options(sorted(self.follower.filter)))
        try:
            conn.execute(f"START_REPLICATION SLOT {self.config.slot} LOGICAL {format_lsn(from_lsn)} ({opts})")
        except psycopg.errors.InsufficientPrivilege as e:
            if is_refusal(e):  # fatal: retrying cannot help until an administrator acts
                raise PgtapeError(refusal_message(conn)) from None
            raise
        return ReplicationStream(conn)

    # -- the loop -------------------------------------------------------------------------
    def _stream(self, stream: ReplicationStream, writer: TapeWriter) -> None:
        cfg = self.config
        decode = wal2json.decoder.decode
        to_field = wal2json.to_field
        follower = self.follower
        monotonic = time.monotonic
        received = writer.durable_lsn  # highest LSN received: the 'write' position we report
        next_status = 0.0
        last_position = monotonic()
        skip = False  # current transaction is already on the tape (re-sent after a reconnect)
        in_txn = False
        txn_end = txn_time = 0
        next_check = 0.0  # housekeeping runs at most every HOUSEKEEPING seconds while busy
        adaptive = cfg.group_commit == "adaptive"  # else "timer": fsync only every fsync_interval
        while True:
            buf = stream.read()
            now = monotonic()
            more = False  # libpq had no whole message, but the socket held more: read on without waiting
            if buf is None and adaptive:
                more = stream.take_waiting()
                if more and now < next_check:
                    continue
            if buf is not None:
                kind = buf[0]
                if kind == XLOG_DATA:
                    _, start, _, _ = XLOG_HEADER.unpack_from(buf)
                    if start > received:
                        received = start
                    payload = buf[XLOG_PAYLOAD_OFFSET:]
                    msg = decode(payload)
                    action = msg.action
                    if action == "B":
                        in_txn = True
                        txn_end = wal2json.lsn(msg.nextlsn)
                        # Rule D1: a transaction whose commit ends at or before the tape's end is a repeat.
                        skip = txn_end <= writer.tape_lsn
                        if not skip:
                            txn_time = wal2json.parse_commit_time(msg.timestamp or "")
                            writer.begin(Begin(msg.xid or 0, wal2json.lsn(msg.lsn), txn_end, txn_time))
                            follower.begin()
                    elif action == "C":
                        in_txn = False
                        end = start  # a C message's header LSN is its nextlsn (end of the commit record)
                        if not skip:
                            follower.commit(end, txn_time, writer.durable_lsn)  # before `end` can be durable
                            if not writer.commit(end):
                                writer.advance_idle(end, txn_time)  # Rule A3: nothing captured
                    elif not skip:
                        record: Change | Truncate | Message | None
                        if action == "M":
                            # Recovery points are transactional; a non-transactional message has no
                            # place in the commit order, so it is not kept.
                            record = None
                            if msg.prefix == wal2json.DDL_PREFIX:
                                if msg.transactional:
                                    for schema in follower.message(msg.content or "", txn_end, txn_time):
                                        writer.change(schema, len(payload))
                            elif msg.transactional:
                                record = Message(wal2json.lsn(msg.lsn), True, msg.prefix or "", msg.content or "")
                                if record.prefix == MARK_PREFIX:
                                    writer.mark(record, txn_end, txn_time)
                        elif action == "T":
                            identity = follower.identity(msg.schema or "", msg.table or "")
                            record = (follower.truncate(msg.schema or "", msg.table or "", identity)
                                      if identity is not None else None)
                        else:
                            record = self._change(writer, msg, to_field, follower)
                        if record is not None:
                            writer.change(record, len(payload))
                elif kind == KEEPALIVE:
                    _, wal_end, server_time, reply = KEEPALIVE_MSG.unpack_from(buf)
                    if wal_end > received:
                        received = wal_end
                    if not in_txn:
                        writer.advance_idle(wal_end, pg_time_to_unix_us(server_time))  # Rule A3
                    if reply:
                        next_status = next_check = 0.0
                if now < next_check:
                    continue
            next_check = now + HOUSEKEEPING
            # Idle progress is acknowledged only once a Position records it (Rule A3): every
            # POSITION_EVERY, when --until-lsn is reached by it, and when stopping.
            if not in_txn and (now - last_position >= POSITION_EVERY or self.stopping or
                               (self.until_lsn is not None and writer.idle_lsn >= self.until_lsn)):
                writer.record_idle()
                writer.note_durable()  # what was durable up to now (the Position: with the next sync)
                last_position = now
            # Housekeeping: group commit (Rule A1), then report what is durable (Rule A2). Adaptive: as soon
            # as the stream is drained (everything sent so far is read); always within fsync_interval.
            drained = adaptive and buf is None and not more
            if writer.unsynced_since is not None and (drained or now - writer.unsynced_since >= cfg.fsync_interval
                                                      or self.stopping or self._reached_tape(writer)):
                writer.sync()
                next_status = 0.0
            if now >= next_status:
                self._check_archive(writer)
                stream.send_status(received, writer.durable_lsn)
                next_status = now + cfg.status_interval
                self.scheduler.poll()
            if self.stopping or self._reached(writer):
                self._check_archive(writer)
                stream.send_status(received, writer.durable_lsn)
                return
            follower.housekeeping(received, in_txn, writer.tape_lsn, writer.segment.stats.complete_time,
                                  writer.durable_lsn)
            if buf is None and not more:
                timeout = cfg.status_interval
                if writer.unsynced_since is not None:
                    timeout = min(timeout, writer.unsynced_since + cfg.fsync_interval - now)
                stream.wait(min(timeout, 0.2))

    def _open_tape(self, conn: psycopg.Connection, system_id: str, gen_id: int) -> TapeWriter:
        """The tape's writer (its open segment repaired), checked against the slot (the gap rule),
        and the view of the tables as of its end."""
        writer = TapeWriter(self.archive, gen_id, system_id, self.config.slot, self.config.segment_size)
        check_no_gap(find_slot(conn, self.config.slot), writer.durable_lsn)
        self._archive_identity = self.archive.storage.identity()
        if writer.repaired_bytes:
            self.log(f"cut {writer.repaired_bytes} bytes of unfinished transaction from {writer.segment.name}")
        self.follower = Follower(self.archive, gen_id, load_view(self.archive, gen_id, writer.tape_lsn),
                                 writer.tape_lsn, writer.segment.stats.complete_time, self.config.dsn,
                                 self.scheduler.request)
        return writer

    def _disk_full(self, e: OSError, delay: float) -> None:
        """No space for the tape: acknowledge nothing (the slot keeps every change), say where and how much
        is needed, and wait; or exit, as [capture] on_disk_full says."""
        where = e.filename or self.archive.path
        try:
            st = os.statvfs(self.archive.path)
            free = f"{st.f_bavail * st.f_frsize / (1 << 20):.1f} MiB free"
        except OSError:
            free = "free space unknown"
        what = (f"no space left for the tape at {where} ({free}; it needs at least {FRAME_BYTES >> 20} MiB, one "
                "frame)")
        if self.config.on_disk_full == "exit":
            raise PgtapeError(f"{what}: capture stops ([capture] on_disk_full = \"exit\"); the slot keeps every change "
                              "since the last acknowledged position") from None
        self.log(f"{what}: acknowledging nothing until it can write; retrying in {delay:g}s")
        deadline = time.monotonic() + delay
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)

    def _check_archive(self, writer: TapeWriter) -> None:
        """Before acknowledging anything: the archive (its directory, the open segment) must still be
        the one capture opened. Deleted or replaced, what capture wrote is not where a replay looks:
        acknowledging more would let the server forget changes that exist nowhere."""
        try:
            moved = self.archive.storage.identity() != self._archive_identity or not writer.segment.still_there()
        except FileNotFoundError:
            moved = True
        if moved:
            raise ArchiveGone(f"the archive at {self.archive.path} is no longer the one capture opened (deleted, "
                              f"moved or replaced): capture stops without acknowledging anything more; the slot "
                              f"keeps every change after {format_lsn(writer.durable_lsn)} for the next capture into "
                              "a restored archive (or pgtape init --restart into a new one)")

    def _reached_tape(self, writer: TapeWriter) -> bool:
        return self.until_lsn is not None and writer.tape_lsn >= self.until_lsn

    @staticmethod
    def _change(writer: TapeWriter, msg: wal2json.W2JMessage, to_field: Callable, follower: Follower) -> Change | None:
        """A row change, on the tape under its captured table's identity; None for a name that belongs
        to no captured table at this point (a table dropped and created again, a detached partition)."""
        reported = (msg.schema or "", msg.table or "")
        target = follower.targets.get(reported)
        if target is None:
            return None
        _, schema, table = target
        full_columns = follower.full_columns
        key = tuple([k.name for k in msg.pk]) if msg.pk else ()
        row = names = None
        rel = old_rel = -1
        absent = old = None
        if msg.columns is not None:
            cols = msg.columns
            names = tuple([c.name for c in cols])
            rel = writer.relation(schema, table, names, tuple([c.type for c in cols]), key)
            row = "\t".join([to_field(c.value, c.type) for c in cols]).encode()
        if msg.identity is not None:
            ident = msg.identity
            old_rel = writer.relation(schema, table, tuple([c.name for c in ident]), tuple([c.type for c in ident]),
                                      key)
            old = "\t".join([to_field(c.value, c.type) for c in ident]).encode()
        action = msg.action
        if action == "I":
            if names is not None:
                full_columns[reported] = names  # an INSERT always carries every column
        elif action == "U":
            full = full_columns.get(reported, ())
            if names is not None and names != full:  # the common full-row UPDATE skips this
                present = set(names)
                absent = [c for c in full if c not in present] or None
                if any(n not in full for n in names):  # ALTER TABLE ADD COLUMN: the shape grew
                    full_columns[reported] = tuple(full) + tuple(n for n in names if n not in full)
        elif action == "D":
            rel = old_rel
        else:
            raise ConnectionLost(f"unexpected wal2json action {action!r}")
        return Change(action, rel, row, old_rel, old, absent)


def _close(conn: psycopg.Connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass


def install_signal_handlers(capture: Capture) -> None:
    signal.signal(signal.SIGTERM, capture.stop)
    signal.signal(signal.SIGINT, capture.stop)

