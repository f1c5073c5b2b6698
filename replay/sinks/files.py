"""Files: one per table, CSV (PostgreSQL's convention) or JSON lines, written then renamed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from pgtape.copytext import unescape
from pgtape.durable import create_private, fsync_dir, make_dirs_durably
from pgtape.names import file_stem
from pgtape.replay.engine import Plan

def to_files(plan: Plan, directory: Path, fmt: str) -> dict[str, int]:
    make_dirs_durably(directory)
    counts: dict[str, int] = {}
    for table, fold in plan.present.items():
        final = directory / f"{file_stem(fold.relname)}.{fmt}"  # named as the table was at the target
        tmp = final.with_name(final.name + ".partial")
        n = 0
        counted = plan.progress.loaded(table)
        with os.fdopen(create_private(tmp), "wb") as f:  # rows: owner only
            if fmt == "csv":
                f.write(b",".join(map(_csv_value, fold.columns)) + b"\r\n")
                for data, rows in csv_blocks(plan.blocks(table)):
                    f.write(data)
                    n += rows
                    counted(rows)
            else:
                for line in plan.rows(table):
                    f.write(json.dumps(dict(zip(fold.columns, map(unescape, line.split(b"\t")))),
                                       ensure_ascii=False).encode() + b"\n")
                    n += 1
                    if not n % 4096:
                        counted(4096)
                counted(n % 4096)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        counts[table] = n
    fsync_dir(directory)
    return counts


def csv_blocks(blocks: Iterable[bytes]) -> Iterator[tuple[bytes, int]]:
    """Blocks of COPY text lines (each ending with LF) as CSV in PostgreSQL's convention, each with
    its number of rows. Every value is quoted (as COPY's FORCE_QUOTE * writes them): NULL alone is
    an empty unquoted field, so it differs from an empty string (""). A block whose only
    backslashes are NULL markers is converted whole by bytes.replace; one with escapes, line by line."""
    for block in blocks:
        if not block:
            continue
        rows = block.count(b"\n")
        quoted = _quoted(block)
        if b"\\" in block:
            # A NULL is the whole field \N, now "\N" between separators: COPY text writes a literal
            # backslash as \\, so "\N" cannot come from anything else.
            quoted = quoted.replace(b'"\\N"', b"")
            if b"\\" in quoted:  # escapes (\t, \\, \ooo...): unescaped field by field
                quoted = b"".join(b",".join(map(_csv_value, map(unescape, line.split(b"\t")))) + b"\r\n"
                                  for line in block.split(b"\n")[:-1])
        yield quoted, rows


def _quoted(block: bytes) -> bytes:
    """Every field of every line quoted: "a","b"CRLF per line (quotes inside doubled)."""
    return b'"' + block.replace(b'"', b'""').replace(b"\t", b'","').replace(b"\n", b'"\r\n"')[:-1]


def _csv_value(v: str | None) -> bytes:
    return b"" if v is None else b'"' + v.replace('"', '""').encode() + b'"'
