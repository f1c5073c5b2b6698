"""The output contract: logs on stderr (text or JSON, UTC timestamps), the one error line, exit codes,
and status health."""

from __future__ import annotations

import json
import logging
import re
import signal
import time
from pathlib import Path

import psycopg
import pytest

from conftest import capture_to_now, run_pgtape

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_logs_in_text_and_json_with_either_option_position(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table t (id int primary key)")
    archive = tmp_path / "archive"
    r = capture_to_now(dsn, archive, "--log-format", "json", tables="t")
    records = [json.loads(line) for line in r.stderr.splitlines()]
    assert records and all(re.fullmatch(STAMP, x["time"]) and x["level"] == "info" for x in records), r.stderr
    assert any(x["logger"] == "pgtape.capture.capture" and x["message"].startswith("capturing public.t")
               for x in records), r.stderr
    assert any(x["logger"] == "pgtape.capture.generation" for x in records), r.stderr  # the initial base

    r = capture_to_now(dsn, archive, tables="t")  # text, the default
    lines = r.stderr.splitlines()
    assert lines and all(re.match(rf"{STAMP} info pgtape\.[a-z_.]+: ", line) for line in lines), r.stderr
    assert any(" pgtape.capture.capture: capturing public.t" in line for line in lines), r.stderr

    # Before the subcommand, and a level that hides info: a successful run is silent.
    r = run_pgtape("--log-level", "warning", "capture", "--dsn", dsn, "--archive", str(archive), "--tables", "t",
                   "--until-lsn", "0/1", check=True)
    assert r.stderr == "", r.stderr


def test_json_log_lines_carry_extra_fields() -> None:
    import io

    from pgtape import log
    stream = io.StringIO()
    root = logging.getLogger("pgtape")
    try:
        log.setup("debug", "json", stream)
        logging.getLogger("pgtape.replay.engine").debug("replaying: %d transactions", 7, extra={"transactions": 7})
    finally:
        root.handlers.clear()
        root.setLevel(logging.NOTSET)
        root.propagate = True
    record = json.loads(stream.getvalue())
    assert list(record) == ["time", "level", "logger", "message", "transactions"], record
    assert re.fullmatch(STAMP, record["time"]) and record["level"] == "debug", record
    assert (record["logger"], record["message"], record["transactions"]) == (
        "pgtape.replay.engine", "replaying: 7 transactions", 7), record


def test_the_error_line_stays_plain_and_usage_is_2() -> None:
    r = run_pgtape("--log-format", "json", "status", "--archive", "/nonexistent/pgtape")
    assert r.returncode == 3 and r.stderr.startswith("pgtape: archive /nonexistent/pgtape does not exist"), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    r = run_pgtape("status", "--log-level", "loud")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "--log-level" in r.stderr, r.stderr


def test_an_internal_error_is_one_line_and_exit_3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pgtape import cli
    from pgtape.commands import snapshots

    def broken(*_: object) -> int:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(snapshots, "run", broken)  # a bug in pgtape itself, not in PostgreSQL
    sigpipe, root = signal.getsignal(signal.SIGPIPE), logging.getLogger("pgtape")
    try:
        assert cli.main(["snapshots", "--archive", str(tmp_path)]) == 3
        err = capsys.readouterr().err
        assert err == "pgtape: internal error: RuntimeError: a bug\n", err
        assert cli.main(["snapshots", "--archive", str(tmp_path), "--log-level", "debug"]) == 3
        lines = capsys.readouterr().err.splitlines()
        assert "Traceback (most recent call last):" in lines
        assert lines[-1] == "pgtape: internal error: RuntimeError: a bug", lines
    finally:  # main() set up this process's logging and SIGPIPE as for a command: undo it for later tests
        signal.signal(signal.SIGPIPE, sigpipe)
        root.handlers.clear()
        root.setLevel(logging.NOTSET)
        root.propagate = True


def _status(dsn: str, archive: Path, config: Path | None = None) -> tuple[int, dict]:
    extra = ["--config", str(config)] if config else []
    r = run_pgtape("status", "--dsn", dsn, "--archive", str(archive), "--json", *extra)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_status_health(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table t (id int primary key)")
        capture_to_now(dsn, archive, tables="t")
        code, s = _status(dsn, archive)
        assert (code, s["healthy"], s["problems"]) == (0, True, []), s

        # WAL beyond the tape while capture is stopped: behind, by time; past max_lag it is a problem.
        c.execute("insert into t values (1)")
        time.sleep(0.2)
        strict = tmp_path / "pgtape.toml"
        strict.write_text('[capture]\nmax_lag = "100ms"\n')
        code, s = _status(dsn, archive, strict)
        assert code == 1 and not s["healthy"] and s["lag_seconds"] >= 0.2, s
        assert len(s["problems"]) == 1 and s["problems"][0].startswith("capture is not keeping up: "), s
        r = run_pgtape("status", "--dsn", dsn, "--archive", str(archive), "--config", str(strict))
        assert r.returncode == 1 and "\nBEHIND             capture is not keeping up: " in r.stdout, r.stdout
        code, s = _status(dsn, archive)  # within the default 5m
        assert (code, s["healthy"]) == (0, True), s

        c.execute("select pg_drop_replication_slot('pgtape')")
    code, s = _status(dsn, archive)
    assert code == 1 and s["problems"] == ["replication slot pgtape does not exist: capture cannot continue"], s
    r = run_pgtape("status", "--dsn", dsn, "--archive", str(archive))
    assert r.returncode == 1 and "MISSING: capture cannot continue" in r.stdout, r.stdout
