"""Files: one per table, CSV (PostgreSQL's convention) or JSON lines, written then renamed."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
        with os.fdopen(create_private(tmp), "w", newline="", encoding="utf-8") as f:  # rows: owner only
            if fmt == "csv":
                f.write(",".join(_csv_field(c) for c in fold.columns) + "\r\n")
                for line in plan.rows(table):
                    f.write(",".join(_csv_field(v) for v in map(unescape, line.split(b"\t"))) + "\r\n")
                    n += 1
                    if not n % 4096:
                        counted(4096)
            else:
                for line in plan.rows(table):
                    f.write(json.dumps(dict(zip(fold.columns, map(unescape, line.split(b"\t")))),
                                       ensure_ascii=False) + "\n")
                    n += 1
                    if not n % 4096:
                        counted(4096)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        counted(n % 4096)
        counts[table] = n
    fsync_dir(directory)
    return counts


def _csv_field(v: str | None) -> str:
    """PostgreSQL's CSV convention: NULL is an empty unquoted field, an empty string is quoted."""
    if v is None:
        return ""
    if v == "" or any(c in v for c in ',"\r\n'):
        return '"' + v.replace('"', '""') + '"'
    return v
