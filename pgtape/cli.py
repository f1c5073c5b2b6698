"""The `pgtape` command line: one module per subcommand in pgtape/commands/.

Each subcommand module defines HELP, `add_arguments(parser)` and `run(args, config) -> int`.
Connection and archive options come from pgtape.config.OPTIONS and are accepted after any
subcommand, as are --log-level and --log-format (pgtape/log.py). Errors a user can act on are
PgtapeError: one line on stderr and the exit code of pgtape/errors.py; so is anything unexpected.
Commands that read or change data then append one line to the archive's audit trail (pgtape/tape/audit.py).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

import psycopg

from pgtape import __version__, log
from pgtape.config import OPTIONS, Config, load_config
from pgtape.errors import FAILURE, OK, PROBLEMS_FOUND, PgtapeError, UsageError
from pgtape.pg import first_line
from pgtape.tape import audit
from pgtape.tape.archive import Archive
from pgtape.tape.segment import SegmentError

SUBCOMMANDS = ("check", "init", "capture", "snapshot", "snapshots", "mark", "replay", "verify", "diff", "log", "status",
                "prune", "audit", "sql", "serve", "key", "push", "pull")


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
        p.set_defaults(run=module.run, parser=p)
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
    config: Config | None = None
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
        code, error = int(args.run(args, config) or 0), None
    except (KeyboardInterrupt, Exception) as e:
        code, error = _failure(e, debug)
        print(f"pgtape: {error}", file=sys.stderr)
    if config is not None and args.command in AUDITED:
        code = _audit(args, config, code, error)
    return code


def _failure(e: BaseException, debug: bool) -> tuple[int, str]:
    """The exit code and the one line (after `pgtape: `) for an exception that ended a command."""
    if isinstance(e, PgtapeError):
        return e.exit_code, str(e)
    if isinstance(e, SegmentError):  # a damaged file where a command met it first: named, never a traceback
        return FAILURE, f"damaged archive file: {e} (run pgtape verify)"
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(e, psycopg.Error):  # a database error no command anticipated: still one line
        return FAILURE, f"database error: {first_line(e)}"
    if isinstance(e, OSError):  # disk full, permissions, ...
        return FAILURE, f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}"
    # a bug: still one line; the traceback only for --log-level debug
    if debug:
        logging.getLogger(__name__).debug("internal error", exc_info=e)
    return FAILURE, f"internal error: {type(e).__name__}: {first_line(e)}"


# Commands that read or change data leave one audit line each (docs/ARCHITECTURE.md, "Audit trail").
AUDITED = ("snapshot", "replay", "prune", "mark", "verify", "diff", "init", "log")
_SECRET = re.compile(r"dsn|password|passwd|token|secret", re.IGNORECASE)
# libpq's password=... (quoted or not) and postgresql://user:secret@host
_PASSWORD = re.compile(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)|(://[^/@\s:]*:)[^/@\s]*(?=@)", re.IGNORECASE)
_NOT_ARGUMENTS = {"help", "sub_config", "sub_log_level", "sub_log_format", "json"}


def _changes_data(args: argparse.Namespace) -> bool:
    """Whose audit line must be written, or the command fails (exit 3)."""
    return (args.command in ("snapshot", "mark", "init") or (args.command == "prune" and not args.dry_run)
            or (args.command == "replay" and args.in_place))


def _arguments(args: argparse.Namespace, encrypted: bool = False) -> dict[str, Any]:
    """The options given (those not at their default), never a connection string or anything secret:
    an option is left out when its name or metavar says DSN/password/token; a password in a value is masked.
    `encrypted` (a keyring is configured): the values of `log --key COL=VALUE`, row values, are masked too."""
    out: dict[str, Any] = {}
    for action in args.parser._actions:
        value = getattr(args, action.dest, None)
        if (action.dest in _NOT_ARGUMENTS or value is None or value == action.default
                or _SECRET.search(f"{action.dest} {action.metavar or ''}")):
            continue
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str):
            value = _scrub(value)
        if args.command == "log" and action.dest == "key" and encrypted:  # row values stay out of audit.log
            value = [f"{v.partition('=')[0]}=***" for v in value]
        out[action.dest.removeprefix("opt_")] = value
    return out


def _scrub(text: str) -> str:
    return _PASSWORD.sub(lambda m: f"{m.group(1) or m.group(2)}***", text)


def _audit(args: argparse.Namespace, config: Config, code: int, error: str | None) -> int:
    """Append the command's audit line; returns its exit code (3 if a data-changing command's line
    cannot be written: an unaudited change is a failure)."""
    if config.archive is None:
        return code
    remote = not isinstance(config.archive, Path)  # an offsite copy (s3://): one object per entry (audit.py)
    try:
        archive = Archive.at(config.archive, endpoint_url=config.offsite_endpoint_url)
        if not archive.exists():
            return code  # no archive (or init failed before making one): nowhere to write
        outcome = (_scrub(error) if error else "ok" if code == OK else
                   "problems found" if code == PROBLEMS_FOUND else f"exit {code}")
        arguments = _arguments(args, encrypted=config.key_file is not None)
        audit.append(archive, audit.actor(), args.command, arguments, {"exit_code": code, "outcome": outcome})
    except Exception as e:  # (a bug here too: one line, never a traceback)
        why = (e.strerror or str(e)) if isinstance(e, OSError) else f"{type(e).__name__}: {first_line(e)}"
        where = f"{config.archive}/{audit.OFFSITE_PREFIX}/" if remote else audit.KEY
        problem = f"could not write the audit trail ({where}): {why}"
        if remote:  # the usual cause: a read-only credential
            problem += f" (its credentials need s3:PutObject on {where}*)"
        if _changes_data(args) and code == OK:
            print(f"pgtape: {problem}; the {args.command} itself completed", file=sys.stderr)
            return FAILURE
        logging.getLogger(__name__).warning(problem)
    return code
