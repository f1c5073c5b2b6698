"""Faults an operator meets: each ends in one clear line and a non-zero exit, never in a traceback,
a silent fallback or a silent loss. Each test here failed before its fix (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_pgtape


def one_line(r, code: int = 2) -> str:  # type: ignore[no-untyped-def]
    """The refusal: exit `code`, exactly one line on stderr, no traceback; that line."""
    assert r.returncode == code and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, \
        (r.returncode, r.stderr)
    return r.stderr.strip()


@pytest.mark.parametrize("args", [
    ["replay", "--target-time", ""], ["replay", "--target-lsn", " "], ["replay", "--target-name", ""],
    ["diff", "--target-time", ""], ["log", "--since", ""], ["log", "--to-lsn", ""], ["log", "--table", ""],
    ["replay", "--latest", "--archive", ""], ["replay", "--latest", "--dsn", ""], ["replay", "--latest", "--output", ""],
    ["capture", "--until-lsn", ""], ["mark", ""], ["verify", ""], ["snapshot", "--tables", " "],
])
def test_an_empty_value_is_a_usage_error(args: list[str]) -> None:
    """An unset shell variable (`--target-time "$T"`) must not mean the latest state, the current
    directory or libpq's environment."""
    option = next((a for a in args if a.startswith("--") and args[args.index(a) + 1].strip() == ""), None)
    line = one_line(run_pgtape(*args))
    assert "must not be empty" in line and (option is None or f"argument {option}:" in line), line


@pytest.mark.parametrize("body, message", [
    ('[archive]\npath = ["a"]', '[archive] path must be a string, e.g. "...", not list [\'a\']'),
    ("[source]\ndsn = 5", '[source] dsn must be a string, e.g. "...", not int 5'),
    ('[source]\ndsn = ""', "[source] dsn is empty: give a value or remove the line"),
    ("[capture]\nfsync_interval = true", "[capture] fsync_interval must be a duration, e.g. \"200ms\", \"24h\" or a "
                                         "number of seconds, not bool True"),
    ('[source]\ntables = ["public.a", 3]', "[source] tables must be a string or a list of strings"),
    ("[source]\ntables = []", "[source] tables is empty: give a value or remove the line"),
])
def test_a_config_value_of_the_wrong_type_is_refused_as_such(tmp_path: Path, body: str, message: str) -> None:
    conf = tmp_path / "pgtape.toml"
    conf.write_text(body + "\n")
    line = one_line(run_pgtape("status", "--config", str(conf)))
    assert line.startswith(f"pgtape: {conf} {message}"), line
