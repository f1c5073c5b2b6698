"""Commit-to-durable latency: how long a captured transaction waited, from its commit on the server
until capture had it fsynced on the tape.

Measured per transaction at the fsync that makes it durable: this machine's clock at that moment
minus the transaction's commit timestamp (the server's clock, from wal2json). Both clocks are the
same when capture runs on the database host; otherwise their skew adds to (or subtracts from) every
value, and a negative difference counts as 0. It includes the server's own WAL flush, decoding, the
network, capture's work and its fsync; not the trip of the acknowledgement back to the server.

Capture collects a window (LatencyWindow) and publishes it in DURABLE.json's `commit_to_durable`
each time it records its durable position there (every 10 s while commits flow, and when it stops):
the window is the transactions made durable since the previous publication (docs/FORMAT.md).
"""

from __future__ import annotations

import msgspec

FINE_LIMIT = 100_000  # µs: below it latencies are kept to 0.1 ms, above it to 1 ms


class CommitToDurable(msgspec.Struct):
    """DURABLE.json's `commit_to_durable`, read by status and the metrics."""
    p50_ms: float  # each value is the upper end of its bucket: 0.1 ms below 100 ms, 1 ms above
    p99_ms: float
    max_ms: float
    transactions: int  # made durable in the window
    fsyncs: int  # of the tape in the window (transactions / fsyncs: the group-commit batch size)
    first_durable: int  # µs UTC (capture's clock): the window's first and last fsync
    last_durable: int


class LatencyWindow:
    """Latencies of the transactions made durable since the last take(), as counts per bucket."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}  # bucket (in 0.1 ms) -> transactions
        self.transactions = 0
        self.fsyncs = 0
        self._first = self._last = 0

    def _reset(self) -> None:
        self._counts = {}
        self.transactions = self.fsyncs = self._first = self._last = 0

    def fsynced(self, durable_us: int, commit_times: list[int]) -> None:
        """One fsync made these transactions (their commit times, µs UTC) durable at durable_us."""
        self.fsyncs += 1
        if not commit_times:
            return
        counts = self._counts
        get = counts.get
        for t in commit_times:
            d = durable_us - t
            k = (d // 100 if d < FINE_LIMIT else d // 1000 * 10) if d > 0 else 0
            counts[k] = get(k, 0) + 1
        self.transactions += len(commit_times)
        if not self._first:
            self._first = durable_us
        self._last = durable_us

    def take(self) -> CommitToDurable | None:
        """The window's figures (None without any transaction), and a new window begins."""
        counts, n = self._counts, self.transactions
        result = None
        if n:
            keys = sorted(counts)
            result = CommitToDurable(_rank(keys, counts, n, 50), _rank(keys, counts, n, 99), _upper(keys[-1]), n,
                                     self.fsyncs, self._first, self._last)
        self._reset()
        return result


def _rank(keys: list[int], counts: dict[int, int], n: int, p: int) -> float:
    """Nearest-rank percentile p over the buckets (keys sorted)."""
    wanted = max(1, -(-p * n // 100))
    seen = 0
    for k in keys:
        seen += counts[k]
        if seen >= wanted:
            return _upper(k)
    return _upper(keys[-1])


def _upper(k: int) -> float:
    """The upper end of bucket k, in ms."""
    return round((k + (1 if k < FINE_LIMIT // 100 else 10)) / 10, 1)
