"""No secrets anywhere: a realistic session with a password-protected role (SCRAM on a cluster of its
own), API tokens and a webhook URL with credentials, then every stdout and stderr, every service log
and API response, every webhook body and every file under the archive (audit trail, jobs, catalog;
compressed frames decompressed) is searched for each secret in each form it could take.

SECRETS is the one list of secret values; `forms` adds how each could be rendered (URL-encoded, ...).
Add a secret there (key material, say) and every output of the session is searched for it too.
"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import quote, quote_plus

import psycopg
import pytest
import zstandard

from conftest import ROOT, clean_env, current_lsn, run_sql, stop_process, wait_until
from testkit.cluster import EmbeddedPostgres, free_port

ROLE = "app"
PASSWORD = "Pw_S3cr3t/%&@:x y"  # needs quoting in a DSN and percent-encoding in a URL
WRONG_PASSWORD = "Wr0ng_Pw%9e"  # what a failed login carries: a secret all the same
FILE_TOKEN = "tok-file-5b0c2f8e71d94a"
ENV_TOKEN = "tok-env-9d1e33ab7c6042"
SSL_KEY_PASSWORD = "sslKeyPass-4e1f"  # sslpassword: libpq keeps it for an encrypted client key
HOOK_USER, HOOK_PASSWORD = "hookuser", "hookpw-7f3a2"
HOOK_PATH = "/services/T0/B0/hookpath8c2d41"  # a webhook URL's path is a secret too (Slack's are)
# The secrets of the session; the keyring's keys, made during the session, join them (key_secrets).
SECRETS = [PASSWORD, WRONG_PASSWORD, SSL_KEY_PASSWORD, FILE_TOKEN, ENV_TOKEN, HOOK_PASSWORD, "hookpath8c2d41"]
TABLES = "public.payments,public.orders"
HBA = ("host all postgres 127.0.0.1/32 trust", "host all all 127.0.0.1/32 scram-sha-256")


def forms(secret: str) -> set[str]:
    """Each way a secret could be written: as is, URL-encoded (a URI's userinfo, a query string),
    JSON-escaped, and its longest space-free part (a renderer that stops at a space)."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), json.dumps(secret)[1:-1],
            max(secret.split(" "), key=len)}


def find_secrets(text: bytes, keys: Sequence[bytes] = ()) -> list[str]:
    found = {f for s in SECRETS for f in forms(s) if f.encode() in text}
    return sorted(found | {f"key {form[:6]!r}..." for key in keys for form in key_forms(key) if form in text})


def key_forms(key: bytes) -> list[bytes]:
    """An encryption key as bytes, in base64 (the keyring's form) and in hex."""
    return [key, base64.b64encode(key), key.hex().encode(), key.hex().upper().encode()]


def keyring_keys(path: Path) -> list[bytes]:
    """The keys of a keyring file, read by the test itself: '<id> <base64 key>' lines, '#' comments."""
    return [base64.b64decode(line.split()[1]) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def decompressed(data: bytes) -> bytes:
    """The content of every zstd frame in `data` (tape segments and snapshot files compress theirs)."""
    out = []
    start = data.find(b"\x28\xb5\x2f\xfd")
    while start >= 0:
        try:
            out.append(zstandard.ZstdDecompressor().decompressobj().decompress(data[start:]))
        except zstandard.ZstdError:
            pass
        start = data.find(b"\x28\xb5\x2f\xfd", start + 1)
    return b"".join(out)


class Hooks(http.server.ThreadingHTTPServer):
    """A webhook receiver: every request's path, Authorization header and body."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str | None, bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.received.append((self.path, self.headers.get("Authorization"), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Session:
    """Every output of the session, kept to be searched."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.outputs: list[tuple[str, bytes]] = []

    def run(self, *args: str, env: dict[str, str] | None = None, expect: int | None = 0) -> str:
        r = subprocess.run([sys.executable, "-m", "pgtape", *args], capture_output=True, timeout=180,
                           env={**clean_env(), **(env or {})}, cwd=ROOT)
        label = "pgtape " + " ".join(a if len(a) < 40 else a[:37] + "..." for a in args)
        self.outputs.append((f"{label} (stdout)", r.stdout))
        self.outputs.append((f"{label} (stderr)", r.stderr))
        assert "Traceback" not in r.stderr.decode(errors="replace"), r.stderr.decode(errors="replace")
        if expect is not None:
            assert r.returncode == expect, f"{label}: exit {r.returncode}: {r.stderr.decode(errors='replace')}"
        return r.stdout.decode()

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"spawned-{len(self.outputs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pgtape", *args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**clean_env(), **(env or {})}, cwd=ROOT)
        return proc, log


class Api:
    def __init__(self, port: int, session: Session) -> None:
        self.base, self.session = f"http://127.0.0.1:{port}", session

    def call(self, method: str, path: str, body: Any = None, token: str | None = FILE_TOKEN) -> tuple[int, Any]:
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (ConnectionError, urllib.error.URLError):
            return 0, None
        self.session.outputs.append((f"{method} {path} -> {status}", raw))
        return status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode()

    def job(self, job_id: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            status, job = self.call("GET", f"/v1/jobs/{job_id}")
            assert status == 200, job
            return job if job["status"] != "running" else None
        return wait_until(f"job {job_id}", done, 120, 0.2)


@pytest.fixture
def server() -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tcp_hba=HBA) as s:
        yield s


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    try:
        yield h
    finally:
        h.shutdown()
        h.server_close()


def start_serve(session: Session, conf: Path, api: Api, *log_args: str) -> tuple[subprocess.Popen[bytes], Path]:
    proc, log = session.spawn(*log_args, "serve", "--config", str(conf), env={"PGTAPE_API_TOKEN": ENV_TOKEN})
    try:
        wait_until("the API", lambda: proc.poll() is not None or api.call("GET", "/healthz", token=None)[0] > 0, 60)
    except BaseException:
        stop_process(proc)
        raise
    assert proc.poll() is None, log.read_text()
    return proc, log


def test_no_secret_in_any_output_or_file(server: EmbeddedPostgres, hooks: Hooks, tmp_path: Path) -> None:
    server.psql("CREATE DATABASE shop")
    owner = server.dsn("shop")
    run_sql(owner, f"CREATE ROLE {ROLE} LOGIN REPLICATION SUPERUSER PASSWORD '{PASSWORD}'",
            "CREATE TABLE payments (id int PRIMARY KEY, amount numeric(12,2), note text)",
            "CREATE TABLE orders (id int PRIMARY KEY, item text)",
            "INSERT INTO payments SELECT g, g * 1.5, 'p' || g FROM generate_series(1, 100) g",
            "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 20) g")
    kv = (f"host=127.0.0.1 port={server.port} dbname=shop user={ROLE} password='{PASSWORD}' "
          f"sslpassword={SSL_KEY_PASSWORD}")
    url = f"postgresql://{ROLE}:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}/shop?application_name=t"
    wrong = kv.replace(PASSWORD, WRONG_PASSWORD)
    wrong_url = f"postgresql://{ROLE}:{quote(WRONG_PASSWORD, safe='')}@127.0.0.1:{server.port}/shop"
    with psycopg.connect(url) as c:  # the URL form is right, and the password is really needed:
        assert c.execute("SELECT current_user").fetchone() == (ROLE,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong).close()

    archive, out = tmp_path / "archive", tmp_path / "out"
    secret_dir = tmp_path / "etc"  # the configuration and the token file hold secrets by design
    secret_dir.mkdir()
    s = Session(tmp_path)
    base = ["--archive", str(archive), "--tables", TABLES]
    debug, as_json = ["--log-level", "debug"], ["--log-level", "debug", "--log-format", "json"]

    def work(step: int) -> None:
        run_sql(owner, f"UPDATE payments SET amount = amount + {step} WHERE id % 5 = {step % 5}",
                f"INSERT INTO orders VALUES ({100 + step}, 'new {step}')", f"DELETE FROM payments WHERE id = {step}")

    s.run("check", "--dsn", kv, *base)
    s.run(*debug, "check", "--json", "--dsn", url, *base)
    s.run(*as_json, "init", "--dsn", url, *base)
    work(1)
    s.run(*debug, "capture", "--dsn", kv, *base, "--until-lsn", current_lsn(owner))
    s.run(*as_json, "snapshot", "--json", *base, env={"PGTAPE_DSN": url})
    s.run(*debug, "mark", "before-2", "--dsn", kv, "--archive", str(archive))
    work(2)
    s.run(*as_json, "capture", "--dsn", url, *base, "--until-lsn", current_lsn(owner))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # within the recoverable window
    s.run("status", "--dsn", kv, *base)
    s.run(*debug, "status", "--json", *base, env={"PGTAPE_DSN": url})
    s.run(*debug, "replay", "--latest", "--schema", "rec", "--dsn", kv, *base)
    s.run(*as_json, "replay", "--target-name", "before-2", "--dry-run", "--json", "--dsn", url, *base)
    s.run(*debug, "replay", "--latest", "--output", str(out / "csv"), "--dsn", kv, *base)
    s.run("replay", "--latest", "--output", str(out / "jsonl"), "--format", "jsonl", "--dsn", kv, *base)
    s.run(*debug, "replay", "--latest", "--schema", "rec_into", "--into", url, "--dsn", kv, *base)
    s.run(*as_json, "replay", "--target-name", "before-2", "--in-place", "--yes", "--tables", "public.orders",
          "--dsn", url, "--archive", str(archive))
    s.run(*debug, "diff", "--schema", "rec", "--dsn", kv, *base, expect=1)  # in place went back: orders differ
    s.run(*debug, "verify", "--dsn", kv, *base)
    s.run(*as_json, "verify", "--json", *base, env={"PGTAPE_DSN": url})
    capture, capture_log = s.spawn(*as_json, "capture", "--dsn", url, *base)
    try:
        s.run(*debug, "verify", "--live", "--dsn", kv, *base, "--timeout", "60")
    finally:
        stop_process(capture)  # SIGTERM: capture stops cleanly
    s.outputs.append(("capture (stopped)", capture_log.read_bytes()))
    s.run(*debug, "log", "--table", "public.payments", "--json", "--archive", str(archive))
    s.run("log", "--table", "public.orders", "--archive", str(archive))
    s.run("audit", "--archive", str(archive))
    s.run("audit", "--json", "--archive", str(archive))
    s.run("snapshots", "--json", "--archive", str(archive))
    s.run(*debug, "prune", "--dry-run", "--archive", str(archive), "--dsn", kv)
    s.run(*debug, "sql", "install", "--dsn", kv, "--sql-dsn", url)

    # Failures: wrong database, wrong password (both DSN forms), an unreachable server, a bad --into.
    nowhere = f"host=127.0.0.1 port={free_port()} dbname=shop user={ROLE} password='{PASSWORD}' connect_timeout=3"
    for dsn in (kv.replace("dbname=shop", "dbname=nope"), wrong, wrong_url, nowhere,
                url.replace("/shop", "/nope")):
        s.run(*debug, "replay", "--latest", "--schema", "r_fail", "--dsn", dsn, *base, expect=3)
        s.run(*as_json, "replay", "--latest", "--dry-run", "--dsn", dsn, *base, expect=3)
    s.run(*debug, "replay", "--latest", "--schema", "r_fail", "--into", wrong_url, "--dsn", kv, *base, expect=3)
    s.run(*debug, "check", "--dsn", wrong, *base, expect=1)
    s.run(*as_json, "check", "--json", "--dsn", wrong_url, *base, expect=1)
    s.run(*debug, "status", "--dsn", wrong, *base, expect=1)
    s.run(*as_json, "status", "--json", "--dsn", nowhere, *base, expect=1)
    s.run(*debug, "mark", "wrong", "--dsn", wrong_url, "--archive", str(archive), expect=3)
    s.run(*debug, "snapshot", "--dsn", wrong, *base, expect=3)
    s.run(*as_json, "capture", "--dsn", wrong_url, *base, "--until-lsn", current_lsn(owner), expect=3)
    s.run(*debug, "verify", "--live", "--dsn", wrong, *base, expect=3)
    s.run(*debug, "diff", "--schema", "rec", "--dsn", wrong_url, *base, expect=3)
    s.run(*debug, "sql", "install", "--dsn", kv, "--sql-dsn", wrong, expect=3)
    unparsable = f"host=127.0.0.1 password='{WRONG_PASSWORD}"
    s.run("check", "--dsn", unparsable, *base, expect=1)
    s.run(*debug, "replay", "--latest", "--dsn", unparsable, *base, expect=3)

    # Encryption at rest: a keyring, a new generation encrypted with it, a rotation; the service below
    # runs with the keyring too. Its keys are secrets like the rest.
    keyring = secret_dir / "keyring"
    s.run(*debug, "key", "generate", str(keyring))
    with_key = {"PGTAPE_KEY_FILE": str(keyring)}
    s.run(*debug, "replay", "--latest", "--dry-run", "--dsn", kv, *base, env=with_key)  # a key it does not need
    s.run(*as_json, "init", "--restart", "--json", "--dsn", url, *base, env=with_key)
    time.sleep(1)  # so that `when` below, whole seconds, falls after the new generation's base
    work(3)
    s.run(*debug, "capture", "--dsn", kv, *base, "--until-lsn", current_lsn(owner), env=with_key)
    s.run(*debug, "key", "rotate", str(keyring))
    s.run("key", "list", "--json", str(keyring))
    # In the encrypted generation's window: after its base (a second after init, in whole seconds) and
    # before work(4)'s commit, the tape's end until the service's capture records more.
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    work(4)
    s.run(*as_json, "capture", "--dsn", url, *base, "--until-lsn", current_lsn(owner), env=with_key)
    s.run(*debug, "snapshot", "--dsn", kv, *base, env=with_key)
    s.run(*debug, "replay", "--latest", "--schema", "rec_enc", "--dsn", kv, *base, env=with_key)
    s.run(*debug, "diff", "--schema", "rec_enc", "--dsn", kv, *base, env=with_key)
    s.run(*as_json, "verify", "--json", *base, env={**with_key, "PGTAPE_DSN": url})
    s.run(*debug, "log", "--table", "public.payments", "--key", "id=7", "--json", "--archive", str(archive),
          env=with_key)
    s.run(*debug, "status", "--json", *base, env={**with_key, "PGTAPE_DSN": url})
    s.run(*debug, "prune", "--dry-run", "--json", "--archive", str(archive), "--dsn", kv, env=with_key)
    s.run(*debug, "replay", "--latest", "--dry-run", "--dsn", kv, *base, expect=3)  # without its key
    keys = keyring_keys(keyring)
    assert len(keys) == 2 and keys[0] != keys[1]

    # The service: a token file, an environment token, a webhook URL with credentials in it.
    tokens = secret_dir / "tokens"
    tokens.write_text(f"ops {FILE_TOKEN}\n")
    tokens.chmod(0o600)
    hook_url = f"http://{HOOK_USER}:{HOOK_PASSWORD}@127.0.0.1:{hooks.server_port}{HOOK_PATH}"
    port = free_port()
    conf = secret_dir / "pgtape.toml"
    conf.write_text(f'[source]\ndsn = "{kv}"\ntables = ["public.payments", "public.orders"]\n'
                    f'[archive]\npath = "{archive}"\nkey_file = "{keyring}"\n'
                    f'[api]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{tokens}"\n'
                    f'[notify]\nwebhook_urls = ["{hook_url}"]\ndisconnected_after = "1s"\n')
    api = Api(port, s)
    serve, serve_log = start_serve(s, conf, api, *as_json)
    try:
        wait_until("capture in the service", lambda: api.call("GET", "/healthz", token=None)[0] == 200, 60, 0.3)
        assert api.call("GET", "/v1/status")[0] == 200
        assert api.call("GET", "/v1/status", token=ENV_TOKEN)[0] == 200
        assert api.call("GET", "/v1/status", token=None)[0] == 401
        assert api.call("GET", "/v1/status", token=FILE_TOKEN[:-1])[0] == 401
        assert api.call("GET", "/v1/backups", token=f"{ENV_TOKEN} {FILE_TOKEN}")[0] == 401
        assert api.call("GET", "/metrics")[0] == 200
        assert api.call("GET", "/v1/openapi.json")[0] == 200
        status, doc = api.call("POST", "/v1/backups", {"backup_type": "full"})
        assert status == 202, doc
        assert (job := api.job(doc["job_id"]))["status"] == "completed", job
        assert api.call("GET", f"/v1/backups/{doc['id']}")[0] == 200
        assert api.call("GET", "/v1/backups")[0] == 200
        at_when = {"recovery_type": "point_in_time", "target_time": when}
        status, doc = api.call("POST", "/v1/recoveries", {**at_when, "tables": ["payments"], "dry_run": True})
        assert status == 202, doc
        assert (job := api.job(doc["id"]))["status"] == "completed", json.dumps(job)
        status, doc = api.call("POST", "/v1/recoveries", {"recovery_type": "data_verification",
                                                          "tables": ["payments"]})
        assert status == 202, doc
        assert (job := api.job(doc["id"]))["status"] == "completed", json.dumps(job)
        # A recovery into a schema that exists and is not empty fails: its error travels to the job,
        # the recovery's record and the webhook.
        status, doc = api.call("POST", "/v1/recoveries", {**at_when, "dry_run": False, "into": {"schema": "rec"}})
        assert status == 202, doc
        assert api.job(doc["id"])["status"] == "failed"
        assert api.call("GET", f"/v1/recoveries/{doc['id']}")[0] == 200
        status, doc = api.call("POST", "/v1/recoveries", {**at_when, "dry_run": False, "into": {"schema": "api_r"}})
        assert status == 202, doc
        assert (job := api.job(doc["id"]))["status"] == "completed", json.dumps(job)
        status, doc = api.call("POST", "/v1/recovery-points", {"name": "api-point", "description": "x"})
        assert status == 201, doc
        assert api.call("POST", "/v1/recovery-points", {"name": "api-point"})[0] == 409
        api.call("GET", "/v1/jobs")
        wait_until("a webhook", lambda: hooks.received, 30, 0.2)
    finally:
        stop_process(serve)
    s.outputs.append(("serve", serve_log.read_bytes()))

    # The service with a wrong password: capture fails and is retried; /healthz says why.
    conf.write_text(conf.read_text().replace(PASSWORD, WRONG_PASSWORD))
    serve, serve_log = start_serve(s, conf, api, *debug)
    try:
        reason = wait_until("/healthz to say why", lambda: (lambda r: r[0] == 503 and r[1])(
            api.call("GET", "/healthz", token=None)), 60, 0.3)
        assert "password authentication failed" in json.dumps(reason), reason
        api.call("GET", "/v1/status")
        wait_until("the capture_disconnected webhook", lambda: any(
            b'"capture_disconnected"' in body for _, _, body in hooks.received), 60, 0.3)
    finally:
        stop_process(serve)
    s.outputs.append(("serve with a wrong password", serve_log.read_bytes()))

    # The webhooks arrived, with their credentials as HTTP authentication (which proves the URL's
    # secrets went through the code), at the secret path.
    basic = "Basic " + base64.b64encode(f"{HOOK_USER}:{HOOK_PASSWORD}".encode()).decode()
    assert hooks.received and all(p == HOOK_PATH and auth == basic for p, auth, _ in hooks.received), \
        [(p, a) for p, a, _ in hooks.received]
    s.outputs.extend((f"webhook {n}", body) for n, (_, _, body) in enumerate(hooks.received))

    # Now search: outputs, API answers, webhook bodies, every file of the archive and of the output.
    leaks = [f"{label}: {found}" for label, text in s.outputs if (found := find_secrets(text, keys))]
    files = [p for d in (archive, out) for p in sorted(d.rglob("*")) if p.is_file()]
    assert any(p.parent.name == "jobs" for p in files) and any("audit" in p.parts for p in files), files
    for path in files:
        data = path.read_bytes()
        if found := find_secrets(data + b"\n" + decompressed(data), keys):
            leaks.append(f"{path.relative_to(tmp_path)}: {found}")
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
    assert len(s.outputs) > 100 and len(files) > 20, (len(s.outputs), len(files))


def test_the_search_finds_a_leak(tmp_path: Path) -> None:
    """The search itself works: every form of every secret, in plain text and in a zstd frame."""
    for secret in SECRETS:
        for form in forms(secret):
            assert find_secrets(b"x " + form.encode() + b" y"), form
            frame = b"header" + zstandard.ZstdCompressor().compress(b"row\t" + form.encode()) + b"footer"
            assert find_secrets(decompressed(frame)), form
    assert not find_secrets(b"password=*** postgresql://app@127.0.0.1/shop")
    key = bytes(range(32))
    for key_form in key_forms(key):
        assert find_secrets(b"x " + key_form + b" y", [key]), key_form
    assert not find_secrets(b"key 0123456789abcdef", [key])

