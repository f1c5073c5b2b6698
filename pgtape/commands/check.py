"""`pgtape check`: can capture run with this configuration? Exit 0 when it can, 1 when not.

Warnings (values the tape would lose) are printed but do not change the exit status."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from pgtape.capture.preflight import preflight
from pgtape.config import Config

HELP = "check the server, role, tables and archive before capturing (exit 1 on any problem)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace, config: Config) -> int:
    report = preflight(config)
    if args.json:
        print(json.dumps({"ok": report.ok, "checks": report.checks,
                          "warnings": [asdict(w) for w in report.warnings],
                          "problems": [asdict(p) for p in report.problems]}, indent=2))
    else:
        for line in report.checks:
            print(f"ok: {line}")
        for warning in report.warnings:
            print(f"warning: {warning.message}")
        for problem in report.problems:
            print(f"problem: {problem.message}")
    return 0 if report.ok else 1
