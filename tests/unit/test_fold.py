"""replay/fold.py: folding changes onto base rows, keyed (TableFold) and keyless (BagFold)."""

from __future__ import annotations

from collections import Counter

import pytest

from pgtape.errors import PgtapeError
from pgtape.replay.fold import BagFold, TableFold
from pgtape.tape.records import Change, Relation, Schema

ROW = Relation(1, "public", "t", ["id", "v"], ["bigint", "text"], ["id"])
KEY = Relation(2, "public", "t", ["id"], ["bigint"], ["id"])
BASE = [b"1\ta", b"2\tb", b"3\tc"]


def keyed() -> TableFold:
    f = TableFold("public.t", ["id", "v"], ["bigint", "text"], ["id"], ["id", "v"], attnums=[1, 2])
    f.new_segment()
    return f


def put(f: TableFold, c: Change) -> None:
    f.apply(c, f.info({1: ROW, 2: KEY, 3: WIDE, 4: NARROW}[c.rel]),
            f.info({1: ROW, 2: KEY, 3: WIDE, 4: NARROW}[c.old_rel]) if c.old_rel != -1 else None)


def test_untouched_base_passes_through() -> None:
    assert list(keyed().rows(iter(BASE))) == BASE


def test_insert_update_delete() -> None:
    f = keyed()
    put(f, Change("I", 1, b"4\td", -1, None))
    put(f, Change("U", 1, b"2\tB", -1, None))
    put(f, Change("D", 2, None, 2, b"1"))
    # untouched base rows first, then the tape's rows in the order their keys were first touched
    assert list(f.rows(iter(BASE))) == [b"3\tc", b"4\td", b"2\tB"]


def test_insert_then_delete_leaves_nothing() -> None:
    f = keyed()
    put(f, Change("I", 1, b"9\tz", -1, None))
    put(f, Change("D", 2, None, 2, b"9"))
    assert list(f.rows(iter(BASE))) == BASE


def test_key_change_moves_the_row() -> None:
    f = keyed()
    put(f, Change("U", 1, b"30\tc2", 2, b"3"))
    assert list(f.rows(iter(BASE))) == [b"1\ta", b"2\tb", b"30\tc2"]


def test_key_change_onto_a_deleted_key_and_back() -> None:
    f = keyed()
    put(f, Change("D", 2, None, 2, b"2"))
    put(f, Change("U", 1, b"2\tfrom1", 2, b"1"))
    assert list(f.rows(iter(BASE))) == [b"3\tc", b"2\tfrom1"]


def test_truncate_drops_base_and_earlier_changes() -> None:
    f = keyed()
    put(f, Change("I", 1, b"4\td", -1, None))
    f.truncate()
    put(f, Change("I", 1, b"5\te", -1, None))
    assert list(f.rows(iter(BASE))) == [b"5\te"]


WIDE = Relation(3, "public", "t", ["id", "v", "big"], ["bigint", "text", "text"], ["id"])
NARROW = Relation(4, "public", "t", ["id", "v"], ["bigint", "text"], ["id"])  # an UPDATE without `big`


def toasted() -> TableFold:
    f = TableFold("public.t", ["id", "v", "big"], ["bigint", "text", "text"], ["id"], ["id", "v", "big"],
                  attnums=[1, 2, 3])
    f.new_segment()
    return f


def test_unchanged_toast_column_keeps_the_base_value() -> None:
    f = toasted()
    put(f, Change("U", 4, b"1\tz", -1, None, absent=["big"]))
    assert list(f.rows(iter([b"1\ta\tBIG1", b"2\tb\tBIG2"]))) == [b"2\tb\tBIG2", b"1\tz\tBIG1"]


def test_unchanged_toast_column_keeps_the_inserted_value() -> None:
    f = toasted()
    put(f, Change("I", 3, b"5\ta\tX", -1, None))
    put(f, Change("U", 4, b"5\tq", -1, None, absent=["big"]))
    assert list(f.rows(iter([]))) == [b"5\tq\tX"]


def test_unchanged_toast_column_follows_a_key_change() -> None:
    f = toasted()
    put(f, Change("U", 4, b"7\tmoved", 2, b"1", absent=["big"]))
    assert list(f.rows(iter([b"1\ta\tBIG1"]))) == [b"7\tmoved\tBIG1"]


def test_partial_update_after_delete_is_refused() -> None:
    f = toasted()
    put(f, Change("D", 2, None, 2, b"1"))
    with pytest.raises(PgtapeError, match="updates key .* after deleting it"):
        put(f, Change("U", 4, b"1\tz", -1, None, absent=["big"]))


def test_delete_without_key_is_refused() -> None:
    f = keyed()
    with pytest.raises(PgtapeError, match="lacks the key columns"):
        put(f, Change("D", 2, None, -1, None))


def test_added_column_holds_its_missing_value_in_older_rows() -> None:
    f = keyed()
    put(f, Change("I", 1, b"4\td", -1, None))
    f.apply_schema(Schema("public.t", "public.t", ["id", "v", "w"], ["bigint", "text", "integer"], [1, 2, 3],
                          [None, None, b"7"], ["id"], False))
    assert list(f.rows(iter(BASE[:1]))) == [b"1\ta\t7", b"4\td\t7"]


def test_dropped_and_renamed_columns() -> None:
    f = keyed()
    f.apply_schema(Schema("public.t", "public.t", ["id"], ["bigint"], [1], [None], ["id"], False))
    f.apply_schema(Schema("public.t", "public.t2", ["ident"], ["bigint"], [1], [None], ["id"], False))
    assert list(f.rows(iter(BASE))) == [b"1", b"2", b"3"]
    assert f.relname == "public.t2"


def test_key_change_in_schema_makes_the_fold_stale_and_inert() -> None:
    f = keyed()
    f.apply_schema(Schema("public.t", "public.t", ["id", "v"], ["bigint", "text"], [1, 2], [None, None],
                          ["v"], False))
    assert f.stale == "its key changed from (id) to (v)"
    put(f, Change("I", 1, b"4\td", -1, None))
    assert f.entries == {}


def test_dropped_table_has_no_rows() -> None:
    f = keyed()
    f.apply_schema(Schema("public.t", "public.t", [], [], [], [], [], True))
    assert list(f.rows(iter(BASE))) == []


# -- keyless tables: a multiset of lines ---------------------------------------------------------
BAG = Relation(1, "public", "bag", ["a", "b"], ["integer", "text"], [])


def bag() -> BagFold:
    f = BagFold("public.bag", ["a", "b"], ["integer", "text"], [], ["a", "b"], attnums=[1, 2])
    f.new_segment()
    return f


def bput(f: BagFold, c: Change) -> None:
    info = f.info(BAG)
    f.apply(c, info, info if c.old is not None else None)


BAG_BASE = [b"1\tx", b"1\tx", b"2\ty"]


def test_bag_delete_removes_one_of_two_equal_rows() -> None:
    f = bag()
    bput(f, Change("D", 1, None, 1, b"1\tx"))
    assert Counter(f.rows(iter(BAG_BASE))) == Counter({b"1\tx": 1, b"2\ty": 1})


def test_bag_inserts_duplicates_and_updates_one_copy() -> None:
    f = bag()
    bput(f, Change("I", 1, b"3\tz", -1, None))
    bput(f, Change("I", 1, b"3\tz", -1, None))
    bput(f, Change("U", 1, b"1\tw", 1, b"1\tx"))
    assert Counter(f.rows(iter(BAG_BASE))) == Counter({b"1\tx": 1, b"1\tw": 1, b"2\ty": 1, b"3\tz": 2})


def test_bag_insert_then_delete_cancels() -> None:
    f = bag()
    bput(f, Change("I", 1, b"2\ty", -1, None))
    bput(f, Change("D", 1, None, 1, b"2\ty"))
    bput(f, Change("D", 1, None, 1, b"2\ty"))
    assert sorted(f.rows(iter(BAG_BASE))) == [b"1\tx", b"1\tx"]


def test_bag_truncate() -> None:
    f = bag()
    f.truncate()
    bput(f, Change("I", 1, b"9\tq", -1, None))
    assert list(f.rows(iter(BAG_BASE))) == [b"9\tq"]


def test_bag_deleting_a_row_it_never_held_is_an_error() -> None:
    f = bag()
    bput(f, Change("D", 1, None, 1, b"5\tnope"))
    with pytest.raises(PgtapeError, match="deletes a row the table did not hold"):
        list(f.rows(iter(BAG_BASE)))


def test_bag_delete_without_old_row_is_refused() -> None:
    f = bag()
    with pytest.raises(PgtapeError, match="REPLICA IDENTITY FULL"):
        bput(f, Change("D", 1, None, -1, None))


def test_bag_update_with_unchanged_toast_takes_it_from_the_old_row() -> None:
    f = bag()
    narrow = Relation(5, "public", "bag", ["a"], ["integer"], [])
    f.apply(Change("U", 5, b"8", 1, b"2\ty", absent=["b"]), f.info(narrow), f.info(BAG))
    assert Counter(f.rows(iter(BAG_BASE))) == Counter({b"1\tx": 2, b"8\ty": 1})
