"""Capture's uploader, in a process of its own (`python -m pgtape.offsite.worker SETTINGS`).

Why a process and not a thread: boto3 is pure Python, and a thread in capture's process takes the
interpreter lock from capture whenever it runs (draining a 25,000-transaction backlog, capture's CPU
was 1.41x with the uploader thread on, BENCHMARKS.md "Offsite copy"). The child shares nothing with
capture but the archive's files and OFFSITE.json; it runs at a lower priority (nice 10), so on a busy
machine capture and the server come first; it dies with its parent (PR_SET_PDEATHSIG, and a look at
its parent before each pass), and a store that fails or hangs cannot touch capture's memory or timing.
Uploads are atomic and resume without re-sending (upload.py), so killing the child at any instant is safe.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pgtape import log
from pgtape.config import Config
from pgtape.offsite.upload import MAX_BACKOFF, OffsiteBusy, Uploader
from pgtape.storage.s3 import RemoteStorageError, S3Storage
from pgtape.tape.archive import Archive

logger = logging.getLogger(__name__)

NICENESS = 10
_PR_SET_PDEATHSIG = 1


class OffsiteWorker:
    """The parent's handle (capture, serve). Start it from the main thread: the kernel's parent-death
    signal follows the thread that started the child."""

    def __init__(self, archive: Archive, config: Config) -> None:
        self._settings = json.dumps({
            "archive": str(archive.path), "url": config.offsite_url, "endpoint_url": config.offsite_endpoint_url,
            "interval": config.offsite_interval, "parent": os.getpid(), "log": log.child_args()})
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "pgtape.offsite.worker", self._settings],
                                      stdin=subprocess.DEVNULL)

    def stop(self, timeout: float = 10) -> None:
        """Let the pass in progress end (up to `timeout`), then kill: an interrupted upload is sent again."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning(f"offsite: the uploader did not stop within {timeout:g} s: killed (its upload "
                           "is resumed by the next one)")
            self._proc.kill()
            self._proc.wait()


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the check before each pass still ends it
        pass
    if os.getppid() != parent:  # the parent died before prctl
        raise SystemExit(0)


def run(settings: dict[str, object]) -> None:
    parent = int(str(settings["parent"]))
    _die_with_parent(parent)
    os.nice(NICENESS)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us with SIGTERM
    endpoint = settings["endpoint_url"]
    uploader = Uploader(Archive.existing(Path(str(settings["archive"]))),
                        S3Storage(str(settings["url"]), str(endpoint) if endpoint else None),
                        float(str(settings["interval"])))
    delay, failing = 1.0, False
    while not stopping.is_set() and os.getppid() == parent:
        try:
            uploader.run_pass()
            if failing:
                logger.info("offsite: uploads resumed")
            delay, failing = 1.0, False
        except OffsiteBusy:
            pass  # pgtape push is making a pass: the next one goes on from what it did
        except (RemoteStorageError, OSError) as e:
            if not failing:
                logger.warning(f"offsite: upload failed, capture goes on and uploads are retried: {e}")
            uploader.record_error(str(e))
            delay, failing = (min(MAX_BACKOFF, delay * 2) if failing else 1.0), True
        except Exception as e:  # a bug: logged, never fatal to capture
            logger.error(f"offsite: {type(e).__name__}: {e}")
            uploader.record_error(f"{type(e).__name__}: {e}")
            delay, failing = min(MAX_BACKOFF, delay * 2), True
        stopping.wait(delay)


def main(argv: list[str]) -> int:
    settings = json.loads(argv[1])
    level, fmt = settings["log"][1], settings["log"][3]  # log.child_args(): --log-level L --log-format F
    log.setup(level, fmt)
    try:
        run(settings)
    except Exception as e:  # e.g. the archive removed under it: one line, the parent goes on capturing
        logger.error(f"offsite: the uploader stopped: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
