"""Replay against a real PostgreSQL, checked against an oracle that never reads the tape.

The oracle (tests/replay_oracle.py) runs every transaction itself and records, around each COMMIT,
the server clock and WAL position and a COPY dump of the tables; a replay to any target must equal
the dump of the transaction that target selects (docs: transactions apply in commit order and
replay stops before the first one past the target). Randomised tests print their seed;
PGTAPE_TEST_SEED=<seed> repeats a run.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from conftest import capture_to_now, one_line_error, run_pgtape, scalar
from testkit.cluster import EmbeddedPostgres
from pgtape.tape.archive import Archive
from pgtape.tape.frames import KIND_DATA, read_frame
from pgtape.tape.reader import Txn, iter_changes
from pgtape.replay.engine import prepare
from pgtape.replay.target import Target
from replay_oracle import (History, Step, TableState, compare, copy_lines, dump, iso, lsn_int, lsn_text, oracle_connect,
                           parse_pg_csv, seed_for, table_state, unescape_copy)
from pgtape.snapshots import catalog


# -- helpers ----------------------------------------------------------------------------------
def _cli(dsn: str, archive: Path, tables: str) -> list[str]:
    return ["--dsn", dsn, "--archive", str(archive), "--tables", tables]


def _tape_txns(archive: Path) -> dict[int, Txn]:
    """xid -> transaction, from the tape (used only for exact commit points, never for states)."""
    return {c.txn.xid: c.txn for c in iter_changes(Archive(archive), 1)}


def _schema_state(conn: psycopg.Connection, schema: str, table: str) -> TableState:
    return table_state(conn, f'"{schema}"."{table}"')


def _check_schema(conn: psycopg.Connection, schema: str, expected: dict[str, TableState]) -> None:
    for t, st in expected.items():
        got = _schema_state(conn, schema, t.split(".")[-1])
        problem = compare(t, got.columns, got.types, got.lines, st)
        assert problem is None, f"schema {schema}: {problem}"


def _counts(live: TableState, target: TableState) -> dict[str, int]:
    """Independent diff by primary key (first column): what replaying `target` over `live` changes."""
    lv, tg = live.rows(), target.rows()
    return {"insert": len(tg.keys() - lv.keys()), "delete": len(lv.keys() - tg.keys()),
            "update": sum(1 for k in tg.keys() & lv.keys() if tg[k] != lv[k])}


def _schemas(conn: psycopg.Connection, like: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s ORDER BY 1",
                                       (like,)).fetchall()]


def _snapshots(archive: Path) -> list[catalog.SnapshotRecord]:
    return sorted((r for r in catalog.load_all(Archive(archive)) if r.status == catalog.COMPLETED),
                  key=lambda r: r.as_of_lsn or 0)


# -- 1. differential: a random history, many targets ---------------------------------------------
A_DDL = ("CREATE TABLE a (id int PRIMARY KEY, amount numeric(12,2), note text, big text, j jsonb, arr int[], "
         "b bytea, ts timestamptz)")
B_DDL = ("CREATE TABLE b (id text PRIMARY KEY, qty numeric, r float8, flag boolean, t text, d date, iv interval, "
         "u uuid)")
TEXTS = ["", " ", "plain", "tab\there", "line\nbreak", "cr\rhere", "back\\slash", "\\N", "quote'and\"dq",
         "comma,semi;", "ünïcode ✓ 日本", "trailing space "]


class Workload:
    """Random transactions over tables a and b; keys known from the database itself."""

    def __init__(self, rng: random.Random, h: History) -> None:
        self.rng, self.h = rng, h
        self.next_a = 1000
        self.next_b = 1000
        self.has_extra = False
        self.protected = {1, 2}  # rows whose TOASTed value comes from the base: kept for the probes

    # values, as text for explicit casts
    def big(self) -> str | None:
        r = self.rng.random()
        if r < 0.4:
            return "".join(f"{self.rng.getrandbits(32):08x}" for _ in range(self.rng.randint(320, 600)))
        return None if r < 0.55 else self.text()

    def text(self) -> str | None:
        r = self.rng.random()
        if r < 0.15:
            return None
        if r < 0.6:
            return self.rng.choice(TEXTS)
        return f"note-{self.rng.getrandbits(20)}" + self.rng.choice(["", "\t", "\\", "\n"])

    def amount(self) -> str | None:
        if self.rng.random() < 0.15:
            return None
        return self.rng.choice(["0.10", "0.00", "-0.01", "9999999999.99", "-9999999999.99",
                                f"{self.rng.randint(-10**6, 10**6)}.{self.rng.randint(0, 99):02d}"])

    def a_row(self, key: int) -> list[Any]:
        rng = self.rng
        j = rng.choice([None, '{"k": 1.50, "s": "x\\ty", "n": null}', '[1, 2.0, "3"]', '"str"', "{}",
                        f'{{"v": {rng.randint(0, 99)}, "w": [true, false]}}'])
        arr = rng.choice([None, "{}", "{1,NULL,3}", f"{{{rng.randint(-5, 5)}}}"])
        b = rng.choice([None, "\\x", "\\x00ff10", "\\x" + rng.randbytes(rng.randint(1, 20)).hex()])
        ts = rng.choice([None, "infinity", "2026-11-25 14:02:59.123456+01",
                         f"20{rng.randint(10, 40)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} "
                         f"0{rng.randint(0, 9)}:00:0{rng.randint(0, 9)}.{rng.randint(0, 999999):06d}+00"])
        return [key, self.amount(), self.text(), self.big(), j, arr, b, ts]

    def b_row(self, key: str) -> list[Any]:
        rng = self.rng
        qty = rng.choice([None, "0.10", "1.0", "1.00", "-0.5", "123456789012345678901234567890.000000000000000001",
                          str(rng.randint(-10**20, 10**20)), f"{rng.randint(0, 999)}.{rng.randint(0, 9999)}"])
        r = rng.choice([None, "0.1", "1e+100", "-2.5", "3", "1.5e-300", str(rng.random())])
        flag = rng.choice([None, True, False])
        d = rng.choice([None, "2026-02-28", "infinity", f"19{rng.randint(10, 99)}-12-31"])
        iv = rng.choice([None, "1 day 02:03:04", "-1 mons", "00:00:00.000001"])
        u = rng.choice([None, "6f1c1a8e-0000-4000-8000-000000000001",
                        str(rng.getrandbits(128).to_bytes(16, "big").hex())])
        return [key, qty, r, flag, self.text(), d, iv, u]

    def b_key(self) -> str:
        self.next_b += 1
        return self.rng.choice(["k{}", "tab\tkey{}", "back\\slash{}", "ключ{}", "quote'{}", "sp ace{}",
                                "nl\n{}"]).format(self.next_b)

    INSERT_A = ("INSERT INTO a (id, amount, note, big, j, arr, b, ts) VALUES "
                "(%s, %s::numeric, %s, %s, %s::jsonb, %s::int[], %s::bytea, %s::timestamptz)")
    INSERT_B = ("INSERT INTO b (id, qty, r, flag, t, d, iv, u) VALUES "
                "(%s, %s::numeric, %s::float8, %s, %s, %s::date, %s::interval, %s::uuid)")

    def keys(self, table: str) -> list[Any]:
        return [r[0] for r in self.h.conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]

    def op(self) -> list[tuple[str, list[Any]]]:
        rng = self.rng
        a_keys = self.keys("a")
        b_keys = self.keys("b")
        free_a = [k for k in a_keys if k not in self.protected]
        kind = rng.choices(["ins_a", "upd_a", "upd_a_big", "key_a", "del_a", "multi_a", "churn_a",
                            "ins_b", "upd_b", "key_b", "del_b"],
                           [12, 18, 6, 6, 6, 3, 4, 10, 10, 4, 5])[0]
        if kind in ("upd_a", "upd_a_big", "key_a", "del_a", "churn_a", "multi_a") and not free_a:
            kind = "ins_a"
        if kind in ("upd_b", "key_b", "del_b") and not b_keys:
            kind = "ins_b"
        if kind == "ins_a":
            self.next_a += 1
            return [(self.INSERT_A, self.a_row(self.next_a))]
        if kind == "upd_a":  # the TOASTed column untouched: it is absent from the tape's UPDATE
            k = rng.choice(a_keys if rng.random() < 0.8 else free_a)
            sets: list[tuple[str, Any]] = rng.sample(
                [("amount = %s::numeric", self.amount()), ("note = %s", self.text()),
                 ("j = %s::jsonb", rng.choice([None, '{"u": 2}'])), ("arr = %s::int[]", rng.choice([None, "{9}"]))],
                rng.randint(1, 2))
            if self.has_extra and rng.random() < 0.6:
                sets.append(("extra = %s", rng.choice([None, "", f"x{rng.getrandbits(16)}", "e\\t"])))
            return [(f"UPDATE a SET {', '.join(s for s, _ in sets)} WHERE id = %s", [v for _, v in sets] + [k])]
        if kind == "upd_a_big":
            return [("UPDATE a SET big = %s WHERE id = %s", [self.big(), rng.choice(free_a)])]
        if kind == "key_a":  # primary-key change, TOAST untouched
            self.next_a += 1
            extra = ", extra = 'moved'" if self.has_extra and rng.random() < 0.5 else ""
            return [(f"UPDATE a SET id = %s, note = %s{extra} WHERE id = %s",
                     [self.next_a, self.text(), rng.choice(free_a)])]
        if kind == "del_a":
            return [("DELETE FROM a WHERE id = %s", [rng.choice(free_a)])]
        if kind == "multi_a":
            # A residue some row has: a transaction that changes no row is not on the tape at all.
            return [("UPDATE a SET amount = -amount WHERE id %% 4 = %s", [rng.choice(sorted({k % 4 for k in a_keys}))])]
        if kind == "churn_a":  # several changes to the same keys in one transaction
            k = rng.choice(free_a)
            self.next_a += 2
            return [("UPDATE a SET note = 'first' WHERE id = %s", [k]),
                    ("UPDATE a SET note = %s, amount = 1.50 WHERE id = %s", [self.text(), k]),
                    (self.INSERT_A, self.a_row(self.next_a - 1)),
                    ("DELETE FROM a WHERE id = %s", [self.next_a - 1]),
                    ("UPDATE a SET id = %s WHERE id = %s", [self.next_a, k]),
                    (self.INSERT_A, self.a_row(k))]  # the old key comes back as a new row
        if kind == "ins_b":
            return [(self.INSERT_B, self.b_row(self.b_key()))]
        if kind == "upd_b":
            return [("UPDATE b SET qty = %s::numeric, t = %s WHERE id = %s",
                     [rng.choice([None, "1.0", "1.000", "0.10"]), self.text(), rng.choice(b_keys)])]
        if kind == "key_b":
            return [("UPDATE b SET id = %s WHERE id = %s", [self.b_key(), rng.choice(b_keys)])]
        return [("DELETE FROM b WHERE id = %s", [rng.choice(b_keys)])]

    def txn(self, label: str) -> Step:
        stmts: list[tuple[str, list[Any]]] = []
        for _ in range(self.rng.choice([1, 1, 1, 2, 3])):
            stmts += self.op()
        time.sleep(self.rng.choice([0.001, 0.002, 0.004]))  # commit times stay apart
        return self.h.txn(label, stmts)


def test_replay_equals_recorded_history_at_random_targets(dsn: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    rng = random.Random(seed_for(request))
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "a,b")
    tables = ["public.a", "public.b"]
    h = History(dsn, tables)
    try:
        h.conn.execute(A_DDL)
        h.conn.execute(B_DDL)
        h.conn.execute("ALTER TABLE a ALTER COLUMN big SET STORAGE EXTERNAL")
        w = Workload(rng, h)
        for i in range(1, 21):  # in the initial base; ids 1..8 carry an out-of-line (TOASTed) value
            row = w.a_row(i)
            if i <= 8:
                row[3] = "".join(f"{rng.getrandbits(32):08x}" for _ in range(500))
            h.conn.execute(w.INSERT_A, row)
        for _ in range(12):
            h.conn.execute(w.INSERT_B, w.b_row(w.b_key()))
        run_pgtape("init", *cli, check=True)
        h.observe("after init")
        for i in range(45):
            if i == 10:  # a base row's key changes while its TOASTed value stays unchanged (absent)
                time.sleep(0.002)
                h.txn("move base row 2", [("UPDATE a SET id = 5000, note = 'moved' WHERE id = 2", [])])
                w.protected.add(5000)
            else:
                w.txn(f"A{i}")
        # Capture restarts here, so it learns a's columns from the catalog after the ALTER below.
        capture_to_now(dsn, archive, tables="a,b")
        time.sleep(0.002)
        alter = h.txn("alter", ["ALTER TABLE a ADD COLUMN extra text"])  # on the tape: a Schema record
        w.has_extra = True
        time.sleep(0.002)
        # The first change of a after the ALTER leaves the TOASTed column out (absent) and sets the new one.
        probes = [h.txn("probe 1", [("UPDATE a SET note = 'probe', extra = 'set after ALTER' WHERE id = 1", [])])]
        assert h.conn.execute("SELECT length(big) > 2000 FROM a WHERE id = 1").fetchone() == (True,)
        for i in range(20):
            if i == 5:
                time.sleep(0.002)
                h.txn("touch moved row", [("UPDATE a SET amount = 5.55, extra = 'moved too' WHERE id = 5000", [])])
            else:
                w.txn(f"B{i}")
        before_snapshot = len(h.steps) - 1
        run_pgtape("snapshot", *cli, check=True)
        time.sleep(0.002)
        for i in range(30):
            time.sleep(0.002)
            if i == 6:
                h.txn("truncate b", ["TRUNCATE b", (w.INSERT_B, w.b_row(w.b_key()))])
            elif i == 15:
                # The same while capture runs: an INSERT has shown it a's columns before this ALTER.
                w.next_a += 1
                h.txn("insert before alter 2", [(w.INSERT_A, w.a_row(w.next_a))])
                time.sleep(0.002)
                alters = [alter, h.txn("alter 2", ["ALTER TABLE a ADD COLUMN extra2 text"])]
                time.sleep(0.002)
                probes.append(h.txn("probe 2", [("UPDATE a SET extra2 = 'set after ALTER 2' WHERE id = 1", [])]))
            elif i == 24:
                h.txn("truncate a", ["TRUNCATE a", (w.INSERT_A, w.a_row(1)), (w.INSERT_A, w.a_row(2)),
                                     ("UPDATE a SET extra = 'after truncate' WHERE id = 2", [])])
            else:
                w.txn(f"C{i}")
        capture_to_now(dsn, archive, tables="a,b")

        # The tape holds exactly the recorded transactions, in order (else nothing below means much).
        tape = _tape_txns(archive)
        on_tape = [s for s in h.steps if s.on_tape and s.xid is not None]
        assert [tape[s.xid].end_lsn for s in on_tape if s.xid is not None] == sorted(t.end_lsn for t in tape.values())
        assert len(tape) == len(on_tape)
        assert [c.op for c in iter_changes(Archive(archive), 1) if c.txn.xid in {x.xid for x in alters}] == ["S", "S"]
        absent = [c for c in iter_changes(Archive(archive), 1) if c.op == "U" and c.absent]
        assert len(absent) >= 5 and any(c.old and c.new and c.old["id"] != c.new["id"] for c in absent)
        for s in on_tape:  # the oracle's brackets hold the tape's commit points
            assert s.xid is not None
            t = tape[s.xid]
            assert s.pre_time <= t.commit_time <= s.post_time and s.pre_lsn <= t.commit_lsn < t.end_lsn <= s.post_lsn
        for prev, s in zip(h.steps, h.steps[1:]):
            assert prev.post_time < s.pre_time and prev.post_lsn <= s.pre_lsn

        base1, base2 = _snapshots(archive)
        assert base2.as_of_time is not None and base2.as_of_lsn is not None
        n = len(h.steps)
        targets: list[tuple[Target, Step, str]] = []
        for _ in range(30):  # times and LSNs strictly between two transactions, inclusive and exclusive
            i = rng.randrange(n - 1)
            lo, hi = h.steps[i], h.steps[i + 1]
            when = rng.randint(lo.post_time + 1, hi.pre_time - 1)
            excl = rng.random() < 0.5
            targets.append((Target("time", time=when, exclusive=excl), lo, f"time {iso(when)} after {lo.label}"))
            excl2 = rng.random() < 0.5
            lsn = rng.randint(lo.post_lsn + excl2, hi.pre_lsn - 1 + excl2)
            targets.append((Target("lsn", lsn=lsn, exclusive=excl2), lo, f"lsn {lsn_text(lsn)} after {lo.label}"))
        # exactly at a commit (from the tape)
        for k in rng.sample(range(1, n), 20) + [h.steps.index(p) for p in probes]:
            s, prev = h.steps[k], h.steps[k - 1]
            if not s.on_tape or s.xid is None:
                continue
            t = tape[s.xid]
            targets += [(Target("time", time=t.commit_time), s, f"time = commit of {s.label}"),
                        (Target("time", time=t.commit_time, exclusive=True), prev, f"time before commit of {s.label}"),
                        (Target("lsn", lsn=t.commit_lsn), s, f"lsn = commit of {s.label}"),
                        (Target("lsn", lsn=t.commit_lsn, exclusive=True), prev, f"lsn before commit of {s.label}"),
                        (Target("lsn", lsn=t.end_lsn, exclusive=True), s, f"lsn = end of {s.label}")]
        # the seam of the second base, and the start of the window
        snap_step = h.steps[before_snapshot]
        for excl in (False, True):
            targets += [(Target("time", time=base2.as_of_time, exclusive=excl), snap_step, "time = base 2"),
                        (Target("lsn", lsn=base2.as_of_lsn, exclusive=excl), snap_step, "lsn = base 2")]
        targets += [(Target("time", time=base2.as_of_time + 1), snap_step, "time = base 2 + 1us"),
                    (Target("lsn", lsn=base2.as_of_lsn - 1), snap_step, "lsn = base 2 - 1"),
                    (Target("time", time=base1.as_of_time), h.steps[0], "time = base 1"),
                    (Target("lsn", lsn=base1.as_of_lsn), h.steps[0], "lsn = base 1"),
                    (Target("latest"), h.steps[-1], "latest")]

        failures: list[str] = []
        used = {base1.id: 0, base2.id: 0}
        a = Archive(archive)
        for target, step, why in targets:
            # The oracle's own view must agree where it is certain (guards the test's arithmetic).
            value = target.time if target.kind == "time" else target.lsn
            if value is not None:  # a time or LSN target
                certain = h.state_at(target.kind, value, target.exclusive)
                assert certain is None or certain.state == step.state, why
            plan = prepare(a, tables, target)
            used[plan.base.id] += 1
            if h.steps.index(step) > before_snapshot:
                assert plan.base.id == base2.id, f"{why}: base {plan.base.id}, not the newest usable {base2.id}"
            for table in tables:
                fold = plan.folds[table]
                problem = compare(table, fold.columns, fold.types, plan.rows(table), step.state[table])
                if problem:
                    failures.append(f"{target.describe()} ({why}, expected state after {step.label}): {problem}")
        assert used[base1.id] > 5 and used[base2.id] > 5, used
        assert not failures, f"{len(failures)} of {len(targets)} targets differ, e.g.:\n" + "\n".join(failures[:8])

        # The same through the command line, into a recovery schema: values survive the round trip.
        for step in rng.sample(h.steps[1:-1], 2):
            nxt = h.steps[h.steps.index(step) + 1]
            when = (step.post_time + nxt.pre_time) // 2
            r = run_pgtape("replay", *cli, "--target-time", iso(when), "--schema", "rec", "--force", "--json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["schema"] == "rec"
            _check_schema(h.conn, "rec", step.state)
    finally:
        h.close()


# -- 2 and 3. every target kind through the command line; targets outside the window ---------------
def test_cli_targets_and_window_errors(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "accounts")
    h = History(dsn, ["public.accounts"])
    try:
        h.conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance numeric(12,2), note text)")
        h.conn.execute("INSERT INTO accounts SELECT g, g * 10.10, 'n' || g FROM generate_series(1, 5) g")
        run_pgtape("init", *cli, check=True)
        h.observe("init")
        sql = ["INSERT INTO accounts VALUES (6, 0.10, '')", "UPDATE accounts SET balance = balance + 1 WHERE id <= 3",
               "DELETE FROM accounts WHERE id = 2", "UPDATE accounts SET id = 20, note = NULL WHERE id = 4"]
        for i, s in enumerate(sql):
            time.sleep(0.003)
            h.txn(f"t{i + 1}", [s])
        at_mark = len(h.steps) - 1
        r = run_pgtape("mark", "before-x", *cli, "--json", check=True)
        mark = json.loads(r.stdout)
        for i, s in enumerate(["DELETE FROM accounts WHERE id > 3", "INSERT INTO accounts VALUES (7, 7.77, 'x')",
                               "UPDATE accounts SET note = 'after' WHERE id = 1"]):
            time.sleep(0.003)
            h.txn(f"u{i + 1}", [s])
        capture_to_now(dsn, archive, tables="accounts")
        log = [json.loads(x) for x in run_pgtape("log", *cli, "--json", check=True).stdout.splitlines()]
        by_xid = {e["xid"]: e for e in log}
        assert {e["op"] for e in log} >= {"MESSAGE", "INSERT", "UPDATE", "DELETE"}

        def replay(*target: str, expect: Step, schema: str | None = None) -> dict[str, Any]:
            args = ["--schema", schema] if schema else []
            r = run_pgtape("replay", *cli, *target, *args, "--json")
            assert r.returncode == 0, f"replay {target}: {r.stderr}"
            out = json.loads(r.stdout)
            _check_schema(h.conn, out["schema"], expect.state)
            return out

        t3, t4 = h.steps[3], h.steps[4]
        e3, e4 = by_xid[t3.xid], by_xid[t4.xid]
        # a transaction committed exactly at the target: applied, unless --target-exclusive
        out = replay("--target-time", e3["commit_time"], expect=t3, schema="r_time")
        assert out["resolved_lsn"] == e3["end_lsn"] and out["resolved_commit_time"] == e3["commit_time"]
        replay("--target-time", e3["commit_time"], "--target-exclusive", expect=h.steps[2], schema="r_time_x")
        replay("--target-time", iso((t3.post_time + t4.pre_time) // 2), expect=t3, schema="r_time_mid")
        replay("--target-lsn", e4["commit_lsn"], expect=t4, schema="r_lsn")
        replay("--target-lsn", e4["commit_lsn"], "--target-exclusive", expect=t3, schema="r_lsn_x")
        out = replay("--target-name", "before-x", expect=h.steps[at_mark])
        assert out["schema"] == "pgtape_recovered_before_x"
        out = replay("--latest", expect=h.steps[-1])
        assert out["schema"] == "pgtape_recovered_latest"
        out = replay("--target-lsn", e4["end_lsn"], expect=t4)
        assert out["schema"].startswith("pgtape_recovered_")

        # outside the window: one line that prints the window, exit 1
        window = f"recoverable window: {out['window']['from']}"
        err = one_line_error(run_pgtape("replay", *cli, "--target-time", "2000-01-01T00:00:00Z", "--dry-run"), 3,
                              "before the oldest base", window)
        assert out["window"]["to"] == log[-1]["commit_time"] and out["window"]["to"] in err
        late = iso(h.steps[-1].post_time + 3600 * 10**6)
        one_line_error(run_pgtape("replay", *cli, "--target-time", late, "--dry-run"), 3, window)
        one_line_error(run_pgtape("replay", *cli, "--target-lsn", "FF/0", "--dry-run"), 3, window)
        one_line_error(run_pgtape("replay", *cli, "--target-lsn", "0/10", "--dry-run"), 3, window)
        one_line_error(run_pgtape("replay", *cli, "--target-time", "2026-11-25 14:02:59", "--dry-run"), 2,
                        "no time zone")
        one_line_error(run_pgtape("replay", *cli, "--target-name", "nope", "--dry-run"), 3,
                        "'nope'", "before-x")
        # nothing was written by the refusals
        assert _schemas(h.conn, "pgtape_recovered_%") == sorted(
            ["pgtape_recovered_before_x", "pgtape_recovered_latest", out["schema"]])
        assert mark["name"] == "before-x"
    finally:
        h.close()


# -- 4. gaps and damage: one line naming what is wrong, never a traceback --------------------------
def _data_frame(path: Path) -> tuple[int, int]:
    """(offset, size) of a data frame in the middle of a tape or snapshot file."""
    frames = []
    dec = zstandard.ZstdDecompressor()
    with open(path, "rb") as f:
        offset = 0
        while (fr := read_frame(f, offset, dec)) is not None:
            if fr.kind == KIND_DATA:
                frames.append((fr.offset, fr.size))
            offset = fr.end
    assert frames, f"{path} has no data frame"
    return frames[len(frames) // 2]


def _flip(path: Path, at: int) -> bytes:
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[at] ^= 0x5A
    path.write_bytes(bytes(damaged))
    return original


def test_gaps_and_damage_are_reported_not_replayed(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    conf = tmp_path / "pgtape.toml"
    conf.write_text('[capture]\nsegment_size = "8kB"\nfsync_interval = "10ms"\n')
    cli = _cli(dsn, archive, "payments") + ["--config", str(conf)]
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE payments (id int PRIMARY KEY, note text)")
        c.execute("INSERT INTO payments SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
        run_pgtape("init", *cli, check=True)
        for batch in range(5):  # incompressible notes: each batch overfills an 8 kB segment
            c.execute("INSERT INTO payments SELECT g, md5(random()::text) || md5(random()::text) "
                      "FROM generate_series(%s::int, %s::int) g", (10000 + batch * 150, 10000 + batch * 150 + 149))
            c.execute("UPDATE payments SET note = 'u' || id WHERE id %% 7 = %s", (batch,))
            capture_to_now(dsn, archive, "--config", str(conf), tables="payments")
        c.execute("DELETE FROM payments WHERE id % 3 = 0")
        capture_to_now(dsn, archive, "--config", str(conf), tables="payments")
        live = table_state(c, "public.payments")

        segs = Archive(archive).segments(1)
        assert len(segs) >= 4 and not segs[1].is_open, [s.path.name for s in segs]
        ok = run_pgtape("replay", *cli, "--latest", "--schema", "whole")
        assert ok.returncode == 0, ok.stderr
        _check_schema(c, "whole", {"public.payments": live})

        # a missing sealed segment in the middle: a gap, never a replay that skips it
        middle = segs[len(segs) // 2]
        assert middle.end_lsn is not None
        moved = tmp_path / middle.path.name
        shutil.move(middle.path, moved)
        try:
            r = run_pgtape("replay", *cli, "--latest", "--dry-run")
            one_line_error(r, 3, "gap", lsn_text(middle.start_lsn), lsn_text(middle.end_lsn))
            r = run_pgtape("replay", *cli, "--latest", "--output", str(tmp_path / "out"))
            one_line_error(r, 3, "gap")
            assert not (tmp_path / "out" / "public.payments.csv").exists()
        finally:
            shutil.move(moved, middle.path)

        # a flipped byte inside a segment's data frame: the file and the frame's offset
        frame_at, size = _data_frame(middle.path)
        original = _flip(middle.path, frame_at + size // 2)
        try:
            r = run_pgtape("replay", *cli, "--latest")
            one_line_error(r, 3, str(middle.path), f"offset {frame_at}")
            assert _schemas(c, "pgtape_recovered_%") == []
        finally:
            middle.path.write_bytes(original)

        # a flipped byte in the initial base's table file
        (base,) = _snapshots(archive)
        snap = catalog.snapshot_dir(Archive(archive), 1, base.id) / "public.payments.snap"
        frame_at, size = _data_frame(snap)
        original = _flip(snap, frame_at + size // 2)
        try:
            r = run_pgtape("replay", *cli, "--latest")
            one_line_error(r, 3, str(snap), f"offset {frame_at}")
            assert _schemas(c, "pgtape_recovered_%") == []  # rolled back
        finally:
            snap.write_bytes(original)
        r = run_pgtape("replay", *cli, "--latest", "--schema", "whole", "--force")
        assert r.returncode == 0, r.stderr


# -- 5. in place: a dry run without --yes, then the real thing with a backup; foreign keys ----------
def _history_for_live_tests(dsn: str, archive: Path, table_ddl: str, table: str, seed_rows: str,
                            before: list[str], after: list[str]) -> tuple[History, Step]:
    """Rows in the base, `before` on the tape up to the target step, `after` past it; all captured."""
    h = History(dsn, [f"public.{table}"])
    h.conn.execute(table_ddl)
    h.conn.execute(seed_rows)
    run_pgtape("init", *_cli(dsn, archive, table), check=True)
    h.observe("init")
    for i, s in enumerate(before):
        h.txn(f"before {i}", [s])
    target = h.steps[-1]
    for i, s in enumerate(after):
        h.txn(f"after {i}", [s])
    capture_to_now(dsn, archive, tables=table)
    return h, target


ACC_DDL = "CREATE TABLE acc (id int PRIMARY KEY, bal numeric(12,2), note text, tags text[])"
ACC_SEED = "INSERT INTO acc SELECT g, g * 1.25, CASE WHEN g % 5 = 0 THEN NULL ELSE 'n' || g END, '{a,b}' " \
           "FROM generate_series(1, 40) g"
ACC_BEFORE = ["UPDATE acc SET bal = bal + 100 WHERE id <= 5", "DELETE FROM acc WHERE id BETWEEN 35 AND 37",
              "INSERT INTO acc VALUES (41, 0.10, '', '{}'), (42, NULL, NULL, NULL)",
              "UPDATE acc SET id = 100 WHERE id = 38"]
ACC_AFTER = ["UPDATE acc SET note = 'changed' WHERE id % 4 = 0", "DELETE FROM acc WHERE id IN (1, 2, 41, 100)",
             "INSERT INTO acc VALUES (50, 5.00, 'new', '{x}'), (35, 35.35, 'reborn', NULL)",
             "UPDATE acc SET note = '' WHERE id = 42", "UPDATE acc SET tags = '{a,b,c}' WHERE id = 3",
             "UPDATE acc SET id = 200 WHERE id = 7"]


def test_replica_identity_full_with_a_primary_key_replays_every_step(dsn: str, tmp_path: Path) -> None:
    """With REPLICA IDENTITY FULL the tape's old tuples are whole rows, not keys: deletes and key
    changes must still find their key inside them (replay's common path slices keys only from
    key-only identities)."""
    archive = tmp_path / "archive"
    h, _ = _history_for_live_tests(dsn, archive, ACC_DDL + "; ALTER TABLE acc REPLICA IDENTITY FULL", "acc",
                                   ACC_SEED, ACC_BEFORE, ACC_AFTER)
    try:
        a = Archive(archive)
        assert any(c.op == "D" and c.old is not None and len(c.old) == 4 for c in iter_changes(a, 1))  # whole rows
        for step in h.steps:
            plan = prepare(a, ["public.acc"], Target("lsn", lsn=step.post_lsn))
            fold = plan.folds["public.acc"]
            problem = compare("public.acc", fold.columns, fold.types, plan.rows("public.acc"), step.state["public.acc"])
            assert problem is None, f"after {step.label}: {problem}"
    finally:
        h.close()


def test_in_place_needs_yes_and_backs_up_what_it_overwrites(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "acc")
    h, target = _history_for_live_tests(dsn, archive, ACC_DDL, "acc", ACC_SEED, ACC_BEFORE, ACC_AFTER)
    try:
        c = h.conn
        live = table_state(c, "public.acc")
        want = target.state["public.acc"]
        expected_counts = _counts(live, want)
        assert all(expected_counts.values())
        lsn = lsn_text(target.post_lsn)

        r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--in-place")
        assert r.returncode == 0, r.stderr
        assert "NOT applied" in r.stdout and "--yes" in r.stdout
        row = next(line for line in r.stdout.splitlines() if line.startswith("public.acc"))
        assert row.split()[1:] == [str(len(want.lines)), str(expected_counts["insert"]),
                                   str(expected_counts["update"]), str(expected_counts["delete"])], r.stdout
        assert table_state(c, "public.acc") == live and _schemas(c, "pgtape_backup_%") == []

        r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--in-place", "--yes", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["applied"] is True and out["tables"]["public.acc"] == {"rows": len(want.lines), **expected_counts}
        assert table_state(c, "public.acc") == want
        backup = out["backup_schema"]
        assert _schemas(c, "pgtape_backup_%") == [backup]
        # exactly the live rows that were overwritten or deleted, as they were
        lv, tg = live.rows(), want.rows()
        overwritten = sorted(b"\t".join(v) for k, v in lv.items() if tg.get(k) != v)
        assert list(copy_lines(c, f"SELECT * FROM {backup}.acc")) == overwritten
        assert len(overwritten) == expected_counts["update"] + expected_counts["delete"]
    finally:
        h.close()


def test_in_place_refused_by_a_foreign_key_rolls_back(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "parent")
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE parent (id int PRIMARY KEY, name text)")
        c.execute("CREATE TABLE child (id int PRIMARY KEY, parent_id int CONSTRAINT child_parent_fk "
                  "REFERENCES parent (id))")
        c.execute("INSERT INTO parent VALUES (1, 'one')")
        run_pgtape("init", *cli, check=True)
        c.execute("UPDATE parent SET name = 'uno' WHERE id = 1")
        before = scalar(c.execute("SELECT pg_current_wal_insert_lsn()::text"))
        c.execute("INSERT INTO parent VALUES (2, 'two')")
        c.execute("INSERT INTO child VALUES (10, 2)")  # not captured; depends on a row the target lacks
        capture_to_now(dsn, archive, tables="parent")
        live = dump(c, ["public.parent", "public.child"])
        r = run_pgtape("replay", *cli, "--target-lsn", before, "--in-place", "--yes")
        err = one_line_error(r, 3, "rolled back")
        assert "child_parent_fk" in err or "child" in err, err
        assert dump(c, ["public.parent", "public.child"]) == live
        assert _schemas(c, "pgtape_backup_%") == []


# -- 6. files: CSV and JSON lines -------------------------------------------------------------
def test_output_files_hold_the_target_state(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "f")
    values = [None, "", " ", None, "a,b", 'say "hi"', "line1\nline2", "cr\r\nlf", "tab\there", "back\\slash", "\\N",
              "ünïcode ✓", "NULL", '"', ","]
    inserts = [("INSERT INTO f VALUES (%s, %s, %s::numeric, %s::bytea, %s::jsonb, %s, %s::text[])",
                [i, v, ["1.0", "0.10", None, "-3"][i % 4], [None, "\\x", "\\x00ff"][i % 3],
                 [None, '{"a": "x\\ny", "b": null}', '""', "null"][i % 4], [None, True, False][i % 3],
                 [None, "{}", '{"a b",NULL,"c,d","\\"q\\""}'][i % 3]])
               for i, v in enumerate(values)]
    h = History(dsn, ["public.f"])
    try:
        h.conn.execute("CREATE TABLE f (id int PRIMARY KEY, t text, n numeric, b bytea, j jsonb, flag boolean, "
                       "arr text[])")
        for s, p in inserts[:7]:
            h.conn.execute(s, p)
        run_pgtape("init", *cli, check=True)
        h.observe("init")
        h.txn("rest", inserts[7:])
        h.txn("swap", ["UPDATE f SET t = CASE WHEN t IS NULL THEN '' WHEN t = '' THEN NULL ELSE t || ',x' END "
                       "WHERE id % 2 = 0"])
        target = h.steps[-1]
        time.sleep(0.002)
        h.txn("later", ["UPDATE f SET t = 'later'", "DELETE FROM f WHERE id = 3"])
        capture_to_now(dsn, archive, tables="f")
        want = target.state["public.f"]
        expected: list[list[Any]] = [[unescape_copy(x) for x in line.split(b"\t")] for line in want.lines]
        when = iso((target.post_time + h.steps[-1].pre_time) // 2)
        for fmt in ("csv", "jsonl"):
            out = tmp_path / fmt
            r = run_pgtape("replay", *cli, "--target-time", when, "--output", str(out), "--format", fmt)
            assert r.returncode == 0, r.stderr
            assert sorted(p.name for p in out.iterdir()) == [f"public.f.{fmt}"]
            text = (out / f"public.f.{fmt}").read_bytes().decode()  # no newline translation
            if fmt == "csv":
                rows = parse_pg_csv(text)
                assert rows[0] == list(want.columns)
                got: list[list[Any]] = rows[1:]
                # PostgreSQL itself reads the file back to the same rows (NULL vs "" included)
                h.conn.execute("CREATE TABLE f_back (LIKE f)")
                with h.conn.cursor().copy("COPY f_back FROM STDIN (FORMAT csv, HEADER true)") as cp:
                    cp.write(text.encode())
                assert copy_lines(h.conn, "SELECT * FROM f_back") == want.lines
            else:
                objs = [json.loads(line) for line in text.splitlines()]
                assert all(list(o) == list(want.columns) for o in objs)
                got = [list(o.values()) for o in objs]
            assert sorted(got, key=lambda r: int(r[0])) == sorted(expected, key=lambda r: int(r[0]))
            assert any(r[1] is None for r in got) and any(r[1] == "" for r in got)
    finally:
        h.close()


# -- 7. dry run, JSON summary, the recovery schema and --force -------------------------------------
def test_dry_run_counts_json_and_recovery_schema(dsn: str, pg: EmbeddedPostgres, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "acc")
    h, target = _history_for_live_tests(dsn, archive, ACC_DDL, "acc", ACC_SEED, ACC_BEFORE, ACC_AFTER)
    other_db = f"{h.conn.info.dbname}_into"
    try:
        c = h.conn
        live = table_state(c, "public.acc")
        want = target.state["public.acc"]
        lsn = lsn_text(target.post_lsn)
        r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--dry-run", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["outcome"] == "dry run" and out["applied"] is False and out["backup_schema"] is None
        assert out["tables"]["public.acc"] == {"rows": len(want.lines), **_counts(live, want)}
        assert out["transactions"] == len(ACC_BEFORE)
        assert table_state(c, "public.acc") == live
        r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--dry-run")
        assert r.returncode == 0 and "dry run" in r.stdout and "public.acc" in r.stdout

        # a recovery schema that exists and holds something: refused without --force, replaced with it
        c.execute("CREATE SCHEMA rec")
        c.execute("CREATE TABLE rec.keep (x int)")
        c.execute("INSERT INTO rec.keep VALUES (1)")
        r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--schema", "rec")
        one_line_error(r, 3, "rec", "--force")
        assert c.execute("SELECT x FROM rec.keep").fetchall() == [(1,)]
        r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--schema", "rec", "--force", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["rows"] == {"public.acc": len(want.lines)}
        assert c.execute("SELECT relname FROM pg_class WHERE relnamespace = 'rec'::regnamespace AND relkind = 'r'"
                         ).fetchall() == [("acc",)]
        _check_schema(c, "rec", target.state)
        # an existing empty schema is used without --force; the default name follows the target
        c.execute("CREATE SCHEMA empty_one")
        r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--schema", "empty_one")
        assert r.returncode == 0, r.stderr
        _check_schema(c, "empty_one", target.state)
        r = run_pgtape("replay", *cli, "--latest", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["schema"] == "pgtape_recovered_latest"
        _check_schema(c, "pgtape_recovered_latest", {"public.acc": live})
        # --into another database
        c.execute(f'CREATE DATABASE "{other_db}"')
        r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--schema", "rec", "--into", pg.dsn(other_db))
        assert r.returncode == 0, r.stderr
        with oracle_connect(pg.dsn(other_db)) as o:
            _check_schema(o, "rec", target.state)
        # option combinations that make no sense are usage errors
        one_line_error(run_pgtape("replay", *cli, "--latest", "--dry-run", "--schema", "x"), 2)
        one_line_error(run_pgtape("replay", *cli, "--latest", "--yes"), 2)
        one_line_error(run_pgtape("replay", *cli, "--latest", "--target-exclusive"), 2)
        assert table_state(c, "public.acc") == live
    finally:
        h.conn.execute(f'DROP DATABASE IF EXISTS "{other_db}" WITH (FORCE)')
        h.close()


# -- probes: behaviour the documents promise that is easy to get wrong ------------------------------
def test_in_place_restores_the_exact_text_of_equal_values(dsn: str, tmp_path: Path) -> None:
    """numeric 1.0 = 1.00 and jsonb {"a": 1.0} = {"a": 1.00} compare equal, yet they are different
    values to restore: after --in-place --yes the live table must read exactly as the target."""
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "m")
    h, target = _history_for_live_tests(
        dsn, archive, "CREATE TABLE m (id int PRIMARY KEY, n numeric, j jsonb)", "m",
        "INSERT INTO m VALUES (1, 1.0, '{\"a\": 1.0}'), (2, 2, '[2]'), (3, 3.5, NULL)",
        ["UPDATE m SET n = 2.50 WHERE id = 2"],
        ["UPDATE m SET n = 1.00, j = '{\"a\": 1.00}' WHERE id = 1", "UPDATE m SET n = 2.5 WHERE id = 2"])
    try:
        # diff judges by the same rule as the dry run: the two rows whose text differs, not zero.
        r = run_pgtape("diff", *cli, "--target-lsn", lsn_text(target.post_lsn), "--json")
        assert r.returncode == 1, r.stderr
        (table,) = [t for t in json.loads(r.stdout)["tables"] if t["table"] == "public.m"]
        assert (table["different"], table["equal"]) == (2, 1), table
        counts = _dry_run_then_in_place(cli, h, target, "public.m", rows=3)
        assert counts == {"insert": 0, "delete": 0, "update": 2}
    finally:
        h.close()


def test_in_place_and_dry_run_with_a_json_column(dsn: str, tmp_path: Path) -> None:
    """json (unlike jsonb) has no equality operator; the live diff must still work."""
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "events")
    h, target = _history_for_live_tests(
        dsn, archive, "CREATE TABLE events (id int PRIMARY KEY, payload json)", "events",
        "INSERT INTO events VALUES (1, '{\"b\": 1, \"a\": 2}'), (2, '[]')",
        ["INSERT INTO events VALUES (3, 'null')"],
        ["UPDATE events SET payload = '{\"a\": 2, \"b\": 1}' WHERE id = 1", "DELETE FROM events WHERE id = 2"])
    try:
        _dry_run_then_in_place(cli, h, target, "public.events", rows=3)
    finally:
        h.close()


def _dry_run_then_in_place(cli: list[str], h: History, target: Step, table: str, rows: int) -> dict[str, int]:
    """--dry-run --json must count what differs from live; --in-place --yes must then make live
    equal to the target state. Returns the counts."""
    want = target.state[table]
    counts = _counts(table_state(h.conn, table), want)
    lsn = lsn_text(target.post_lsn)
    r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tables"][table] == {"rows": rows, **counts}
    r = run_pgtape("replay", *cli, "--target-lsn", lsn, "--in-place", "--yes")
    assert r.returncode == 0, r.stderr
    assert table_state(h.conn, table) == want
    return counts


def test_recovery_points_while_other_sessions_write(dsn: str, tmp_path: Path) -> None:
    """A mark's LSN is where its message record ends; on a busy server other sessions' WAL (and
    other commits) land between it and the mark's own commit. Replay must still stop right after
    the mark's transaction (docs: the transaction that recorded mark N is the last one applied)."""
    import threading
    from pgtape.replay.marks import create_mark

    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "t")
    h = History(dsn, ["public.t"])
    stop = threading.Event()
    errors: list[BaseException] = []

    def noise() -> None:
        try:
            with oracle_connect(dsn) as c:
                while not stop.is_set():
                    c.execute("INSERT INTO noise VALUES (1)")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=noise, daemon=True) for _ in range(4)]
    try:
        h.conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        h.conn.execute("CREATE TABLE noise (id int)")
        run_pgtape("init", *cli, check=True)
        for th in threads:
            th.start()
        marks = []
        for i in range(12):
            step = h.txn(f"t{i}", [("INSERT INTO t VALUES (%s)", [i])])
            marks.append((create_mark(Archive(archive), dsn, f"m{i}", None).name, step))
        r = run_pgtape("mark", "cli-mark", *cli, check=True)
        marks.append(("cli-mark", h.steps[-1]))
        h.txn("last", [("INSERT INTO t VALUES (%s)", [100])])
    finally:
        stop.set()
        for th in threads:
            if th.is_alive():
                th.join(10)
    try:
        assert not errors, errors
        capture_to_now(dsn, archive, tables="t")
        failures = []
        for name, step in marks:
            try:
                plan = prepare(Archive(archive), ["public.t"], Target("name", name=name))
            except Exception as e:  # noqa: BLE001 - collected
                failures.append(f"{name}: {e}")
                continue
            fold = plan.folds["public.t"]
            problem = compare("public.t", fold.columns, fold.types, plan.rows("public.t"), step.state["public.t"])
            if problem:
                failures.append(f"{name}: {problem}")
        assert not failures, f"{len(failures)} of {len(marks)} recovery points fail:\n" + "\n".join(failures[:5])
        r = run_pgtape("replay", *cli, "--target-name", "cli-mark", "--schema", "at_mark")
        assert r.returncode == 0, r.stderr
        _check_schema(h.conn, "at_mark", marks[-1][1].state)
    finally:
        h.close()


def test_two_in_place_restores_in_a_row_keep_both_backups(dsn: str, tmp_path: Path) -> None:
    """Restoring tables one after the other (a script, a loop) must not collide on the backup name."""
    from pgtape.replay import sinks

    archive = tmp_path / "archive"
    with oracle_connect(dsn) as c:
        c.execute("CREATE TABLE t1 (id int PRIMARY KEY)")
        c.execute("CREATE TABLE t2 (id int PRIMARY KEY)")
        run_pgtape("init", *_cli(dsn, archive, "t1,t2"), check=True)
        start = scalar(c.execute("SELECT pg_current_wal_insert_lsn()::text"))
        c.execute("INSERT INTO t1 VALUES (1)")
        c.execute("INSERT INTO t2 VALUES (2)")
        capture_to_now(dsn, archive, tables="t1,t2")
        backups = []
        for t in ("public.t1", "public.t2"):
            plan = prepare(Archive(archive), [t], Target("lsn", lsn=lsn_int(start)))
            diffs, backup = sinks.diff_live(plan, dsn, apply=True)
            assert diffs[0].to_delete == 1 and backup is not None
            backups.append(backup)
        assert c.execute("SELECT count(*) FROM t1").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM t2").fetchone() == (0,)
        assert len(set(backups)) == 2 and _schemas(c, "pgtape_backup_%") == sorted(backups)


def test_target_between_the_tape_end_and_a_newer_base(dsn: str, tmp_path: Path) -> None:
    """Capture lags; a snapshot is taken meanwhile. A target after the tape's end but before that
    snapshot cannot be rebuilt from the older base (the tape lacks the transactions in between):
    it must be refused with the window, never answered with the tape end's state."""
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "t")
    h = History(dsn, ["public.t"])
    try:
        h.conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        run_pgtape("init", *cli, check=True)
        h.observe("init")
        h.txn("t1", ["INSERT INTO t VALUES (1, 'one')"])
        capture_to_now(dsn, archive, tables="t")  # then capture stops (or lags)
        time.sleep(0.002)
        t2 = h.txn("t2", ["INSERT INTO t VALUES (2, 'two')"])
        time.sleep(0.002)
        t3 = h.txn("t3", ["UPDATE t SET v = 'uno' WHERE id = 1"])
        time.sleep(0.002)
        run_pgtape("snapshot", *cli, check=True)
        between = [("--target-time", iso((t2.post_time + t3.pre_time) // 2)), ("--target-lsn", lsn_text(t2.post_lsn))]
        for i, (flag, value) in enumerate(between):
            r = run_pgtape("replay", *cli, flag, value, "--schema", f"lag{i}")
            if r.returncode == 0:
                _check_schema(h.conn, f"lag{i}", t2.state)
            else:
                one_line_error(r, 3, "recoverable window")
        r = run_pgtape("replay", *cli, "--latest", "--schema", "lag_latest")
        assert r.returncode == 0, r.stderr
        _check_schema(h.conn, "lag_latest", t3.state)
        capture_to_now(dsn, archive, tables="t")  # once the tape has caught up, the same targets work
        for i, (flag, value) in enumerate(between):
            r = run_pgtape("replay", *cli, flag, value, "--schema", f"caught{i}")
            assert r.returncode == 0, r.stderr
            _check_schema(h.conn, f"caught{i}", t2.state)
    finally:
        h.close()


# -- 8. the recovery schema is loaded in parallel into a staging schema, then swapped in ------------
import os  # noqa: E402  (this section's own imports: the file above is left as it was)
import signal  # noqa: E402
from itertools import cycle, islice  # noqa: E402
from typing import Iterator  # noqa: E402

from conftest import spawn_pgtape, stop_process, wait_until  # noqa: E402
from pgtape.replay import sinks  # noqa: E402

STAGED_TABLES = ["public.big", "public.small", "public.pair"]


def _staged_history(dsn: str, archive: Path) -> History:
    """Three tables in the base, one over two snapshot frames (4 MiB each), a few changes on the tape."""
    h = History(dsn, STAGED_TABLES)
    c = h.conn
    c.execute("CREATE TABLE big (id int PRIMARY KEY, note text)")
    c.execute("INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 70000) g")
    c.execute("CREATE TABLE small (id int PRIMARY KEY, v text)")
    c.execute("INSERT INTO small SELECT g, 'v' || g FROM generate_series(1, 100) g")
    c.execute("CREATE TABLE pair (k1 text, k2 int, v numeric, PRIMARY KEY (k2, k1))")  # key order != column order
    c.execute("INSERT INTO pair SELECT 'k' || g % 7, g, g * 1.5 FROM generate_series(1, 50) g")
    run_pgtape("init", *_cli(dsn, archive, "big,small,pair"), check=True)
    c.execute("UPDATE big SET note = 'changed' WHERE id % 1000 = 0")
    c.execute("DELETE FROM small WHERE id > 90")
    c.execute("INSERT INTO pair VALUES ('new', 1000, NULL)")
    capture_to_now(dsn, archive, tables="big,small,pair")
    return h


def _first_data_frame(path: Path) -> int:
    with open(path, "rb") as f:
        offset = 0
        while (fr := read_frame(f, offset, zstandard.ZstdDecompressor())) is not None:
            if fr.kind == KIND_DATA:
                return fr.offset
            offset = fr.end
    raise AssertionError(f"{path} has no data frame")


def _primary_keys(conn: psycopg.Connection, schema: str) -> dict[str, list[str]]:
    return dict(conn.execute(
        "SELECT c.relname::text, array_agg(a.attname::text ORDER BY k.ord) FROM pg_constraint p "
        "JOIN pg_class c ON c.oid = p.conrelid CROSS JOIN LATERAL unnest(p.conkey) WITH ORDINALITY k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
        "WHERE p.contype = 'p' AND c.relnamespace = %s::regnamespace GROUP BY c.relname", (schema,)).fetchall())


def _schema_comment(conn: psycopg.Connection, schema: str) -> str | None:
    return scalar(conn.execute("SELECT obj_description(%s::regnamespace, 'pg_namespace')", (schema,)))


def _replay_sessions(conn: psycopg.Connection) -> int:
    return scalar(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgtape replay' "
                               "AND datname = current_database()"))


def test_recovery_schema_swapped_in_complete_or_not_at_all(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "big,small,pair")
    h = _staged_history(dsn, archive)
    try:
        c = h.conn
        live = {t: table_state(c, t) for t in STAGED_TABLES}
        r = run_pgtape("replay", *cli, "--latest", "--schema", "rec", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["rows"] == {t: len(live[t].lines) for t in STAGED_TABLES}
        _check_schema(c, "rec", live)
        assert _primary_keys(c, "rec") == _primary_keys(c, "public") == {
            "big": ["id"], "small": ["id"], "pair": ["k2", "k1"]}
        (base,) = _snapshots(archive)
        assert _schema_comment(c, "rec") == f"pgtape replay {Target('latest').describe()} from base {base.id}"
        assert _schemas(c, "pgtape_incomplete_%") == []

        # the old schema, recognisable by an extra table, survives a replay that fails half-way
        c.execute("CREATE TABLE rec.marker (x int)")
        old_comment = _schema_comment(c, "rec")
        snap = catalog.snapshot_dir(Archive(archive), 1, base.id) / "public.big.snap"
        frame_at, size = _data_frame(snap)
        assert frame_at > _first_data_frame(snap), "the damage must come after the first 4 MiB were loaded"
        original = _flip(snap, frame_at + size // 2)
        try:
            r = run_pgtape("replay", *cli, "--latest", "--schema", "rec", "--force")
            one_line_error(r, 3, "damaged base", str(snap), f"offset {frame_at}")
        finally:
            snap.write_bytes(original)
        assert _schemas(c, "pgtape_incomplete_%") == []
        assert c.execute("SELECT count(*) FROM rec.marker").fetchone() == (0,)
        _check_schema(c, "rec", live)
        assert _schema_comment(c, "rec") == old_comment
        wait_until("the replay's connections to close", lambda: _replay_sessions(c) == 0, 10)

        # repaired, --force replaces it
        r = run_pgtape("replay", *cli, "--latest", "--schema", "rec", "--force")
        assert r.returncode == 0, r.stderr
        assert c.execute("SELECT to_regclass('rec.marker')").fetchone() == (None,)
        _check_schema(c, "rec", live)
    finally:
        h.close()


def test_ctrl_c_while_swapping_in_keeps_the_old_schema(dsn: str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cli = _cli(dsn, archive, "big,small,pair")
    h = _staged_history(dsn, archive)
    try:
        c = h.conn
        c.execute("CREATE SCHEMA rec")
        c.execute("CREATE TABLE rec.old AS SELECT 1 AS x")
        with psycopg.connect(dsn) as holder:  # holds the old schema: the final DROP waits for it
            holder.execute("LOCK TABLE rec.old IN ACCESS SHARE MODE")
            proc = spawn_pgtape("replay", *cli, "--latest", "--schema", "rec", "--force", log=tmp_path / "log")
            try:
                wait_until("the replay to wait for the old schema", lambda: c.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgtape replay' "
                    "AND wait_event_type = 'Lock' AND query LIKE 'DROP SCHEMA%'").fetchone(), 60)
                proc.send_signal(signal.SIGINT)
                assert proc.wait(30) == 130, (tmp_path / "log").read_text()
            finally:
                stop_process(proc)
        assert "pgtape: interrupted" in (tmp_path / "log").read_text()
        assert _schemas(c, "pgtape_incomplete_%") == []
        assert c.execute("SELECT x FROM rec.old").fetchall() == [(1,)]
        assert c.execute("SELECT to_regclass('rec.big')").fetchone() == (None,)
    finally:
        h.close()


def test_ctrl_c_while_loading_stops_every_worker_and_drops_the_staging_schema(dsn: str, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "archive"
    h = _staged_history(dsn, archive)
    try:
        c = h.conn
        plan = prepare(Archive(archive), STAGED_TABLES, Target("latest"))
        real_rows = plan.rows
        sent = 20000
        produced = 0
        seen: list[tuple[str, str]] = []

        def rows(table: str) -> Iterator[bytes]:
            """big: Ctrl-C after `sent` rows, then rows without end, until the load gives up."""
            nonlocal produced
            if table != "public.big":
                yield from real_rows(table)
                return
            lines = list(real_rows(table))
            for line in islice(cycle(lines), 3_000_000):
                if produced == sent:
                    with oracle_connect(dsn) as o:  # the staging schema, as another session sees it
                        seen.extend(o.execute(
                            "SELECT nspname::text, obj_description(oid, 'pg_namespace') FROM pg_namespace "
                            "WHERE nspname LIKE 'pgtape_incomplete_%'").fetchall())
                    os.kill(os.getpid(), signal.SIGINT)
                produced += 1
                yield line

        monkeypatch.setattr(plan, "blocks", lambda table: (line + b"\n" for line in rows(table)))  # what COPY takes
        with pytest.raises(KeyboardInterrupt):
            sinks.to_schema(plan, dsn, "rec", False)
        # stopped within a batch or so of the Ctrl-C, not at the end of its 3 million rows
        assert sent < produced < sent + 100_000, produced
        assert len(seen) == 1 and seen[0][1] is not None, seen
        assert seen[0][1].startswith("pgtape replay in progress, incomplete: ") and f"pid {os.getpid()}" in seen[0][1]
        assert len(seen[0][0].encode()) <= 63
        assert _schemas(c, "pgtape_incomplete_%") == [] and _schemas(c, "rec") == []
        wait_until("the replay's connections to close", lambda: _replay_sessions(c) == 0, 10)

        # a plan runs once: a fresh one loads normally afterwards, in-process too
        counts = sinks.to_schema(prepare(Archive(archive), STAGED_TABLES, Target("latest")), dsn, "rec", False)
        assert counts == {t: len(table_state(c, t).lines) for t in STAGED_TABLES}
        _check_schema(c, "rec", {t: table_state(c, t) for t in STAGED_TABLES})
    finally:
        h.close()
