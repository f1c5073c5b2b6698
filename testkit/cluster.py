"""A throwaway PostgreSQL cluster for tests, the demo and benchmarks.

It lives in a private directory, listens on a free loopback port and a private socket directory,
runs with wal_level=logical, lets wal2json decode (output_plugin_libraries, where the server has
that parameter), and never touches the system's own clusters. As root, initdb and the server run
as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from pgtape.errors import PgtapeError

SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",  # the cluster is throwaway; pgtape's own fsyncs are what tests exercise
    "full_page_writes": "on",
    "shared_buffers": "128MB",
    "max_wal_size": "1GB",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "wal_sender_timeout": "60s",
}


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/N/bin, or $PGTAPE_PG_BINDIR."""
    env = os.environ.get("PGTAPE_PG_BINDIR")
    candidates = [Path(env)] if env else sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True)
    for c in candidates:
        if (c / "postgres").exists() and (c / "initdb").exists():
            return c
    raise PgtapeError("PostgreSQL server binaries not found: install postgresql-15 or set PGTAPE_PG_BINDIR")


def server_parameter_defaults(bindir: Path) -> dict[str, str]:
    """Every parameter this server binary knows, with its built-in default (`postgres --describe-config`)."""
    r = subprocess.run([str(bindir / "postgres"), "--describe-config"], capture_output=True, text=True)
    if r.returncode != 0:
        raise PgtapeError(f"{bindir / 'postgres'} --describe-config failed: {r.stderr.strip()}")
    # Tab-separated: name, context, group, type, default, min, max, descriptions.
    return {f[0]: f[4] for f in (line.split("\t") for line in r.stdout.splitlines()) if len(f) > 4}


def allow_output_plugins(defaults: dict[str, str], plugins: Sequence[str]) -> dict[str, str]:
    """The setting that lets `plugins` decode, on servers (15.19+) that restrict output plugins."""
    if "output_plugin_libraries" not in defaults or not plugins:
        return {}  # an older server refuses to start with a parameter it does not know
    names = [n for n in defaults["output_plugin_libraries"].replace(" ", "").split(",") if n]
    return {"output_plugin_libraries": "'" + ", ".join([*names, *(p for p in plugins if p not in names)]) + "'"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# pg_hba.conf lines for TCP connections (unix sockets are always trusted); a test that needs TLS
# passes hostssl lines instead.
TCP_HBA = ("host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust")


class EmbeddedPostgres:
    """`with EmbeddedPostgres() as pg: psycopg.connect(pg.dsn())`."""

    def __init__(self, base_dir: str | Path | None = None, settings: dict[str, str] | None = None,
                 superuser: str = "postgres", output_plugins: Sequence[str] = ("wal2json",),
                 tcp_hba: Sequence[str] = TCP_HBA) -> None:
        self.bindir = find_bindir()
        self._own_dir = base_dir is None
        self.root = Path(base_dir or tempfile.mkdtemp(prefix="pgtape-pg-"))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self.settings = {**SERVER_SETTINGS, **allow_output_plugins(server_parameter_defaults(self.bindir),
                                                                   output_plugins), **(settings or {})}
        self.superuser = superuser
        self.tcp_hba = tcp_hba
        self._run_as = "postgres" if os.geteuid() == 0 else None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> EmbeddedPostgres:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        return ["runuser", "-u", self._run_as, "--", *cmd] if self._run_as else cmd

    def _chown(self, path: Path) -> None:
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._chown(self.root)
        os.chmod(self.root, 0o755)
        self.sockdir.mkdir(exist_ok=True)
        self._chown(self.sockdir)
        r = subprocess.run(self._cmd("initdb", "-D", str(self.datadir), "-U", self.superuser, "--auth=trust",
                                     "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"),
                           capture_output=True, text=True)
        if r.returncode != 0:
            who = f" (it runs as user {self._run_as}: every parent directory must be searchable by it)" \
                if self._run_as else ""
            raise PgtapeError(f"initdb failed in {self.datadir}{who}: {r.stderr.strip()}")
        with open(self.datadir / "postgresql.conf", "a") as f:
            for k, v in self.settings.items():
                f.write(f"{k} = {v}\n")
            f.write(f"port = {self.port}\nunix_socket_directories = '{self.sockdir}'\n")
        with open(self.datadir / "pg_hba.conf", "w") as f:
            f.write("local all all trust\nlocal replication all trust\n")
            f.writelines(f"{line}\n" for line in self.tcp_hba)

    def start(self) -> None:
        if not self.datadir.exists():
            self.init()
        self.logfile.touch()
        self._chown(self.logfile)
        r = subprocess.run(self._cmd("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60",
                                     "start"), capture_output=True, text=True)
        if r.returncode != 0:
            tail = self.logfile.read_text(errors="replace")[-2000:]
            raise PgtapeError(f"embedded PostgreSQL did not start: {r.stderr.strip()} {tail}")

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run(self._cmd("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"),
                           capture_output=True, text=True)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server (immediately) and remove its directory."""
        self.stop("immediate")
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- connecting ------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or self.superuser}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        r = subprocess.run([str(self.bindir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d",
                            self.dsn(dbname), "-c", sql], capture_output=True, text=True)
        if r.returncode != 0:
            raise PgtapeError(f"psql failed: {r.stderr.strip()}")
        return r.stdout.strip()
