"""Configuration: one table of options, resolved from file, environment and command line.

Precedence (highest first): command-line option, environment variable, `pgtape.toml`, default.
`OPTIONS` is the single source of truth: the CLI builds its flags from it, `pgtape.toml` keys are
checked against it, and docs refer to it.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pgtape.errors import UsageError
from pgtape.names import parse_table, resolve, split_list
from pgtape.storage.s3 import is_remote, parse_url

DEFAULT_TABLES = "public.payments,public.orders,public.tickets"


def parse_duration(text: str | int | float) -> float:
    """`200ms`, `1.5s`, `10m`, `24h`, `7d` or a bare number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(text))
        if not m:
            raise ValueError(f"invalid duration {text!r}: use e.g. 200ms, 5s, 10m, 24h")
        scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        value = float(m.group(1)) * scale
    if value <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return value


def parse_size(text: str | int) -> int:
    """`64MiB`, `1GB`, `512kB` or a bare number of bytes -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([kKMGT]i?B|B)?\s*", str(text))
        if not m:
            raise ValueError(f"invalid size {text!r}: use e.g. 64MiB, 1GiB")
        unit = (m.group(2) or "B").replace("i", "").upper()
        value = int(m.group(1)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[unit]
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    return value


def parse_memory(text: str | int) -> int:
    """A replay memory budget: a size of at least 1MiB."""
    value = parse_size(text)
    if value < 1 << 20:
        raise ValueError(f"memory budget {text!r} is too small: at least 1MiB")
    return value


def parse_tables(text: str | list[str]) -> tuple[str, ...]:
    """`payments, public."Ledger Entries"` -> their canonical names (pgtape/names.py), in order."""
    items = [str(i) for i in text] if isinstance(text, list) else split_list(str(text))
    tables: list[str] = []
    for item in items:
        name = parse_table(item)
        if name not in tables:
            tables.append(name)
    if not tables:
        raise ValueError("no tables given: name at least one, e.g. public.payments")
    return tuple(tables)


def parse_disk_full(text: str) -> str:
    if text not in ("wait", "exit"):
        raise ValueError(f"invalid value {text!r}: use \"wait\" or \"exit\"")
    return text


def parse_group_commit(text: str) -> str:
    if text not in ("adaptive", "timer"):
        raise ValueError(f"invalid value {text!r}: use \"adaptive\" or \"timer\"")
    return text


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets: `[::1]:7432`) -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid listen address {text!r}: use HOST:PORT, e.g. 127.0.0.1:7432")
    return host, int(port)


def parse_bool(value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"invalid value {value!r}: use true or false")


def parse_urls(value: str | list[str]) -> tuple[str, ...]:
    """One URL, several separated by commas or spaces, or a TOML list -> http(s) URLs."""
    items = [str(i) for i in value] if isinstance(value, list) else re.split(r"[,\s]+", str(value).strip())
    urls = tuple(u for u in items if u)
    for u in urls:
        if not re.match(r"https?://[^/\s]+", u):
            raise ValueError(f"invalid URL {u!r}: use http://host/path or https://host/path")
    return urls


def parse_archive(value: str | Path) -> Path | str:
    """A directory, or an `s3://bucket/prefix` URL (kept as text: a Path would fold its //)."""
    text = str(value)
    if text.startswith("s3://"):
        parse_url(text)
        return text.rstrip("/")
    return Path(text)


def parse_s3_url(text: str) -> str:
    parse_url(str(text))
    return str(text).rstrip("/")


def parse_keep_local(text: str) -> str:
    if text not in ("all", "unsent"):
        raise ValueError(f"invalid value {text!r}: use \"all\" or \"unsent\"")
    return text


def parse_schema(text: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", text):
        raise ValueError(f"invalid schema name {text!r}: use lower-case letters, digits and _ (at most 63)")
    return text


def parse_slot(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]{1,63}", text):
        raise ValueError(f"invalid slot name {text!r}: use lower-case letters, digits and _ (at most 63)")
    return text


@dataclass(frozen=True)
class Option:
    name: str  # attribute on Config
    section: str  # [section] in pgtape.toml
    key: str  # key in that section
    env: str | None  # environment variable, if any
    flag: str | None  # command-line flag, if any
    parse: Callable[[Any], Any]
    default: Any
    help: str
    kind: str = "text"  # what pgtape.toml must hold: text, tables/list (text or a list of text), duration, size, bool


OPTIONS: tuple[Option, ...] = (
    Option("dsn", "source", "dsn", "PGTAPE_DSN", "--dsn", str, None,
           "libpq connection string of the source database (default: libpq's PG* environment)"),
    Option("tables", "source", "tables", "PGTAPE_TABLES", "--tables", parse_tables, DEFAULT_TABLES,
           "comma-separated tables to capture", "tables"),
    Option("slot", "source", "slot", "PGTAPE_SLOT", "--slot", parse_slot, "pgtape",
           "logical replication slot name"),
    Option("archive", "archive", "path", "PGTAPE_ARCHIVE", "--archive", parse_archive, None,
           "archive directory that holds the tape (readers also take an offsite copy: s3://bucket/prefix)"),
    Option("fsync_interval", "capture", "fsync_interval", None, None, parse_duration, "200ms",
           "group commit: the longest a received commit waits to be fsynced while more keeps coming (the RPO)",
           "duration"),
    Option("segment_size", "capture", "segment_size", None, None, parse_size, "64MiB",
           "size of the open tape segment at which it is sealed and a new one begun (sealed in larger frames, "
           "it shrinks when its transactions were small)", "size"),
    Option("status_interval", "capture", "status_interval", None, None, parse_duration, "1s",
           "how often capture reports its position to the server", "duration"),
    Option("snapshot_every", "capture", "snapshot_every", None, None, parse_duration, None,
           "capture takes a snapshot when the newest is this old (e.g. 24h; default: never)", "duration"),
    Option("on_disk_full", "capture", "on_disk_full", None, None, parse_disk_full, "wait",
           "when the archive's disk is full: wait (acknowledge nothing, retry with backoff) or exit"),
    Option("group_commit", "capture", "group_commit", None, None, parse_group_commit, "adaptive",
           "adaptive: fsync as soon as the stream has nothing more to read (fsync_interval the longest wait); "
           "timer: only every fsync_interval (the earlier behaviour, kept for comparison)"),
    Option("retention", "snapshots", "retention", None, None, parse_duration, "30d",
           "how long a snapshot is kept: its expiry time in the catalog", "duration"),
    # Time, not bytes: the WAL rate of the whole server (tables not captured too) says nothing
    # about health, while a tape complete only up to minutes ago while the server moved on does.
    Option("status_max_lag", "capture", "max_lag", None, None, parse_duration, "5m",
           "pgtape status reports capture as not keeping up when the server has WAL beyond the tape and the "
           "tape is complete only up to a time longer ago than this", "duration"),
    # pgtape serve (docs/ARCHITECTURE.md, "Service")
    Option("api_listen", "api", "listen", None, None, parse_listen, "127.0.0.1:7432",
           "where pgtape serve listens for HTTP: HOST:PORT"),
    Option("api_token_file", "api", "token_file", None, None, lambda v: Path(str(v)), None,
           "file of API tokens, one 'NAME TOKEN' per line (mode 0600); PGTAPE_API_TOKEN adds one named 'env'"),
    Option("api_public_metrics", "api", "public_metrics", None, None, parse_bool, False,
           "serve GET /metrics without a token", "bool"),
    Option("notify_webhooks", "notify", "webhook_urls", "BACKUP_WEBHOOK_URL", None, parse_urls, None,
           "URLs that receive a JSON POST (Slack-compatible 'text') when something needs attention", "list"),
    Option("notify_disconnected_after", "notify", "disconnected_after", None, None, parse_duration, "2m",
           "notify when capture has been disconnected longer than this", "duration"),
    Option("sql_dsn", "sql", "dsn", None, "--sql-dsn", str, None,
           "database that holds the SQL monitoring catalog and views (default: the source DSN)"),
    Option("sql_schema", "sql", "schema", None, None, parse_schema, "pgtape",
           "schema of the SQL monitoring catalog, views and functions"),
    Option("key_file", "archive", "key_file", "PGTAPE_KEY_FILE", None, lambda v: Path(str(v)), None,
           "keyring file (mode 0600, pgtape key generate): when set, new generations are encrypted at rest"),
    # Offsite copy (docs/ARCHITECTURE.md, "Offsite"); credentials: the standard AWS chain
    Option("offsite_url", "offsite", "url", "PGTAPE_OFFSITE_URL", None, parse_s3_url, None,
           "S3-compatible bucket (and prefix) that capture and pgtape push copy the archive to: s3://bucket/prefix"),
    Option("offsite_endpoint_url", "offsite", "endpoint_url", None, None, str, None,
           "the object store's endpoint (MinIO, SeaweedFS, R2...); default: AWS_ENDPOINT_URL, else AWS S3"),
    Option("offsite_interval", "offsite", "interval", None, None, parse_duration, "10s",
           "how often the open segment is uploaded: with the upload time, the offsite RPO", "duration"),
    Option("offsite_keep_local", "offsite", "keep_local", None, None, parse_keep_local, "all",
           "what prune keeps locally: all (as retention says), or unsent (only what is not offsite, and the "
           "newest base)"),
    # replay, verify --live, diff (flags on those commands only: pgtape/commands/replay.py add_budget_options)
    Option("replay_memory", "replay", "memory", None, None, parse_memory, "512MiB",
           "memory budget of a replay's folded state: past it, it spills to sorted runs on disk", "size"),
    Option("replay_work_dir", "replay", "work_dir", None, None, lambda v: Path(str(v)), None,
           "directory for a replay's spill files (default: TMPDIR)"),
)


@dataclass(frozen=True)
class Config:
    dsn: str | None
    tables: tuple[str, ...]
    slot: str
    archive: Path | str | None  # str: an s3:// URL (readers only)
    fsync_interval: float
    segment_size: int
    status_interval: float
    snapshot_every: float | None
    on_disk_full: str
    retention: float | None
    status_max_lag: float
    api_listen: tuple[str, int]
    api_token_file: Path | None
    api_public_metrics: bool
    notify_webhooks: tuple[str, ...] | None
    notify_disconnected_after: float
    sql_dsn: str | None
    sql_schema: str
    key_file: Path | None
    offsite_url: str | None
    offsite_endpoint_url: str | None
    offsite_interval: float
    offsite_keep_local: str
    replay_memory: int
    replay_work_dir: Path | None
    group_commit: str = "adaptive"  # [capture] group_commit: "adaptive" or "timer" (docs/ARCHITECTURE.md, Rule A1)
    source_file: Path | None = field(default=None)
    defaulted: frozenset[str] = field(default=frozenset())  # options nobody set: their default applies

    def selected_tables(self, captured: list[str]) -> list[str]:
        """The tables asked for (each must be captured: else an error listing those that are), or
        when nobody named any, every captured one."""
        return list(captured) if "tables" in self.defaulted else resolve(list(self.tables), captured)

    def require_archive(self) -> Path:
        """The local archive directory (commands that write, and those not yet able to read a remote archive)."""
        location = self.archive_location()
        if is_remote(location):
            raise UsageError(f"--archive {location}: this command needs a local archive directory; an offsite "
                             "copy is read by replay, verify, log, status, snapshots and diff, and brought back "
                             "with pgtape pull")
        assert isinstance(location, Path)
        return location

    def archive_location(self) -> Path | str:
        """A local directory or an s3:// URL (pgtape.tape.archive.Archive.at opens either)."""
        if self.archive is None:
            raise UsageError("no archive configured: set [archive] path in pgtape.toml, PGTAPE_ARCHIVE or --archive")
        return self.archive


def load_config(
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Resolve every option. Raises UsageError naming the offending source on bad values."""
    env = os.environ if environ is None else environ
    path_text = config_path or env.get("PGTAPE_CONFIG")
    file_values: dict[str, dict[str, Any]] = {}
    path: Path | None = None
    if path_text:
        path = Path(path_text)
        try:
            file_values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"config file {path} does not exist: fix --config or PGTAPE_CONFIG") from None
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"cannot read config file {path}: {e}") from None
        _check_known_keys(path, file_values)

    values: dict[str, Any] = {}
    defaulted: set[str] = set()
    for opt in OPTIONS:
        raw, where = opt.default, "default"
        if opt.key in file_values.get(opt.section, {}):
            raw, where = file_values[opt.section][opt.key], f"{path} [{opt.section}] {opt.key}"
            _check_file_value(where, opt, raw)
        if opt.env and env.get(opt.env):
            raw, where = env[opt.env], f"environment variable {opt.env}"
        if overrides and overrides.get(opt.name) is not None:
            raw, where = overrides[opt.name], f"option {opt.flag or '--' + opt.key.replace('_', '-')}"
        if where == "default":
            defaulted.add(opt.name)
        try:
            values[opt.name] = None if raw is None else opt.parse(raw)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
    return Config(**values, source_file=path, defaulted=frozenset(defaulted))


_KINDS = {  # what each kind of option may be in TOML, and how to say so
    "text": ((str,), 'a string, e.g. "..."'),
    "tables": ((str, list), 'a string or a list of strings, e.g. ["public.payments", "public.orders"]'),
    "duration": ((str, int, float), 'a duration, e.g. "200ms", "24h" or a number of seconds'),
    "size": ((str, int), 'a size, e.g. "64MiB" or a number of bytes'),
    "list": ((str, list), 'a string or a list of strings, e.g. ["https://hooks.example/1"]'),
    "bool": ((bool,), "true or false"),
}


def _check_file_value(where: str, opt: Option, raw: Any) -> None:
    """A value of the wrong TOML type is refused as such, not turned into text; an empty one too."""
    types, wanted = _KINDS[opt.kind]
    items = raw if isinstance(raw, list) else [raw]
    misfit = (isinstance(raw, bool) and opt.kind != "bool") or not isinstance(raw, types)
    if misfit or not all(isinstance(i, str) for i in items if isinstance(raw, list)):
        raise UsageError(f"{where} must be {wanted}, not {type(raw).__name__} {raw!r}")
    if any(isinstance(i, str) and not i.strip() for i in items) or items == []:
        raise UsageError(f"{where} is empty: give a value or remove the line")


def _check_known_keys(path: Path, data: dict[str, Any]) -> None:
    known = {(o.section, o.key) for o in OPTIONS}
    for section, body in data.items():
        if not isinstance(body, dict):
            raise UsageError(f"{path}: {section!r} must be a [section]; "
                             "known sections: source, archive, capture, snapshots")
        for key in body:
            if (section, key) not in known:
                names = ", ".join(f"[{s}] {k}" for s, k in sorted(known))
                raise UsageError(f"{path}: unknown setting [{section}] {key}; known settings: {names}")
