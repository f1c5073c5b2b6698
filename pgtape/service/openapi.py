"""The OpenAPI 3.1 document of the API (GET /v1/openapi.json), its schemas generated from the
msgspec Structs the API decodes and encodes, so they cannot drift from the code."""

from __future__ import annotations

from typing import Any

import msgspec

from pgtape import __version__
from pgtape.service.app import BackupRecord, BackupRequest, RecoveryPointRequest, RecoveryRequest
from pgtape.service.jobs import JobRecord


class Error(msgspec.Struct):
    error: str  # one line


class Accepted(msgspec.Struct):
    id: str  # the job's id: GET /v1/jobs/{id} (or /v1/recoveries/{id})


class BackupAccepted(msgspec.Struct):
    id: str  # the backup's id: GET /v1/backups/{id} (status running until it completes or fails)
    job_id: str  # its job: GET /v1/jobs/{id} (progress, result)


class Health(msgspec.Struct, omit_defaults=True):
    ok: bool
    reason: str | None = None  # why not


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: tuple[str, dict[str, Any], str], body: str | None = None, public: bool = False,
        errors: tuple[int, ...] = (400,), id_param: bool = False) -> dict[str, Any]:
    status, schema, what = ok
    op: dict[str, Any] = {"summary": summary, "responses": {status: _json(schema, what)}}
    for code in ((() if public else (401,)) + errors):
        op["responses"][str(code)] = _json(_ref("Error"), {400: "invalid request", 401: "missing or wrong token",
                                                          404: "not found", 409: "name exists",
                                                          429: "too many jobs running", 500: "failed",
                                                          501: "not available", 502: "pgtape did not answer",
                                                          503: "not healthy"}[code])
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if id_param:
        op["parameters"] = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    if public:
        op["security"] = []
    return op


def document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        (BackupRequest, RecoveryRequest, RecoveryPointRequest, BackupRecord, JobRecord, Error, Accepted, BackupAccepted,
         Health),
        ref_template="#/components/schemas/{name}")
    any_json: dict[str, Any] = {"type": "object"}
    accepted = ("202", _ref("Accepted"), "started as a job")
    return {
        "openapi": "3.1.0",
        "info": {"title": "pgtape serve", "version": __version__,
                 "description": "Backups (snapshots), point-in-time recoveries, verification and recovery points "
                                "of PostgreSQL tables captured by pgtape."},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "a token of PGTAPE_API_TOKEN or the token file"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": _op("200 while capture is connected and keeps up, else 503 with the reason",
                                    ("200", _ref("Health"), "healthy"), public=True, errors=(503,))},
            "/metrics": {"get": {**_op("Prometheus metrics (no token with [api] public_metrics = true)",
                                       ("200", {"type": "string"}, "Prometheus text format"), errors=(501,))}},
            "/v1/status": {"get": _op("what pgtape status --json prints", ("200", any_json, "the status"),
                                      errors=(502,))},
            "/v1/openapi.json": {"get": _op("this document", ("200", any_json, "OpenAPI 3.1"), errors=())},
            "/v1/backups": {
                "post": _op("take a snapshot: backup_type full or a captured table's name, or tables",
                            ("202", _ref("BackupAccepted"), "started as a job; the backup's id is named now"),
                            "BackupRequest", errors=(400, 429)),
                "get": _op("the snapshot catalog", ("200", {"type": "array", "items": _ref("BackupRecord")},
                                                    "every backup, oldest first"), errors=())},
            "/v1/backups/{id}": {"get": _op("one catalog record", ("200", _ref("BackupRecord"), "the backup"),
                                            errors=(404,), id_param=True)},
            "/v1/recoveries": {
                "post": _op("point_in_time, backup_restore or data_verification, as a job", accepted,
                            "RecoveryRequest", errors=(400, 429)),
                "get": _op("recovery and verification jobs", ("200", {"type": "array", "items": _ref("JobRecord")},
                                                              "oldest first"), errors=())},
            "/v1/recoveries/{id}": {"get": _op("a recovery or verification job: status, progress, result",
                                               ("200", _ref("JobRecord"), "the job"), errors=(404,), id_param=True)},
            "/v1/jobs": {"get": _op("every job (backups too)", ("200", {"type": "array", "items": _ref("JobRecord")},
                                                                "oldest first"), errors=())},
            "/v1/jobs/{id}": {"get": _op("one job", ("200", _ref("JobRecord"), "the job"), errors=(404,),
                                         id_param=True)},
            "/v1/recovery-points": {"post": _op("name an instant (now, or an earlier one with at): pgtape mark",
                                                ("201", any_json, "what pgtape mark --json prints"),
                                                "RecoveryPointRequest", errors=(400, 409, 500))},
        },
    }
