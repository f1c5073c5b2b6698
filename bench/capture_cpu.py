"""Capture's client-side CPU cost per row change, offline: no server, no network, no other load.

Replays a file of wal2json messages (pg_recvlogical's output, one message a line, as
`python -m bench.run --only throughput --keep` leaves in its work directory) through
capture's real loop, Capture._stream, with an in-memory stream in place of the replication
connection, onto a tape in a temporary archive (with its real group-commit fsyncs). Prints
the process CPU time per row change, best of --runs. Use it to compare a change to the hot
path on a quiet and an unquiet machine alike (CPU time barely depends on other load):

    python -m bench.capture_cpu /tmp/pgtape-bench-XXXX/recv-1.json --runs 5
    python -m bench.capture_cpu FILE --profile     # cProfile of one run, by own time
    python -m bench.capture_cpu FILE --compare-key # interleaved runs without and with encryption, as a ratio

It drives a private method with stand-ins for the stream and the snapshot scheduler, so it
follows capture's internals: if those change, adjust the stand-ins here.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from pgtape.capture.capture import Capture
from pgtape.capture.follow import Follower
from pgtape.capture.protocol import ReplicationStream
from pgtape.capture.schedule import SnapshotScheduler
from pgtape.shapes import Column, TableShape, View
from pgtape.capture.tape_writer import TapeWriter
from pgtape.config import load_config
from pgtape.keys import Keyring, generate, load
from pgtape.lsn import parse_lsn
from pgtape.tape.archive import Archive

_XLOG = struct.Struct(">cQQQ")  # 'w', start, end, send time: the XLogData header capture parses


def load_messages(path: Path) -> tuple[list[bytes], int]:
    """XLogData messages built from the lines; a C message's header LSN is its nextlsn, as the
    server sends it. Returns the messages and the last commit's end LSN."""
    messages: list[bytes] = []
    lsn = 0
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if not line:
                continue
            if line.startswith(b'{"action":"C"'):
                lsn = parse_lsn(json.loads(line)["nextlsn"])
            messages.append(_XLOG.pack(b"w", lsn, lsn, 0) + line)
    return messages, lsn


class _Stream(ReplicationStream):
    """Stands in for a replication stream: the messages, with no connection (hence no super().__init__)."""

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = messages
        self._i = 0

    def read(self) -> memoryview | None:
        if self._i < len(self._messages):
            self._i += 1
            return memoryview(self._messages[self._i - 1])
        return None

    def wait(self, timeout: float) -> None:
        pass

    def take_waiting(self) -> bool:
        return False  # nothing beyond the messages: drained once they are read (adaptive group commit)

    def send_status(self, write_lsn: int, flush_lsn: int, reply: bool = False) -> None:
        pass


def _view(messages: list[bytes], tables: list[str]) -> View:
    """The captured tables as capture would know them: columns from each table's first INSERT."""
    columns: dict[str, list[str]] = {}
    for m in messages:
        doc = json.loads(m[_XLOG.size:])
        if doc["action"] == "I":
            columns.setdefault(f"{doc['schema']}.{doc['table']}", [c["name"] for c in doc["columns"]])
    return {t: TableShape(i + 1, t, "r", "d",
                          [Column(n + 1, c, "text", None) for n, c in enumerate(columns.get(t, []))],
                          ["id"]) for i, t in enumerate(tables)}


class _NoSnapshots(SnapshotScheduler):
    """No snapshots offline: nothing to schedule (hence no super().__init__)."""

    def __init__(self) -> None:
        pass

    def poll(self) -> None:
        pass

    def stop(self) -> None:
        pass


def replay_once(messages: list[bytes], end_lsn: int, keyring: Keyring | None = None,
                group_commit: str | None = None) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, changes) of one pass onto a fresh tape (encrypted with `keyring`)."""
    directory = Path(tempfile.mkdtemp(prefix="pgtape-capture-cpu-"))
    try:
        config = load_config(None, {"archive": str(directory), "group_commit": group_commit}, environ={})
        archive = Archive(directory, keyring)
        archive.start_generation("0", "bench", config.slot, 0, "bench", list(config.tables))
        cap = Capture(config, until_lsn=end_lsn, log=lambda _: None)
        cap.scheduler = _NoSnapshots()
        cap.follower = Follower(archive, 1, _view(messages, list(config.tables)), 0, None, None, lambda _: None)
        cap.follower._next_poll = float("inf")  # no catalog to poll offline
        writer = TapeWriter(archive, 1, "0", config.slot, config.segment_size)
        cap._archive_identity = cap.archive.storage.identity()  # as _open_tape records it, for _check_archive
        cpu, wall = time.process_time(), time.perf_counter()
        cap._stream(_Stream(messages), writer)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        writer.close()
        return cpu, wall, writer.changes
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capture_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="wal2json output of pg_recvlogical (format-version 2)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--group-commit", choices=["adaptive", "timer"],
                        help="[capture] group_commit (default: adaptive)")
    parser.add_argument("--profile", action="store_true", help="cProfile one run instead")
    parser.add_argument("--compare-key", action="store_true",
                        help="interleaved runs without and with a keyring (encryption at rest); prints the ratio")
    args = parser.parse_args(argv)
    messages, end = load_messages(args.file)
    if args.compare_key:
        return _compare_key(messages, end, args.runs)
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(replay_once, messages, end, None, args.group_commit)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    results = [replay_once(messages, end, None, args.group_commit) for _ in range(args.runs)]
    changes = results[0][2]
    per = [cpu / max(1, changes) * 1e6 for cpu, _, _ in results]
    print(f"{len(messages)} messages, {changes} row changes; CPU per change: best {min(per):.1f} us "
          f"(runs: {', '.join(f'{p:.1f}' for p in per)})")
    return 0


def _compare_key(messages: list[bytes], end: int, runs: int) -> int:
    with tempfile.TemporaryDirectory(prefix="pgtape-capture-cpu-key-") as d:
        generate(Path(d) / "keyring")
        keyring = load(Path(d) / "keyring")
    per: dict[str, list[float]] = {"plain": [], "encrypted": []}
    changes = 0
    for i in range(runs):
        order = ["plain", "encrypted"] if i % 2 == 0 else ["encrypted", "plain"]
        for kind in order:
            cpu, _, changes = replay_once(messages, end, keyring if kind == "encrypted" else None)
            per[kind].append(cpu / max(1, changes) * 1e6)
    best = {k: min(v) for k, v in per.items()}
    print(f"{len(messages)} messages, {changes} row changes; CPU per change, best of {runs} interleaved runs: "
          f"plain {best['plain']:.2f} us, encrypted {best['encrypted']:.2f} us, "
          f"ratio {best['encrypted'] / best['plain']:.3f}")
    for k, v in per.items():
        print(f"  {k}: {', '.join(f'{p:.2f}' for p in v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
