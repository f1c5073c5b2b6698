"""pgtape pull s3://bucket/prefix DIR: bring an offsite copy back to disk (then a local archive like any other)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pgtape.config import Config, parse_s3_url
from pgtape.errors import PgtapeError, UsageError
from pgtape.offsite.pull import pull
from pgtape.storage.s3 import RemoteStorageError, S3Storage

HELP = "download an offsite copy (s3://bucket/prefix) into a new local archive directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the offsite copy: s3://bucket/prefix")
    p.add_argument("directory", help="a new (or empty) directory for the archive")


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        url = parse_s3_url(args.url)
    except ValueError as e:
        raise UsageError(str(e)) from None
    dest = Path(args.directory)
    try:
        r = pull(S3Storage(url, config.offsite_endpoint_url), dest)
    except RemoteStorageError as e:
        raise PgtapeError(f"pull failed (pull again into an empty directory): {e}") from None
    print(f"{r.objects} objects ({r.bytes} bytes) from {url} into {dest}: use --archive {dest}")
    return 0
