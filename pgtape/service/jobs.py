"""Jobs: pgtape commands the API runs as child processes, their records kept in the archive.

    <archive>/jobs/<id>.json    one record per job (pgtape/metadata.py), replaced atomically

A job is `sys.executable -m pgtape <command> ... --json --log-format json`: its JSON log lines on
stderr are its progress, its stdout is its result, its exit code and `pgtape: ...` line its outcome.
The child dies with the service (PR_SET_PDEATHSIG). A record found `running` whose service or
process is gone is `interrupted`: never reported as done.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import msgspec

from pgtape import metadata
from pgtape.log import utc_time
from pgtape.storage import Storage
from pgtape.lock import process_alive

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"
KINDS = ("backup", "recovery", "verification")
MAX_RUNNING = 4  # jobs at once: each is a process with its own database connections
JOBS_KEY = "jobs"
STOP_GRACE = 10.0  # seconds a job has after SIGTERM before it is killed
SAVE_EVERY = 1.0  # seconds between saves of a running job's progress

logger = logging.getLogger(__name__)


class Progress(msgspec.Struct):
    message: str  # the job's last log message
    numbers: dict[str, float]  # the numeric fields logged with it


class JobRecord(msgspec.Struct):
    id: str
    kind: str  # backup, recovery, verification
    status: str  # running, completed, failed, interrupted
    request: dict[str, Any]  # the API request body
    argv: list[str]  # the pgtape arguments it runs
    actor: str  # api:<token name>
    started_at: str
    pid: int = 0
    service_pid: int = 0
    host: str = ""
    finished_at: str | None = None
    exit_code: int | None = None
    progress: Progress | None = None
    result: Any = None  # the command's --json document
    error: str | None = None  # its one error line


class TooManyJobs(Exception):
    pass


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGKILL when the service dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG



def _now() -> str:
    return utc_time(time.time())


class JobManager:
    def __init__(self, storage: Storage, env: dict[str, str],
                 after_job: Callable[[JobRecord], None] | None = None) -> None:
        self.storage = storage
        self.env = env  # gives each child the service's configuration (serve.child_env)
        self.after_job = after_job or (lambda job: None)
        self.lock = threading.Lock()
        self.live: dict[str, tuple[JobRecord, subprocess.Popen[bytes] | None, threading.Thread]] = {}
        self.stopping = False

    def recover(self) -> None:
        """Records left `running` by a service that is gone: their processes died with it."""
        for job in self.all():
            if job.status == RUNNING and job.id not in self.live and (
                    job.host != os.uname().nodename or not process_alive(job.service_pid)
                    or not process_alive(job.pid)):
                self._save(msgspec.structs.replace(job, status=INTERRUPTED, finished_at=job.finished_at or _now(),
                                                   error=job.error or "interrupted: the service stopped"))

    def all(self) -> list[JobRecord]:
        jobs = []
        for e in self.storage.list(JOBS_KEY):
            if e.size is not None and e.name.endswith(".json"):
                job = self.get(e.name[:-len(".json")])
                if job is not None:
                    jobs.append(job)
        return jobs

    def get(self, job_id: str) -> JobRecord | None:
        with self.lock:
            if job_id in self.live:
                return self.live[job_id][0]
        if not all(c.isalnum() or c in "-._" for c in job_id):
            return None
        try:
            return metadata.read(self.storage, f"{JOBS_KEY}/{job_id}.json", JobRecord)
        except FileNotFoundError:
            return None

    def start(self, kind: str, request: dict[str, Any], args: list[str], actor: str) -> JobRecord:
        with self.lock:
            if len(self.live) >= MAX_RUNNING:
                raise TooManyJobs(f"{MAX_RUNNING} jobs are running: try again when one has finished")
            t = time.time()
            job_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t)) + "-" + secrets.token_hex(4)
            job = JobRecord(job_id, kind, RUNNING, request, args, actor, utc_time(t),
                            service_pid=os.getpid(), host=os.uname().nodename)
            started = threading.Event()
            thread = threading.Thread(target=self._run, args=(job, started), name=f"job-{job_id}", daemon=True)
            self.live[job_id] = (job, None, thread)
        thread.start()
        started.wait()  # the record holds the child's pid before anyone can read it
        return self.live[job_id][0] if job_id in self.live else job

    def _run(self, job: JobRecord, started: threading.Event) -> None:
        argv = [sys.executable, "-m", "pgtape", "--log-format", "json", *job.argv]
        env = {**self.env, "PGTAPE_ACTOR": job.actor}
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    env=env, preexec_fn=_die_with_parent)
        except OSError as e:
            self._finish(job, FAILED, None, None, f"cannot start the job: {e}")
            started.set()
            return
        job.pid = proc.pid
        with self.lock:
            self.live[job.id] = (job, proc, self.live[job.id][2])
        self._save(job)
        started.set()
        logger.info(f"job {job.id} ({job.kind}) started: pgtape {' '.join(job.argv)}",
                    extra={"job": job.id, "pid": proc.pid})
        errors: list[str] = []
        reader = threading.Thread(target=self._read_log, args=(job, proc, errors), daemon=True)
        reader.start()
        assert proc.stdout is not None
        out = proc.stdout.read()
        code = proc.wait()
        reader.join()
        try:
            result = json.loads(out) if out.strip() else None
        except ValueError:
            result = out.decode(errors="replace")
        if self.stopping and code != 0:
            status = INTERRUPTED
        else:
            status = COMPLETED if code == 0 else FAILED
        error = errors[-1] if errors else (f"ended by signal {-code}" if code < 0 else None)
        if status == INTERRUPTED:
            error = "interrupted: the service stopped"
        self._finish(job, status, code, result, error)

    def _read_log(self, job: JobRecord, proc: subprocess.Popen[bytes], errors: list[str]) -> None:
        assert proc.stderr is not None
        last_save = time.monotonic()
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and "message" in doc:
                job.progress = Progress(str(doc["message"]), {
                    k: v for k, v in doc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
                if time.monotonic() - last_save >= SAVE_EVERY:
                    self._save(job)
                    last_save = time.monotonic()
            elif line.startswith("pgtape: "):  # the one error line (cli.main prints it as text)
                errors.append(line[len("pgtape: "):])

    def _finish(self, job: JobRecord, status: str, code: int | None, result: Any, error: str | None) -> None:
        job.status, job.exit_code, job.result, job.error, job.finished_at = status, code, result, error, _now()
        self._save(job)
        with self.lock:
            self.live.pop(job.id, None)
        logger.info(f"job {job.id} ({job.kind}) {status}" + (f": {error}" if error else ""),
                    extra={"job": job.id, "exit_code": code})
        try:
            self.after_job(job)
        except Exception:  # a hook's failure must not lose the job's record
            logger.exception(f"after job {job.id}")

    def _save(self, job: JobRecord) -> None:
        with self.lock:
            metadata.write(self.storage, f"{JOBS_KEY}/{job.id}.json", job)

    def running(self) -> int:
        with self.lock:
            return len(self.live)

    def stop_all(self) -> None:
        """SIGTERM every running job, SIGKILL what is left after STOP_GRACE; each is recorded interrupted."""
        self.stopping = True
        with self.lock:
            live = list(self.live.values())
        for _job, proc, _thread in live:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for _job, proc, thread in live:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive() and proc is not None:
                proc.kill()
                thread.join()
