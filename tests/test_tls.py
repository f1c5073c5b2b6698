"""TLS: `sslmode=verify-full` with `sslrootcert` for the replication and the data connections alike.

A cluster of its own with ssl = on, a certificate from a throwaway CA, and a pg_hba.conf that
accepts TCP connections only over TLS (hostssl). Every command of the flow runs with a verify-full
DSN; the server's own log (log_connections) and pg_stat_ssl show that each session used TLS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg

from conftest import (capture_to_now, one_line_error, run_pgtape, run_sql, scalar, spawn_pgtape, stop_process,
                      wait_until)
from testkit.cluster import EmbeddedPostgres

TABLE = "public.payments"

# Certificates come from the openssl CLI: the cryptography package is not a dependency (yet), and
# the CLI is what an operator would use too.
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
"""


def _openssl(*args: str | Path) -> None:
    r = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"openssl {' '.join(map(str, args))}: {r.stderr}"


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cnf = directory / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF)
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-new", "-config", cnf, "-extensions", "ca", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt, "-days", "2",
             "-subj", f"/CN=pgtape test {name}")
    return crt, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for localhost, 127.0.0.1 and ::1 signed by `ca`: (certificate, key)."""
    cnf, csr = directory / "openssl.cnf", directory / "server.csr"
    crt, key = directory / "server.crt", directory / "server.key"
    _openssl("req", "-new", "-config", cnf, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", "1", "-days", "2",
             "-extfile", cnf, "-extensions", "server", "-out", crt)
    return crt, key


def test_verify_full_for_replication_and_data_connections(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    other_ca = make_ca(tmp_path, "other-ca")
    crt, key = make_server_cert(tmp_path, ca)
    server = EmbeddedPostgres(
        settings={"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'",
                  "log_connections": "on"},
        tcp_hba=["hostssl all all 127.0.0.1/32 trust", "hostssl all all ::1/128 trust"])
    try:
        server.init()
        # Relative names resolve against the data directory. The server refuses a key that others can
        # read; as root, testkit runs it as user postgres, so that user must own the key.
        shutil.copy(crt, server.datadir / "server.crt")
        shutil.copy(key, server.datadir / "server.key")
        os.chmod(server.datadir / "server.key", 0o600)
        if os.geteuid() == 0:
            for name in ("server.crt", "server.key"):
                shutil.chown(server.datadir / name, "postgres", "postgres")
        server.start()
        _flow(server, tmp_path, ca[0], other_ca[0])
    finally:
        server.destroy()


def _flow(server: EmbeddedPostgres, tmp_path: Path, ca: Path, other_ca: Path) -> None:
    base = f"host=localhost port={server.port} dbname=postgres user=postgres"
    dsn = f"{base} sslmode=verify-full sslrootcert={ca}"
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", TABLE]
    run_sql(dsn, "CREATE TABLE payments (id int PRIMARY KEY, amount numeric(12,2))",
            "INSERT INTO payments SELECT g, g * 1.5 FROM generate_series(1, 50) g")

    run_pgtape("init", *cli, check=True)
    run_sql(dsn, "UPDATE payments SET amount = 0 WHERE id <= 10", "DELETE FROM payments WHERE id > 45")
    capture_to_now(dsn, archive, tables=TABLE)
    run_pgtape("snapshot", *cli, check=True)  # its exported-snapshot slot is made on a replication connection
    run_sql(dsn, "INSERT INTO payments VALUES (100, 7)")
    capture_to_now(dsn, archive, tables=TABLE)
    run_pgtape("replay", *cli, "--latest", "--schema", "r", check=True)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.pgconn.ssl_in_use
        assert scalar(c.execute("SELECT count(*) FROM r.payments")) == 46
        assert scalar(c.execute("SELECT count(*) FROM (SELECT * FROM r.payments EXCEPT "
                                "SELECT * FROM public.payments) d")) == 0

    # While capture runs, its WAL sender's session is encrypted; verify --live compares through TLS too.
    capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture.log")
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            walsender_ssl = wait_until("capture's WAL sender", lambda: c.execute(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                "WHERE a.backend_type = 'walsender' AND a.application_name LIKE 'pgtape%'").fetchall(), 30)
        assert walsender_ssl == [(True,)]
        r = run_pgtape("verify", "--live", *cli, "--timeout", "30")
    finally:
        stop_process(capture)
    assert r.returncode == 0 and f"{TABLE}: equal" in r.stdout, r.stdout + r.stderr

    # check sees nothing to warn about: localhost is local, and this DSN requires TLS anyway.
    for check_dsn in (dsn, f"{base} sslmode=prefer"):
        r = run_pgtape("check", "--json", "--dsn", check_dsn, "--archive", str(archive), "--tables", TABLE)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "unencrypted_connection" not in [w["code"] for w in json.loads(r.stdout)["warnings"]], r.stdout

    # Every session the server accepted (pgtape's and this test's), replication ones included, was TLS.
    log = server.logfile.read_text(errors="replace")
    authorized = re.findall(r"(?:replication )?connection authorized: .*", log)
    assert any(line.startswith("replication ") for line in authorized), log[-3000:]
    assert authorized and all("SSL enabled" in line for line in authorized), log[-3000:]

    # A server certificate from another CA fails verification: one line, naming the problem.
    r = run_pgtape("snapshot", "--dsn", f"{base} sslmode=verify-full sslrootcert={other_ca}",
                   "--archive", str(archive), "--tables", TABLE)
    one_line_error(r, 3, "certificate verify failed")
    # Without TLS the server refuses the connection (hostssl lines only).
    r = run_pgtape("snapshot", "--dsn", f"{base} sslmode=disable", "--archive", str(archive), "--tables", TABLE)
    one_line_error(r, 3, "no pg_hba.conf entry", "no encryption")
