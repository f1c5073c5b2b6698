"""`pgtape check`: can capture run with this configuration? Exit 0 when it can, 1 when not.

Warnings (values the tape would lose, a connection that may go unencrypted across a network) are
printed but do not change the exit status; neither do the optional capabilities (what needs more than
the least-privilege role: replay --in-place, the DDL trigger, output_plugin_libraries, mark), each
listed as available or with what enables it."""

from __future__ import annotations

import argparse

import msgspec

from pgtape.capture.preflight import preflight
from pgtape.commands.results import emit
from pgtape.config import Config
from pgtape.errors import OK, PROBLEMS_FOUND

HELP = "check the server, role, tables and archive before capturing (exit 1 on any problem)"


class Finding(msgspec.Struct):
    code: str  # stable identifier of the kind of problem or warning
    message: str


class CapabilityOut(msgspec.Struct):
    code: str  # in_place_replay, schema_change_trigger, output_plugin_libraries, mark
    description: str
    available: bool
    enable: str | None  # when not available: what to run to make it so


class CheckReport(msgspec.Struct):
    ok: bool  # no problems (warnings do not count)
    checks: list[str]  # what passed, one line each
    warnings: list[Finding]
    problems: list[Finding]
    capabilities: list[CapabilityOut]  # beyond the least-privilege role; they never change `ok`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace, config: Config) -> int:
    report = preflight(config)
    if args.json:
        emit(CheckReport(report.ok, report.checks, [Finding(w.code, w.message) for w in report.warnings],
                         [Finding(p.code, p.message) for p in report.problems],
                         [CapabilityOut(c.code, c.description, c.available, c.enable) for c in report.capabilities]),
             indent=2)
    else:
        for line in report.checks:
            print(f"ok: {line}")
        for c in report.capabilities:
            print(f"optional: {c.description}: " + ("available" if c.available else f"not available; {c.enable}"))
        for warning in report.warnings:
            print(f"warning: {warning.message}")
        for problem in report.problems:
            print(f"problem: {problem.message}")
    return OK if report.ok else PROBLEMS_FOUND
