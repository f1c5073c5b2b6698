"""Schema changes at their exact position on the tape, and what the tape cannot carry.

An oracle that never reads the tape records, after each transaction, the WAL position and the
table's real columns, types and rows (COPY, under the live table's name at that moment); a replay
to that position must have exactly those columns, names and values. Changes that rewrite rows
without decoded row changes are refused until capture has taken a new base by itself.
"""

from __future__ import annotations

import json
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from conftest import capture_to_now, one_line_error, run_pgtape, scalar, spawn_pgtape, stop_process, wait_until
from pgtape.tape.archive import Archive
from pgtape.replay.engine import prepare
from pgtape.replay.target import Target
from replay_oracle import TableState, lsn_int, lsn_text, oracle_connect, seed_for, table_state
from pgtape.snapshots import catalog


@dataclass
class Point:
    label: str
    lsn: int  # WAL insert position right after the transaction committed
    state: TableState  # the table as it really was then


def step(c: psycopg.Connection, label: str, statements: list[str], live_name: str) -> Point:
    c.execute("BEGIN")
    for s in statements:
        c.execute(s)
    c.execute("COMMIT")
    lsn = scalar(c.execute("SELECT pg_current_wal_insert_lsn()::text"))
    return Point(label, lsn_int(lsn), table_state(c, live_name))


def assert_replays(archive: Path, table: str, points: list[Point]) -> None:
    """Shape for shape and value for value: no column may be missing, extra, renamed or retyped."""
    for p in points:
        plan = prepare(Archive(archive), [table], Target("lsn", lsn=p.lsn))
        fold = plan.folds[table]
        got = (tuple(fold.columns), tuple(fold.types), tuple(sorted(plan.rows(table))))
        assert got == (p.state.columns, p.state.types, p.state.lines), f"after {p.label}: {got} != {p.state}"


def new_bases(archive: Path, kind: str = "rebase") -> list[catalog.SnapshotRecord]:
    return [r for r in catalog.load_all(Archive(archive)) if r.kind == kind and r.status == catalog.COMPLETED]


ORDERS = ["CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2), status text, big text)",
          "ALTER TABLE orders ALTER COLUMN big SET STORAGE EXTERNAL",
          "INSERT INTO orders SELECT g, g * 1.50, 'new', NULL FROM generate_series(1, 5) g",
          "UPDATE orders SET big = repeat('x', 5000) WHERE id = 5"]


def test_columns_added_renamed_dropped_and_a_renamed_table(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    with oracle_connect(dsn) as c:
        for s in ORDERS:
            c.execute(s)
        capture_to_now(dsn, archive, tables="orders")  # init as a superuser: the DDL trigger is installed
        points = [step(c, "base", [], "orders")]
        points.append(step(c, "row", ["UPDATE orders SET status = 'paid' WHERE id = 1"], "orders"))
        # Rows that existed read the default (attmissingval): no row change is decoded for them.
        points.append(step(c, "add column", ["ALTER TABLE orders ADD COLUMN channel text DEFAULT 'we\\b'",
                                             "ALTER TABLE orders ADD COLUMN at timestamptz DEFAULT "
                                             "'2026-01-02 03:04:05+07'"], "orders"))
        points.append(step(c, "after add", ["UPDATE orders SET channel = 'app' WHERE id = 2",
                                            "INSERT INTO orders (id, amount) VALUES (6, 6.00)"], "orders"))
        # In one transaction: a change before a rename, the rename, a change after it.
        points.append(step(c, "rename column", ["UPDATE orders SET status = 'before' WHERE id = 3",
                                                "ALTER TABLE orders RENAME COLUMN status TO state",
                                                "UPDATE orders SET state = 'after' WHERE id = 4"], "orders"))
        # An UPDATE that leaves the out-of-line value out: it keeps its value across the rename.
        points.append(step(c, "toast untouched", ["UPDATE orders SET state = 'big kept' WHERE id = 5"], "orders"))
        points.append(step(c, "drop column", ["ALTER TABLE orders DROP COLUMN amount"], "orders"))
        # A type change that rewrites nothing (binary coercible): the values stay as they are.
        points.append(step(c, "retype", ["ALTER TABLE orders ALTER COLUMN state TYPE varchar"], "orders"))
        points.append(step(c, "rename table", ["ALTER TABLE orders RENAME TO orders_v2",
                                               "INSERT INTO orders_v2 (id, state) VALUES (7, 'renamed')"],
                           "orders_v2"))
        points.append(step(c, "other schema", ["CREATE SCHEMA sales", "ALTER TABLE orders_v2 SET SCHEMA sales",
                                               "DELETE FROM sales.orders_v2 WHERE id = 1"], "sales.orders_v2"))
        points.append(step(c, "after", ["UPDATE sales.orders_v2 SET channel = 'late' WHERE id = 6"], "sales.orders_v2"))
        capture_to_now(dsn, archive, tables="orders")
        assert_replays(archive, "public.orders", points)
        assert new_bases(archive) == []  # nothing here needed one

        # The recovered table is named as the table was at the target.
        cli = ["--dsn", dsn, "--archive", str(archive)]
        for p, relation in ((points[3], "rec_a.orders"), (points[-3], "rec_b.orders_v2")):
            schema = relation.split(".")[0]
            r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(p.lsn), "--schema", schema, "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["relations"] == {"public.orders": relation}
            assert table_state(c, relation) == p.state
        # log shows each change of shape where it happened, under the table's identity.
        r = run_pgtape("log", *cli, "--table", "orders", "--json")
        shapes = [json.loads(line) for line in r.stdout.splitlines() if '"op": "SCHEMA"' in line]
        assert [s["name"] for s in shapes][-2:] == ["public.orders_v2", "sales.orders_v2"], r.stdout
        assert [col["name"] for col in shapes[-1]["columns"]] == list(points[-1].state.columns)
        # In place, into the live table under its new name and schema.
        r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(points[-2].lsn), "--in-place", "--yes")
        assert r.returncode == 0, r.stderr
        assert table_state(c, "sales.orders_v2") == points[-2].state


def test_a_rewrite_is_refused_until_capture_has_taken_a_new_base(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "orders"]
    with oracle_connect(dsn) as c:
        for s in ORDERS:
            c.execute(s)
        run_pgtape("init", *cli, check=True)
        capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture.log")
        try:
            before = step(c, "before", ["UPDATE orders SET status = 'x' WHERE id = 1"], "orders")
            rewrite = step(c, "rewrite", ["ALTER TABLE orders ALTER COLUMN amount TYPE text USING amount::text || '!'",
                                          "UPDATE orders SET amount = 'during' WHERE id = 2"], "orders")
            base = wait_until("capture to take a new base", lambda: new_bases(archive), 60)[0]
            after = step(c, "after", ["UPDATE orders SET amount = 'after' WHERE id = 3"], "orders")
            wait_until("capture to record the last change",
                       lambda: capture_done(archive, after.lsn), 30)
        finally:
            stop_process(capture)
        assert base.tables == ["public.orders"] and (base.as_of_lsn or 0) > rewrite.lsn
        assert_replays(archive, "public.orders", [before, after])
        line = one_line_error(run_pgtape("replay", *cli, "--target-lsn", lsn_text(rewrite.lsn), "--dry-run"), 3,
                              "or at or after a base of it taken", lsn_text(base.as_of_lsn or 0))
        assert line.startswith(f"pgtape: public.orders cannot be replayed to up to LSN {lsn_text(rewrite.lsn)}: "
                               "ALTER TABLE rewrote it"), line


def capture_done(archive: Path, lsn: int, table: str = "public.orders") -> bool:
    """The tape is known complete up to `lsn` (a replay to latest would include it)."""
    try:
        return prepare(Archive(archive), [table], Target("latest")).window.to_lsn >= lsn
    except Exception:
        return False


def test_a_dropped_table_is_absent_after_its_drop(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive)]
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE keep (id int PRIMARY KEY)")
        c.execute("CREATE TABLE gone (id int PRIMARY KEY)")
        c.execute("INSERT INTO gone VALUES (1)")
        capture_to_now(dsn, archive, tables="keep,gone")
        before = step(c, "insert", ["INSERT INTO gone VALUES (2)", "INSERT INTO keep VALUES (1)"], "gone")
        step(c, "drop", ["DROP TABLE gone"], "keep")
        c.execute("CREATE TABLE gone (id int PRIMARY KEY)")  # another table of that name: not captured
        c.execute("INSERT INTO gone VALUES (99)")
        capture_to_now(dsn, archive, tables="keep,gone")
        assert_replays(archive, "public.gone", [before])
        r = run_pgtape("replay", *cli, "--latest", "--schema", "rec", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["absent"] == ["public.gone"] and out["rows"] == {"public.keep": 1}
        assert table_state(c, "rec.keep").lines == (b"1",)
        assert c.execute("SELECT to_regclass('rec.gone')").fetchone() == (None,)
        # A snapshot of every table skips the dropped one; of that one alone, it is refused.
        r = run_pgtape("snapshot", *cli, "--json")
        assert r.returncode == 0 and "skipping public.gone: dropped" in r.stderr, r.stderr
        assert json.loads(r.stdout)["rows"] == {"public.keep": 1}
        r = run_pgtape("snapshot", *cli, "--tables", "gone")
        assert r.returncode == 3 and r.stderr.strip() == ("pgtape: public.gone no longer exists (dropped): there is "
                                                          "nothing to snapshot"), r.stderr
        # verify reads the tables' view too: capture cannot resume without it.
        assert run_pgtape("verify", *cli).returncode == 0
        (archive / "generations" / "0001" / "TABLES.json").write_text("{damaged")
        r = run_pgtape("verify", *cli)
        assert r.returncode == 1 and "problem: generation 1: " in r.stdout and "TABLES.json is damaged" in r.stdout


def test_without_the_trigger_a_change_is_noticed_by_polling_and_refused_around_it(dsn: str, role: str,
                                                                                 tmp_path: Path) -> None:
    """A role that may not create event triggers (no superuser): capture polls the catalog."""
    archive = tmp_path / "archive"
    with oracle_connect(dsn) as c:
        for s in ORDERS:
            c.execute(s)
        c.execute(f"GRANT SELECT ON orders TO {role}")
        cli = ["--dsn", dsn.replace("user=postgres", f"user={role}"), "--archive", str(archive),
               "--tables", "orders"]
        r = run_pgtape("init", *cli, check=True)
        assert "the DDL trigger is not installed" in r.stderr, r.stderr
        capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture.log")
        try:
            wait_until("capture to poll", lambda: "noticed by polling" in (tmp_path / "capture.log").read_text(),
                       30)
            before = step(c, "before", ["UPDATE orders SET status = 'x' WHERE id = 1"], "orders")
            c.execute("SELECT pg_sleep(1.5)")  # a poll that still matches comes in between
            change = step(c, "add column", ["ALTER TABLE orders ADD COLUMN channel text DEFAULT 'web'"], "orders")
            base = wait_until("capture to take a new base", lambda: new_bases(archive), 60)[0]
            after = step(c, "after", ["UPDATE orders SET channel = 'app' WHERE id = 2"], "orders")
            wait_until("capture to record the last change", lambda: capture_done(archive, after.lsn), 30)
        finally:
            stop_process(capture)
        assert "approximate" in (tmp_path / "capture.log").read_text()
        assert_replays(archive, "public.orders", [before, after])
        r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(change.lsn), "--dry-run")
        assert r.returncode == 3 and "noticed by polling the catalog" in r.stderr, r.stderr
        assert lsn_text(base.as_of_lsn or 0) in r.stderr, r.stderr


def test_kill_9_around_schema_changes_loses_nothing(dsn: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Capture killed at random instants while tables are renamed, reshaped and partitioned: every
    restart resumes with the view of the tape's end (TABLES.json) and the replay stays exact."""
    rng = random.Random(seed_for(request))
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "orders,pay"]
    with oracle_connect(dsn) as c:
        for s in ORDERS + ["CREATE TABLE pay (id int, m int, v text, PRIMARY KEY (id, m)) PARTITION BY RANGE (m)",
                           "CREATE TABLE pay_0 PARTITION OF pay FOR VALUES FROM (0) TO (10)",
                           "INSERT INTO pay VALUES (1, 1, 'a')"]:
            c.execute(s)
        run_pgtape("init", *cli, check=True)
        orders, columns, partitions = "orders", 0, 1
        points: dict[str, list[Point]] = {"public.orders": [], "public.pay": []}
        for round_ in range(8):
            capture = spawn_pgtape("capture", *cli, log=tmp_path / f"capture-{round_}.log")
            try:
                for _ in range(rng.randint(1, 4)):
                    kind = rng.choice(["add", "rename column", "rename table", "partition", "rows"])
                    stmts = [f"UPDATE {orders} SET id = id + 100 WHERE id = (SELECT min(id) FROM {orders})",
                             f"UPDATE pay SET v = v || 'x', m = (m + 7) % ({partitions} * 10)"]
                    if kind == "add":
                        columns += 1
                        stmts.insert(rng.randint(0, 2), f"ALTER TABLE {orders} ADD COLUMN c{columns} text "
                                                        f"DEFAULT 'd{columns}'")
                    elif kind == "rename column" and columns:
                        stmts.insert(1, f"ALTER TABLE {orders} RENAME COLUMN c{columns} TO c{columns}_r")
                        columns += 1
                        stmts.insert(2, f"ALTER TABLE {orders} RENAME COLUMN c{columns - 1}_r TO c{columns}")
                    elif kind == "rename table":
                        new = "orders_b" if orders == "orders" else "orders"
                        stmts.insert(1, f"ALTER TABLE {orders} RENAME TO {new}")
                        stmts[2:] = [s.replace(orders, new) for s in stmts[2:]]
                        orders = new
                    elif kind == "partition":
                        stmts.insert(0, f"CREATE TABLE pay_{partitions} PARTITION OF pay FOR VALUES FROM "
                                        f"({partitions * 10}) TO ({partitions * 10 + 10})")
                        partitions += 1
                        stmts.append(f"INSERT INTO pay VALUES ({partitions}, {partitions * 10 - 1}, 'new')")
                    p = step(c, kind, stmts, orders)
                    points["public.orders"].append(p)
                    points["public.pay"].append(Point(kind, p.lsn, table_state(c, "pay")))
                    time.sleep(rng.uniform(0, 0.3))
            finally:
                stop_process(capture, signal.SIGKILL)
        capture_to_now(dsn, archive, tables="orders,pay")
    print(f"{request.node.name}: {len(points['public.orders'])} points over 8 kills")
    for table, ps in points.items():
        assert_replays(archive, table, ps)


def test_changes_that_print_old_values_anew_are_rebase_points(dsn: str, tmp_path: Path) -> None:
    """No row change is decoded when an enum label is renamed, or when timestamp becomes timestamptz
    without a rewrite (a UTC session), yet existing values print differently: replay refuses across
    them until capture's new base, then replays exactly."""
    archive = tmp_path / "archive"
    cli = ["--dsn", dsn, "--archive", str(archive), "--tables", "moods"]
    with oracle_connect(dsn) as c:
        for s in ["CREATE TYPE mood AS ENUM ('sad', 'ok')",
                  "CREATE TABLE moods (id int PRIMARY KEY, m mood, at timestamp, v varchar(10))",
                  "INSERT INTO moods VALUES (1, 'sad', '2026-01-02 03:04:05', 'x')"]:
            c.execute(s)
        run_pgtape("init", *cli, check=True)
        capture = spawn_pgtape("capture", *cli, log=tmp_path / "capture.log")
        try:
            before = step(c, "before", ["UPDATE moods SET v = 'y'"], "moods")
            relabel = step(c, "relabel", ["ALTER TYPE mood RENAME VALUE 'sad' TO 'unhappy'"], "moods")
            wait_until("a new base after the relabel", lambda: new_bases(archive), 60)
            widen = step(c, "widen", ["ALTER TABLE moods ALTER COLUMN v TYPE varchar(20)"], "moods")  # text kept
            retype = step(c, "retype", ["SET TimeZone = 'UTC'", "ALTER TABLE moods ALTER COLUMN at TYPE timestamptz"],
                          "moods")
            wait_until("a new base after the type change", lambda: len(new_bases(archive)) >= 2, 60)
            after = step(c, "after", ["UPDATE moods SET v = 'z'"], "moods")
            wait_until("capture to record the last change", lambda: capture_done(archive, after.lsn, "public.moods"),
                       30)
        finally:
            stop_process(capture)
        assert relabel.state.lines == (b"1\tunhappy\t2026-01-02 03:04:05\ty",)
        assert_replays(archive, "public.moods", [before, widen, after])
        for p, reason in ((relabel, "ALTER TYPE public.mood may have changed how its values print"),
                          (retype, "the type of its column at changed from timestamp without time zone to "
                                   "timestamp with time zone")):
            r = run_pgtape("replay", *cli, "--target-lsn", lsn_text(p.lsn), "--dry-run")
            assert r.returncode == 3 and reason in r.stderr, (p.label, r.stderr)
