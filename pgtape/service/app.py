"""The HTTP API as a WSGI app: routing, bearer-token auth, JSON in and out, errors as one line.

Every route is in ROUTES (the OpenAPI document, pgtape/service/openapi.py, describes each one; a
unit test compares the two). Work that takes long runs as a job (pgtape/service/jobs.py); reads of
the archive (the snapshot catalog, job records) are answered here directly.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import msgspec

from pgtape import keys
from pgtape.config import Config, parse_schema
from pgtape.errors import PgtapeError, UsageError
from pgtape.log import utc_time
from pgtape.names import resolve, split_table
from pgtape.service import auth
from pgtape.service.jobs import JobManager, TooManyJobs
from pgtape.snapshots import catalog
from pgtape.tape import audit
from pgtape.tape.archive import Archive
from pgtape.timefmt import now_us, parse_time

logger = logging.getLogger(__name__)

# (method, path): {name} matches one path segment.
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/status"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/backups"),
    ("GET", "/v1/backups"),
    ("GET", "/v1/backups/{id}"),
    ("POST", "/v1/recoveries"),
    ("GET", "/v1/recoveries"),
    ("GET", "/v1/recoveries/{id}"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/recovery-points"),
)
PUBLIC = {("GET", "/healthz")}
# Probes a monitoring system sends every few seconds: not audited (they change nothing and would
# bury every other line of the audit trail).
UNAUDITED = {"/healthz", "/metrics"}
SUBPROCESS_TIMEOUT = 120.0  # seconds for the synchronous command (mark)

_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable"}
MAX_BODY = 1 << 20


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


# -- request bodies: unknown fields and wrong types are refused by msgspec -------------------------

class BackupRequest(msgspec.Struct, forbid_unknown_fields=True):
    backup_type: str | None = None  # payments, orders, tickets (a captured table's bare name) or full
    tables: list[str] | None = None


class IntoSchema(msgspec.Struct, forbid_unknown_fields=True):
    schema: str


class RecoveryRequest(msgspec.Struct, forbid_unknown_fields=True):
    recovery_type: str  # point_in_time, backup_restore, data_verification
    target_time: str | None = None
    backup_id: str | None = None
    tables: list[str] | None = None
    dry_run: bool = False
    into: IntoSchema | str | None = None  # {"schema": NAME} or "in_place"; default: a new recovery schema


class RecoveryPointRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    description: str | None = None
    at: str | None = None  # an earlier time; default now


class BackupRecord(msgspec.Struct):
    """A catalog record in the old guide's field names."""
    id: str
    backup_type: str  # full, a table's bare name, or "tables"
    status: str  # running, completed, failed
    tables: list[str]
    record_count: int
    file_size_bytes: int
    created_at: str
    expires_at: str | None
    completed_at: str | None
    error_message: str | None


def iso(us: int | None) -> str | None:
    return None if us is None else utc_time(us / 1e6)


@dataclass
class Response:
    status: int
    body: Any  # bytes are sent as they are, with content_type; anything else as JSON
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


class Observed(Protocol):
    """What the service last saw of itself (pgtape/service/monitor.py)."""

    def health(self) -> str | None: ...  # why it is not healthy; None: it is

    def status_document(self) -> Any: ...  # what `pgtape status --json` prints; None: no status yet

    def render_metrics(self) -> tuple[bytes, str]: ...  # body, content type


class Api:
    def __init__(self, config: Config, tokens: dict[str, str], jobs: JobManager, env: dict[str, str],
                 observed: Observed, openapi: dict[str, Any]) -> None:
        self.config = config
        self.tokens = tokens
        self.jobs = jobs
        self.env = env  # what a pgtape child needs to see the service's configuration
        self.observed = observed
        self.openapi = openapi  # pgtape/service/openapi.py (which describes this module's routes)
        self.archive = Archive(config.require_archive(), keys.configured(config))

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
        actor = "-"
        try:
            route, params = self.route(method, path)
            if route not in PUBLIC and not (route == ("GET", "/metrics") and self.config.api_public_metrics):
                name = auth.token_name(self.tokens, environ.get("HTTP_AUTHORIZATION"))
                if name is None:
                    raise HttpError(401, "missing or wrong bearer token: send 'Authorization: Bearer TOKEN'",
                                    (("WWW-Authenticate", 'Bearer realm="pgtape"'),))
                actor = f"api:{name}"
            response = self.dispatch(route, params, environ, actor)
        except HttpError as e:
            response = Response(e.status, {"error": str(e)}, e.headers)
        except TooManyJobs as e:
            response = Response(429, {"error": str(e)})
        except UsageError as e:
            response = Response(400, {"error": str(e)})
        except PgtapeError as e:
            response = Response(500, {"error": str(e)})
        except Exception as e:  # a bug: one line to the client, the traceback to the log
            logger.exception(f"{method} {path}")
            response = Response(500, {"error": f"internal error: {type(e).__name__}: {e}"})
        self._after_request(actor, method, path, response.status)
        body = response.body if isinstance(response.body, bytes) else msgspec.json.encode(response.body)
        ctype = response.content_type if isinstance(response.body, bytes) else "application/json"
        start_response(f"{response.status} {_REASONS.get(response.status, '')}",
                       [("Content-Type", ctype), ("Content-Length", str(len(body))), *response.headers])
        return [body]

    def _after_request(self, actor: str, method: str, path: str, status: int) -> None:
        """Every API call but the probes goes into the audit trail, with the token's name (or
        "unauthenticated" for a refused one); the jobs it starts write their own lines."""
        logger.debug(f"{actor} {method} {path} -> {status}", extra={"actor": actor, "status": status})
        if path.removesuffix("/") in UNAUDITED:
            return
        try:
            audit.append(self.archive, actor if actor != "-" else "unauthenticated", f"{method} {path}", {},
                         {"http_status": status})
        except Exception as e:  # the answer is given already; the log says what the trail lacks
            logger.warning(f"audit trail: the line for {method} {path} ({actor}) was not written: {e}")

    @staticmethod
    def route(method: str, path: str) -> tuple[tuple[str, str], dict[str, str]]:
        parts = path.removesuffix("/").split("/") if path != "/" else [""]
        allowed = []
        for m, pattern in ROUTES:
            want = pattern.split("/")
            if len(want) != len(parts):
                continue
            params = {w[1:-1]: p for w, p in zip(want, parts) if w.startswith("{")}
            if all(w == p or (w.startswith("{") and p) for w, p in zip(want, parts)):
                if m == method:
                    return (m, pattern), params
                allowed.append(m)
        if allowed:
            raise HttpError(405, f"{method} is not allowed on {path}: use {', '.join(sorted(allowed))}",
                            (("Allow", ", ".join(sorted(allowed))),))
        raise HttpError(404, f"no such endpoint: {path} (see GET /v1/openapi.json)")

    def dispatch(self, route: tuple[str, str], params: dict[str, str], environ: dict[str, Any],
                 actor: str) -> Response:
        method, pattern = route
        if method == "POST":
            ctype = environ.get("CONTENT_TYPE", "")
            if ctype.split(";")[0].strip() != "application/json":
                raise HttpError(400, "send the body as JSON with Content-Type: application/json")
            body = self._body(environ)
            if pattern == "/v1/backups":
                return self.post_backup(body, actor)
            if pattern == "/v1/recoveries":
                return self.post_recovery(body, actor)
            return self.post_recovery_point(body, actor)
        if pattern == "/healthz":
            return self.healthz()
        if pattern == "/metrics":
            text, ctype = self.observed.render_metrics()
            return Response(200, text, content_type=ctype)
        if pattern == "/v1/status":
            return self.status()
        if pattern == "/v1/openapi.json":
            return Response(200, self.openapi)
        if pattern == "/v1/backups":
            return Response(200, self.backups())
        if pattern == "/v1/backups/{id}":
            for b in self.backups():
                if b.id == params["id"]:
                    return Response(200, b)
            pending = self._pending_backup(params["id"])
            if pending is not None:
                return Response(200, pending)
            raise HttpError(404, f"no backup {params['id']!r} (GET /v1/backups lists them)")
        kinds = ("recovery", "verification") if pattern.startswith("/v1/recoveries") else None
        if pattern.endswith("{id}"):
            job = self.jobs.get(params["id"])
            if job is None or (kinds and job.kind not in kinds):
                raise HttpError(404, f"no {'recovery' if kinds else 'job'} {params['id']!r}")
            return Response(200, job)
        return Response(200, [j for j in self.jobs.all() if not kinds or j.kind in kinds])

    @staticmethod
    def _body(environ: dict[str, Any]) -> bytes:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length > MAX_BODY:
            raise HttpError(413, f"request body over {MAX_BODY} bytes")
        return bytes(environ["wsgi.input"].read(length))

    # -- endpoints -------------------------------------------------------------------------
    def _captured(self) -> list[str]:
        return self.archive.generation(self.archive.identity().generation).tables

    def post_backup(self, body: bytes, actor: str) -> Response:
        req = _decode(body, BackupRequest)
        captured = self._captured()
        if (req.backup_type is None) == (req.tables is None):
            raise HttpError(400, 'give either "backup_type" (a captured table\'s name or "full") or "tables"')
        if req.backup_type == "full":
            tables = captured
        elif req.backup_type is not None:
            tables = [t for t in captured if split_table(t)[1] == req.backup_type]
            if len(tables) != 1:
                raise HttpError(400, f"unknown backup_type {req.backup_type!r}: use full or a captured table's name "
                                     f"({', '.join(split_table(t)[1] for t in captured)})")
        else:
            tables = _tables(req.tables, captured)
        backup_id = catalog.new_id()  # named now, so the answer can say which backup GET will show
        job = self.jobs.start("backup", msgspec.to_builtins(req),
                              ["snapshot", "--tables", ",".join(tables), "--id", backup_id, "--json"], actor)
        return Response(202, {"id": backup_id, "job_id": job.id})

    def post_recovery(self, body: bytes, actor: str) -> Response:
        req = _decode(body, RecoveryRequest)
        captured = self._captured()
        args: list[str]
        if req.recovery_type == "data_verification":
            _refuse(req, "target_time", "into")
            if req.dry_run:
                raise HttpError(400, "data_verification changes nothing: dry_run does not apply")
            if req.backup_id is not None:
                _refuse(req, "tables")
                args = ["verify", "--snapshot", self._backup(req.backup_id), "--json"]
            else:
                args = ["verify", "--live", *_tables_args(req.tables, captured), "--json"]
            kind = "verification"
        elif req.recovery_type in ("point_in_time", "backup_restore"):
            if req.recovery_type == "point_in_time":
                _refuse(req, "backup_id")
                if req.target_time is None:
                    raise HttpError(400, 'point_in_time needs "target_time" (ISO 8601 with a zone)')
                t = parse_time(req.target_time, "target_time")
                if t > now_us():
                    raise HttpError(400, f"target_time {req.target_time} is in the future")
                target = ["--target-time", req.target_time]
            else:
                _refuse(req, "target_time")
                if req.backup_id is None:
                    raise HttpError(400, 'backup_restore needs "backup_id" (GET /v1/backups lists them)')
                target = ["--snapshot", self._backup(req.backup_id)]
            args = ["replay", *target, *_tables_args(req.tables, captured), *_into(req), "--json"]
            kind = "recovery"
        else:
            raise HttpError(400, f"unknown recovery_type {req.recovery_type!r}: use point_in_time, backup_restore "
                                 "or data_verification")
        job = self.jobs.start(kind, msgspec.to_builtins(req), args, actor)
        return Response(202, {"id": job.id})

    def _backup(self, backup_id: str) -> str:
        for r in catalog.load_all(self.archive):
            if r.id == backup_id:
                if r.status != catalog.COMPLETED:
                    raise HttpError(400, f"backup {backup_id} is {r.status}: only a completed one can be used")
                return backup_id
        raise HttpError(400, f"no backup {backup_id!r} (GET /v1/backups lists them)")

    def post_recovery_point(self, body: bytes, actor: str) -> Response:
        req = _decode(body, RecoveryPointRequest)
        args = ["mark", "--json"]
        if req.description is not None:
            args.append(f"--description={req.description}")
        if req.at is not None:
            if parse_time(req.at, "at") > now_us():
                raise HttpError(400, f"at {req.at} is in the future: a recovery point names a past instant")
            args.append(f"--at={req.at}")
        code, doc, error = self._pgtape([*args, "--", req.name], actor)
        if code == 0:
            return Response(201, doc)
        if code == 2:
            raise HttpError(409 if "already exists" in (error or "") else 400, error or "refused")
        raise HttpError(500, error or f"pgtape mark failed (exit {code})")

    def status(self) -> Response:
        doc = self.observed.status_document()
        if doc is None:
            raise HttpError(503, self.observed.health() or "no status yet")
        return Response(200, doc)

    def healthz(self) -> Response:
        reason = self.observed.health()
        if reason:
            return Response(503, {"ok": False, "reason": reason})
        return Response(200, {"ok": True})

    def _pgtape(self, args: list[str], actor: str) -> tuple[int, Any, str | None]:
        """A pgtape command run now: (exit code, its JSON output or None, its error line)."""
        try:
            r = subprocess.run([sys.executable, "-m", "pgtape", *args], capture_output=True, text=True,
                               env={**self.env, "PGTAPE_ACTOR": actor}, timeout=SUBPROCESS_TIMEOUT,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise HttpError(502, f"pgtape {args[0]} did not answer within {SUBPROCESS_TIMEOUT:.0f}s") from None
        errors = [ln[len("pgtape: "):] for ln in r.stderr.splitlines() if ln.startswith("pgtape: ")]
        try:
            doc = msgspec.json.decode(r.stdout) if r.stdout.strip() else None
        except msgspec.DecodeError:
            doc = None
        return r.returncode, doc, errors[-1] if errors else None

    def _pending_backup(self, backup_id: str) -> BackupRecord | None:
        """A backup the API started that has no catalog record yet (its job is starting) or never
        got one (its job failed first), from its job."""
        for job in self.jobs.all():
            if job.kind == "backup" and backup_id in job.argv and job.status != "completed":
                tables = job.argv[job.argv.index("--tables") + 1].split(",")
                captured = self._captured()
                kind = ("full" if set(tables) == set(captured) else
                        split_table(tables[0])[1] if len(tables) == 1 else "tables")
                status = "running" if job.status == "running" else "failed"
                return BackupRecord(backup_id, kind, status, tables, 0, 0, job.started_at, None, job.finished_at,
                                    job.error if status == "failed" else None)
        return None

    def backups(self) -> list[BackupRecord]:
        records = catalog.load_all(self.archive)
        gens: dict[int, list[str]] = {}
        out = []
        for r in records:
            if r.generation not in gens:
                gens[r.generation] = self.archive.generation(r.generation).tables
            kind = ("full" if set(r.tables) == set(gens[r.generation]) else
                    split_table(r.tables[0])[1] if len(r.tables) == 1 else "tables")
            out.append(BackupRecord(r.id, kind, r.status, r.tables, sum(r.rows.values()), r.bytes,
                                    iso(r.created_at) or "", iso(r.expires_at), iso(r.completed_at), r.error))
        return out


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as e:
        raise HttpError(400, f"invalid request: {e}") from None
    except msgspec.DecodeError as e:
        raise HttpError(400, f"the body is not valid JSON: {e}") from None


def _refuse(req: RecoveryRequest, *fields: str) -> None:
    for f in fields:
        if getattr(req, f) is not None:
            raise HttpError(400, f'"{f}" does not apply to recovery_type {req.recovery_type}')


def _tables(typed: list[str] | None, captured: list[str]) -> list[str]:
    if typed is not None and not typed:
        raise HttpError(400, '"tables" is empty: name at least one, or leave it out for every captured table')
    return resolve(typed or [], captured, "tables") if typed else captured


def _tables_args(typed: list[str] | None, captured: list[str]) -> list[str]:
    return ["--tables", ",".join(_tables(typed, captured))]


def _into(req: RecoveryRequest) -> list[str]:
    """The destination's options; a dry run changes nothing, wherever it would go: it shows the plan and
    the difference from the live tables."""
    into: list[str] = []
    if req.into == "in_place":
        into = ["--in-place", "--yes"]
    elif isinstance(req.into, IntoSchema):
        try:
            into = ["--schema", parse_schema(req.into.schema)]
        except ValueError as e:
            raise HttpError(400, f"into.schema: {e}") from None
    elif req.into is not None:
        raise HttpError(400, f'invalid "into" {req.into!r}: use {{"schema": "name"}} or "in_place"')
    return ["--dry-run"] if req.dry_run else into


