"""pgtape key: make and rotate the keyring that encrypts the archive at rest (pgtape/keys.py).

    pgtape key generate FILE   a new keyring (mode 0600) holding one new random key; never replaces a file
    pgtape key rotate FILE     add a new key, which becomes the active one (new files use it; old keys stay)
    pgtape key list FILE       the key ids, oldest first (never a key)

The archive uses the keyring named by PGTAPE_KEY_FILE or [archive] key_file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec

from pgtape import keys
from pgtape.commands.results import emit
from pgtape.config import Config

HELP = "generate, rotate or list the keys that encrypt the archive at rest (key ids only, never keys)"


class KeyList(msgspec.Struct):
    keyring: str
    keys: list[str]  # ids, oldest first
    active: str


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("generate", "rotate", "list"),
                   help="generate: a new keyring FILE; rotate: add a new active key to FILE; list: key ids in FILE")
    p.add_argument("file", metavar="FILE", help="the keyring file")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, config: Config) -> int:
    path = Path(args.file)
    if args.action == "generate":
        kid = keys.generate(path)
        _say(args, f"generated key {kid} in {path} (mode 0600): set PGTAPE_KEY_FILE={path} or [archive] "
             "key_file; keep a copy apart from the archive", path)
    elif args.action == "rotate":
        kid = keys.rotate(path)
        _say(args, f"added key {kid} to {path}: new archive files use it; older keys stay for the files that use "
             "them (pgtape prune says when one is no longer needed)", path)
    else:
        _say(args, "", path)
    return 0


def _say(args: argparse.Namespace, text: str, path: Path) -> None:
    ring = keys.load(path)
    if args.json:
        emit(KeyList(str(path), ring.ids, ring.active_id))
        return
    if text:
        print(text)
    else:
        for kid in ring.ids:
            print(f"{kid}{' (active)' if kid == ring.active_id else ''}")
