"""The API without a server or PostgreSQL: routes against the OpenAPI document, routing, auth,
token files, request decoding and how requests become pgtape arguments."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pgtape.config import load_config
from pgtape.errors import UsageError
from pgtape.service import auth
from pgtape.service.app import ROUTES, Api, HttpError, RecoveryRequest, _decode, _into
from pgtape.service.jobs import JobManager
from pgtape.service.openapi import document
from pgtape.tape.archive import Archive


def test_openapi_lists_exactly_the_routes() -> None:
    doc = json.loads(json.dumps(document()))  # valid JSON, nothing only Python can hold
    assert doc["openapi"] == "3.1.0"
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == set(ROUTES)
    for (method, path) in ROUTES:
        op = doc["paths"][path][method.lower()]
        public = (method, path) == ("GET", "/healthz")
        assert (op.get("security") == []) == public
        assert public or "401" in op["responses"]
    for name in ("BackupRequest", "RecoveryRequest", "RecoveryPointRequest", "BackupRecord", "JobRecord", "Error"):
        assert name in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_route() -> None:
    assert Api.route("GET", "/v1/backups/20261202T1") == (("GET", "/v1/backups/{id}"), {"id": "20261202T1"})
    assert Api.route("POST", "/v1/backups/") == (("POST", "/v1/backups"), {})
    with pytest.raises(HttpError) as e:
        Api.route("PUT", "/v1/backups")
    assert e.value.status == 405 and "GET, POST" in str(e.value)
    for path in ("/", "/v1", "/v1/backups/a/b", "/v1/backups//", "/v2/backups"):
        with pytest.raises(HttpError) as e:
            Api.route("GET", path)
        assert e.value.status == 404, path


def test_token_name_compares_every_token() -> None:
    tokens = {"env": "aaa", "ops": "bbb"}
    assert auth.token_name(tokens, "Bearer bbb") == "ops"
    assert auth.token_name(tokens, "Bearer aaa") == "env"
    for header in (None, "", "Bearer ", "Bearer aa", "Bearer aaaa", "Basic aaa", "bearer aaa", "aaa"):
        assert auth.token_name(tokens, header) is None, header


def test_load_tokens(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# who\nops  abc\n\nci def # no\n")
    f.chmod(0o600)
    with pytest.raises(UsageError, match="line 4"):
        auth.load_tokens(f, {})
    f.write_text("# who\nops  abc\n\nci def\n")
    assert auth.load_tokens(f, {"PGTAPE_API_TOKEN": "xyz"}) == {"env": "xyz", "ops": "abc", "ci": "def"}
    f.chmod(0o640)
    with pytest.raises(UsageError, match="chmod 600"):
        auth.load_tokens(f, {})
    with pytest.raises(UsageError, match="no API token"):
        auth.load_tokens(None, {"PGTAPE_API_TOKEN": "  "})
    with pytest.raises(UsageError, match="cannot read"):
        auth.load_tokens(tmp_path / "missing", {})
    f.write_text("ops a\nops b\n")
    f.chmod(0o600)
    with pytest.raises(UsageError, match="twice"):
        auth.load_tokens(f, {})


def _recovery(**fields: Any) -> RecoveryRequest:
    return _decode(json.dumps({"recovery_type": "point_in_time", **fields}).encode(), RecoveryRequest)


def test_into() -> None:
    assert _into(_recovery()) == []
    assert _into(_recovery(dry_run=True, into="in_place")) == ["--dry-run"]
    assert _into(_recovery(into="in_place")) == ["--in-place", "--yes"]
    assert _into(_recovery(into={"schema": "restored"})) == ["--schema", "restored"]
    for bad in ({"schema": "Bad Name"}, "elsewhere"):
        with pytest.raises(HttpError) as e:
            _into(_recovery(into=bad))
        assert e.value.status == 400
    for body in (b"[", b'{"recovery_type": 1}', b'{"recovery_type": "x", "into": {"schema": "a", "b": 1}}',
                 b'{"recovery_type": "x", "dry_run": "yes"}'):
        with pytest.raises(HttpError) as e:
            _decode(body, RecoveryRequest)
        assert e.value.status == 400 and "\n" not in str(e.value)


def _call(api: Api, method: str, path: str, headers: dict[str, str] | None = None,
          body: bytes = b"") -> tuple[str, dict[str, str], Any]:
    seen: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]]) -> None:
        seen.update(status=status, headers=dict(hdrs))
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body),
               "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json", **(headers or {})}
    out = b"".join(api(environ, start_response))
    json_body = seen["headers"]["Content-Type"] == "application/json"
    return seen["status"], seen["headers"], json.loads(out) if json_body else out


class _Seen:
    """What a monitor would have seen: a fixed health reason, no status yet, one metric."""

    def __init__(self, reason: str | None) -> None:
        self.reason = reason

    def health(self) -> str | None:
        return self.reason

    def status_document(self) -> Any:
        return None

    def render_metrics(self) -> tuple[bytes, str]:
        return b"pgtape_up 1\n", "text/plain; version=0.0.4; charset=utf-8"


def test_wsgi_auth_and_errors(tmp_path: Path) -> None:
    config = load_config(None, {"archive": str(tmp_path)}, environ={})
    jobs = JobManager(Archive(tmp_path).storage, {})
    api = Api(config, {"ops": "tok"}, jobs, {}, _Seen("capture stopped: test"), document())
    status, headers, doc = _call(api, "GET", "/v1/backups")
    assert status.startswith("401") and headers["WWW-Authenticate"].startswith("Bearer") and "token" in doc["error"]
    status, headers, doc = _call(api, "GET", "/metrics")
    assert status.startswith("401")
    ok = {"HTTP_AUTHORIZATION": "Bearer tok"}
    status, headers, doc = _call(api, "GET", "/v1/openapi.json", ok)
    assert status.startswith("200") and headers["Content-Type"] == "application/json" and doc == json.loads(
        json.dumps(document()))
    assert _call(api, "GET", "/healthz")[0:3:2] == ("503 Service Unavailable",
                                                     {"ok": False, "reason": "capture stopped: test"})
    assert _call(api, "GET", "/v1/jobs", ok)[2] == []
    assert _call(api, "GET", "/v1/jobs/nope", ok)[0].startswith("404")
    assert _call(api, "GET", "/v1/jobs/..%2f..", ok)[0].startswith("404")
    status, _, doc = _call(api, "POST", "/v1/backups", ok, b'{"backup_type": "full", "date_from": "x"}')
    assert status.startswith("400") and "date_from" in doc["error"]
    assert _call(api, "GET", "/v1/status", ok)[0:3:2] == ("503 Service Unavailable",
                                                         {"error": "capture stopped: test"})
    public = Api(replace(config, api_public_metrics=True), {"o": "t"}, jobs, {}, _Seen(None), document())
    assert _call(public, "GET", "/healthz")[0:3:2] == ("200 OK", {"ok": True})
    status, headers, text = _call(public, "GET", "/metrics")  # no token asked
    assert (status, headers["Content-Type"], text) == ("200 OK", "text/plain; version=0.0.4; charset=utf-8",
                                                       b"pgtape_up 1\n")
    assert _call(public, "GET", "/v1/jobs")[0].startswith("401")
