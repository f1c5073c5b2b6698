"""replay --format csv: COPY text blocks to CSV (replay/sinks/files.py), read back by a CSV parser of
PostgreSQL's convention written for the tests (tests/replay_oracle.py), against the values the
lines were made from by COPY's escaping rules written out here."""

from __future__ import annotations

import random

import pytest
from replay_oracle import parse_pg_csv

from pgtape.replay.sinks import files
from pgtape.replay.sinks.files import csv_blocks

ALPHABET = ['a', 'Z', '0', ',', '"', '\t', '\n', '\r', '\\', 'N', ' ', 'é', '€', '\x01']


def copy_escaped(v: str | None) -> bytes:
    """PostgreSQL's COPY text form of one value (docs: COPY, "Text Format")."""
    if v is None:
        return b"\\N"
    out = v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return out.replace("\x01", "\\001").encode()


def value(rng: random.Random) -> str | None:
    kind = rng.random()
    if kind < 0.2:
        return None
    if kind < 0.3:
        return ""
    if kind < 0.4:
        return "\\N"  # a literal backslash-N: text, not NULL
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 8)))


@pytest.mark.parametrize("seed", range(30))
def test_csv_blocks_read_back_to_the_values(seed: int) -> None:
    print(f"seed {seed}")
    rng = random.Random(seed)
    columns = rng.choice([1, 2, 5])
    plain = seed % 3 == 0  # (some blocks with no escape at all, or NULLs only: the whole-block paths)
    rows = []
    for _ in range(rng.randrange(1, 60)):
        row = [value(rng) for _ in range(columns)]
        if plain:
            row = [v if v is None else v.translate({ord(c): None for c in "\\\t\n\r\x01"}) for v in row]
        rows.append(row)
    lines = [b"\t".join(map(copy_escaped, r)) + b"\n" for r in rows]
    blocks, i = [], 0
    while i < len(lines):
        k = rng.randrange(1, 6)
        blocks.append(b"".join(lines[i:i + k]))
        i += k
    out = list(csv_blocks(blocks))
    assert sum(n for _, n in out) == len(rows)
    text = b"".join(data for data, _ in out).decode()
    assert parse_pg_csv(text) == rows


def test_a_block_of_nulls_and_plain_values_is_converted_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    def per_field(field: bytes) -> None:
        raise AssertionError(f"converted field by field: {field!r}")
    monkeypatch.setattr(files, "unescape", per_field)
    [(data, n)] = csv_blocks([b"1\t\\N\ta,b\n\\N\t\tx\"y\n"])
    assert (data, n) == (b'"1",,"a,b"\r\n,"","x""y"\r\n', 2)
