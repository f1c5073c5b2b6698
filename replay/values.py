"""How two versions of a value are compared in SQL: one rule for `diff`, `verify --live` and the rows an
in-place replay rewrites, so a dry run and `diff` agree.

A column of the same type on both sides is compared by its exact text output: canonical under the
pinned settings (pgtape.pg.PINNED_SETTINGS), and what replay restores, so 10.0 and 10.00 differ. A
column whose type differs between the sides (after ALTER TYPE, against another schema) is compared
by value: numbers across numeric types, json/jsonb as jsonb (key order ignored), timestamptz in UTC,
anything else as text. NULL stays distinct from ''.
"""

from __future__ import annotations

import re

from pgtape.pg import quote_ident

_EXACT_NUMBERS = ("numeric", "integer", "bigint", "smallint")
_FLOATS = ("real", "double precision")


def value_text(column: str, type_name: str, other_type: str, alias: str = "") -> str:
    """The SQL text a column's value is compared by (see the module docstring); alias qualifies the column."""
    c = f"{alias}.{quote_ident(column)}" if alias else quote_ident(column)
    if type_name == other_type:
        return f"({c})::text"
    base = re.sub(r"\(\d+(,\d+)?\)", "", type_name)  # numeric(12,2), timestamp(3) with time zone, ...
    if base in _EXACT_NUMBERS:
        return f"trim_scale(({c})::numeric)::text"
    if base in _FLOATS:
        # Through the shortest exact text (extra_float_digits=3 is pinned): every double distinct.
        return f"trim_scale(({c})::text::numeric)::text"
    if base in ("json", "jsonb"):
        return f"({c})::jsonb::text"
    if base == "timestamp with time zone":
        return f"(({c}) AT TIME ZONE 'UTC')::text"
    return f"({c})::text"


def differs(columns: list[str], left: str, right: str, types: dict[str, str], other_types: dict[str, str]) -> str:
    """SQL that is true when the rows aliased left and right differ in any of columns."""
    return " OR ".join(f"{value_text(c, types[c], other_types[c], left)} IS DISTINCT FROM "
                       f"{value_text(c, other_types[c], types[c], right)}" for c in columns) or "false"
