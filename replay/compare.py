"""Comparing two versions of a table inside PostgreSQL: values, not representations.

Both sides are relations in one database (live tables, a recovery schema, or temporary tables
holding a replay). Values are compared by the rule in pgtape.replay.values. Equal tables cost one
scan per side (count and sum of row hashes, hashtextextended); otherwise rows are bucketed by key
hash and only differing buckets are joined (the idea of data-diff's bisection, one level deep with 256 buckets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import psycopg

from pgtape.replay.values import value_text

BUCKETS = 256
SAMPLES = 5


@dataclass(frozen=True)
class Side:
    label: str  # for messages: "live", "replay", "schema x"
    relation: str  # qualified, quoted
    types: dict[str, str]  # column -> format_type


class Difference(TypedDict):
    """A row on both sides that differs: its key, and each differing column's value by side label."""

    key: dict[str, str | None]
    columns: dict[str, dict[str, str | None]]


@dataclass
class TableComparison:
    table: str
    key: list[str]
    rows_expected: int = 0
    rows_actual: int = 0
    equal: int = 0
    missing: int = 0  # in expected, not in actual
    extra: int = 0  # in actual, not in expected
    different: int = 0
    samples_missing: list[dict[str, str | None]] = field(default_factory=list)
    samples_extra: list[dict[str, str | None]] = field(default_factory=list)
    samples_different: list[Difference] = field(default_factory=list)
    columns_only_expected: list[str] = field(default_factory=list)
    columns_only_actual: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different or self.columns_only_expected
                    or self.columns_only_actual)


def _exprs(side: Side, other: Side, columns: list[str], key: list[str]) -> tuple[str, str, str]:
    """(row hash, key text, array of compared values) expressions for one side. Without a key
    (REPLICA IDENTITY FULL) the whole row is the key, and equal rows are told apart by number."""
    text = {c: value_text(c, side.types[c], other.types[c]) for c in columns}
    row = "hashtextextended(concat_ws(',', " + ", ".join(f"quote_nullable({text[c]})" for c in columns) + "), 0)"
    k = "concat_ws(',', " + ", ".join(f"quote_nullable({text[c]})" for c in key or columns) + ")"
    values = "ARRAY[" + ", ".join(text[c] for c in columns) + "]::text[]"
    return row, k, values


def compare(conn: psycopg.Connection, table: str, key: list[str], expected: Side, actual: Side) -> TableComparison:
    result = TableComparison(table, key)
    result.columns_only_expected = [c for c in expected.types if c not in actual.types]
    result.columns_only_actual = [c for c in actual.types if c not in expected.types]
    columns = [c for c in expected.types if c in actual.types]
    (eh, ek, ev), (ah, ak, av) = _exprs(expected, actual, columns, key), _exprs(actual, expected, columns, key)

    def totals(side: Side, h: str) -> tuple[int, object]:
        row = conn.execute(f"SELECT count(*), sum({h}) FROM {side.relation}").fetchone()
        assert row is not None
        return row[0], row[1]

    (result.rows_expected, se), (result.rows_actual, sa) = totals(expected, eh), totals(actual, ah)
    if (result.rows_expected, se) == (result.rows_actual, sa):
        result.equal = result.rows_expected
        return result

    bucket = f"(hashtext({{k}}) & {BUCKETS - 1})"

    def buckets(side: Side, h: str, k: str) -> dict[int, tuple[int, object]]:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            f"SELECT {bucket.format(k=k)}, count(*), sum({h}) FROM {side.relation} GROUP BY 1")}

    be, ba = buckets(expected, eh, ek), buckets(actual, ah, ak)
    differing = sorted(b for b in set(be) | set(ba) if be.get(b) != ba.get(b))
    # n numbers rows of equal key: always 1 with a key; the copies of a duplicated row without one.
    rows = conn.execute(
        f"WITH e AS (SELECT {ek} AS k, row_number() OVER (PARTITION BY {ek}) AS n, {eh} AS h, {ev} AS v "
        f"FROM {expected.relation} WHERE {bucket.format(k=ek)} = ANY(%(b)s)), "
        f"a AS (SELECT {ak} AS k, row_number() OVER (PARTITION BY {ak}) AS n, {ah} AS h, {av} AS v "
        f"FROM {actual.relation} WHERE {bucket.format(k=ak)} = ANY(%(b)s)) "
        "SELECT e.k, a.k, e.v, a.v FROM e FULL JOIN a ON e.k = a.k AND e.n = a.n WHERE e.h IS DISTINCT FROM a.h",
        {"b": differing}).fetchall()
    for ekey, akey, evals, avals in rows:
        e_row = dict(zip(columns, evals)) if evals is not None else {}
        a_row = dict(zip(columns, avals)) if avals is not None else {}
        if akey is None:
            result.missing += 1
            if len(result.samples_missing) < SAMPLES:
                result.samples_missing.append(e_row)
        elif ekey is None:
            result.extra += 1
            if len(result.samples_extra) < SAMPLES:
                result.samples_extra.append(a_row)
        else:
            result.different += 1
            if len(result.samples_different) < SAMPLES:
                result.samples_different.append({
                    "key": {k: e_row[k] for k in key},
                    "columns": {c: {expected.label: e_row[c], actual.label: a_row[c]}
                                for c in columns if e_row[c] != a_row[c]}})
    result.equal = result.rows_expected - result.missing - result.different
    return result


def render(results: list[TableComparison], expected: str, actual: str) -> list[str]:
    """The readable report: one block per table."""
    lines = []
    for r in results:
        verdict = "equal" if r.ok else "DIFFERENT"
        lines.append(f"{r.table}: {verdict} — {r.equal} equal, {r.missing} missing from {actual}, "
                     f"{r.extra} extra in {actual}, {r.different} different "
                     f"({r.rows_expected} rows in {expected}, {r.rows_actual} in {actual})")
        if r.columns_only_expected:
            lines.append(f"  columns only in {expected}: {', '.join(r.columns_only_expected)}")
        if r.columns_only_actual:
            lines.append(f"  columns only in {actual}: {', '.join(r.columns_only_actual)}")
        for s in r.samples_missing:
            lines.append(f"  missing  {_key(s, r.key)}")
        for s in r.samples_extra:
            lines.append(f"  extra    {_key(s, r.key)}")
        for d in r.samples_different:
            cols = "; ".join(f"{c}: {v[expected]!r} -> {v[actual]!r}" for c, v in d["columns"].items())
            lines.append(f"  differs  {_key(d['key'], r.key)}  {cols}")
    return lines


def _key(row: dict[str, str | None], key: list[str]) -> str:
    return ", ".join(f"{k}={row.get(k)}" for k in key or row)  # without a key, the whole row
