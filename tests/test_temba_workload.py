"""The Temba example: schema, workload generator, bulk loader and command line."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from conftest import wait_until
from examples.temba.workload import (OPERATIONS, WorkloadMix, WorkloadStats, apply_schema, bulk_load,
                                     large_transaction, reset_schema, run_workload)
ROOT = Path(__file__).resolve().parent.parent
TABLES = ("orders", "payments", "tickets")


def _connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def _count(conn: psycopg.Connection, sql: str, params: tuple[object, ...] = ()) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "examples.temba.workload", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def _stat_row_changes(conn: psycopg.Connection) -> int:
    """Inserts+updates+deletes the statistics system counted: flushed when the workload's backend exits."""
    conn.execute("select pg_stat_clear_snapshot()")
    return _count(conn, "select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) from pg_stat_user_tables "
                  "where schemaname = 'public'")


def test_schema_applies_and_resets(dsn: str) -> None:
    with _connect(dsn) as conn:
        apply_schema(conn)
        with pytest.raises(psycopg.errors.DuplicateTable):
            apply_schema(conn)
        conn.execute("insert into orders (customer_email, event_id, total, currency) "
                     "values ('a@example.com', gen_random_uuid(), 10, 'EUR')")
        reset_schema(conn)
        assert _count(conn, "select count(*) from orders") == 0
        fks = conn.execute("select conrelid::regclass::text, confrelid::regclass::text from pg_constraint "
                           "where contype = 'f' order by 1").fetchall()
        assert fks == [("payments", "orders"), ("tickets", "orders")]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("insert into orders (customer_email, event_id, total, currency, status) "
                         "values ('a@example.com', gen_random_uuid(), 10, 'EUR', 'lost')")


def test_short_workload(dsn: str) -> None:
    seed = 20240611
    print(f"seed {seed}")
    with _connect(dsn) as conn:
        apply_schema(conn)
    seen: list[int] = []
    stats = run_workload(dsn, rate=None, duration=None, transactions=200, seed=seed,
                         mix=WorkloadMix(large_receipt_probability=0.3),
                         progress=lambda s: seen.append(s.transactions))
    assert stats.transactions == 200 == sum(stats.operations.values())
    assert seen == list(range(1, 201))
    assert all(stats.operations[op] > 0 for op in OPERATIONS), stats.operations
    assert stats.large_receipts > 0
    with _connect(dsn) as conn:
        counts = {t: _count(conn, f"select count(*) from {t}") for t in TABLES}
        assert all(counts.values()), counts
        # A fresh database: what is left is what was inserted minus what was deleted.
        assert sum(counts.values()) == stats.inserts - stats.deletes
        wait_until(f"the statistics to count {stats.row_changes} row changes",
                   lambda: _stat_row_changes(conn) == stats.row_changes, 10)
        # The foreign keys hold (they are enforced; this also catches a dropped constraint).
        assert _count(conn, "select count(*) from payments p left join orders o on o.id = p.order_id "
                      "where o.id is null") == 0
        assert _count(conn, "select count(*) from tickets t left join orders o on o.id = t.order_id "
                      "where o.id is null") == 0
        # Money is numeric with two decimals, and the books balance.
        for value in conn.execute("select total from orders union all select amount from payments "
                                  "union all select refunded_amount from payments union all select price from tickets"):
            assert isinstance(value[0], Decimal) and value[0].as_tuple().exponent == -2
        assert _count(conn, "select count(*) from orders o where total <> "
                      "(select sum(price) from tickets t where t.order_id = o.id)") == 0
        assert _count(conn, "select count(*) from payments p join orders o on o.id = p.order_id "
                      "where p.amount <> o.total or (p.status = 'refunded') <> (p.refunded_amount > 0)") == 0
        # Large receipts exceed 2 kB and live out of line, in the payments table's TOAST relation.
        assert _count(conn, "select count(*) from payments where octet_length(receipt::text) > 2048") > 0
        toast = conn.execute("select reltoastrelid::regclass::text from pg_class "
                             "where oid = 'public.payments'::regclass").fetchone()
        assert toast is not None and toast[0] != "-"
        assert _count(conn, f"select count(*) from {toast[0]}") > 0


def _orders_snapshot(dsn: str) -> list[tuple[object, ...]]:
    with _connect(dsn) as conn:
        return conn.execute("select o.id, o.status, o.total, o.currency, "
                            "(select array_agg(p.status || p.amount::text order by p.id) from payments p "
                            " where p.order_id = o.id) from orders o order by o.id").fetchall()


def test_same_seed_same_run(dsn: str) -> None:
    seed = 7
    print(f"seed {seed}")
    results: list[tuple[WorkloadStats, list[tuple[object, ...]]]] = []
    for _ in range(2):
        with _connect(dsn) as conn:
            reset_schema(conn)
        stats = run_workload(dsn, rate=None, duration=None, transactions=150, mix=WorkloadMix(), seed=seed)
        results.append((stats, _orders_snapshot(dsn)))
    (a, rows_a), (b, rows_b) = results
    assert a.operations == b.operations
    assert (a.inserts, a.updates, a.deletes, a.large_receipts) == (b.inserts, b.updates, b.deletes, b.large_receipts)
    assert rows_a == rows_b
    with _connect(dsn) as conn:
        reset_schema(conn)
    other = run_workload(dsn, rate=None, duration=None, transactions=150, mix=WorkloadMix(), seed=seed + 1)
    assert other.operations != a.operations


def test_rate_and_duration(dsn: str) -> None:
    with _connect(dsn) as conn:
        apply_schema(conn)
    done_at: list[float] = []  # each transaction's end, on the workload's own clock
    stats = run_workload(dsn, rate=40, duration=0.5, transactions=None, mix=WorkloadMix(), seed=3,
                         progress=lambda s: done_at.append(s.elapsed))
    assert 12 <= stats.transactions <= 22 and len(done_at) == stats.transactions  # 40/s for 0.5 s: 20
    # paced: transaction i never ends before its slot i/40 s (the schedule starts just before the clock)
    assert all(t >= i / 40 - 0.005 for i, t in enumerate(done_at)), done_at
    assert stats.elapsed >= 0.5  # it ran until its duration was up, not until it had done ~20
    assert run_workload(dsn, rate=1000, duration=5, transactions=5, seed=4).transactions == 5


def test_mix_parsing() -> None:
    mix = WorkloadMix.parse("place_order=2, refund=0,large_receipt_probability=0.5")
    assert (mix.place_order, mix.refund, mix.large_receipt_probability) == (2, 0, 0.5)
    assert mix.payment_success == WorkloadMix().payment_success
    for bad in ("nope=1", "refund", "refund=x", "refund=-1", "large_receipt_probability=2",
                ",".join(f"{op}=0" for op in OPERATIONS)):
        with pytest.raises(ValueError):
            WorkloadMix.parse(bad)


def test_bulk_load_and_large_transaction(dsn: str) -> None:
    with _connect(dsn) as conn:
        apply_schema(conn)
        counts = bulk_load(conn, 2000, seed=5)
        assert counts["orders"] == counts["payments"] == 2000
        assert 2000 <= counts["tickets"] <= 8000
        assert {t: _count(conn, f"select count(*) from {t}") for t in TABLES} == counts
        assert _count(conn, "select count(*) from orders o where total <> "
                      "(select sum(price) from tickets t where t.order_id = o.id)") == 0
        assert bulk_load(conn, 10, seed=6)["orders"] == 10  # another seed, other ids
        order_id = large_transaction(conn, 5000)
        xid = conn.execute("select xmin::text from orders where id = %s", (order_id,)).fetchone()
        assert xid is not None
        assert _count(conn, "select count(*) from tickets where xmin::text = %s", (xid[0],)) == 4999
        assert _count(conn, "select count(*) from orders where xmin::text = %s", (xid[0],)) == 1


def test_cli_runs(dsn: str) -> None:
    r = _run_cli("--dsn", dsn, "--reset", "--rate", "max", "--transactions", "30", "--seed", "2", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["transactions"] == 30 and result["seed"] == 2
    assert result["row_changes"] == result["inserts"] + result["updates"] + result["deletes"] > 0
    r = _run_cli("--dsn", dsn, "--reset", "--rate", "max", "--transactions", "5")
    assert r.returncode == 0 and r.stdout.count("\n") == 1 and "5 transactions" in r.stdout


@pytest.mark.parametrize("args", [
    (),
    ("--dsn", "dbname=x", "--rate", "-3"),
    ("--dsn", "dbname=x", "--transactions", "many"),
    ("--dsn", "dbname=x", "--mix", "place_order=5,bogus=1"),
    ("--dsn", "dbname=x", "--mix", "refund=-1"),
    ("--dsn", "dbname=x", "--receipt-probability", "1.5"),
    ("--dsn", "no-equals-sign"),
    ("--dsn", "dbname=x", "--frobnicate"),
])
def test_cli_bad_arguments(args: tuple[str, ...]) -> None:
    r = _run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("temba-workload: error: "), r.stderr
    assert "Traceback" not in r.stderr
