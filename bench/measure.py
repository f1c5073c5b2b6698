"""Measuring tools for the benchmarks: child processes with their own rusage, a slot poller.

The one process-timing harness of every bench: `Child` (and `run`, `timed` on top of it). Each
child is reaped with os.wait4, which returns the resource usage of that one process (not of every
child so far, as getrusage(RUSAGE_CHILDREN) would): wall time, CPU time and peak RSS.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import platform
import pstats
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import psycopg

from pgtape.lsn import parse_lsn

ROOT = Path(__file__).resolve().parent.parent


def scalar(cur: psycopg.Cursor[tuple[Any, ...]]) -> Any:
    """The first value of the one row a query returned (asserting that one came back)."""
    row = cur.fetchone()
    assert row is not None, "the query returned no row"
    return row[0]


def load_profile(path: Path) -> tuple[float, dict[tuple[str, int, str], tuple[Any, ...]]]:
    """A cProfile file's total time and entries: (file, line, function) -> (cc, ncalls, tt, ct, callers)."""
    stats = pstats.Stats(str(path))
    return stats.total_tt, stats.stats  # type: ignore[attr-defined]  # pstats.Stats has no stubs for total_tt, stats


def clean_env() -> dict[str, str]:
    """The environment for pgtape children: no PGTAPE_* setting leaks into a measured run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PGTAPE_")}


@dataclass
class ProcResult:
    cmd: list[str]
    returncode: int
    wall: float  # seconds from spawn to exit
    user: float  # CPU seconds
    sys: float
    max_rss: int  # bytes (ru_maxrss is KiB on Linux)
    stdout: str
    stderr: str

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def check(self, what: str) -> ProcResult:
        if self.returncode != 0:
            raise RuntimeError(f"{what} exited {self.returncode}: {self.stderr.strip()[-2000:]}")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stdout"] = self.stdout[-2000:]
        d["stderr"] = self.stderr[-2000:]
        return d


class Child:
    """A child process whose stdout/stderr go to files; reaped with wait4 for its own rusage."""

    def __init__(self, cmd: Sequence[str], *, env: dict[str, str], cwd: Path, log_dir: Path, name: str) -> None:
        self.cmd = [str(c) for c in cmd]
        self.out_path = log_dir / f"{name}.stdout"
        self.err_path = log_dir / f"{name}.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.start = time.perf_counter()
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=env, cwd=cwd)
        self.result: ProcResult | None = None

    def wait(self, timeout: float) -> ProcResult:
        """Wait for exit (killing the child after `timeout` seconds); never leaves it running."""
        if self.result is not None:
            return self.result
        timer = threading.Timer(timeout, self._kill)
        timer.start()
        try:
            _, status, ru = os.wait4(self.proc.pid, 0)
        except BaseException:  # Ctrl-C: never leave the child running
            self._kill()
            self.proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - self.start
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.result = ProcResult(self.cmd, self.proc.returncode, wall, ru.ru_utime, ru.ru_stime,
                                 ru.ru_maxrss * 1024, self.out_path.read_text(errors="replace"),
                                 self.err_path.read_text(errors="replace"))
        return self.result

    def _kill(self) -> None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass

    def terminate(self, timeout: float = 60) -> ProcResult:
        """SIGTERM (a clean stop for pgtape capture), then wait."""
        if self.result is None and self.proc.returncode is None:
            try:
                self.proc.terminate()
            except ProcessLookupError:
                pass
        return self.wait(timeout)

    def alive(self) -> bool:
        if self.result is not None:
            return False
        pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return True
        wall = time.perf_counter() - self.start
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.result = ProcResult(self.cmd, self.proc.returncode, wall, ru.ru_utime, ru.ru_stime,
                                 ru.ru_maxrss * 1024, self.out_path.read_text(errors="replace"),
                                 self.err_path.read_text(errors="replace"))
        return False


def run(cmd: Sequence[str], *, env: dict[str, str], cwd: Path, log_dir: Path, name: str,
        timeout: float) -> ProcResult:
    return Child(cmd, env=env, cwd=cwd, log_dir=log_dir, name=name).wait(timeout)


def timed(cmd: Sequence[str], *, what: str, timeout: float) -> ProcResult:
    """Run cmd (from the repository, without PGTAPE_* settings) to its end and measure it; its
    output is kept in the result only. Raises RuntimeError naming `what` if it fails."""
    with tempfile.TemporaryDirectory(prefix="bench-") as logs:
        return run(cmd, env=clean_env(), cwd=ROOT, log_dir=Path(logs), name="child", timeout=timeout).check(what)


class SlotPoller(threading.Thread):
    """Polls a slot's confirmed_flush_lsn every `interval` seconds on its own connection.

    Each sample is (time.time() when the answer arrived, confirmed_flush_lsn). The answer time is
    an upper bound on when the server already held that position, so durable times derived from
    it err late, never early."""

    def __init__(self, dsn: str, slot: str, interval: float = 0.01) -> None:
        super().__init__(name="slot-poller", daemon=True)
        self.dsn, self.slot, self.interval = dsn, slot, interval
        self.times: list[float] = []
        self.lsns: list[int] = []
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="bench-poller") as conn:
                cur = conn.cursor()
                query = ("select confirmed_flush_lsn::text from pg_replication_slots "
                         f"where slot_name = '{self.slot}'")
                next_at = time.monotonic()
                while not self._stop_event.is_set():
                    row = cur.execute(query).fetchone()
                    now = time.time()
                    if row is not None and row[0] is not None:
                        lsn = parse_lsn(row[0])
                        if not self.lsns or lsn >= self.lsns[-1]:
                            self.times.append(now)
                            self.lsns.append(lsn)
                    next_at += self.interval
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        self._stop_event.wait(delay)
                    else:
                        next_at = time.monotonic()
        except BaseException as e:  # reported by the caller
            self.error = e

    def latest(self) -> int:
        return self.lsns[-1] if self.lsns else 0

    def first_time_at_or_after(self, lsn: int) -> float | None:
        """When the slot was first seen confirmed at or beyond lsn."""
        i = bisect.bisect_left(self.lsns, lsn)
        return self.times[i] if i < len(self.times) else None

    def mean_interval(self) -> float | None:
        if len(self.times) < 2:
            return None
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def machine_info(pg_version: str) -> dict:
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wal2json = ""
    try:
        wal2json = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "postgresql-15-wal2json"],
                                  capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu_model, "ram_gb": round(mem_kib / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(), "postgresql": pg_version,
            "wal2json": wal2json}


# -- shared by the benchmark scripts ----------------------------------------------------------
OUT_DIR = Path(__file__).resolve().parent / "out"


def chown_tree(path: Path, user: str) -> None:
    """Hand a directory tree to `user` (servers run as postgres when the bench runs as root)."""
    import pwd
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


@contextlib.contextmanager
def work_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A private work directory that servers running as postgres can reach; removed afterwards
    (unless `keep`), and SIGTERM runs the caller's finally blocks so every process is stopped."""
    signal.signal(signal.SIGTERM, _terminate)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(work, 0o755)
    if os.geteuid() == 0:
        chown_tree(work, "postgres")
    try:
        yield work
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(f"benchmark: signal {signum}, stopping")


def save_results(kind: str, res: dict) -> Path:
    """bench/out/<kind>-<mode>-<UTC time>.json and <kind>-latest-<mode>.json."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    text = json.dumps(res, indent=2, default=str)
    path = OUT_DIR / f"{kind}-{res['mode']}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(text)
    (OUT_DIR / f"{kind}-latest-{res['mode']}.json").write_text(text)
    return path
