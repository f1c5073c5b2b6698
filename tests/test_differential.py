"""A seeded differential test: random histories against the real database, replayed to many moments.

Each history runs in a fresh database over three captured tables with awkward names:
  "Billing"."Ledger Entries"  a primary key, column names with spaces, dots and capitals, an
                              out-of-line (STORAGE EXTERNAL) text column that UPDATEs mostly leave
                              out, numeric(12,2), jsonb, bytea, timestamptz, varchar;
  "Billing"."Pay.Plan"        partitioned by month (primary key (id, "Month")), one partition at the
                              start and more created mid-history, sometimes in the transaction that
                              fills them; rows move between partitions; the whole table is truncated;
  public."Audit Trail"        no key, REPLICA IDENTITY FULL, duplicate rows changed one copy at a time.
Transactions mix inserts (VALUES, COPY, INSERT ... SELECT, upserts), updates (key changes, many keys
at once, TOAST left out or rewritten), deletes, truncates (of two tables at once too), savepoints
rolled back or released, rolled-back transactions, two transactions interleaved on two connections,
and schema changes the tape carries across: ADD COLUMN with or without a constant default, DROP,
RENAME and swapped COLUMN names, binary-compatible ALTER TYPE, RENAME and SET SCHEMA of a table,
new and renamed partitions, a default partition; tables capture must not follow are created under
names the captured ones had. Schema and row changes share transactions.

At random quiesced moments (no transaction open) the test records the WAL insert position and the
server clock and copies each table aside with CREATE TABLE AS into a schema that is not captured.
After the history, capture runs to its end (in one short run; in several during the history too; or
as a long-running process, restarted now and then: chosen per history), and every table is replayed
in process (`prepare`) to every moment, by LSN or now and then by time, and compared with its copy:
columns, types (format_type), the sorted COPY lines, and the table's name at that moment. One moment
per history also goes through `pgtape replay --schema`, and the tables it creates are compared.
Capture must have recorded no rebase point: every change here is one the tape carries.

The seed is printed (PGTAPE_TEST_SEED repeats a run). PGTAPE_DIFF_HISTORIES and PGTAPE_DIFF_STEPS
size it (defaults: 6 histories of 100 transactions, 61 moments each: 1,098 checks);
PGTAPE_DIFF_ONLY=<n> runs only history n of a seed. Each history's statements (and the moments'
targets) are written to <tmp_path>/history-<n>.sql, named in every failure.

test_rebase_points_refuse_then_replay_exactly adds changes the tape cannot carry (a table rewrite,
a volatile default, ATTACH/DETACH/DROP of a partition, TRUNCATE of one partition, a renamed key
column) under a long-running capture: a target right after one is refused ("cannot be replayed")
until capture's new base of the table, and every other target replays exactly
(PGTAPE_DIFF_REBASE_STEPS sizes it).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import subprocess
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from conftest import capture_to_now, run_pgtape, spawn_pgtape, stop_process, wait_until
from testkit.cluster import EmbeddedPostgres
from pgtape.errors import PgtapeError
from pgtape.tape.archive import Archive
from pgtape.replay.engine import prepare
from pgtape.replay.target import Target
from replay_oracle import TableState, compare, iso, lsn_int, lsn_text, oracle_connect, seed_for, table_state, us
from pgtape.snapshots import catalog, rebase

LEDGER = '"Billing"."Ledger Entries"'
PAY = '"Billing"."Pay.Plan"'
AUDIT = 'public."Audit Trail"'
TABLES = [LEDGER, PAY, AUDIT]  # canonical names: the identities on the tape
SETUP = [
    'CREATE SCHEMA "Billing"', 'CREATE SCHEMA "Billing Archive"', "CREATE SCHEMA oracle",
    f'CREATE TABLE {LEDGER} ("Entry Id" int PRIMARY KEY, "Amount" numeric(12,2), "memo.Text" text, '
    '"Big Blob" text, "J" jsonb, raw bytea, "At" timestamptz, code varchar(20))',
    f'ALTER TABLE {LEDGER} ALTER COLUMN "Big Blob" SET STORAGE EXTERNAL',
    f'CREATE TABLE {PAY} (id int, "Month" date, amount numeric(12,2), "Note" varchar(30), big text, '
    'PRIMARY KEY (id, "Month")) PARTITION BY RANGE ("Month")',
    f'ALTER TABLE {PAY} ALTER COLUMN big SET STORAGE EXTERNAL',
    f'CREATE TABLE "Billing"."Pay.Plan 2026-01" PARTITION OF {PAY} FOR VALUES FROM (\'2026-01-01\') '
    "TO ('2026-02-01')",
    f"CREATE TABLE {AUDIT} (account text, amount numeric(12,2), memo text, big text)",
    f"ALTER TABLE {AUDIT} REPLICA IDENTITY FULL",
    f"ALTER TABLE {AUDIT} ALTER COLUMN big SET STORAGE EXTERNAL",
]

TEXTS = ["", " ", "plain", "tab\there", "line\nbreak", "cr\rhere", "back\\slash", "\\N", "\\.", "NULL",
         "quote'and\"dq", "comma,semi;", "ünïcode ✓ 日本", "trailing space ", "a\\tb"]
COLUMN_NAMES = ["Note Two", "x.y", "Mixed Case", "a,b", 'q"uote', "ünï", "tab\there", "trailing ", "select",
                "Big Blob", "memo.Text", "code", "extra", "N", "amount"]
NEW_TYPES = ["text", "integer", "numeric(10,3)", "character varying(12)", "jsonb", "boolean",
             "timestamp with time zone", "bytea", "date", "numeric", "integer[]"]
TABLE_NAMES = {LEDGER: ["Ledger Entries", "Ledger.Entries v2", "ledger_entries", "LEDGER, ENTRIES", "Ledger ✓"],
               PAY: ["Pay.Plan", "pay plan", "Pay Plan v2", "pay_plan"],
               AUDIT: ["Audit Trail", "audit trail", "Audit.Trail ✓", "audit_trail"]}
SCHEMAS = {LEDGER: ["Billing", "Billing Archive"], PAY: ["Billing", "Billing Archive"],
           AUDIT: ["public", "Billing Archive"]}
MONTHS = [f"2026-{m:02d}" for m in range(1, 13)]
BARE = re.compile(r"[a-z_][a-z0-9_$]*")
TAB = b"\t"

SIZED = any(v in os.environ for v in ("PGTAPE_DIFF_HISTORIES", "PGTAPE_DIFF_STEPS"))
HISTORIES = int(os.environ.get("PGTAPE_DIFF_HISTORIES", "6"))
STEPS = int(os.environ.get("PGTAPE_DIFF_STEPS", "100"))
ONLY = os.environ.get("PGTAPE_DIFF_ONLY")
MIN_CHECKS = 1000

_db_counter = itertools.count()


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(text: str) -> str:
    """A string constant (standard_conforming_strings is on: backslashes are plain characters)."""
    return "'" + text.replace("'", "''") + "'"


def canonical(schema: str, rel: str) -> str:
    """pgtape's canonical table name, by its documented rule (pgtape/names.py): each part bare when
    it is a plain lower-case identifier, double-quoted otherwise."""
    return ".".join(p if BARE.fullmatch(p) else ident(p) for p in (schema, rel))


@contextmanager
def fresh_database(pg: EmbeddedPostgres, label: str) -> Iterator[str]:
    name = f"diff{next(_db_counter)}_{label}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'create database "{name}"')
    try:
        yield pg.dsn(name)
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            for (slot,) in c.execute("select slot_name from pg_replication_slots where database = %s",
                                     (name,)).fetchall():
                c.execute("select pg_terminate_backend(active_pid) from pg_replication_slots "
                          "where slot_name = %s and active_pid is not null", (slot,))
                c.execute("select pg_drop_replication_slot(%s)", (slot,))
            c.execute(f'drop database "{name}" with (force)')


@dataclass
class Col:
    name: str
    type: str  # format_type
    notnull: bool
    storage: str  # attstorage: 'e' for the out-of-line columns
    key: bool  # in the primary key (the partition column is)


@dataclass
class Moment:
    label: str
    step: int
    lsn: int  # WAL insert position, no transaction open
    time: int  # µs: the server's clock then (every commit before it is earlier, every one after later)
    names: dict[str, str]  # identity -> canonical name at the moment
    copies: dict[str, str]  # identity -> the oracle copy (CREATE TABLE AS)


@dataclass
class RebaseWindow:
    table: str
    label: str
    after_lsn: int  # WAL insert position right after the transaction that needed it
    base_lsn: int  # as-of LSN of the first base capture took of the table after it


class Workload:
    """Random transactions over the three tables. What exists (columns, keys, partitions, names) is
    read from the database each time, so rolled-back work needs no bookkeeping here."""

    def __init__(self, rng: random.Random, conn: psycopg.Connection, conn2: psycopg.Connection,
                 log: list[str]) -> None:
        self.rng, self.main, self.other, self.log = rng, conn, conn2, log
        self.c = conn  # the connection the current statements run on
        self.oids: dict[str, int] = {}
        self.busy: str | None = None  # while two transactions interleave: the table the second one changes
        self.next_id = 1000
        self.counter = 0

    # -- the database ----------------------------------------------------------------------------
    def exec(self, statement: str) -> None:
        self.log.append(("-- conn2: " if self.c is self.other else "") + statement + ";")
        try:
            self.c.execute(statement)
        except psycopg.Error as e:
            raise AssertionError(f"the workload's own statement failed: {statement[:300]!r}: {e}") from e

    def try_exec(self, statement: str) -> None:
        """A statement that may fail for reasons the workload does not foresee: undone then."""
        self.exec("SAVEPOINT attempt")
        try:
            self.c.execute(statement)
        except psycopg.Error:
            self.log.append(f"-- failed, so undone: {statement}")
            self.exec("ROLLBACK TO SAVEPOINT attempt")
        else:
            self.log.append(statement + ";")
            self.exec("RELEASE SAVEPOINT attempt")

    def q(self, query: str, params: tuple | None = None) -> list[tuple]:
        return self.c.execute(query, params).fetchall()

    def find_oids(self) -> None:
        for t in TABLES:
            self.oids[t] = self.q("SELECT %s::regclass::oid", (t,))[0][0]

    def where(self, table: str) -> tuple[str, str]:
        """(schema, relname) of a captured table now."""
        row = self.q("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE c.oid = %s", (self.oids[table],))
        return row[0]

    def sql(self, table: str) -> str:
        schema, rel = self.where(table)
        return f"{ident(schema)}.{ident(rel)}"

    def cols(self, table: str) -> list[Col]:
        return [Col(*r) for r in self.q(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attstorage, "
            "a.attnum = ANY(coalesce((SELECT i.indkey::int2[] FROM pg_index i WHERE i.indrelid = a.attrelid "
            "AND i.indisprimary), '{}')) FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 "
            "AND NOT a.attisdropped ORDER BY a.attnum", (self.oids[table],))]

    def partitions(self) -> list[tuple[str, str]]:
        """(SQL name, month or 'default') of each partition of the partitioned table."""
        out = []
        for schema, rel, bound in self.q(
                "SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE i.inhparent = %s ORDER BY c.oid", (self.oids[PAY],)):
            m = re.search(r"FROM \('(\d{4}-\d{2})-01'\)", bound)
            out.append((f"{ident(schema)}.{ident(rel)}", m[1] if m else "default"))
        return out

    # -- values (SQL expressions) ----------------------------------------------------------------------
    def big(self) -> str:
        """An out-of-line value: 2-6 kB of hex that pglz cannot compress."""
        salt, n = f"{self.rng.getrandbits(32):08x}", self.rng.randint(70, 180)
        return f"(SELECT string_agg(md5(g::text || {lit(salt)}), '') FROM generate_series(1, {n}) g)"

    def text(self, pool: bool = False) -> str:
        r = self.rng
        if pool:
            return r.choice(["a", "b", "dup", "tab\there", ""])
        if r.random() < 0.5:
            return r.choice(TEXTS)
        return f"note-{r.getrandbits(20)}" + r.choice(["", "\t", "\\", "\n", " ✓"])

    def value(self, typ: str, nullable: bool = True, big: bool = True, pool: bool = False) -> str:
        r = self.rng
        if nullable and r.random() < 0.12:
            return "NULL"
        if typ in ("text", "character varying"):
            return self.big() if big and r.random() < 0.15 else lit(self.text(pool))
        if m := re.fullmatch(r"character varying\((\d+)\)", typ):
            return lit(self.text(pool)[:int(m[1])])
        if m := re.fullmatch(r"numeric\((\d+),(\d+)\)", typ):
            p, s = int(m[1]), int(m[2])
            if pool:
                return lit(r.choice(["1.00", "2.50", "0"]))
            whole = r.choice([0, 1, r.randint(0, 10 ** (p - s) - 1), 10 ** (p - s) - 1])
            frac = f".{r.randint(0, 10 ** s - 1):0{s}d}" if s else ""
            return lit(f"{r.choice(['', '-'])}{whole}{frac}")
        if typ == "numeric":
            return lit(r.choice(["0.10", "1.0", "-0.5", "123456789012345678901234567890.000000000000000001",
                                 str(r.randint(-10 ** 20, 10 ** 20))]))
        if typ in ("integer", "bigint"):
            return str(r.choice([0, -1, 2 ** 31 - 1, -2 ** 31, r.randint(-1000, 1000)]))
        if typ == "integer[]":
            return lit(r.choice(["{}", "{1,NULL,3}", f"{{{r.randint(-5, 5)}}}"]))
        if typ == "jsonb":
            return lit(r.choice(['{"k": 1.50, "s": "x\\ty", "n": null}', '[1, 2.0, "3"]', '"str"', "{}",
                                 f'{{"v": {r.randint(0, 99)}, "w": [true, false]}}', '"\\\\N"']))
        if typ == "bytea":
            return lit(r.choice(["\\x", "\\x00ff10", "\\x" + r.randbytes(r.randint(1, 24)).hex()]))
        if typ == "timestamp with time zone":
            return lit(r.choice(["infinity", "-infinity", "2026-11-25 14:02:59.123456+01", "1999-12-31 23:59:59+00",
                                 f"20{r.randint(10, 40)}-0{r.randint(1, 9)}-1{r.randint(0, 9)} "
                                 f"0{r.randint(0, 9)}:00:00.{r.randint(0, 999999):06d}+05:30"]))
        if typ == "date":
            return lit(r.choice(["2026-02-28", "infinity", f"19{r.randint(10, 99)}-12-31"]))
        if typ == "boolean":
            return r.choice(["true", "false"])
        raise AssertionError(f"no values for type {typ}")

    def assignments(self, cols: list[Col], pool: bool = False) -> str:
        return ", ".join(f"{ident(c.name)} = {self.value(c.type, not c.notnull, pool=pool)}" for c in cols)

    def some(self, cols: list[Col], lo: int = 1, hi: int = 3, big_chance: float = 0.25) -> list[Col]:
        """A few columns to set; an out-of-line column only now and then (else UPDATEs leave it out)."""
        pick = [c for c in cols if c.storage != "e" or self.rng.random() < big_chance] or cols
        return self.rng.sample(pick, min(len(pick), self.rng.randint(lo, hi)))

    # -- a step: one transaction (or two interleaved) ----------------------------------------------------
    def step(self) -> bool:
        """One transaction (or two); True when it committed schema changes only."""
        r = self.rng
        x = r.random()
        if x < 0.07:
            self.interleaved()
            return False
        self.exec("BEGIN")
        schema_only = True
        for _ in range(r.choice([1, 1, 1, 2, 2, 3, 4])):
            if r.random() < 0.07:
                self.exec("SAVEPOINT s")
                schema_only &= self.op()
                self.exec(r.choice(["ROLLBACK TO SAVEPOINT s", "RELEASE SAVEPOINT s"]))
            else:
                schema_only &= self.op()
        self.exec("ROLLBACK" if x > 0.96 else "COMMIT")
        return schema_only and x <= 0.96

    def interleaved(self) -> None:
        """Row changes to one table on a second connection, inside which another transaction on the
        other tables commits; either may commit first."""
        r = self.rng
        busy = r.choice(TABLES)
        self.c, self.busy = self.other, busy  # (no statement of either may touch another's table)
        self.exec("BEGIN")
        for _ in range(r.randint(1, 2)):
            self.row_op(busy)
        self.c = self.main
        self.exec("BEGIN")
        for _ in range(r.randint(1, 2)):
            self.op(exclude=busy)
        self.busy = None
        first_other = r.random() < 0.5
        for conn in ((self.other, self.main) if first_other else (self.main, self.other)):
            self.c = conn
            self.exec("COMMIT")
        self.c = self.main

    def op(self, exclude: str | None = None) -> bool:
        """A row change or (True) a schema change."""
        r = self.rng
        table = r.choice([t for t in TABLES if t != exclude])
        if r.random() < 0.16:
            self.schema_op(table)
            return True
        self.row_op(table)
        return False

    # -- row changes -------------------------------------------------------------------------------------
    def row_op(self, table: str) -> None:
        {LEDGER: self.ledger_op, PAY: self.pay_op, AUDIT: self.audit_op}[table]()

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def kind(self, weights: dict[str, int]) -> str:
        return self.rng.choices(list(weights), list(weights.values()))[0]

    def ledger_op(self) -> None:
        r, t, cols = self.rng, self.sql(LEDGER), self.cols(LEDGER)
        key = next(c for c in cols if c.key)
        k_, others = ident(key.name), [c for c in cols if not c.key]
        keys = [row[0] for row in self.q(f"SELECT {k_} FROM {t} ORDER BY 1")]
        kind = self.kind({"ins": 14, "upd": 18, "upd_big": 5, "upd_many": 3, "key": 6, "swap": 2, "del": 6,
                          "churn": 3, "truncate": 1, "upsert": 4, "copy": 3, "bulk": 1, "shift": 1}
                         ) if keys else "ins"
        if kind == "ins":
            chosen = [c for c in others if c.notnull or r.random() < 0.7]
            rows = [[str(self.new_id())] + [self.value(c.type, not c.notnull) for c in chosen]
                    for _ in range(r.randint(1, 3))]
            self.insert(t, [key, *chosen], rows)
        elif kind == "upd" and others:
            self.exec(f"UPDATE {t} SET {self.assignments(self.some(others))} WHERE {k_} = {r.choice(keys)}")
        elif kind == "upd_big":
            big = [c for c in others if c.storage == "e"] or others
            c = r.choice(big)
            v = (self.big() if r.random() < 0.6 and c.type in ("text", "character varying")
                 else self.value(c.type, not c.notnull))
            self.exec(f"UPDATE {t} SET {ident(c.name)} = {v} WHERE {k_} = {r.choice(keys)}")
        elif kind == "upd_many" and others:
            self.exec(f"UPDATE {t} SET {self.assignments(self.some(others, 1, 1, 0.0))} "
                      f"WHERE {k_} % {r.randint(3, 7)} = {r.randint(0, 2)}")
        elif kind == "key":
            extra = self.some(others, 0, 1, 0.1)
            sets = ", ".join([f"{k_} = {self.new_id()}"] + ([self.assignments(extra)] if extra else []))
            self.exec(f"UPDATE {t} SET {sets} WHERE {k_} = {r.choice(keys)}")
        elif kind == "swap" and len(keys) > 1:
            a, b = r.sample(keys, 2)
            tmp = -self.new_id()
            self.exec(f"UPDATE {t} SET {k_} = {tmp} WHERE {k_} = {a}")
            self.exec(f"UPDATE {t} SET {k_} = {a} WHERE {k_} = {b}")
            self.exec(f"UPDATE {t} SET {k_} = {b} WHERE {k_} = {tmp}")
        elif kind == "del":
            if r.random() < 0.2:
                self.exec(f"DELETE FROM {t} WHERE {k_} % {r.randint(5, 9)} = {r.randint(0, 4)}")
            else:
                self.exec(f"DELETE FROM {t} WHERE {k_} = {r.choice(keys)}")
        elif kind == "churn":  # a key deleted and inserted again, then changed, in one transaction
            k = r.choice(keys)
            self.exec(f"DELETE FROM {t} WHERE {k_} = {k}")
            chosen = [c for c in others if c.notnull or r.random() < 0.6]
            self.insert(t, [key, *chosen], [[str(k)] + [self.value(c.type, not c.notnull) for c in chosen]])
            if others and r.random() < 0.5:
                self.exec(f"UPDATE {t} SET {self.assignments(self.some(others))} WHERE {k_} = {k}")
        elif kind == "truncate":
            both = r.random() < 0.3 and self.busy is None  # sometimes with another table, in one statement
            self.exec(f"TRUNCATE {t}, {self.sql(AUDIT)}" if both else f"TRUNCATE {t}")
            if r.random() < 0.6:
                chosen = [c for c in others if c.notnull or r.random() < 0.7]
                self.insert(t, [key, *chosen], [[str(self.new_id())] + [self.value(c.type, not c.notnull)
                                                                           for c in chosen]])
        elif kind == "upsert":  # an existing key (an UPDATE) or a new one (an INSERT), or nothing
            k = r.choice(keys) if r.random() < 0.7 else self.new_id()
            chosen = self.some(others, 1, 3, 0.2) if others else []
            action = ("DO NOTHING" if r.random() < 0.2 or not chosen else "DO UPDATE SET " + ", ".join(
                f"{ident(c.name)} = EXCLUDED.{ident(c.name)}" for c in chosen))
            notnull = [c for c in others if c.notnull and c not in chosen]
            self.insert(t, [key, *chosen, *notnull], [[str(k)] + [self.value(c.type, not c.notnull)
                                                                   for c in chosen + notnull]],
                        f" ON CONFLICT ({k_}) {action}")
        elif kind == "copy":  # COPY FROM: the multi-insert path of the server
            chosen = [c for c in others if c.notnull or r.random() < 0.7]
            self.copy(t, [key, *chosen], [[str(self.new_id())] + [self.value(c.type, not c.notnull) for c in chosen]
                                          for _ in range(r.randint(1, 12))])
        elif kind == "bulk":  # a few hundred rows in one statement, then some of them gone again
            first = self.next_id + 1
            self.next_id += r.randint(100, 400)
            text = next((c for c in others if c.type == "text" and c.storage != "e"), None)
            cols_, vals = (f", {ident(text.name)}", ", 'bulk ' || g") if text else ("", "")
            self.exec(f"INSERT INTO {t} ({k_}{cols_}) SELECT g{vals} FROM generate_series({first}, {self.next_id}) g")
            if r.random() < 0.5:
                self.exec(f"DELETE FROM {t} WHERE {k_} BETWEEN {first} AND {self.next_id} AND {k_} % 3 = 0")
        elif kind == "shift":  # many keys changed by one statement
            self.exec(f"UPDATE {t} SET {k_} = {k_} + 1000000 WHERE {k_} % {r.randint(2, 5)} = 0 "
                      f"AND {k_} BETWEEN 0 AND 999999")

    def insert(self, t: str, cols: list[Col], rows: list[list[str]], tail: str = "") -> None:
        self.exec(f"INSERT INTO {t} ({', '.join(ident(c.name) for c in cols)}) VALUES "
                  + ", ".join("(" + ", ".join(row) + ")" for row in rows) + tail)

    def copy(self, t: str, cols: list[Col], rows: list[list[str]]) -> None:
        """COPY FROM STDIN: the values (SQL expressions) rendered by the server first; logged as psql
        would take it."""
        texts = [self.q("SELECT " + ", ".join(f"({v})::text" for v in row))[0] for row in rows]
        statement = f"COPY {t} ({', '.join(ident(c.name) for c in cols)}) FROM STDIN"
        esc = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
        self.log.append(("-- conn2: " if self.c is self.other else "") + statement + ";\n" + "\n".join(
            "\t".join("\\N" if v is None else v.translate(esc) for v in row) for row in texts) + "\n\\.")
        try:
            with self.c.cursor().copy(statement) as cp:
                for row in texts:
                    cp.write_row(row)
        except psycopg.Error as e:
            raise AssertionError(f"the workload's own COPY failed: {statement!r}: {e}") from e

    def pay_months(self) -> tuple[list[str], bool]:
        parts = self.partitions()
        return [m for _, m in parts if m != "default"], any(m == "default" for _, m in parts)

    def pay_date(self, months: list[str], default: bool) -> str:
        r = self.rng
        month = f"2027-{r.randint(1, 12):02d}" if default and (not months or r.random() < 0.2) else r.choice(months)
        return f"{month}-{r.randint(1, 28):02d}"

    def pay_op(self) -> None:
        r, t, cols = self.rng, self.sql(PAY), self.cols(PAY)
        months, default = self.pay_months()
        if not months and not default:
            return  # every partition detached or dropped (rebase test): nothing can go in
        key_cols = [c for c in cols if c.key]
        id_, m_ = (ident(c.name) for c in key_cols)  # (id, "Month") in that order: attnums 1 and 2
        others = [c for c in cols if not c.key]
        keys = self.q(f"SELECT {id_}, {m_}::text FROM {t} ORDER BY 1, 2")
        kind = self.kind({"ins": 14, "upd": 14, "upd_big": 4, "move": 8, "key": 5, "del": 6, "truncate": 1,
                          "move_many": 2, "upsert": 3, "copy": 3}) if keys else "ins"

        def row() -> list[str]:
            return [str(self.new_id()), lit(self.pay_date(months, default))] + [
                self.value(c.type, not c.notnull) for c in chosen]

        def at(k: tuple) -> str:
            return f"{id_} = {k[0]} AND {m_} = {lit(k[1])}"
        if kind == "ins":
            chosen = [c for c in others if c.notnull or r.random() < 0.7]
            self.insert(t, key_cols + chosen, [row() for _ in range(r.randint(1, 3))])
        elif kind == "upd" and others:
            self.exec(f"UPDATE {t} SET {self.assignments(self.some(others))} WHERE {at(r.choice(keys))}")
        elif kind == "upd_big" and others:
            c = r.choice([c for c in others if c.storage == "e"] or others)
            v = (self.big() if c.type in ("text", "character varying") and r.random() < 0.6
                 else self.value(c.type, not c.notnull))
            self.exec(f"UPDATE {t} SET {ident(c.name)} = {v} WHERE {at(r.choice(keys))}")
        elif kind == "move":  # to another month, usually another partition; TOAST left out
            extra = self.some(others, 0, 1, 0.0) if others else []
            sets = ", ".join([f"{m_} = {lit(self.pay_date(months, default))}"] + (
                [self.assignments(extra)] if extra else []))
            self.exec(f"UPDATE {t} SET {sets} WHERE {at(r.choice(keys))}")
        elif kind == "key":
            self.exec(f"UPDATE {t} SET {id_} = {self.new_id()} WHERE {at(r.choice(keys))}")
        elif kind == "del":
            self.exec(f"DELETE FROM {t} WHERE {at(r.choice(keys))}")
        elif kind == "truncate":
            self.exec(f"TRUNCATE {t}")
            if r.random() < 0.5:
                chosen = [c for c in others if c.notnull]
                self.insert(t, key_cols + chosen, [row()])
        elif kind == "move_many":  # many rows to one day, across partitions
            self.exec(f"UPDATE {t} SET {m_} = {lit(self.pay_date(months, default))} "
                      f"WHERE {id_} % {r.randint(2, 5)} = {r.randint(0, 1)}")
        elif kind == "upsert":
            k = r.choice(keys)
            chosen = self.some(others, 1, 2, 0.2) if others else []
            action = ("DO NOTHING" if r.random() < 0.2 or not chosen else "DO UPDATE SET " + ", ".join(
                f"{ident(c.name)} = EXCLUDED.{ident(c.name)}" for c in chosen))
            notnull = [c for c in others if c.notnull and c not in chosen]
            self.insert(t, key_cols + chosen + notnull, [[str(k[0]), lit(k[1])] + [
                self.value(c.type, not c.notnull) for c in chosen + notnull]], f" ON CONFLICT ({id_}, {m_}) {action}")
        elif kind == "copy":
            chosen = [c for c in others if c.notnull or r.random() < 0.7]
            self.copy(t, key_cols + chosen, [row() for _ in range(r.randint(1, 12))])

    def audit_op(self) -> None:
        r, t, cols = self.rng, self.sql(AUDIT), self.cols(AUDIT)
        first = ident(cols[0].name)
        values = [row[0] for row in self.q(f"SELECT DISTINCT {first}::text FROM {t} ORDER BY 1 NULLS FIRST")]
        kind = self.kind({"ins": 12, "dup": 8, "upd_one": 10, "upd_all": 4, "upd_big": 4, "del_one": 8,
                          "del_all": 3, "truncate": 1, "copy": 3, "double": 1}) if values else "ins"
        v = r.choice(values) if values else None
        match = f"{first} IS NOT DISTINCT FROM {'NULL' if v is None else lit(v)}"
        one = f"ctid = (SELECT ctid FROM {t} WHERE {match} LIMIT 1)"
        rest = cols[1:] or cols
        if kind == "ins":
            rows = [[self.value(c.type, not c.notnull, pool=True) for c in cols] for _ in range(r.randint(1, 2))]
            self.insert(t, cols, rows * r.choice([1, 1, 2]))  # sometimes twice the same rows
        elif kind == "dup":
            self.exec(f"INSERT INTO {t} SELECT * FROM {t} WHERE {one}")
        elif kind == "upd_one":
            self.exec(f"UPDATE {t} SET {self.assignments(self.some(rest, 1, 2, 0.0), pool=True)} WHERE {one}")
        elif kind == "upd_all":
            self.exec(f"UPDATE {t} SET {self.assignments(self.some(rest, 1, 1, 0.0), pool=True)} WHERE {match}")
        elif kind == "upd_big":
            c = r.choice([c for c in cols if c.storage == "e"] or rest)
            val = (self.big() if c.type in ("text", "character varying") and r.random() < 0.7
                   else self.value(c.type, not c.notnull))
            self.exec(f"UPDATE {t} SET {ident(c.name)} = {val} WHERE {one}")
        elif kind == "del_one":
            self.exec(f"DELETE FROM {t} WHERE {one}")
        elif kind == "del_all":
            self.exec(f"DELETE FROM {t} WHERE {match}")
        elif kind == "truncate":
            self.exec(f"TRUNCATE {t}")
        elif kind == "copy":
            rows = [[self.value(c.type, not c.notnull, pool=True) for c in cols] for _ in range(r.randint(1, 4))]
            self.copy(t, cols, rows * r.choice([1, 2]))
        elif kind == "double":  # every row once more
            if self.q(f"SELECT count(*) FROM {t}")[0][0] < 40:
                self.exec(f"INSERT INTO {t} SELECT * FROM {t}")

    # -- schema changes the tape carries ----------------------------------------------------------------
    def schema_op(self, table: str) -> None:
        r, t, cols = self.rng, self.sql(table), self.cols(table)
        names = {c.name for c in cols}
        free_names = [n for n in COLUMN_NAMES if n not in names]
        # The key, the partition column, the out-of-line column and the first column of the table
        # without a key (the workload picks rows by it) stay.
        droppable = [c for c in cols[1:] if not c.key and c.storage != "e"]
        renamable = [c for c in cols if not c.key]
        weights = {"add": 5, "drop": 4, "rename": 4, "swap": 1, "retype": 3, "default": 1, "rename_table": 2,
                   "set_schema": 1, "noop": 1, "impostor": 2}
        if table == PAY:
            weights |= {"partition": 6, "default_partition": 1, "rename_partition": 2}
        kind = self.kind(weights)
        if kind == "add" and len(cols) < 12 and free_names:
            typ = r.choice(NEW_TYPES)
            x = r.random()
            default = ""
            if x < 0.5:
                default = f" DEFAULT {self.value(typ, nullable=False, big=False)}"
            elif x < 0.6 and typ == "timestamp with time zone":
                default = " DEFAULT now()"  # stable: evaluated once, what existing rows read
            elif x < 0.65 and typ == "text":
                default = f" DEFAULT repeat({lit(self.text())}, 900)"  # a long missing value
            notnull = " NOT NULL" if default and r.random() < 0.2 else ""
            self.exec(f"ALTER TABLE {t} ADD COLUMN {ident(r.choice(free_names))} {typ}{default}{notnull}")
        elif kind == "drop" and droppable:
            self.exec(f"ALTER TABLE {t} DROP COLUMN {ident(r.choice(droppable).name)}")
        elif kind == "rename" and renamable and free_names:
            self.exec(f"ALTER TABLE {t} RENAME COLUMN {ident(r.choice(renamable).name)} TO "
                      f"{ident(r.choice(free_names))}")
        elif kind == "swap" and len(renamable) >= 2:
            a, b = r.sample(renamable, 2)
            self.exec(f"ALTER TABLE {t} RENAME COLUMN {ident(a.name)} TO \"swap tmp\"")
            self.exec(f"ALTER TABLE {t} RENAME COLUMN {ident(b.name)} TO {ident(a.name)}")
            self.exec(f"ALTER TABLE {t} RENAME COLUMN \"swap tmp\" TO {ident(b.name)}")
        elif kind == "retype":
            choices = []
            for c in renamable:
                if m := re.fullmatch(r"character varying\((\d+)\)", c.type):
                    choices += [(c, f"varchar({int(m[1]) + 10})"), (c, "text"), (c, "varchar")]
                elif c.type == "text":
                    choices.append((c, "varchar"))
                elif c.type == "character varying":
                    choices.append((c, "text"))
                elif m := re.fullmatch(r"numeric\((\d+),(\d+)\)", c.type):
                    choices += [(c, f"numeric({int(m[1]) + 2},{m[2]})"), (c, "numeric")]
            if choices:  # binary compatible: nothing is rewritten
                c, typ = r.choice(choices)
                self.exec(f"ALTER TABLE {t} ALTER COLUMN {ident(c.name)} TYPE {typ}")
        elif kind == "default" and renamable:
            c = r.choice(renamable)
            if r.random() < 0.5 and not c.notnull:
                self.exec(f"ALTER TABLE {t} ALTER COLUMN {ident(c.name)} DROP DEFAULT")
            else:
                self.exec(f"ALTER TABLE {t} ALTER COLUMN {ident(c.name)} SET DEFAULT "
                          f"{self.value(c.type, nullable=False, big=False)}")
        elif kind == "rename_table":
            schema, rel = self.where(table)
            new = r.choice([n for n in TABLE_NAMES[table] if n != rel])
            if not self.q("SELECT to_regclass(%s)", (f"{ident(schema)}.{ident(new)}",))[0][0]:
                self.exec(f"ALTER TABLE {t} RENAME TO {ident(new)}")
        elif kind == "set_schema":
            schema, rel = self.where(table)
            new = next(s for s in SCHEMAS[table] if s != schema)
            if not self.q("SELECT to_regclass(%s)", (f"{ident(new)}.{ident(rel)}",))[0][0]:
                self.try_exec(f"ALTER TABLE {t} SET SCHEMA {ident(new)}")  # its indexes' names may be taken
        elif kind == "noop":  # DDL that changes no shape
            if r.random() < 0.5 or not cols[0].key:  # (an index on values of kilobytes would fail)
                self.exec(f"COMMENT ON TABLE {t} IS {lit(self.text())}")
            else:
                self.exec(f"CREATE INDEX ON {t} ({ident(cols[0].name)})")
        elif kind == "impostor":
            self.impostor()
        elif kind == "partition":
            self.new_partition(r.random() < 0.6)
        elif kind == "default_partition":
            months, has_default = self.pay_months()
            if not has_default:
                self.exec(f'CREATE TABLE "Billing"."Pay.Plan default" PARTITION OF {t} DEFAULT')
        elif kind == "rename_partition":
            part, month = r.choice(self.partitions())
            self.counter += 1
            self.exec(f"ALTER TABLE {part} RENAME TO {ident(f'pp {month} #{self.counter}')}")

    def impostor(self) -> None:
        """A table capture must not follow, under a name a captured table or partition had: created,
        or written to when it exists."""
        r = self.rng
        name = r.choice([LEDGER, PAY, AUDIT] + [f'"Billing"."Pay.Plan {m}"' for m in MONTHS[:4]])
        oid = self.q("SELECT to_regclass(%s)::oid", (name,))[0][0]
        followed = set(self.oids.values()) | {o for (o,) in self.q(
            "SELECT inhrelid::oid FROM pg_inherits WHERE inhparent = %s", (self.oids[PAY],))}
        if oid is None:
            self.exec(f'CREATE TABLE {name} (id int PRIMARY KEY, "Big Blob" text, note text)')
        elif oid in followed or self.q("SELECT relkind FROM pg_class WHERE oid = %s", (oid,))[0][0] != "r":
            return
        elif [c for (c,) in self.q("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                                   "AND NOT attisdropped ORDER BY attnum", (oid,))] != ["id", "Big Blob", "note"]:
            self.exec(f"TRUNCATE {name}")  # not an impostor's own table (a detached partition): its shape is not ours
            return
        self.next_id += 1
        self.exec(r.choice([f"INSERT INTO {name} VALUES ({self.next_id}, {self.big()}, 'impostor')",
                            f"UPDATE {name} SET note = 'impostor again'", f"TRUNCATE {name}",
                            f"DELETE FROM {name} WHERE id % 2 = 0"]))

    def new_partition(self, fill: bool) -> None:
        """Next month's partition (one whose rows the default partition does not hold), and rows
        going into it in the same transaction."""
        r, t = self.rng, self.sql(PAY)
        months, default = self.pay_months()
        parts = self.partitions()
        m_ = ident(self.cols(PAY)[1].name)
        for month in MONTHS:
            if month in months:
                continue
            bounds = f"'{month}-01'", f"'{month}-01'::date + interval '1 month'"
            if default:
                part = next(p for p, m in parts if m == "default")
                if self.q(f"SELECT count(*) FROM {part} WHERE {m_} >= {bounds[0]} AND {m_} < {bounds[1]}")[0][0]:
                    continue
            self.counter += 1
            end = f"{month[:4]}-{int(month[5:]) + 1:02d}-01" if month != "2026-12" else "2027-01-01"
            name = f'"Billing".{ident(f"Pay.Plan {month}")}'
            if self.q("SELECT to_regclass(%s)", (name,))[0][0]:  # an impostor has that name
                name = f'"Billing".{ident(f"Pay.Plan {month} #{self.counter}")}'
            self.exec(f"CREATE TABLE {name} PARTITION OF {t} FOR VALUES FROM ('{month}-01') TO ('{end}')")
            if fill:
                cols = self.cols(PAY)
                chosen = [c for c in cols[2:] if c.notnull or r.random() < 0.7]
                self.insert(t, cols[:2] + chosen, [[str(self.new_id()), lit(f"{month}-{r.randint(1, 28):02d}")] + [
                    self.value(c.type, not c.notnull) for c in chosen] for _ in range(r.randint(1, 3))])
                keys = self.q(f"SELECT {ident(cols[0].name)}, {m_}::text FROM {t} ORDER BY 1, 2")
                if keys and r.random() < 0.5:  # and a row moving into it
                    k = r.choice(keys)
                    self.exec(f"UPDATE {t} SET {m_} = '{month}-15' WHERE {ident(cols[0].name)} = {k[0]} "
                              f"AND {m_} = {lit(k[1])}")
            return

    # -- changes the tape cannot carry (capture records a rebase point and takes a new base) ------------
    def rebase_op(self, table: str) -> None:
        """Only in the rebase test, with row changes of the table around it in its transaction."""
        r, t, cols = self.rng, self.sql(table), self.cols(table)
        kinds = ["rewrite", "volatile_default"] + (["rename_key"] if table == LEDGER else []) + (
            ["attach", "detach", "drop_partition", "truncate_partition"] if table == PAY else [])
        kind = r.choice(kinds)
        if kind == "rewrite":
            choices = []
            for c in cols:
                if c.key:
                    continue
                if c.type in ("text", "character varying") or c.type.startswith("character varying("):
                    choices.append((c, "text", f"upper({ident(c.name)})"))
                elif m := re.fullmatch(r"numeric\((\d+),(\d+)\)", c.type):
                    choices.append((c, f"numeric({int(m[1]) + 1},{int(m[2]) + 1})", ident(c.name)))
                elif c.type == "integer":
                    choices.append((c, "bigint", f"{ident(c.name)} + 1"))
            if not choices:
                self.rebase_op(table)
                return
            c, typ, using = r.choice(choices)
            self.exec(f"ALTER TABLE {t} ALTER COLUMN {ident(c.name)} TYPE {typ} USING {using}")
        elif kind == "volatile_default":
            names = {c.name for c in cols}
            free = [n for n in COLUMN_NAMES if n not in names] or [f"stamp {self.new_id()}"]
            self.exec(f"ALTER TABLE {t} ADD COLUMN {ident(r.choice(free))} timestamptz DEFAULT clock_timestamp()")
        elif kind == "rename_key":
            key = next(c for c in cols if c.key)
            self.counter += 1
            self.exec(f"ALTER TABLE {t} RENAME COLUMN {ident(key.name)} TO {ident(f'Entry No {self.counter}')}")
        elif kind == "attach":
            months, default = self.pay_months()
            free = [m for m in MONTHS if m not in months]
            if default:
                part = next(p for p, m in self.partitions() if m == "default")
                self.exec(f"DELETE FROM {part} WHERE {ident(cols[1].name)} < '2027-01-01'")
            month = r.choice(free)
            end = f"{month[:4]}-{int(month[5:]) + 1:02d}-01" if month != "2026-12" else "2027-01-01"
            self.counter += 1
            part = f'"Billing".{ident(f"attached {month} #{self.counter}")}'
            self.exec(f"CREATE TABLE {part} (LIKE {t} INCLUDING DEFAULTS)")
            self.exec(f"INSERT INTO {part} ({', '.join(ident(c.name) for c in cols[:2])}) VALUES "
                      f"({self.new_id()}, '{month}-03'), ({self.new_id()}, '{month}-04')")
            self.exec(f"ALTER TABLE {t} ATTACH PARTITION {part} FOR VALUES FROM ('{month}-01') TO ('{end}')")
        elif kind in ("detach", "drop_partition", "truncate_partition"):
            parts = self.partitions()
            if len(parts) < 2:
                self.new_partition(True)  # one more first: with a single partition these change the table whole
                parts = self.partitions()
            if len(parts) < 2:
                self.rebase_op(table)
                return
            part, _ = r.choice(parts)
            self.exec({"detach": f"ALTER TABLE {t} DETACH PARTITION {part}", "drop_partition": f"DROP TABLE {part}",
                       "truncate_partition": f"TRUNCATE {part}"}[kind])


# -- the oracle ----------------------------------------------------------------------------------------
class Run:
    """One history: its database, workload, moments and checks."""

    def __init__(self, seed: int, number: int | str, dsn: str, archive: Path, log_path: Path) -> None:
        self.seed, self.number, self.dsn, self.archive, self.log_path = seed, number, dsn, archive, log_path
        self.rng = random.Random(f"{seed}/{number}")
        self.conn = oracle_connect(dsn)
        self.conn2 = oracle_connect(dsn)
        for c in (self.conn, self.conn2):  # a workload that waited for itself would fail, not hang
            c.execute("SET lock_timeout = '30s'")
        self.log: list[str] = []
        self.w = Workload(self.rng, self.conn, self.conn2, self.log)
        self.moments: list[Moment] = []
        self.windows: list[RebaseWindow] = []
        self.checks = 0
        self.cli_checks = 0
        self.refusals = 0
        self.failures: list[str] = []

    def close(self) -> None:
        self.log_path.write_text("\n".join(self.log) + "\n")
        self.conn.close()
        self.conn2.close()

    def setup(self) -> None:
        for s in SETUP:
            self.w.exec(s)
        self.w.find_oids()
        self.w.exec("BEGIN")
        for _ in range(3):
            self.w.ledger_op()
            self.w.pay_op()
            self.w.audit_op()
        self.w.exec("COMMIT")

    def moment(self, label: str, step: int) -> Moment:
        w = self.w
        lsn_, clock = w.q("SELECT pg_current_wal_insert_lsn()::text, clock_timestamp()")[0]
        lsn = lsn_int(lsn_)
        k = len(self.moments)
        names, copies = {}, {}
        self.log.append(f"-- moment {k} ({label}): target LSN {lsn_text(lsn)}, time {iso(us(clock))}")
        for j, t in enumerate(TABLES):
            names[t] = canonical(*w.where(t))
            copies[t] = f"oracle.m{k}_{j}"
            w.exec(f"CREATE TABLE {copies[t]} AS SELECT * FROM {w.sql(t)}")
        m = Moment(label, step, lsn, us(clock), names, copies)
        self.moments.append(m)
        return m

    def last_change(self) -> int:
        """A row change after the last moment, so the tape's end passes every moment at once (a
        tape idle after its last captured change notes how far it is complete only every 10 s):
        the WAL position inside it, which its commit lies after."""
        w = self.w
        w.exec("BEGIN")
        w.insert(w.sql(AUDIT), w.cols(AUDIT)[:1], [["'the end'"]])
        lsn = lsn_int(w.q("SELECT pg_current_wal_insert_lsn()::text")[0][0])
        w.exec("COMMIT")
        return lsn

    def where(self, m: Moment, table: str) -> str:
        return (f"seed {self.seed} history {self.number}, {m.label} (LSN {lsn_text(m.lsn)}, time {iso(m.time)}), "
                f"{table}")

    def refused_at(self, m: Moment, table: str) -> RebaseWindow | None:
        return next((w for w in self.windows if w.table == table and w.after_lsn <= m.lsn < w.base_lsn), None)

    def check_all(self, crng: random.Random) -> None:
        archive = Archive(self.archive)
        for m in self.moments:
            refused = {t for t in TABLES if self.refused_at(m, t)}
            # Mostly by LSN, some by time (the moment's clock: no commit falls in between).
            target = Target("time", time=m.time) if not refused and crng.random() < 0.25 else Target("lsn", lsn=m.lsn)
            together = not refused and crng.random() < 0.5  # one plan for all three, or one per table
            for group in ([TABLES] if together else [[t] for t in TABLES]):
                try:
                    plan = prepare(archive, list(group), target)
                except PgtapeError as e:
                    for t in group:
                        self.checks += 1
                        if t in refused and "cannot be replayed" in str(e):
                            self.refusals += 1
                        else:
                            self.failures.append(f"{self.where(m, t)}: replay refused: {e}")
                    continue
                for t in group:
                    self.checks += 1
                    window = self.refused_at(m, t)
                    if window is not None:
                        self.failures.append(f"{self.where(m, t)}: replayed, but the target lies after {window.label} "
                                             f"and before the new base at {lsn_text(window.base_lsn)}")
                        continue
                    fold = plan.folds[t]
                    expected = table_state(self.conn, m.copies[t])
                    problem = differs(t, fold.columns, fold.types, list(plan.rows(t)), expected)
                    if problem is None and fold.relname != m.names[t]:
                        problem = f"{t}: named {fold.relname} at the target, really {m.names[t]}"
                    if problem is not None:
                        self.failures.append(f"{self.where(m, t)}: {problem.removeprefix(t + ': ')}")


    def check_cli(self, crng: random.Random, count: int) -> None:
        """A few moments through the command line, into a recovery schema of the same database:
        the tables pgtape creates there must equal the copies too."""
        candidates = [m for m in self.moments if not any(self.refused_at(m, t) for t in TABLES)]
        for k, m in enumerate(crng.sample(candidates, min(count, len(candidates)))):
            schema = f"rec {k}"
            r = run_pgtape("replay", "--dsn", self.dsn, "--archive", str(self.archive), "--target-lsn",
                           lsn_text(m.lsn), "--schema", schema, "--json")
            self.cli_checks += 1
            if r.returncode != 0:
                self.failures.append(f"{self.where(m, 'all tables')}: pgtape replay --schema exited {r.returncode}: "
                                     f"{r.stderr.strip()[:500]}")
                continue
            relations = json.loads(r.stdout)["relations"]
            for t in TABLES:
                got = table_state(self.conn, relations[t])
                problem = differs(t, list(got.columns), list(got.types), list(got.lines),
                                  table_state(self.conn, m.copies[t]))
                if problem is not None:
                    self.failures.append(f"{self.where(m, t)}: pgtape replay --schema into {relations[t]}: "
                                         f"{problem.removeprefix(t + ': ')}")


def differs(table: str, columns: list[str], types: list[str], lines: list[bytes], expected: TableState) -> str | None:
    """replay_oracle.compare, with rows that differ shown column by column (paired by their first two
    fields: the key, or the key's first column and another)."""
    problem = compare(table, columns, types, lines, expected)
    if problem is None or list(columns) != list(expected.columns) or list(types) != list(expected.types):
        return problem
    got, real = Counter(lines), Counter(expected.lines)
    extra, lost = list((got - real).elements()), list((real - got).elements())
    pairs, only_replay = [], []
    for line in extra:
        twin = next((x for x in lost if x.split(b"\t")[:2] == line.split(b"\t")[:2]), None)
        if twin is None:
            only_replay.append(line)
        else:
            lost.remove(twin)
            pairs.append((line, twin))
    out = [f"{len(lines)} rows replayed vs {len(expected.lines)} real"]
    for line, twin in pairs[:3]:
        diffs = [f"{c!r} {a[:40]!r} (real {b[:40]!r})"
                 for c, a, b in zip(columns, line.split(b"\t"), twin.split(b"\t")) if a != b]
        out.append(f"row {line.split(TAB)[0][:20]!r}: " + ", ".join(diffs))
    out += [f"only in replay: {line[:100]!r}" for line in only_replay[:3]]
    out += [f"only real: {line[:100]!r}" for line in lost[:3]]
    more = len(pairs) + len(only_replay) + len(lost) - len(out) + 1
    return f"{table}: " + "; ".join(out) + (f"; and {more} more rows" if more > 0 else "")


def capture_live(dsn: str, archive: Path, log: Path, init: bool = True) -> subprocess.Popen[bytes]:
    if init:
        run_pgtape("init", "--dsn", dsn, "--archive", str(archive), "--tables", ",".join(TABLES), check=True)
    return spawn_pgtape("capture", "--dsn", dsn, "--archive", str(archive), "--tables", ",".join(TABLES), log=log)


def tape_reaches(archive: Path, lsn: int) -> bool:
    """The tape is known complete up to `lsn`."""
    try:
        return prepare(Archive(archive), [LEDGER], Target("latest")).window.to_lsn >= lsn
    except PgtapeError:
        return False


def run_history(pg: EmbeddedPostgres, seed: int, number: int, tmp_path: Path) -> Run:
    with fresh_database(pg, f"h{number}") as dsn:
        archive = tmp_path / f"archive-{number}"
        run = Run(seed, number, dsn, archive, tmp_path / f"history-{number}.sql")
        capture = None
        started = time.monotonic()
        try:
            run.setup()
            # Capture in one run after the history, in short runs during it too, or as a long-running
            # process (stopped and started again now and then).
            mode = run.rng.choice(["once", "pieces", "live"])
            run.log.insert(0, f"-- seed {seed} history {number}: capture {mode}")
            if mode == "live":
                capture = capture_live(dsn, archive, tmp_path / f"capture-{number}.log")
            else:
                capture_to_now(dsn, archive, tables=",".join(TABLES))  # init as a superuser: the DDL trigger
            restarts = {"once": 0, "pieces": 6, "live": 2}[mode]
            pieces = set(run.rng.sample(range(STEPS), min(restarts, STEPS)))
            moments = set(run.rng.sample(range(STEPS), int(STEPS * 0.6)))
            run.moment("the start", -1)
            for i in range(STEPS):
                run.log.append(f"-- step {i}")
                schema_only = run.w.step()
                if i in moments:
                    run.moment(f"moment after step {i}", i)
                if restarts and schema_only and run.rng.random() < 0.3:
                    pieces.add(i)  # capture (re)starting right after a transaction of schema changes only
                if i in pieces and capture is None:
                    run.log.append("-- capture to here")
                    capture_to_now(dsn, archive, tables=",".join(TABLES))
                elif i in pieces and capture is not None:
                    run.log.append("-- capture restarted")
                    stop_process(capture)
                    capture = capture_live(dsn, archive, tmp_path / f"capture-{number}-{i}.log", init=False)
            end = run.last_change()
            if capture is None:
                capture_to_now(dsn, archive, tables=",".join(TABLES))
            else:
                wait_until("capture to reach the end of the history", lambda: tape_reaches(archive, end + 1), 60)
                stop_process(capture)
            run.check_all(random.Random(f"{seed}/{number}/checks"))
            run.check_cli(random.Random(f"{seed}/{number}/cli"), 1)
            print(f"history {number}: capture {mode}, {len(run.moments)} moments, {time.monotonic() - started:.1f} s")
            for p in rebase.load(Archive(archive), Archive(archive).identity().generation):
                run.failures.append(f"seed {seed} history {number}: capture recorded a rebase point for a change the "
                                    f"tape carries: {p.table} from {lsn_text(p.since_lsn)} to {lsn_text(p.at_lsn)}: "
                                    f"{p.reason}")
        except AssertionError as e:  # the workload's own failure, or capture too slow: name the seed
            raise AssertionError(f"seed {seed} history {number}: {e} (statements: {run.log_path})") from e
        finally:
            if capture is not None:
                stop_process(capture)
            run.close()
        return run


def report(runs: list[Run], seed: int, what: str) -> int:
    checks = sum(r.checks for r in runs)
    failures = [f for r in runs for f in r.failures]
    print(f"{what}: seed {seed}, {len(runs)} histories, {checks} checks"
          + f" (and {sum(r.cli_checks for r in runs)} through the command line)"
          + (f", {sum(r.refusals for r in runs)} refusals" if any(r.refusals for r in runs) else ""))
    # The first failure of each history and table (later moments mostly repeat it), shortened.
    first: dict[str, tuple[str, int]] = {}
    for f in failures:
        where = f.split(", ")[0] + " " + (f.split("), ")[1].split(":")[0] if "), " in f else "")
        text, n = first.get(where, (f, 0))
        first[where] = (text, n + 1)
    assert not failures, (f"seed {seed}: {len(failures)} of {checks} checks failed (repeat with "
                          f"PGTAPE_TEST_SEED={seed}; statements in {runs[0].log_path.parent}/history-*.sql); "
                          "the first of each history and table:\n"
                          + "\n".join(f"[{n}x] {text[:700]}" for text, n in first.values()))
    return checks


def test_random_histories_replay_to_every_copied_moment(pg: EmbeddedPostgres, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    seed = seed_for(request)
    numbers = [int(ONLY)] if ONLY else list(range(HISTORIES))
    runs = [run_history(pg, seed, n, tmp_path) for n in numbers]
    checks = report(runs, seed, "differential")
    assert checks == sum(len(r.moments) for r in runs) * len(TABLES)
    if not SIZED and not ONLY:
        assert checks >= MIN_CHECKS, f"seed {seed}: only {checks} checks"


# -- changes that need a new base -------------------------------------------------------------------------
REBASE_STEPS = int(os.environ.get("PGTAPE_DIFF_REBASE_STEPS", "30"))


def new_base_after(archive: Path, table: str, lsn: int) -> int | None:
    bases = [r.as_of_lsn for r in catalog.load_all(Archive(archive))
             if r.status == catalog.COMPLETED and table in r.tables and r.as_of_lsn is not None and r.as_of_lsn >= lsn]
    return min(bases) if bases else None


def test_rebase_points_refuse_then_replay_exactly(pg: EmbeddedPostgres, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    seed = seed_for(request)
    with fresh_database(pg, "rebase") as dsn:
        archive = tmp_path / "archive"
        run = Run(seed, "rebase", dsn, archive, tmp_path / "history-rebase.sql")
        capture = None
        try:
            run.setup()
            capture = capture_live(dsn, archive, tmp_path / "capture.log")
            run.moment("the start", -1)
            w = run.w
            for i in range(REBASE_STEPS):
                run.log.append(f"-- step {i}")
                if run.rng.random() < 0.3:  # a change that needs a new base, with row changes around it
                    table = run.rng.choice(TABLES)
                    w.exec("BEGIN")
                    if run.rng.random() < 0.5:
                        w.row_op(table)
                    start = len(run.log)
                    w.rebase_op(table)
                    label = f"step {i}: " + " ".join(run.log[start:])[:200]
                    if run.rng.random() < 0.5:
                        w.row_op(table)
                    w.exec("COMMIT")
                    after = run.moment(f"right after a rebase of {table} in step {i}", i)
                    ops = run.log[start:]
                    # A partition emptied, then the whole table in the same transaction: capture writes a
                    # plain TRUNCATE and needs no new base; replay is exact there (seed 1603999710).
                    whole = ops[0].startswith("TRUNCATE ") and any(op.startswith(f"TRUNCATE {w.sql(table)}")
                                                                   for op in ops[1:])
                    if not whole:
                        base = wait_until(f"a new base of {table} after step {i}",
                                          lambda: new_base_after(archive, table, after.lsn), 60)
                        run.windows.append(RebaseWindow(table, label, after.lsn, base))
                else:
                    w.step()
                if run.rng.random() < 0.7:
                    run.moment(f"moment after step {i}", i)
            end = run.last_change()
            wait_until("capture to reach the end of the history", lambda: tape_reaches(archive, end + 1), 60)
            stop_process(capture)
            run.check_all(random.Random(f"{seed}/rebase/checks"))
            run.check_cli(random.Random(f"{seed}/rebase/cli"), 1)
        except AssertionError as e:
            raise AssertionError(f"seed {seed} history rebase: {e} (statements: {run.log_path})") from e
        finally:
            if capture is not None:
                stop_process(capture)
            run.close()
    assert run.windows, f"seed {seed}: no change needed a new base"
    report([run], seed, "differential with rebases")
