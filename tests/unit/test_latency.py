"""pgtape/tape/latency.py: the commit-to-durable window capture publishes in DURABLE.json, and how
status and the metrics read it back."""

from __future__ import annotations

import dataclasses
import errno
import random
from pathlib import Path

import pytest

from pgtape import metadata
from pgtape.capture.tape_writer import TapeWriter
from pgtape.config import load_config
from pgtape.service.metrics import Metrics
from pgtape.service.status import Status, collect
from pgtape.tape.latency import LatencyWindow
from pgtape.tape.records import Begin, Message
from pgtape.tape.segment import DURABLE_FILE
from pgtape.timefmt import now_us
from .archive_kit import new_archive, segment
from .test_metrics import samples

MS = 1000  # µs


def test_percentiles_are_nearest_rank_bucket_upper_ends() -> None:
    w = LatencyWindow()
    t0 = 1_800_000_000 * 1_000_000
    # 100 transactions: 98 at 5.03 ms, one at 15 ms, one at 250.4 ms (ms buckets above 100 ms).
    w.fsynced(t0, [t0 - 5030] * 98)
    w.fsynced(t0 + 10 * MS, [t0 + 10 * MS - 15 * MS, t0 + 10 * MS - 250_400])
    w.fsynced(t0 + 20 * MS, [])  # a Position: an fsync without a transaction
    got = w.take()
    assert got is not None
    assert (got.p50_ms, got.p99_ms, got.max_ms) == (5.1, 15.1, 251.0)
    assert (got.transactions, got.fsyncs, got.first_durable, got.last_durable) == (100, 3, t0, t0 + 10 * MS)
    assert w.take() is None  # a new window: empty
    w.fsynced(t0, [])
    assert w.take() is None and w.fsyncs == 0


def test_a_clock_behind_the_server_counts_as_zero() -> None:
    w = LatencyWindow()
    w.fsynced(1000 * MS, [1000 * MS + 3 * MS])
    got = w.take()
    assert got is not None and (got.p50_ms, got.max_ms) == (0.1, 0.1)


def test_random_latencies_against_a_plain_percentile() -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    w = LatencyWindow()
    values: list[int] = []
    now = 5_000_000_000
    for _ in range(rng.randrange(1, 50)):
        now += rng.randrange(1, 300 * MS)
        batch = [rng.randrange(0, 400 * MS) for _ in range(rng.randrange(0, 40))]
        values += batch
        w.fsynced(now, [now - d for d in batch])
    got = w.take()
    if not values:
        assert got is None
        return
    assert got is not None
    s = sorted(values)
    for p, have in ((50, got.p50_ms), (99, got.p99_ms), (100, got.max_ms)):
        exact = s[max(1, -(-p * len(s) // 100)) - 1] / MS
        step = 0.1 if exact < 100 else 1.0
        assert exact < have <= exact + step + 1e-9, (p, exact, have, seed)


def test_status_and_metrics_read_the_window_from_durable_json(tmp_path: Path) -> None:
    archive = new_archive(tmp_path / "a")
    segment(archive, 1, 100, [(200, 1000 * MS * 1000)], seal=False)
    config = load_config(None, {"archive": str(tmp_path / "a"), "dsn": f"host={tmp_path}/none dbname=x"}, {})
    key = f"{archive.generation_key(1)}/{DURABLE_FILE}"
    metadata.write(archive.storage, key, {"lsn": 200})  # written by a capture before this field existed
    status = collect(config, archive)
    assert status.commit_to_durable is None and status.report().commit_to_durable is None
    assert not [k for k in samples(_render(status)) if "commit_to_durable" in k[0]]

    w = LatencyWindow()
    w.fsynced(2_000_000 * MS, [2_000_000 * MS - 4 * MS, 2_000_000 * MS - 19_950])
    metadata.write(archive.storage, key, {"lsn": 200, "commit_to_durable": w.take()})
    status = collect(config, archive)
    report = status.report().commit_to_durable
    assert report is not None
    assert (report.p50_ms, report.p99_ms, report.transactions, report.fsyncs) == (4.1, 20.0, 2, 1)
    assert report.first_durable == report.last_durable == "1970-01-01 00:33:20.000000Z"
    got = samples(_render(status))
    assert got[("pgtape_commit_to_durable_p50_seconds", ())] == pytest.approx(0.0041)
    assert got[("pgtape_commit_to_durable_p99_seconds", ())] == pytest.approx(0.02)
    assert dataclasses.replace(status, commit_to_durable=None).report().commit_to_durable is None


def _render(status: Status) -> bytes:
    m = Metrics()
    m.observe(status, [], {})
    return m.render()[0]


def test_the_writer_measures_each_fsync_and_notes_durable_in_a_thread(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """TapeWriter: each captured transaction's latency is taken at the fsync that makes it durable;
    DURABLE.json is written by a thread (one at a time), whose error the next call raises."""
    archive = new_archive(tmp_path / "a")
    w = TapeWriter(archive, 1, "7", "pgtape", 1 << 20)
    key = f"{archive.generation_key(1)}/{DURABLE_FILE}"
    now = now_us()
    for i, ago in enumerate((7 * MS, 3 * MS)):
        w.begin(Begin(500 + i, 200 + 10 * i, 208 + 10 * i, now - ago))
        w.change(Message(200 + 10 * i, True, "x", "y"), 10)
        assert w.commit(208 + 10 * i)
    w.sync()
    w.note_durable()
    w.note_durable(wait=True)  # waits for the thread's write; nothing newer to write
    doc = metadata.read(archive.storage, key, dict)
    assert doc["lsn"] == 218 and doc["commit_to_durable"]["transactions"] == 2
    assert doc["commit_to_durable"]["fsyncs"] == 1 and 7 <= doc["commit_to_durable"]["max_ms"] < 1000
    assert w.fsyncs == 1

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metadata, "write", full)
    w.position(300, now)
    w.sync()
    w.note_durable()  # the thread fails
    with pytest.raises(OSError, match="No space left"):
        w.note_durable(wait=True)
    assert metadata.read(archive.storage, key, dict)["lsn"] == 218
