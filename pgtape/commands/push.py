"""pgtape push: upload everything the offsite copy lacks, the open segment included, then exit (cron, tests)."""

from __future__ import annotations

import argparse
import time

import msgspec

from pgtape.commands.results import emit
from pgtape.config import Config
from pgtape.errors import PgtapeError
from pgtape.lsn import format_lsn
from pgtape.offsite.upload import OffsiteBusy, Uploader, remote_for
from pgtape.storage.s3 import RemoteStorageError
from pgtape.tape.archive import Archive

HELP = "upload what the offsite copy ([offsite] url) lacks, then exit"
BUSY_WAIT = 300  # seconds push waits for a pass of capture's uploader to end


class PushSummary(msgspec.Struct):
    url: str
    uploaded: list[str]  # keys sent in this run
    already_there: list[str]  # found complete in the bucket (an earlier run was interrupted): only recorded
    deleted: list[str]  # open segments' copies replaced by their sealed segment
    bytes: int
    generation: int
    offsite_lsn: str  # the tape is offsite up to here


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print what was uploaded as JSON")


def run(args: argparse.Namespace, config: Config) -> int:
    archive = Archive.existing(config.require_archive())
    uploader = Uploader(archive, remote_for(config), config.offsite_interval)
    deadline = time.monotonic() + BUSY_WAIT
    try:
        while True:
            try:
                r = uploader.run_pass(force_open=True)
                break
            except OffsiteBusy:  # capture's uploader is making a pass: push goes on after it
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    except RemoteStorageError as e:
        uploader.record_error(str(e))
        raise PgtapeError(f"offsite upload failed (what was uploaded stays recorded; run push again): {e}") from None
    s = uploader.state
    summary = PushSummary(s.url, r.uploaded, r.recorded, r.deleted, r.bytes, s.generation, format_lsn(s.tape_lsn))
    if args.json:
        emit(summary)
    else:
        print(f"{len(r.uploaded)} objects uploaded ({r.bytes} bytes), {len(r.recorded)} already there; "
              f"{s.url} holds the tape up to {format_lsn(s.tape_lsn)} (generation {s.generation})")
    return 0
