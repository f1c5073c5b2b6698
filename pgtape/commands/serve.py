"""pgtape serve: capture plus the HTTP API (pgtape/service/), until stopped."""

from __future__ import annotations

import argparse

from pgtape.config import Config, parse_listen
from pgtape.errors import UsageError
from pgtape.service.serve import Service

HELP = "run capture and the HTTP API (bearer tokens; --no-capture: the API only)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", metavar="HOST:PORT", help="where to listen for HTTP (default: [api] listen, "
                                                          "127.0.0.1:7432)")
    p.add_argument("--no-capture", action="store_true", help="serve the API over an archive another process captures")


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        listen = parse_listen(args.listen) if args.listen else config.api_listen
    except ValueError as e:
        raise UsageError(f"--listen: {e}") from None
    return Service(config, listen, capture=not args.no_capture).run()
