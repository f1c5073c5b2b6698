"""The live tables: how they differ from the replayed rows (dry run), and replacing them (in place)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from pgtape.errors import PgtapeError
from pgtape.names import quote_ident
from pgtape.pg import column_types, connect, first_line
from pgtape.privileges import in_place_grants, in_place_refusal
from pgtape.replay.engine import Plan
from pgtape.replay.fold import TableFold
from pgtape.replay.sinks.load import create_table, live_relation, load_rows, qual
from pgtape.replay.values import differs as rows_differ
from pgtape.timefmt import now_us

@dataclass
class TableDiff:
    table: str
    rows: int  # in the replayed result
    to_insert: int
    to_update: int
    to_delete: int


def diff_live(plan: Plan, dsn: str | None, apply: bool = False,
              lock_timeout: float = 30.0) -> tuple[list[TableDiff], str | None]:
    """Per table, how the live rows differ from the replayed ones. With `apply`: lock the live tables
    against writes (EXCLUSIVE: reads go on, writes wait and apply after the restore commits), back up
    every row that would be overwritten or deleted into a new schema, then make the live tables equal
    to the result, all in one transaction. Returns (diffs, backup schema or None)."""
    backup = None
    with connect(dsn, autocommit=False, application_name="pgtape replay") as conn:
        if apply:  # refused before anything is loaded or locked, with the statements that allow it
            grants = in_place_grants(conn, [f.oid for f in plan.present.values()])
            conn.rollback()
            if grants:
                raise PgtapeError(in_place_refusal(grants))
        try:
            staged: dict[str, str] = {}
            counts = {}
            for i, (table, fold) in enumerate(plan.present.items()):  # loaded before the lock: it stays short
                staged[table] = f"pgtape_replayed_{i}"
                create_table(conn, staged[table], fold, temp=True)
                counts[table] = load_rows(conn, staged[table], plan.rows(table), counted=plan.progress.loaded(table))
            if apply:
                _lock(conn, plan, lock_timeout)
            diffs = [_diff_counts(conn, t, staged[t], plan.folds[t], n) for t, n in counts.items()]
            if apply:
                now = now_us()
                backup = f"pgtape_backup_{time.strftime('%Y%m%dt%H%M%S', time.gmtime(now // 10**6))}_{now % 10**6:06d}"
                _apply(conn, plan, staged, backup)
                conn.commit()
            else:
                conn.rollback()
        except psycopg.errors.LockNotAvailable:
            conn.rollback()
            raise PgtapeError(f"could not lock {', '.join(plan.present)} against writes within {lock_timeout:g}s: "
                              "other sessions hold locks on them (see pg_locks); nothing was changed; retry, or wait "
                              "longer with --lock-timeout") from None
        except psycopg.errors.ForeignKeyViolation as e:
            conn.rollback()
            detail = e.diag.message_detail or ""
            raise PgtapeError(f"rolled back: {first_line(e)} {detail} — rows outside the selected tables depend "
                              "on rows the replay would change; add those tables with --tables".strip()) from None
        except psycopg.Error as e:
            conn.rollback()
            raise PgtapeError(f"rolled back: {first_line(e)}") from None
    return diffs, backup


def _lock(conn: psycopg.Connection, plan: Plan, timeout: float) -> None:
    """All the live tables at once (one statement: no lock-order deadlock between two restores)."""
    conn.execute(f"SET LOCAL lock_timeout = '{max(1, round(timeout * 1000))}ms'")
    relations = [live_relation(conn, f) for f in plan.present.values()]
    conn.execute(f"LOCK TABLE {', '.join(relations)} IN EXCLUSIVE MODE")
    conn.execute("SET LOCAL lock_timeout = 0")


def _match(fold: TableFold, a: str, b: str) -> str:
    return " AND ".join(f"{a}.{quote_ident(k)} = {b}.{quote_ident(k)}" for k in fold.key)


def _common(conn: psycopg.Connection, table: str, fold: TableFold) -> list[str]:
    live = column_types(conn, fold.oid)
    if not live:
        raise PgtapeError(f"live table {table} does not exist: replay into a recovery schema instead")
    return [c for c in fold.columns if c in live]


def _differs(conn: psycopg.Connection, cols: list[str], staged: str, live: str) -> str:
    """SQL true when replayed row r and live row l differ (the rule of pgtape.replay.values)."""
    return rows_differ(cols, "r", "l", column_types(conn, staged), column_types(conn, live))


def _bag_sets(conn: psycopg.Connection, live: str, staged: str, cols: list[str]) -> tuple[int, int]:
    """A table without a key holds a multiset of rows: pair live and replayed rows that are equal,
    copy by copy (row_number among equal rows), into temp tables `<staged>_del` (live rows no
    replayed row matches) and `<staged>_ins` (replayed rows no live row matches). Their sizes."""
    texts = ", ".join(f"{quote_ident(c)}::text AS k{i}" for i, c in enumerate(cols))
    part = ", ".join(f"{quote_ident(c)}::text" for c in cols) or "1"
    same = " AND ".join(f"x.k{i} IS NOT DISTINCT FROM y.k{i}" for i in range(len(cols))) or "true"
    numbered = "SELECT tableoid AS t, ctid AS c, row_number() OVER (PARTITION BY {p}) AS n, {k} FROM {rel}"
    for out, mine, other in ((f"{staged}_del", live, staged), (f"{staged}_ins", staged, live)):
        conn.execute(f"CREATE TEMP TABLE {out} AS SELECT x.t, x.c "
                     f"FROM ({numbered.format(p=part, k=texts, rel=mine)}) x "
                     f"WHERE NOT EXISTS (SELECT 1 FROM ({numbered.format(p=part, k=texts, rel=other)}) y "
                     f"WHERE y.n = x.n AND {same})")
    row = conn.execute(f"SELECT (SELECT count(*) FROM {staged}_del), (SELECT count(*) FROM {staged}_ins)").fetchone()
    assert row is not None
    return row[0], row[1]


def _diff_counts(conn: psycopg.Connection, table: str, staged: str, fold: TableFold, rows: int) -> TableDiff:
    live = live_relation(conn, fold)
    cols = _common(conn, table, fold)
    if not fold.key:
        to_delete, to_insert = _bag_sets(conn, live, staged, cols)
        return TableDiff(table, rows, to_insert, 0, to_delete)
    differs = _differs(conn, cols, staged, live)
    row = conn.execute(
        f"SELECT (SELECT count(*) FROM {staged} r "
        f"WHERE NOT EXISTS (SELECT 1 FROM {live} l WHERE {_match(fold, 'l', 'r')})),"
        f" (SELECT count(*) FROM {staged} r JOIN {live} l ON {_match(fold, 'l', 'r')} WHERE {differs}),"
        f" (SELECT count(*) FROM {live} l WHERE NOT EXISTS (SELECT 1 FROM {staged} r WHERE {_match(fold, 'l', 'r')}))"
    ).fetchone()
    assert row is not None
    return TableDiff(table, rows, row[0], row[1], row[2])


def fk_order(conn: psycopg.Connection, folds: dict[str, TableFold]) -> list[str]:
    """Tables ordered parents first (by foreign keys among them)."""
    tables = list(folds)
    edges = conn.execute(
        "SELECT c.conrelid, c.confrelid FROM pg_constraint c "
        "WHERE c.contype = 'f' AND c.conrelid = ANY(%s::oid[]) AND c.confrelid = ANY(%s::oid[])",
        ([f.oid for f in folds.values()],) * 2).fetchall()
    regname = {f.oid: t for t, f in folds.items()}
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in edges:
        if child != parent and child in regname and parent in regname:
            parents[regname[child]].add(regname[parent])
    ordered: list[str] = []
    while len(ordered) < len(tables):
        ready = [t for t in tables if t not in ordered and parents[t] <= set(ordered)]
        ordered.extend(ready or [t for t in tables if t not in ordered])  # a cycle: keep the given order
    return ordered


def _apply(conn: psycopg.Connection, plan: Plan, staged: dict[str, str], backup: str) -> None:
    order = fk_order(conn, plan.present)
    in_backup = plan.names_in_one_schema()
    conn.execute(f"CREATE SCHEMA {quote_ident(backup)}")
    for table in order:
        fold = plan.folds[table]
        live, r = live_relation(conn, fold), staged[table]
        cols = _common(conn, table, fold)
        if not fold.key:  # the live rows _bag_sets found no replayed row for
            conn.execute(f"CREATE TABLE {qual(backup, in_backup[table])} AS SELECT l.* FROM {live} l "
                         f"WHERE (l.tableoid, l.ctid) IN (SELECT t, c FROM {r}_del)")
            continue
        differs = _differs(conn, cols, r, live)
        conn.execute(f"CREATE TABLE {qual(backup, in_backup[table])} AS SELECT l.* FROM {live} l WHERE NOT EXISTS "
                     f"(SELECT 1 FROM {r} r WHERE {_match(fold, 'l', 'r')}) OR EXISTS (SELECT 1 FROM {r} r WHERE "
                     f"{_match(fold, 'l', 'r')} AND ({differs}))")
    # Inserts and updates parents first, deletes children first: no foreign key sees a missing row.
    for table in order:
        fold = plan.folds[table]
        live, r = live_relation(conn, fold), staged[table]
        cols = _common(conn, table, fold)
        names = ", ".join(quote_ident(c) for c in cols)
        if not fold.key:
            conn.execute(f"INSERT INTO {live} ({names}) SELECT {names} FROM {r} WHERE ctid IN (SELECT c FROM {r}_ins)")
            continue
        conn.execute(f"INSERT INTO {live} ({names}) SELECT {names} FROM {r} r WHERE NOT EXISTS "
                     f"(SELECT 1 FROM {live} l WHERE {_match(fold, 'l', 'r')})")
        sets = ", ".join(f"{quote_ident(c)} = r.{quote_ident(c)}" for c in cols if c not in fold.key)
        differs = _differs(conn, cols, r, live)
        if sets:
            conn.execute(f"UPDATE {live} l SET {sets} FROM {r} r WHERE {_match(fold, 'l', 'r')} AND ({differs})")
    for table in reversed(order):
        fold = plan.folds[table]
        live, r = live_relation(conn, fold), staged[table]
        if not fold.key:
            conn.execute(f"DELETE FROM {live} l WHERE (l.tableoid, l.ctid) IN (SELECT t, c FROM {r}_del)")
            continue
        conn.execute(f"DELETE FROM {live} l WHERE NOT EXISTS (SELECT 1 FROM {r} r WHERE {_match(fold, 'l', 'r')})")
