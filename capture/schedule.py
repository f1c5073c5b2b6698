"""Scheduled snapshots: capture starts `pgtape snapshot --prune` in a child process when one is due,
so the retention is applied right after each new base (snapshots/prune.py).

A child process, not a thread, so the snapshot's COPY never competes with the capture loop for
the GIL and a failing snapshot cannot take capture down (capture keeps acknowledging).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable

from pgtape.config import Config
from pgtape.tape.archive import Archive
from snapshots import catalog

RETRY_AFTER_FAILURE = 300.0  # seconds


class SnapshotScheduler:
    def __init__(self, config: Config, archive: Archive, generation: int, log: Callable[[str], None]) -> None:
        self.config = config
        self.archive = archive
        self.generation = generation
        self.log = log
        self._child: subprocess.Popen[bytes] | None = None
        self._not_before = 0.0

    def poll(self) -> None:
        """Call now and then (cheap): reaps a finished child, starts one when due."""
        every = self.config.snapshot_every
        if every is None:
            return
        if self._child is not None:
            code = self._child.poll()
            if code is None:
                return
            self._child = None
            if code != 0:
                retry = min(RETRY_AFTER_FAILURE, every)
                self.log(f"scheduled snapshot or its prune failed (exit {code}, reason above); "
                         f"next attempt in {retry:.0f}s")
                self._not_before = time.monotonic() + retry
            return
        if time.monotonic() < self._not_before:
            return
        newest = catalog.newest_completed(self.archive, self.generation)
        age = (time.time_ns() // 1000 - newest.as_of_time) / 1e6 if newest and newest.as_of_time else None
        if age is not None and age < every:
            self._not_before = time.monotonic() + min(every - age, 60.0)
            return
        self.log("starting a scheduled snapshot")
        env = {**os.environ, "PGTAPE_ARCHIVE": str(self.archive.path), "PGTAPE_TABLES": ",".join(self.config.tables),
               "PGTAPE_SLOT": self.config.slot}
        if self.config.dsn:
            env["PGTAPE_DSN"] = self.config.dsn  # environment, not argv: ps shows argv to everyone
        if self.config.source_file:
            env["PGTAPE_CONFIG"] = str(self.config.source_file)
        self._child = subprocess.Popen([sys.executable, "-m", "pgtape", "snapshot", "--kind", "scheduled", "--prune"],
                                       env=env)

    def stop(self) -> None:
        """Let a running snapshot finish: it is independent of capture."""
        if self._child is not None and self._child.poll() is None:
            self.log(f"scheduled snapshot (pid {self._child.pid}) still running; it continues on its own")
