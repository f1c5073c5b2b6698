"""Logs and progress on stderr through stdlib logging: one setup, two formats, UTC timestamps.

Every module logs through `logging.getLogger(__name__)` (all under "pgtape"). A command's result
goes to stdout with print; the final `pgtape: <message>` error line is printed by cli.main, not
here, so it stays the same in either format.

text: `2026-12-02T16:30:00.123Z info pgtape.capture.capture: capturing ...`
json: one object per line: time, level, logger, message, and every field passed via `extra`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
ROOT = "pgtape"

# The attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_settings = {"level": "info", "format": "text"}


def utc_time(created: float) -> str:
    """Seconds since the epoch -> `2026-12-02T16:30:00.123Z` (milliseconds, UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{utc_time(record.created)} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"time": utc_time(record.created), "level": record.levelname.lower(),
                                  "logger": record.name, "message": record.getMessage()}
        out.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and k not in out)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route every pgtape logger to stderr (or `stream`) at `level` in `fmt`; idempotent."""
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level {level!r} / format {fmt!r}")
    _settings.update(level=level, format=fmt)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger(ROOT)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def child_args() -> list[str]:
    """The global options that give a child pgtape process (a scheduled snapshot) the same logs."""
    return ["--log-level", _settings["level"], "--log-format", _settings["format"]]
