"""Snapshots capture takes by itself, in a child process: a scheduled one (`pgtape snapshot --prune`)
when one is due, so the retention is applied right after each new base (snapshots/prune.py); and a
new base of a table whose rows changed without row changes on the tape (snapshots/rebase.py).

A child process, not a thread, so the snapshot's COPY never competes with the capture loop for
the GIL and a failing snapshot cannot take capture down (capture keeps acknowledging).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.log import child_args
from pgtape.tape.archive import Archive
from pgtape.timefmt import now_us
from pgtape.snapshots import catalog

RETRY_AFTER_FAILURE = 300.0  # seconds
REBASE_RETRY = 30.0  # seconds: a table without a usable base cannot be replayed past its rebase point


class SnapshotScheduler:
    def __init__(self, config: Config, archive: Archive, generation: int) -> None:
        self.config = config
        self.archive = archive
        self.generation = generation
        self.log = logging.getLogger(__name__).info
        self._child: subprocess.Popen[bytes] | None = None
        self._child_tables: set[str] = set()  # the new bases the running child takes
        self._not_before = 0.0
        self._wanted: set[str] = set()  # tables that need a new base
        self._wanted_not_before = 0.0

    def request(self, table: str) -> None:
        """A new base of this table, as soon as no other snapshot runs."""
        self._wanted.add(table)

    def poll(self) -> None:
        """Call now and then (cheap): reaps a finished child, starts one when due."""
        every = self.config.snapshot_every
        if self._child is not None:
            code = self._child.poll()
            if code is None:
                return
            self._child = None
            if code != 0:
                retry = min(RETRY_AFTER_FAILURE, every or RETRY_AFTER_FAILURE)
                if self._child_tables:
                    self._wanted |= self._child_tables
                    self._wanted_not_before = time.monotonic() + REBASE_RETRY
                    self.log(f"the new base of {', '.join(sorted(self._child_tables))} failed (exit {code}, "
                             f"reason above); next attempt in {REBASE_RETRY:.0f}s")
                else:
                    self.log(f"scheduled snapshot or its prune failed (exit {code}, reason above); "
                             f"next attempt in {retry:.0f}s")
                    self._not_before = time.monotonic() + retry
            self._child_tables = set()
            return
        if self._wanted and time.monotonic() >= self._wanted_not_before:
            self._child_tables, self._wanted = self._wanted, set()
            self.log(f"taking a new base of {', '.join(sorted(self._child_tables))}")
            self._child = self._spawn(["--kind", "rebase"], tables=sorted(self._child_tables))
            return
        if every is None or time.monotonic() < self._not_before:
            return
        try:
            newest = catalog.newest_completed(self.archive, self.generation)
        except PgtapeError as e:  # a damaged catalog must not stop capture: verify names it
            self.log(f"not scheduling a snapshot: {e}")
            self._not_before = time.monotonic() + min(RETRY_AFTER_FAILURE, every)
            return
        age = (now_us() - newest.as_of_time) / 1e6 if newest and newest.as_of_time else None
        if age is not None and age < every:
            self._not_before = time.monotonic() + min(every - age, 60.0)
            return
        self.log("starting a scheduled snapshot")
        self._child = self._spawn(["--kind", "scheduled", "--prune"], tables=list(self.config.tables))

    def _spawn(self, args: list[str], tables: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PGTAPE_ARCHIVE": str(self.archive.path), "PGTAPE_TABLES": ",".join(tables),
               "PGTAPE_SLOT": self.config.slot}
        if self.config.dsn:
            env["PGTAPE_DSN"] = self.config.dsn  # environment, not argv: ps shows argv to everyone
        if self.config.source_file:
            env["PGTAPE_CONFIG"] = str(self.config.source_file)
        return subprocess.Popen([sys.executable, "-m", "pgtape", *child_args(), "snapshot", *args], env=env)

    def stop(self) -> None:
        """Let a running snapshot finish: it is independent of capture."""
        if self._child is not None and self._child.poll() is None:
            self.log(f"scheduled snapshot (pid {self._child.pid}) still running; it continues on its own")
