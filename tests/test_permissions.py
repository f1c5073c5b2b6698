"""Everything pgtape writes holds payment data: the archive (and replay's output files) are the
owner's alone, whatever the umask of the process that wrote them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psycopg

from conftest import capture_to_now, run_pgtape


def test_archive_and_output_files_are_private_under_umask_0(dsn: str, tmp_path: Path) -> None:
    archive, out = tmp_path / "archive", tmp_path / "out"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table payments (id int primary key, amount numeric(12,2))")
        c.execute("insert into payments select g, g * 1.5 from generate_series(1, 10) g")
    old = os.umask(0)  # inherited by every pgtape process below: the loosest a user could have
    try:
        capture_to_now(dsn, archive, tables="public.payments")
        cli = ["--dsn", dsn, "--archive", str(archive)]
        run_pgtape("snapshot", *cli, check=True)
        run_pgtape("mark", "m1", *cli, check=True)
        capture_to_now(dsn, archive, tables="public.payments")
        run_pgtape("replay", *cli, "--latest", "--output", str(out), check=True)
    finally:
        os.umask(old)
    seen = {p: stat.S_IMODE(p.stat().st_mode) for p in [archive, out, *archive.rglob("*"), *out.rglob("*")]}
    names = {p.name for p in seen}
    assert {"ARCHIVE.json", "GENERATION.json", "audit.log", "m1.json"} <= names, names  # every kind is looked at
    assert any(n.endswith(".snap") for n in names) and any(n.endswith((".tape", ".tape.open")) for n in names)
    loose = {str(p.relative_to(tmp_path)): oct(m) for p, m in seen.items()
             if m != (0o700 if p.is_dir() else 0o600)}
    assert not loose, loose
    assert any(p.suffix == ".csv" for p in seen)
