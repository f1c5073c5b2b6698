"""pgtape/config.py: pgtape.toml, environment and flags resolved into one Config."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgtape.config import load_config, parse_duration, parse_size, parse_tables
from pgtape.errors import UsageError


def toml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "pgtape.toml"
    p.write_text(text)
    return str(p)


def test_defaults() -> None:
    c = load_config(environ={})
    assert c.tables == ("public.payments", "public.orders", "public.tickets")
    assert (c.dsn, c.archive, c.slot) == (None, None, "pgtape")
    assert (c.fsync_interval, c.segment_size, c.status_interval) == (0.2, 64 * 1024 * 1024, 1.0)
    assert (c.snapshot_every, c.on_disk_full, c.retention) == (None, "wait", 30 * 86400.0)
    assert c.group_commit == "adaptive"
    assert c.source_file is None and "tables" in c.defaulted and "slot" in c.defaulted


def test_file_values_and_their_types(tmp_path: Path) -> None:
    path = toml(tmp_path, '[source]\ntables = ["payments", "Billing.\\"Ledger Entries\\""]\n'
                          '[archive]\npath = "/srv/tape"\n'
                          '[capture]\nfsync_interval = "50ms"\nsegment_size = 1024\nstatus_interval = 2\n'
                          'snapshot_every = "24h"\non_disk_full = "exit"\ngroup_commit = "timer"\n'
                          '[snapshots]\nretention = "7d"\n')
    c = load_config(path, environ={})
    assert c.tables == ("public.payments", 'billing."Ledger Entries"')
    assert c.archive == Path("/srv/tape")
    assert (c.fsync_interval, c.segment_size, c.status_interval) == (0.05, 1024, 2.0)
    assert (c.snapshot_every, c.on_disk_full, c.retention, c.group_commit) == (86400.0, "exit", 604800.0, "timer")
    assert c.source_file == Path(path) and "tables" not in c.defaulted and "slot" in c.defaulted


def test_precedence_flag_over_environment_over_file(tmp_path: Path) -> None:
    path = toml(tmp_path, '[source]\nslot = "from_file"\ndsn = "dbname=file"\n')
    assert load_config(path, environ={}).slot == "from_file"
    env = {"PGTAPE_SLOT": "from_env", "PGTAPE_CONFIG": path}
    assert load_config(None, environ=env).slot == "from_env"
    c = load_config(None, {"slot": "from_flag"}, environ=env)
    assert (c.slot, c.dsn) == ("from_flag", "dbname=file")


@pytest.mark.parametrize("text, message", [
    ('[capture]\nnope = 1\n', "unknown setting [capture] nope; known settings: [api] listen, [api] public_metrics,"),
    ('capture = 1\n', "'capture' must be a [section]"),
    ('[capture]\nfsync_interval = true\n', '[capture] fsync_interval must be a duration, e.g. "200ms"'),
    ('[capture]\nsegment_size = 1.5\n', '[capture] segment_size must be a size, e.g. "64MiB"'),
    ('[source]\ntables = [1, 2]\n', "[source] tables must be a string or a list of strings"),
    ('[source]\nslot = ""\n', "[source] slot is empty: give a value or remove the line"),
    ('[source]\ntables = []\n', "[source] tables is empty"),
    ('[capture]\nfsync_interval = "5 parsecs"\n', "[capture] fsync_interval: invalid duration '5 parsecs'"),
    ('[capture]\nfsync_interval = 0\n', "invalid duration 0: must be positive"),
    ('[capture]\non_disk_full = "panic"\n', "invalid value 'panic': use \"wait\" or \"exit\""),
    ('[capture]\ngroup_commit = "eager"\n',
     "[capture] group_commit: invalid value 'eager': use \"adaptive\" or \"timer\""),
    ('[source]\nslot = "Bad-Slot"\n', "invalid slot name 'Bad-Slot'"),
    ('[source\n', "cannot read config file"),
])
def test_bad_files_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        load_config(toml(tmp_path, text), environ={})
    assert message in str(e.value) and e.value.exit_code == 2


def test_missing_file_and_bad_environment(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="config file .*nowhere.toml does not exist"):
        load_config(str(tmp_path / "nowhere.toml"), environ={})
    with pytest.raises(UsageError, match="^environment variable PGTAPE_TABLES: invalid table name"):
        load_config(environ={"PGTAPE_TABLES": "a.b.c"})


def test_require_archive_and_selected_tables() -> None:
    with pytest.raises(UsageError, match="no archive configured"):
        load_config(environ={}).require_archive()
    assert load_config(environ={"PGTAPE_ARCHIVE": "/a"}).require_archive() == Path("/a")
    captured = ["public.a", "public.b"]
    assert load_config(environ={}).selected_tables(captured) == captured
    assert load_config(environ={"PGTAPE_TABLES": "B"}).selected_tables(captured) == ["public.b"]
    with pytest.raises(UsageError, match=r"table public.c is not captured \(captured: public.a, public.b\)"):
        load_config(environ={"PGTAPE_TABLES": "c"}).selected_tables(captured)


@pytest.mark.parametrize("text, seconds", [("200ms", 0.2), ("1.5s", 1.5), ("10m", 600.0), ("24h", 86400.0),
                                           ("7d", 604800.0), ("3", 3.0), (2, 2.0), (0.5, 0.5)])
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, size", [("64MiB", 64 << 20), ("1GB", 1 << 30), ("512kB", 512 << 10), ("7", 7),
                                        ("2TiB", 2 << 40), (10, 10)])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["1.5MiB", "-1", "0", "12 parsecs", ""])
def test_parse_size_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_parse_tables_dedups_in_order() -> None:
    assert parse_tables('orders, public.payments, ORDERS, "Billing".x') == ("public.orders", "public.payments",
                                                                            '"Billing".x')
    with pytest.raises(ValueError, match="no tables given"):
        parse_tables(" , ")
