"""Temba: a ticketing-platform schema and a reproducible workload generator for pgtape.

Orders buy 1..4 tickets and are paid through payments; payments succeed, fail and get retried,
get refunded; tickets get validated at the door; pending orders get cancelled; closed orders get
purged (the only deletes). Now and then a successful payment carries a large, incompressible
receipt that PostgreSQL stores out of line (TOAST), so later updates of that payment leave an
unchanged TOAST value behind: the case logical decoding does not resend.

    python -m examples.temba.workload --dsn "host=... dbname=..." --reset --rate 50 --duration 10

Reproducible: given the seed, the sequence of operations, the uuids and every amount are the same
on every run against a fresh schema; only server-side values (timestamps) differ. Money is
decimal.Decimal throughout, never float.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from random import Random
from typing import Any, Callable, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

SCHEMA_FILE = Path(__file__).with_name("schema.sql")
TABLES = ("public.tickets", "public.payments", "public.orders")  # children first, for dropping
OPERATIONS = ("place_order", "payment_success", "payment_failure", "refund", "validate_ticket",
              "cancel_order", "purge_order")
CURRENCIES = ("EUR", "USD", "GBP", "KES", "ZAR")
PROVIDERS = ("stripe", "adyen", "mpesa", "paypal")
FAILURE_CODES = ("card_declined", "insufficient_funds", "expired_card", "timeout")
LARGE_RECEIPT_BYTES = 3072  # base64 -> 4096 characters: well over the ~2 kB TOAST threshold
POOL_CAP = 100_000  # bound on tracked orders/tickets per pool, so long runs use bounded memory
CENT = Decimal("0.01")


# -- schema ---------------------------------------------------------------------------------
def apply_schema(conn: psycopg.Connection) -> None:
    """Create the three tables; fails if they already exist."""
    with conn.transaction():
        conn.execute(SCHEMA_FILE.read_text())  # several statements, no params


def reset_schema(conn: psycopg.Connection) -> None:
    """Drop the three tables (if present) and create them again, in one transaction."""
    with conn.transaction():
        conn.execute(f"drop table if exists {', '.join(TABLES)}")
        conn.execute(SCHEMA_FILE.read_text())


# -- configuration and results --------------------------------------------------------------
@dataclass
class WorkloadMix:
    """Relative weights of the operations, and how often a payment gets a large receipt."""

    place_order: float = 5
    payment_success: float = 4
    payment_failure: float = 1
    refund: float = 1
    validate_ticket: float = 4
    cancel_order: float = 1
    purge_order: float = 0.5
    large_receipt_probability: float = 0.02  # per payment_success

    def __post_init__(self) -> None:
        weights = self.weights()
        for name, w in weights.items():
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"weight of {name} must be a finite number >= 0, not {w}")
        if sum(weights.values()) <= 0:
            raise ValueError("at least one operation weight must be positive")
        p = self.large_receipt_probability
        if not (math.isfinite(p) and 0 <= p <= 1):
            raise ValueError(f"large_receipt_probability must be between 0 and 1, not {p}")

    def weights(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in OPERATIONS}

    @classmethod
    def parse(cls, spec: str, base: WorkloadMix | None = None) -> WorkloadMix:
        """`place_order=5,refund=0` -> the base mix (default: the defaults) with those overridden."""
        values = asdict(base or cls())
        known = {f.name for f in fields(cls)}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, text = item.partition("=")
            name = name.strip()
            if not sep or name not in known:
                raise ValueError(f"bad mix entry {item!r}: expected NAME=WEIGHT with NAME one of "
                                 f"{', '.join(sorted(known))}")
            try:
                values[name] = float(text)
            except ValueError:
                raise ValueError(f"bad mix entry {item!r}: {text.strip()!r} is not a number") from None
        return cls(**values)


@dataclass
class WorkloadStats:
    """What a run did. Row changes are counted from each statement's rowcount, exactly."""

    seed: int
    operations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPERATIONS, 0))
    transactions: int = 0
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    large_receipts: int = 0
    fallbacks: int = 0  # operations with nothing to act on, replaced by place_order
    elapsed: float = 0.0

    @property
    def row_changes(self) -> int:
        return self.inserts + self.updates + self.deletes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "row_changes": self.row_changes,
                "rate": round(self.transactions / self.elapsed, 1) if self.elapsed > 0 else None}

    def summary(self) -> str:
        ops = " ".join(f"{k}={v}" for k, v in self.operations.items())
        rate = f"{self.transactions / self.elapsed:.1f}/s" if self.elapsed > 0 else "-"
        return (f"temba: {self.transactions} transactions in {self.elapsed:.2f}s ({rate}), "
                f"{self.row_changes} row changes ({self.inserts} inserts, {self.updates} updates, "
                f"{self.deletes} deletes); {ops}; {self.large_receipts} large receipts; seed {self.seed}")


# -- client-side state ----------------------------------------------------------------------
class _Pool:
    """A set with O(1) add, remove and seeded random pick; insertion order keeps picks reproducible."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._index: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Any, rng: Random) -> None:
        if len(self._items) >= POOL_CAP:  # forget a random old one: it stays in the database, untouched
            self.discard(self._items[rng.randrange(len(self._items))])
        self._index[item] = len(self._items)
        self._items.append(item)

    def discard(self, item: Any) -> None:
        i = self._index.pop(item, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._index[last] = i

    def pick(self, rng: Random) -> Any:
        return self._items[rng.randrange(len(self._items))]


@dataclass(eq=False)  # identity hashing: orders are pool members
class _Order:
    id: uuid.UUID
    currency: str
    total: Decimal
    payment_id: uuid.UUID  # the current (pending or succeeded) payment
    ticket_ids: list[uuid.UUID]
    attempts: int = 1  # payment attempts so far


# -- the workload ---------------------------------------------------------------------------
class _Workload:
    """One connection; each operation is one transaction that tracks what it changed."""

    def __init__(self, conn: psycopg.Connection, mix: WorkloadMix, seed: int) -> None:
        self.conn = conn
        self.mix = mix
        self.rng = Random(seed)
        self.stats = WorkloadStats(seed=seed)
        self.events = [self._uuid() for _ in range(25)]
        self.pending = _Pool()  # orders awaiting payment
        self.paid = _Pool()  # orders paid, refundable
        self.closed = _Pool()  # orders cancelled or refunded, purgeable
        self.issued = _Pool()  # tickets of paid orders, not yet validated
        weights = mix.weights()
        self._names = list(weights)
        self._cum_weights = [sum(list(weights.values())[:i + 1]) for i in range(len(weights))]

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _money(self, low_cents: int, high_cents: int) -> Decimal:
        return (Decimal(self.rng.randint(low_cents, high_cents)) * CENT).quantize(CENT)

    def _exec(self, kind: str, sql: str, params: Sequence[Any] | dict[str, Any]) -> int:
        n = self.conn.execute(sql, params).rowcount
        setattr(self.stats, kind, getattr(self.stats, kind) + n)
        return n

    def step(self) -> str:
        """Choose and run one operation in its own transaction; returns its name."""
        name = self.rng.choices(self._names, cum_weights=self._cum_weights)[0]
        if not self._applicable(name):
            name = "place_order"
            self.stats.fallbacks += 1
        with self.conn.transaction():
            getattr(self, name)()
        self.stats.operations[name] += 1
        self.stats.transactions += 1
        return name

    def _applicable(self, name: str) -> bool:
        pool = {"payment_success": self.pending, "payment_failure": self.pending,
                "cancel_order": self.pending, "refund": self.paid, "validate_ticket": self.issued,
                "purge_order": self.closed}.get(name)
        return pool is None or len(pool) > 0

    # Each operation below runs inside step()'s transaction.
    def place_order(self) -> None:
        rng = self.rng
        order_id, payment_id = self._uuid(), self._uuid()
        currency = rng.choice(CURRENCIES)
        count = rng.randint(1, 4)
        section = rng.choice("ABCDEFGH")
        row, first = rng.randint(1, 40), rng.randint(1, 30)
        ticket_ids = [self._uuid() for _ in range(count)]
        seats = [f"{section}{row}-{first + i}" for i in range(count)]
        prices = [self._money(1500, 25000)] * count  # seats side by side cost the same
        total = sum(prices, Decimal("0.00"))
        self._exec("inserts", "insert into public.orders (id, customer_email, event_id, total, currency, metadata) "
                   "values (%s, %s, %s, %s, %s, %s)",
                   (order_id, f"customer{rng.randrange(100_000)}@example.com", rng.choice(self.events), total,
                    currency, Jsonb({"channel": rng.choice(["web", "ios", "android", "box-office"]),
                                     "locale": rng.choice(["en", "fr", "sw", "de"])})))
        self._insert_payment(payment_id, order_id, total, currency, attempt=1)
        self._exec("inserts", "insert into public.tickets (id, order_id, seat, price) "
                   "select t.id, %s, t.seat, t.price from unnest(%s::uuid[], %s::text[], %s::numeric[]) "
                   "as t(id, seat, price)", (order_id, ticket_ids, seats, prices))
        self.pending.add(_Order(order_id, currency, total, payment_id, ticket_ids), rng)

    def _insert_payment(self, payment_id: uuid.UUID, order_id: uuid.UUID, amount: Decimal, currency: str,
                        attempt: int) -> None:
        self._exec("inserts", "insert into public.payments (id, order_id, amount, currency, provider, metadata) "
                   "values (%s, %s, %s, %s, %s, %s)",
                   (payment_id, order_id, amount, currency, self.rng.choice(PROVIDERS), Jsonb({"attempt": attempt})))

    def payment_success(self) -> None:
        order: _Order = self.pending.pick(self.rng)
        self._exec("updates", "update public.payments set status = 'succeeded', provider_ref = %s, receipt = %s, "
                   "updated_at = now() where id = %s", (f"ch_{self.rng.getrandbits(64):016x}",
                                                        Jsonb(self._receipt(order)), order.payment_id))
        self._exec("updates", "update public.orders set status = 'paid', updated_at = now() where id = %s",
                   (order.id,))
        self.pending.discard(order)
        self.paid.add(order, self.rng)
        for ticket_id in order.ticket_ids:
            self.issued.add(ticket_id, self.rng)

    def _receipt(self, order: _Order) -> dict[str, Any]:
        receipt: dict[str, Any] = {"amount": str(order.total), "currency": order.currency,
                                   "card": {"brand": self.rng.choice(["visa", "mastercard"]),
                                            "last4": f"{self.rng.randrange(10_000):04d}"}}
        if self.rng.random() < self.mix.large_receipt_probability:
            # Random bytes defeat pglz, so the value goes out of line uncompressed (TOAST).
            receipt["signed_document"] = base64.b64encode(self.rng.randbytes(LARGE_RECEIPT_BYTES)).decode()
            self.stats.large_receipts += 1
        return receipt

    def payment_failure(self) -> None:
        """The attempt fails; the customer retries with a new pending payment."""
        order: _Order = self.pending.pick(self.rng)
        self._exec("updates", "update public.payments set status = 'failed', updated_at = now(), "
                   "metadata = metadata || jsonb_build_object('failure_code', %s::text) where id = %s",
                   (self.rng.choice(FAILURE_CODES), order.payment_id))
        order.payment_id = self._uuid()
        order.attempts += 1
        self._insert_payment(order.payment_id, order.id, order.total, order.currency, attempt=order.attempts)

    def refund(self) -> None:
        order: _Order = self.paid.pick(self.rng)
        # Touches status and refunded_amount only: a large receipt stays as an unchanged TOAST value.
        self._exec("updates", "update public.payments set status = 'refunded', refunded_amount = %s, "
                   "updated_at = now() where id = %s", (order.total, order.payment_id))
        self._exec("updates", "update public.orders set status = 'refunded', updated_at = now() where id = %s",
                   (order.id,))
        self._cancel_tickets(order)
        self.paid.discard(order)
        self.closed.add(order, self.rng)

    def _cancel_tickets(self, order: _Order) -> None:
        self._exec("updates", "update public.tickets set status = 'cancelled' where order_id = %s "
                   "and status <> 'cancelled'", (order.id,))
        for ticket_id in order.ticket_ids:
            self.issued.discard(ticket_id)

    def validate_ticket(self) -> None:
        ticket_id: uuid.UUID = self.issued.pick(self.rng)
        self._exec("updates", "update public.tickets set status = 'validated', validated_at = now() "
                   "where id = %s and status = 'issued'", (ticket_id,))
        self.issued.discard(ticket_id)

    def cancel_order(self) -> None:
        order: _Order = self.pending.pick(self.rng)
        self._exec("updates", "update public.orders set status = 'cancelled', updated_at = now() where id = %s",
                   (order.id,))
        self._cancel_tickets(order)
        self._exec("updates", "update public.payments set status = 'failed', updated_at = now(), "
                   "metadata = metadata || '{\"failure_code\": \"order_cancelled\"}' "
                   "where order_id = %s and status = 'pending'", (order.id,))
        self.pending.discard(order)
        self.closed.add(order, self.rng)

    def purge_order(self) -> None:
        """Retention clean-up: children first, since the foreign keys do not cascade."""
        order: _Order = self.closed.pick(self.rng)
        self._exec("deletes", "delete from public.tickets where order_id = %s", (order.id,))
        self._exec("deletes", "delete from public.payments where order_id = %s", (order.id,))
        self._exec("deletes", "delete from public.orders where id = %s", (order.id,))
        self.closed.discard(order)


class _Pacer:
    """Paces calls at `rate` per second on an absolute schedule, forgiving backlogs over a second."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.next = time.monotonic()

    def wait(self, deadline: float | None) -> bool:
        """Sleep until the next slot; False if the deadline comes first."""
        now = time.monotonic()
        if self.rate is not None:
            self.next = max(self.next, now - 1.0)  # after a stall, catch up at most a second's worth
            if self.next > now:
                if deadline is not None and self.next >= deadline:
                    time.sleep(max(0.0, deadline - now))
                    return False
                time.sleep(self.next - now)
            self.next += 1.0 / self.rate
        return deadline is None or time.monotonic() < deadline


def run_workload(dsn: str, *, rate: float | None, duration: float | None, transactions: int | None,
                 mix: WorkloadMix | None = None, seed: int = 1,
                 progress: Callable[[WorkloadStats], None] | None = None) -> WorkloadStats:
    """Run operations at `rate` transactions/s (None: flat out) until `duration` seconds or
    `transactions` transactions, whichever comes first. `progress` gets the live stats after each
    committed transaction. The schema must exist."""
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of transactions per second, not {rate}")
    if duration is not None and not (math.isfinite(duration) and duration >= 0):
        raise ValueError(f"duration must be a number of seconds >= 0, not {duration}")
    if transactions is not None and transactions < 0:
        raise ValueError(f"transactions must be >= 0, not {transactions}")
    if duration is None and transactions is None:
        raise ValueError("give a duration, a transaction count, or both")
    with psycopg.connect(dsn, autocommit=True, application_name="temba-workload") as conn:
        work = _Workload(conn, mix or WorkloadMix(), seed)
        pacer = _Pacer(rate)
        start = time.monotonic()
        deadline = None if duration is None else start + duration
        try:
            while transactions is None or work.stats.transactions < transactions:
                if not pacer.wait(deadline):
                    break
                work.step()
                work.stats.elapsed = time.monotonic() - start
                if progress is not None:
                    progress(work.stats)
        finally:
            work.stats.elapsed = time.monotonic() - start
    return work.stats


# -- bulk data ------------------------------------------------------------------------------
# Every bulk value derives from hashint8extended(key, seed-derived salt): cheap (md5 costs ~20x
# more), reproducible, and computable again by each statement, so orders, payments and tickets
# are generated by three set-based inserts without reading anything back.
def _hash(key: str, purpose: int) -> str:
    """SQL: a 64-bit hash of the integer expression `key`, distinct per seed and per purpose."""
    return f"hashint8extended({key}, %(salt)s::bigint + {purpose})"


def _pick(key: str, purpose: int, n: int) -> str:
    """SQL: a pseudo-random integer in [0, n)."""
    return f"abs({_hash(key, purpose)} %% {n})::int"


def _uuid_sql(key: str, purpose: int) -> str:
    return (f"(lpad(to_hex({_hash(key, purpose)}), 16, '0') || "
            f"lpad(to_hex({_hash(key, purpose + 1)}), 16, '0'))::uuid")


_TICKET_KEY = "(g * 4 + j)"  # j in 1..4: unique per ticket
_BULK_PRICE = f"((1500 + {_pick(_TICKET_KEY, 10, 23501)}) / 100.0)::numeric(12,2)"
# Per bulk order g (1..n): its id, ticket count, status and creation time (within 90 days).
_BULK_ORDER = f"""
    select {_uuid_sql("g", 0)} as id,
           1 + {_pick("g", 2, 4)} as n,
           case {_pick("g", 3, 20)}
               when 0 then 'pending' when 1 then 'cancelled' when 2 then 'refunded' else 'paid' end as status,
           (array['EUR','USD','GBP','KES','ZAR'])[1 + {_pick("g", 4, 5)}] as currency,
           now() - make_interval(secs => {_pick("g", 5, 7776000)}) as created_at
"""
_BULK_TOTAL = f"(select sum({_BULK_PRICE}) as total from generate_series(1, o.n) j)"

_BULK_ORDERS_SQL = f"""
insert into public.orders (id, customer_email, event_id, status, total, currency, metadata, created_at, updated_at)
select o.id, %(batch)s::text || '-' || g || '@example.com', {_uuid_sql(_pick("g", 6, 200), 7)}, o.status,
       t.total, o.currency, jsonb_build_object('channel', 'import', 'batch', %(batch)s::text), o.created_at,
       o.created_at
from generate_series(1, %(n)s) g cross join lateral ({_BULK_ORDER}) o cross join lateral {_BULK_TOTAL} t
"""
_BULK_PAYMENTS_SQL = f"""
insert into public.payments (id, order_id, amount, currency, status, provider, provider_ref, refunded_amount,
                             metadata, created_at, updated_at)
select {_uuid_sql("g", 20)}, o.id, t.total, o.currency,
       case o.status when 'paid' then 'succeeded' when 'cancelled' then 'failed' else o.status end,
       (array['stripe','adyen','mpesa','paypal'])[1 + {_pick("g", 22, 4)}],
       case when o.status in ('paid', 'refunded') then 'ch_' || to_hex({_hash("g", 23)}) end,
       case when o.status = 'refunded' then t.total else 0 end,
       '{{"attempt": 1}}'::jsonb, o.created_at, o.created_at
from generate_series(1, %(n)s) g cross join lateral ({_BULK_ORDER}) o cross join lateral {_BULK_TOTAL} t
"""
_BULK_TICKETS_SQL = f"""
insert into public.tickets (id, order_id, seat, price, status, validated_at, created_at)
select {_uuid_sql(_TICKET_KEY, 30)}, o.id, chr(65 + {_pick("g", 32, 8)}) || (1 + {_pick("g", 33, 40)}) || '-' || j,
       {_BULK_PRICE},
       case when o.status in ('cancelled', 'refunded') then 'cancelled'
            when o.status = 'paid' and (g + j) %% 3 = 0 then 'validated' else 'issued' end,
       case when o.status = 'paid' and (g + j) %% 3 = 0 then least(now(), o.created_at + interval '1 day') end,
       o.created_at
from generate_series(1, %(n)s) g cross join lateral ({_BULK_ORDER}) o cross join lateral generate_series(1, o.n) j
"""


def bulk_load(conn: psycopg.Connection, orders: int, seed: int) -> dict[str, int]:
    """Insert `orders` orders with one payment and 1..4 tickets each (about 4.5 rows per order, so
    222,223 orders make a million rows), set-based, in one transaction. Ids derive from the seed:
    loading the same seed twice collides. Returns rows inserted per table."""
    if orders < 0:
        raise ValueError(f"orders must be >= 0, not {orders}")
    params = {"salt": seed * 64, "n": orders, "batch": f"bulk-{seed}"}
    counts: dict[str, int] = {}
    with conn.transaction():
        for table, sql in (("orders", _BULK_ORDERS_SQL), ("payments", _BULK_PAYMENTS_SQL),
                           ("tickets", _BULK_TICKETS_SQL)):
            counts[table] = conn.execute(sql, params).rowcount
    return counts


def large_transaction(conn: psycopg.Connection, rows: int) -> uuid.UUID:
    """One transaction changing exactly `rows` rows: an order and `rows - 1` tickets for it.
    Returns the order's id."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, not {rows}")
    price = Decimal("10.00")
    with conn.transaction():
        row = conn.execute("insert into public.orders (customer_email, event_id, status, total, currency, metadata) "
                           "values ('bulk-buyer@example.com', gen_random_uuid(), 'paid', %s, 'EUR', "
                           "'{\"channel\": \"group-sale\"}') returning id", (price * (rows - 1),)).fetchone()
        assert row is not None
        order_id: uuid.UUID = row[0]
        conn.execute("insert into public.tickets (order_id, seat, price) "
                     "select %s, 'G-' || g, %s from generate_series(1, %s) g", (order_id, price, rows - 1))
    return order_id


# -- command line ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not argparse's usage block
        self.exit(2, f"temba-workload: error: {message}\n")


def _rate(text: str) -> float | None:
    if text.strip().lower() in ("max", "0"):
        return None
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(text)
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(text)
    return value


# argparse names a converter in its message; these names read well there.
_rate.__name__ = "rate (transactions/s, or max)"
_positive_float.__name__ = "positive number"
_positive_int.__name__ = "positive integer"
_probability.__name__ = "probability between 0 and 1"


def _build_parser() -> _Parser:
    p = _Parser(prog="python -m examples.temba.workload",
                description="Run the Temba ticketing workload against a PostgreSQL database.")
    p.add_argument("--dsn", required=True, help="libpq connection string of the database")
    p.add_argument("--reset", action="store_true", help="drop and recreate the Temba tables first")
    p.add_argument("--rate", type=_rate, default=50.0, help="transactions per second, or max (default 50)")
    p.add_argument("--duration", type=_positive_float, help="seconds to run (default 10 if no --transactions)")
    p.add_argument("--transactions", type=_positive_int, help="stop after this many transactions")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--mix", default="", help="operation weights, e.g. place_order=5,refund=0 (others default: "
                   + ",".join(f"{k}={v:g}" for k, v in WorkloadMix().weights().items()) + ")")
    p.add_argument("--receipt-probability", type=_probability,
                   help="chance that a successful payment gets a large TOASTed receipt (default 0.02)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        mix = WorkloadMix.parse(args.mix)
        if args.receipt_probability is not None:
            mix = WorkloadMix(**{**asdict(mix), "large_receipt_probability": args.receipt_probability})
        conninfo_to_dict(args.dsn)
    except (ValueError, psycopg.ProgrammingError) as e:
        parser.error(_first_line(e))
    duration = args.duration if args.duration is not None or args.transactions is not None else 10.0
    try:
        if args.reset:
            with psycopg.connect(args.dsn, autocommit=True, application_name="temba-workload") as conn:
                reset_schema(conn)
        stats = run_workload(args.dsn, rate=args.rate, duration=duration, transactions=args.transactions,
                             mix=mix, seed=args.seed)
    except psycopg.errors.UndefinedTable as e:
        print(f"temba-workload: error: {_first_line(e)} (create the schema with --reset)", file=sys.stderr)
        return 1
    except psycopg.errors.UniqueViolation as e:
        print(f"temba-workload: error: {_first_line(e)} (this seed already ran here: use --reset or another "
              "--seed)", file=sys.stderr)
        return 1
    except psycopg.Error as e:
        print(f"temba-workload: error: {_first_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("temba-workload: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(stats.to_dict()) if args.json else stats.summary())
    return 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
