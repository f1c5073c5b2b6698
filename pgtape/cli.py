"""The `pgtape` command line: one module per subcommand in pgtape/commands/.

Each subcommand module defines HELP, `add_arguments(parser)` and `run(args, config) -> int`.
Connection and archive options come from pgtape.config.OPTIONS and are accepted after any
subcommand, as are --log-level and --log-format (pgtape/log.py). Errors a user can act on are
PgtapeError: one line on stderr and the exit code of pgtape/errors.py; so is anything unexpected.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from typing import NoReturn, Sequence

import psycopg

from pgtape import __version__, log
from pgtape.config import OPTIONS, load_config
from pgtape.errors import FAILURE, PgtapeError, UsageError
from pgtape.pg import first_line
from pgtape.tape.segment import SegmentError

SUBCOMMANDS = ("check", "init", "capture", "snapshot", "snapshots", "mark", "replay", "verify", "diff", "log", "status",
                "prune", "sql", "serve")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _nonblank(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (is a shell variable unset?)")
    return text


def _refuse_blank(parser: argparse.ArgumentParser) -> None:
    """Every option or argument that takes text refuses an empty one: `--target-time "$T"` with T
    unset must not mean something else (the latest state, the current directory, ...)."""
    for action in parser._actions:
        if action.nargs != 0 and action.type is None and action.choices is None and action.dest != "help":
            action.type = _nonblank


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pgtape", description="Point-in-time recovery for PostgreSQL tables.")
    parser.add_argument("--version", action="version", version=f"pgtape {__version__}")
    parser.add_argument("--config", help="path of pgtape.toml (default: $PGTAPE_CONFIG)")
    _add_log_options(parser, "")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"pgtape.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--config", dest="sub_config", help="path of pgtape.toml (default: $PGTAPE_CONFIG)")
        _add_log_options(p, "sub_")
        for opt in OPTIONS:
            if opt.flag:
                p.add_argument(opt.flag, dest=f"opt_{opt.name}", metavar=opt.name.upper(), help=opt.help)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
        _refuse_blank(p)
    _refuse_blank(parser)
    return parser


def _add_log_options(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument("--log-level", dest=f"{prefix}log_level", choices=log.LEVELS,
                   help="least severe log messages shown on stderr (default: info)")
    p.add_argument("--log-format", dest=f"{prefix}log_format", choices=log.FORMATS,
                   help="text lines, or one JSON object per line (default: text)")


def main(argv: Sequence[str] | None = None) -> int:
    # A closed pipe (pgtape log | head) ends quietly, as other Unix tools do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    debug = False
    try:
        args = build_parser().parse_args(argv)
        level = args.sub_log_level if getattr(args, "sub_log_level", None) else args.log_level or "info"
        log.setup(level, getattr(args, "sub_log_format", None) or args.log_format or "text")
        debug = level == "debug"
        if not args.command:
            build_parser().print_help(sys.stderr)
            return 2
        overrides = {opt.name: getattr(args, f"opt_{opt.name}", None) for opt in OPTIONS}
        config = load_config(args.sub_config or args.config, overrides)
        return int(args.run(args, config) or 0)
    except PgtapeError as e:
        print(f"pgtape: {e}", file=sys.stderr)
        return e.exit_code
    except SegmentError as e:  # a damaged file where a command met it first: named, never a traceback
        print(f"pgtape: damaged archive file: {e} (run pgtape verify)", file=sys.stderr)
        return FAILURE
    except KeyboardInterrupt:
        print("pgtape: interrupted", file=sys.stderr)
        return 130
    except psycopg.Error as e:  # a database error no command anticipated: still one line
        print(f"pgtape: database error: {first_line(e)}", file=sys.stderr)
        return FAILURE
    except OSError as e:  # disk full, permissions, ...
        print(f"pgtape: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return FAILURE
    except Exception as e:  # a bug: still one line; the traceback only for --log-level debug
        if debug:
            logging.getLogger(__name__).debug("internal error", exc_info=True)
        print(f"pgtape: internal error: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
        return FAILURE
