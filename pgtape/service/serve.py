"""pgtape serve: capture in the main thread (as pgtape capture runs it), the HTTP API beside it in
waitress's threads, jobs as child processes. docs/ARCHITECTURE.md, "Service".

Capture stopping with an error does not stop the service: the API keeps answering (GET /healthz
says 503 and why) and capture is started again with backoff. SIGTERM/SIGINT stop capture cleanly,
then the jobs (SIGTERM, then SIGKILL; recorded `interrupted`), then the server.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from waitress.server import create_server  # type: ignore[import-untyped]  # waitress ships no types

from pgtape import keys
from pgtape import notify
from pgtape.capture.capture import Capture
from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.service import auth
from pgtape.service.app import Api
from pgtape.service.jobs import JobManager, JobRecord
from pgtape.service.monitor import Monitor
from pgtape.service.openapi import document
from pgtape.offsite.worker import OffsiteWorker
from pgtape.tape.archive import Archive

logger = logging.getLogger(__name__)

SERVER_THREADS = 8  # concurrent requests; a slow one (status, mark) holds one
RETRY_FIRST, RETRY_MAX = 1.0, 60.0  # seconds between capture attempts after an error, doubling


def child_env(config: Config) -> dict[str, str]:
    """The environment that gives a pgtape child the service's configuration: the DSN stays out of
    the process list (and out of job records)."""
    env = dict(os.environ)
    env.pop(auth.ENV_TOKEN, None)  # a child needs no API token
    if config.source_file:
        env["PGTAPE_CONFIG"] = str(config.source_file)
    if config.dsn:
        env["PGTAPE_DSN"] = config.dsn
    env["PGTAPE_ARCHIVE"] = str(config.require_archive())
    env["PGTAPE_SLOT"] = config.slot
    if config.key_file:
        env[keys.KEY_FILE_ENV] = str(config.key_file)  # the keyring's path (never its keys)
    return env


class Service:
    def __init__(self, config: Config, listen: tuple[str, int], capture: bool) -> None:
        self.config = config
        self.listen = listen
        self.with_capture = capture
        self.stopping = threading.Event()
        self.capture: Capture | None = None
        self.capture_error: str | None = None  # why capture is down, while it is retried
        self.changes_before = 0  # written by the captures that ran before this one
        self.monitor: Monitor | None = None

    def stop(self, *_: object) -> None:
        self.stopping.set()
        if self.capture is not None:
            self.capture.stop()

    def changes_written(self) -> int:
        """Row changes the in-process capture has put on the tape since the service started."""
        writer = self.capture.writer if self.capture is not None else None
        return self.changes_before + (writer.changes if writer is not None else 0)

    def _after_job(self, job: JobRecord) -> None:
        if self.monitor is not None:
            self.monitor.after_job(job)

    def run(self) -> int:
        tokens = auth.load_tokens(self.config.api_token_file)  # refuse to start without a usable token
        archive = Archive(self.config.require_archive(), keys.configured(self.config))
        if not self.with_capture:
            archive = Archive.existing(archive.path, archive.keyring)
        env = child_env(self.config)
        jobs = JobManager(archive.storage, env, after_job=self._after_job)
        jobs.recover()
        notifier = notify.Notifier(self.config.notify_webhooks or ())
        self.monitor = monitor = Monitor(self.config, archive, jobs, notifier, lambda: self.capture_error,
                                         self.changes_written)
        monitor.start()
        api = Api(self.config, tokens, jobs, env, monitor, document())
        host, port = self.listen
        try:
            server: Any = create_server(api, host=host, port=port, threads=SERVER_THREADS,
                                        clear_untrusted_proxy_headers=True)
        except OSError as e:
            raise PgtapeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        http = threading.Thread(target=server.run, name="http", daemon=True)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        http.start()
        logger.info(f"serving the API on http://{host}:{port} ({len(tokens)} token(s))"
                    + ("" if self.with_capture else "; capture is left to another process"))
        # [offsite] url: the archive's copy in the bucket, kept up by a child process that never stops capture.
        offsite = OffsiteWorker(archive, self.config) if self.with_capture and self.config.offsite_url else None
        if offsite:
            offsite.start()
        try:
            if self.with_capture:
                self._capture()
            else:
                while not self.stopping.wait(3600):
                    pass
        finally:
            if offsite:
                offsite.stop()
            jobs.stop_all()
            server.close()
            monitor.stop()
            notifier.close(5.0)
            logger.info("service stopped")
        return 0

    def _capture(self) -> None:
        """Capture until stopped; after an error, again, with backoff."""
        delay, attempt = RETRY_FIRST, 1
        while not self.stopping.is_set():
            self.changes_before = self.changes_written()
            self.capture = Capture(self.config)
            if self.stopping.is_set():  # a signal between the check and the assignment
                break
            try:
                self.capture.run()
                return  # stopped
            except Exception as e:  # anything, even a bug: the API stays up and says why
                self.capture_error = f"{type(e).__name__}: {e}" if not isinstance(e, PgtapeError) else str(e)
                logger.error(f"capture stopped: {self.capture_error}; attempt {attempt + 1} in {delay:.0f}s")
            if self.stopping.wait(delay):
                return
            delay, attempt = min(delay * 2, RETRY_MAX), attempt + 1
            logger.info(f"starting capture again (attempt {attempt})")
            self.capture_error = None
