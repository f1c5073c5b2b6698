"""pgtape/names.py: one canonical name per table, from what a user types."""

from __future__ import annotations

import pytest

from pgtape.errors import UsageError
from pgtape.names import (canonical, file_stem, names_in_one_schema, parse_table, quoted, resolve, split_list,
                          split_table, sql_name)


@pytest.mark.parametrize("typed, name", [
    ("payments", "public.payments"),
    ("Payments", "public.payments"),
    ("  PUBLIC.Payments ", "public.payments"),
    ('"Payments"', 'public."Payments"'),
    ('public."Ledger Entries"', 'public."Ledger Entries"'),
    ('"Billing".invoices', '"Billing".invoices'),
    ('"say ""hi"""', 'public."say ""hi"""'),
    ('"a.b"."c,d"', '"a.b"."c,d"'),
    ("ÉTé", "public.\"Été\""),  # only ASCII letters fold, as PostgreSQL folds in UTF-8
    ("x$1", "public.x$1"),
    ('"select"', "public.select"),  # bare when it needs no quotes (keywords are not special here)
])
def test_parse_table(typed: str, name: str) -> None:
    assert parse_table(typed) == name


@pytest.mark.parametrize("bad", ["", "a.b.c", '""', '"open', "a..b", "1abc", "a b", "a.", ".a"])
def test_parse_table_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid table name"):
        parse_table(bad)


def test_split_list_keeps_commas_in_quotes() -> None:
    assert split_list('a, "b,c" ,, public."d"""",e"') == ["a", '"b,c"', 'public."d"""",e"']


def test_parts_and_forms() -> None:
    assert split_table('"Billing"."Ledger Entries"') == ("Billing", "Ledger Entries")
    assert quoted("payments") == '"public"."payments"'
    assert canonical("public", "Ledger Entries") == 'public."Ledger Entries"'
    assert sql_name("abc_1") == "abc_1" and sql_name("Abc") == '"Abc"'
    assert file_stem('"Billing"."Ledger Entries/2"') == "Billing.Ledger%20Entries%2F2"


def test_resolve() -> None:
    captured = ["public.a", '"B".c']
    assert resolve(["A", '"B".c', "a"], captured) == ["public.a", '"B".c']
    with pytest.raises(UsageError, match=r"^--tables: table b.c is not captured \(captured: public.a, \"B\".c\)$"):
        resolve(["b.c"], captured)
    with pytest.raises(UsageError, match="^--only: invalid table name"):
        resolve(["a.b.c"], captured, "--only")


def test_names_in_one_schema() -> None:
    assert names_in_one_schema(["public.a", "s.a", "public.b"]) == {"public.a": "public.a", "s.a": "s.a",
                                                                    "public.b": "b"}
