"""The streaming replication protocol over psycopg 3's COPY_BOTH connection.

Only what logical replication needs: XLogData ('w') and keepalive ('k') from the server,
standby status updates ('r') to it. Layouts: PostgreSQL's "Streaming Replication Protocol" docs.
Reads never block while holding the GIL: the non-blocking get_copy_data plus select().
"""

from __future__ import annotations

import selectors
import struct

import psycopg

from pgtape.timefmt import now_us

XLOG_DATA = ord("w")
KEEPALIVE = ord("k")
XLOG_HEADER = struct.Struct(">cQQQ")  # 'w', start, end, send time
XLOG_PAYLOAD_OFFSET = XLOG_HEADER.size  # 25
KEEPALIVE_MSG = struct.Struct(">cQQB")  # 'k', server WAL end, send time, reply requested
STATUS_MSG = struct.Struct(">cQQQQB")  # 'r', write, flush, apply, client time, reply requested

# PostgreSQL's clock: microseconds since 2000-01-01 UTC.
PG_EPOCH_OFFSET_US = 946_684_800 * 1_000_000


def pg_now() -> int:
    return now_us() - PG_EPOCH_OFFSET_US


def pg_time_to_unix_us(t: int) -> int:
    return t + PG_EPOCH_OFFSET_US


class ConnectionLost(Exception):
    """The replication stream ended or broke; capture reconnects."""


class ReplicationStream:
    """A started logical replication stream (the connection is in COPY_BOTH)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.pgconn.socket, selectors.EVENT_READ)

    def read(self) -> memoryview | None:
        """The next message, or None if none is waiting right now."""
        try:
            n, buf = self.pgconn.get_copy_data(1)
        except psycopg.Error as e:
            raise ConnectionLost(str(e).strip() or type(e).__name__) from None
        if n > 0:
            return buf
        if n == 0:
            return None
        raise ConnectionLost(self._end_reason())

    def wait(self, timeout: float) -> None:
        """Block until the socket is readable or timeout passes, then take in what arrived."""
        if self._selector.select(max(timeout, 0)):
            try:
                self.pgconn.consume_input()
            except psycopg.Error as e:
                raise ConnectionLost(str(e).strip() or type(e).__name__) from None

    def take_waiting(self) -> bool:
        """Without waiting: take in what the socket holds now. False when it held nothing: everything
        the server has sent so far has been read (the stream is drained, group commit flushes)."""
        if not self._selector.select(0):
            return False
        try:
            self.pgconn.consume_input()
        except psycopg.Error as e:
            raise ConnectionLost(str(e).strip() or type(e).__name__) from None
        return True

    def send_status(self, write_lsn: int, flush_lsn: int, reply: bool = False) -> None:
        msg = STATUS_MSG.pack(b"r", write_lsn, flush_lsn, flush_lsn, pg_now(), 1 if reply else 0)
        try:
            self.pgconn.put_copy_data(msg)
            self.pgconn.flush()
        except psycopg.Error as e:
            raise ConnectionLost(str(e).strip() or type(e).__name__) from None

    def _end_reason(self) -> str:
        result = self.pgconn.get_result()
        if result is not None and result.error_message:
            return result.error_message.decode(errors="replace").strip()
        return "the server ended the replication stream"

    def close(self) -> None:
        self._selector.close()
        try:
            self.conn.close()
        except psycopg.Error:
            pass
