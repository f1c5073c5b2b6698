"""pgtape init: create the capture slot and the initial base, so the tape starts where the base ends."""

from __future__ import annotations

import argparse
import msgspec

from pgtape import keys
from pgtape.capture.generation import initialize
from pgtape.commands.results import emit
from pgtape.config import Config
from pgtape.durable import make_dirs_durably
from pgtape.lsn import format_lsn
from pgtape.tape.archive import Archive

HELP = "create the replication slot and the initial base snapshot (idempotent; --restart for a new generation)"


class InitSummary(msgspec.Struct):
    generation: int
    slot: str
    start_lsn: str  # where the generation's tape starts (its initial base's as-of position)
    initialised_now: bool  # false: it was already initialised; nothing was done
    base: str | None  # id of the initial base taken now
    rows: dict[str, int] | None  # rows per table in that base


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true",
                   help="start a new generation (new slot, new base) even though the archive has a tape")
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def run(args: argparse.Namespace, config: Config) -> int:
    archive = Archive(config.require_archive(), keys.configured(config))
    archive.require_directory()
    make_dirs_durably(archive.path)
    lock = archive.lock_capture()
    try:
        gen, base = initialize(config, archive, restart=args.restart)
    finally:
        lock.release()
    if args.json:
        emit(InitSummary(gen.id, gen.slot, format_lsn(gen.start_lsn), base is not None, base.id if base else None,
                         base.rows if base else None))
    elif base is None:
        print(f"already initialised: generation {gen.id}, slot {gen.slot}, tape from {format_lsn(gen.start_lsn)}")
    else:
        rows = ", ".join(f"{t} {n}" for t, n in base.rows.items())
        print(f"generation {gen.id}: slot {gen.slot}, base {base.id} as of {format_lsn(gen.start_lsn)} ({rows} rows)")
    return 0
