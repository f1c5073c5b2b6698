"""A partitioned table is captured and replayed through its root, partitions created later included.

wal2json names each change by its leaf partition; capture files it under the partitioned table.
The oracle reads the root itself (every partition's rows) after each transaction.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import capture_to_now, run_pgtape, spawn_pgtape, stop_process, wait_until
from pgtape.tape.archive import Archive
from pgtape.tape.reader import iter_changes
from test_schema_changes import assert_replays, capture_done, new_bases, step
from replay_oracle import lsn_text, oracle_connect, table_state

PAY = "public.pay"
SETUP = ["CREATE TABLE pay (id int, m date, amount numeric(12,2), note text, PRIMARY KEY (id, m)) "
         "PARTITION BY RANGE (m)",
         "CREATE TABLE pay_2026_01 PARTITION OF pay FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')",
         "INSERT INTO pay VALUES (1, '2026-01-05', 10.00, 'a'), (2, '2026-01-06', 20.00, 'b')"]


def test_new_partitions_moves_and_truncate_replay_through_the_root(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    with oracle_connect(dsn) as c:
        for s in SETUP:
            c.execute(s)
        r = run_pgtape("check", "--dsn", dsn, "--archive", str(archive), "--tables", "pay")
        assert r.returncode == 0 and "table public.pay: partitioned" in r.stdout, r.stdout
        capture_to_now(dsn, archive, tables="pay")
        points = [step(c, "base", [], "pay")]
        # Next month's partition, created while capture runs, and a row in it in the same transaction.
        points.append(step(c, "new partition", [
            "CREATE TABLE pay_2026_02 PARTITION OF pay FOR VALUES FROM ('2026-02-01') TO ('2026-03-01')",
            "INSERT INTO pay VALUES (3, '2026-02-02', 30.00, 'c')"], "pay"))
        points.append(step(c, "move", ["UPDATE pay SET m = '2026-02-10', note = 'moved' WHERE id = 1"], "pay"))
        points.append(step(c, "changes", ["UPDATE pay SET amount = 21.00 WHERE id = 2",
                                          "DELETE FROM pay WHERE id = 3"], "pay"))
        points.append(step(c, "default partition", ["CREATE TABLE pay_rest PARTITION OF pay DEFAULT",
                                                    "INSERT INTO pay VALUES (4, '2027-05-05', 40.00, 'd')"], "pay"))
        points.append(step(c, "truncate all", ["TRUNCATE pay", "INSERT INTO pay VALUES (5, '2026-01-07', 50.00, "
                                                                "'after')"], "pay"))
        points.append(step(c, "after", ["UPDATE pay SET note = 'last' WHERE id = 5"], "pay"))
        capture_to_now(dsn, archive, tables="pay")
        assert_replays(archive, PAY, points)
        assert new_bases(archive) == []
        assert {c.table for c in iter_changes(Archive(archive), 1)} == {"pay"}  # filed under the root

        cli = ["--dsn", dsn, "--archive", str(archive)]
        # Into a recovery schema: one plain table with the root's columns.
        r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(points[3].lsn), "--schema", "rec", "--json")
        assert r.returncode == 0, r.stderr
        assert table_state(c, "rec.pay") == points[3].state
        assert c.execute("SELECT relkind FROM pg_class WHERE oid = 'rec.pay'::regclass").fetchone() == ("r",)
        # In place, through the root: rows go back to the partitions they belong in.
        r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(points[2].lsn), "--in-place", "--yes", "--json")
        assert r.returncode == 0, r.stderr
        assert table_state(c, "pay") == points[2].state
        assert c.execute("SELECT count(*) FROM pay_2026_02").fetchone() == (2,)


def test_attaching_or_detaching_a_partition_needs_a_new_base(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "pay"]
    with oracle_connect(dsn) as c:
        for s in SETUP:
            c.execute(s)
        c.execute("CREATE TABLE pay_2026_03 (LIKE pay)")
        c.execute("INSERT INTO pay_2026_03 VALUES (7, '2026-03-03', 70.00, 'outside')")
        run_pgtape("init", *cli, check=True)
        capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture.log")
        try:
            before = step(c, "before", ["UPDATE pay SET note = 'x' WHERE id = 1"], "pay")
            attach = step(c, "attach", ["ALTER TABLE pay ATTACH PARTITION pay_2026_03 FOR VALUES FROM "
                                        "('2026-03-01') TO ('2026-04-01')"], "pay")
            first = wait_until("a new base after the attach", lambda: new_bases(archive), 60)[0]
            after_attach = step(c, "after attach", ["UPDATE pay SET note = 'in march' WHERE id = 7"], "pay")
            detach = step(c, "detach", ["ALTER TABLE pay DETACH PARTITION pay_2026_01"], "pay")
            wait_until("a new base after the detach", lambda: len(new_bases(archive)) >= 2, 60)
            after = step(c, "after detach", ["UPDATE pay SET note = 'still here' WHERE id = 7",
                                             "UPDATE pay_2026_01 SET note = 'detached, not captured'"], "pay")
            wait_until("capture to record the last change", lambda: capture_done(archive, after.lsn, PAY), 30)
        finally:
            stop_process(capture)
        assert "was attached as a partition" in (tmp_path / "capture.log").read_text()
        assert (first.as_of_lsn or 0) > attach.lsn
        assert_replays(archive, PAY, [before, after_attach, after])
        for p in (attach, detach):
            r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(p.lsn), "--dry-run")
            assert r.returncode == 3 and "cannot be replayed" in r.stderr, (p.label, r.stderr)
        r = run_pgtape("log", *cli, "--json")
        assert "detached, not captured" not in r.stdout and json.loads(r.stdout.splitlines()[-1])["table"] == PAY


def test_partitioned_table_without_a_primary_key_is_refused(dsn: str, tmp_path: Path) -> None:
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE nokey (id int, m date) PARTITION BY RANGE (m)")
    r = run_pgtape("init", "--dsn", dsn, "--archive", str(tmp_path / "a"), "--tables", "nokey")
    assert r.returncode == 3 and r.stderr.strip() == (
        "pgtape: partitioned table public.nokey has no primary key: pgtape replays a partitioned table by its "
        "primary key; add one"), r.stderr
    assert not (tmp_path / "a" / "ARCHIVE.json").exists()


def test_a_default_added_through_the_partitioned_table_is_what_old_rows_read(dsn: str, tmp_path: Path) -> None:
    """The partitioned table keeps no missing value of its own: its partitions do."""
    archive = tmp_path / "archive"
    with oracle_connect(dsn) as c:
        for s in SETUP:
            c.execute(s)
        capture_to_now(dsn, archive, tables="pay")
        points = [step(c, "add column", ["ALTER TABLE pay ADD COLUMN channel text DEFAULT 'web'"], "pay"),
                  step(c, "after", ["UPDATE pay SET channel = 'app' WHERE id = 1"], "pay")]
        capture_to_now(dsn, archive, tables="pay")
        assert_replays(archive, PAY, points)


def test_a_partition_made_or_renamed_alone_survives_a_capture_restart(dsn: str, tmp_path: Path) -> None:
    """A transaction that only creates or renames a partition changes what capture follows: it must be
    on the tape, or a capture restarted after it resumes without the partition and drops its rows."""
    archive = tmp_path / "archive"
    with oracle_connect(dsn) as c:
        for s in SETUP:
            c.execute(s)
        capture_to_now(dsn, archive, tables="pay")
        points = []
        for ddl, row in (("CREATE TABLE pay_2026_02 PARTITION OF pay FOR VALUES FROM ('2026-02-01') TO "
                          "('2026-03-01')", "(10, '2026-02-05', 1.00, 'new partition')"),
                         ("ALTER TABLE pay_2026_01 RENAME TO pay_january", "(11, '2026-01-20', 2.00, 'renamed')")):
            points.append(step(c, ddl, [ddl], "pay"))
            capture_to_now(dsn, archive, tables="pay")  # capture stops right after the DDL
            points.append(step(c, "row", [f"INSERT INTO pay VALUES {row}"], "pay"))
            capture_to_now(dsn, archive, tables="pay")
        assert_replays(archive, PAY, points)
