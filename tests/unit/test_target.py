"""replay/target.py: parsing the target flags and the stop rule as two bounds."""

from __future__ import annotations

import argparse

import pytest

from pgtape.errors import UsageError
from pgtape.replay.target import Target, add_target_options, target_from_args

T = 1795615379000000  # 2026-11-25 14:02:59 UTC in µs (1795615379 s: 2026-01-01 is 1767225600, +328 days, +14:02:59)
L = (0x16 << 32) | 0xB374D848
NO_LIMIT = 1 << 64


def parse(*argv: str) -> Target:
    p = argparse.ArgumentParser()
    add_target_options(p.add_mutually_exclusive_group())
    p.add_argument("--target-exclusive", action="store_true")
    return target_from_args(p.parse_args(list(argv)))


def test_time_with_zones() -> None:
    assert parse("--target-time", "2026-11-25T14:02:59Z") == Target("time", time=T)
    assert parse("--target-time", "2026-11-25T15:02:59+01:00") == Target("time", time=T)
    assert parse("--target-time", "2026-11-25 14:02:59.000001+00:00").time == T + 1


def test_lsn_name_latest() -> None:
    assert parse("--target-lsn", "16/B374D848") == Target("lsn", lsn=L)
    assert parse("--target-name", "before release") == Target("name", name="before release")
    assert parse("--latest") == Target("latest")
    assert parse() == Target("latest")


@pytest.mark.parametrize("argv, message", [
    (["--target-time", "2026-11-25T14:02:59"], "has no time zone"),
    (["--target-time", "yesterday"], "invalid --target-time 'yesterday'"),
    (["--target-time", ""], "invalid --target-time ''"),
    (["--target-time", "  "], "invalid --target-time"),
    (["--target-lsn", "16B374D848"], "invalid LSN '16B374D848'"),
    (["--target-lsn", ""], "invalid LSN ''"),
    (["--target-lsn", "/1"], "invalid LSN"),
    (["--target-lsn", "1/123456789"], "invalid LSN"),
    (["--target-lsn", "G/0"], "invalid LSN"),
    (["--target-name", "x", "--target-exclusive"], "--target-exclusive needs --target-time or --target-lsn"),
    (["--latest", "--target-exclusive"], "--target-exclusive needs"),
])
def test_bad_or_blank_values_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse(*argv)
    assert message in str(e.value) and e.value.exit_code == 2


def test_stop_rule_inclusive_and_exclusive_bounds() -> None:
    # A transaction is applied while (commit time, commit LSN) <= last_allowed(), per component.
    assert Target("time", time=T).last_allowed() == (T, NO_LIMIT)
    assert Target("time", time=T, exclusive=True).last_allowed() == (T - 1, NO_LIMIT)
    assert Target("lsn", lsn=L).last_allowed() == (NO_LIMIT, L)
    assert Target("lsn", lsn=L, exclusive=True).last_allowed() == (NO_LIMIT, L - 1)
    assert Target("name", name="x", lsn=L).last_allowed() == (NO_LIMIT, NO_LIMIT)  # stops after the mark's txn
    assert Target("latest").last_allowed() == (NO_LIMIT, NO_LIMIT)


def test_exclusive_flag_parsed_for_time_and_lsn() -> None:
    assert parse("--target-time", "2026-11-25T14:02:59Z", "--target-exclusive").last_allowed()[0] == T - 1
    assert parse("--target-lsn", "0/10", "--target-exclusive").last_allowed()[1] == 15


def test_describe_and_slug() -> None:
    assert Target("time", time=T).describe() == "up to time 2026-11-25 14:02:59.000000Z"
    assert Target("time", time=T, exclusive=True).describe() == "before time 2026-11-25 14:02:59.000000Z"
    assert Target("lsn", lsn=L).describe() == "up to LSN 16/B374D848"
    assert Target("name", name="rel", lsn=L).describe() == "recovery point 'rel' (LSN 16/B374D848)"
    assert Target("time", time=T + 123456).slug() == "20261125t140259"
    assert Target("lsn", lsn=L).slug() == "16_b374d848"
    assert Target("name", name="Before Release-2").slug() == "before_release_2"
    assert Target("latest").slug() == "latest"
