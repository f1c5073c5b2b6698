"""pgtape init: create the capture slot and the initial base, so the tape starts where the base ends."""

from __future__ import annotations

import argparse
import json
import sys

from pgtape.capture.generation import initialize
from pgtape.config import Config
from pgtape.durable import make_dirs_durably
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive

HELP = "create the replication slot and the initial base snapshot (idempotent; --restart for a new generation)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true",
                   help="start a new generation (new slot, new base) even though the archive has a tape")
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def run(args: argparse.Namespace, config: Config) -> int:
    archive = Archive(config.require_archive())
    archive.require_directory()
    make_dirs_durably(archive.path)
    lock = archive.lock_capture()
    try:
        gen, base = initialize(config, archive, restart=args.restart, log=lambda m: print(m, file=sys.stderr))
    finally:
        lock.release()
    summary = {"generation": gen.id, "slot": gen.slot, "start_lsn": format_lsn(gen.start_lsn),
               "initialised_now": base is not None, "base": base.id if base else None,
               "rows": base.rows if base else None}
    if args.json:
        print(json.dumps(summary))
    elif base is None:
        print(f"already initialised: generation {gen.id}, slot {gen.slot}, tape from {format_lsn(gen.start_lsn)}")
    else:
        rows = ", ".join(f"{t} {n}" for t, n in base.rows.items())
        print(f"generation {gen.id}: slot {gen.slot}, base {base.id} as of {format_lsn(gen.start_lsn)} ({rows} rows)")
    return 0
