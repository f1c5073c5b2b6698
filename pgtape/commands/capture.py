"""pgtape capture: stream changes onto the tape until stopped (or until --until-lsn is durable)."""

from __future__ import annotations

import argparse

import msgspec

from pgtape.capture.capture import Capture, install_signal_handlers
from pgtape.commands.results import emit
from pgtape.config import Config
from pgtape.lsn import format_lsn, parse_lsn
from pgtape.offsite.worker import OffsiteWorker

HELP = "capture every change of the configured tables onto the tape (runs until stopped)"


class CaptureSummary(msgspec.Struct):
    durable_lsn: str  # the tape is durable up to here
    transactions: int  # captured in this run
    changes: int
    fsyncs: int  # of the tape in this run (transactions / fsyncs: the group-commit batch size)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--until-lsn", metavar="LSN", help="stop once everything up to LSN is durable on the tape")
    p.add_argument("--json", action="store_true", help="print a JSON summary when stopping")


def run(args: argparse.Namespace, config: Config) -> int:
    until = parse_lsn(args.until_lsn) if args.until_lsn else None
    cap = Capture(config, until_lsn=until)
    install_signal_handlers(cap)
    # [offsite] url: a child process copies the archive to the bucket; it never stops or slows capture.
    offsite = OffsiteWorker(cap.archive, config) if config.offsite_url else None
    if offsite:
        offsite.start()
    try:
        result = cap.run()
    finally:
        if offsite:
            offsite.stop()
    if args.json:
        emit(CaptureSummary(format_lsn(result.durable_lsn), result.transactions, result.changes, result.fsyncs))
    return 0
