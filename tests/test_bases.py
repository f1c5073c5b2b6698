"""Each table replays from its own newest base: a snapshot of some tables serves a whole replay."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import capture_to_now, run_pgtape
from pgtape.tape.archive import Archive
from pgtape.replay.engine import prepare
from pgtape.replay.target import Target
from replay_oracle import History, compare, lsn_text


def test_a_table_snapshot_is_the_base_of_that_table_only(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive)]
    tables = ["public.a", "public.b"]
    h = History(dsn, tables)
    try:
        # a has no key: a change applied twice (once in its newer base, once from the tape) would
        # show as a duplicate row.
        for s in ["CREATE TABLE a (v text)", "ALTER TABLE a REPLICA IDENTITY FULL",
                  "CREATE TABLE b (id int PRIMARY KEY, v text)", "INSERT INTO a VALUES ('a0')",
                  "INSERT INTO b VALUES (0, 'b0')"]:
            h.conn.execute(s)
        capture_to_now(dsn, archive, tables="a,b")
        before = h.txn("before", ["INSERT INTO a VALUES ('a1')", "INSERT INTO b VALUES (1, 'b1')"])
        capture_to_now(dsn, archive, tables="a,b")
        r = run_pgtape("snapshot", *cli, "--tables", "a", "--json")
        assert r.returncode == 0, r.stderr
        a_base = json.loads(r.stdout)["id"]
        after = h.txn("after", ["INSERT INTO a VALUES ('a2')", "DELETE FROM a WHERE v = 'a0'",
                                "UPDATE b SET v = 'b1!' WHERE id = 1"])
        capture_to_now(dsn, archive, tables="a,b")

        plan = prepare(Archive(archive), tables, Target("latest"))
        assert plan.bases["public.a"].id == a_base and plan.bases["public.b"].id != a_base
        for step, target in ((before, Target("lsn", lsn=before.post_lsn)), (after, Target("latest"))):
            plan = prepare(Archive(archive), tables, target)
            for t in tables:
                fold = plan.folds[t]
                assert compare(t, fold.columns, fold.types, plan.rows(t), step.state[t]) is None, (step.label, t)
        r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(after.post_lsn), "--dry-run", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["bases"]["public.a"] == a_base
    finally:
        h.close()
