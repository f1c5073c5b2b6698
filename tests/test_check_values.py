"""`pgtape check` warns about numeric and float columns whose NaN, Infinity, -Infinity or -0
wal2json cannot carry, against a real server, through the real command line.

What the warning claims about wal2json is itself checked here against the installed plugin, and
every fix it suggests is applied and shown to reject exactly the values it names.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from conftest import run_pgtape, run_sql as _sql
from testkit.cluster import EmbeddedPostgres

SPECIALS = ("'NaN'", "'Infinity'", "'-Infinity'")
SENDS_NULL = "wal2json sends NaN, Infinity and -Infinity as null (the same as NULL), so the tape would lose them in"
SENDS_BOTH = SENDS_NULL.replace("(the same as NULL)", "(the same as NULL) and float -0 as 0")


def _value(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(query).fetchone()
        assert row is not None
        return row[0]


def check(dsn: str, archive: Path, tables: str) -> tuple[int, str, list[str], list[str]]:
    """Run `pgtape check`: (exit code, stdout, warning lines about values, problem lines)."""
    r = run_pgtape("check", "--dsn", dsn, "--archive", str(archive), "--tables", tables)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    warnings = [line.removeprefix("warning: ") for line in lines if line.startswith("warning: table ")]
    problems = [line.removeprefix("problem: ") for line in lines if line.startswith("problem: ")]
    return r.returncode, r.stdout, warnings, problems


def suggested_fix(warning: str) -> str:
    """The ALTER TABLE statement a warning suggests."""
    _, sep, fix = warning.partition("rule them out: ")
    assert sep and fix.startswith("ALTER TABLE "), warning
    return fix


PAYMENTS = [
    "create domain amt as numeric",
    "create domain share as double precision",
    'create table public.payments (id int primary key, amount numeric, f8 double precision, f4 real, '
    '"Ratio" float8, cents numeric(10,2), dom amt, fdom share, arr numeric[], farr float8[], qty int, '
    'big bigint, note text)',
    "create table public.plain (id int primary key, qty int, note text, dom amt)",
]
PAYMENTS_WARNING = (
    f"table public.payments: {SENDS_BOTH} columns amount (NaN, Infinity, -Infinity), f8 (NaN, Infinity, "
    '-Infinity, -0), f4 (NaN, Infinity, -Infinity, -0), "Ratio" (NaN, Infinity, -Infinity, -0), cents (NaN); '
    "if they never occur, rule them out: ALTER TABLE public.payments "
    "ADD CHECK (amount NOT IN ('NaN', 'Infinity', '-Infinity')), "
    "ADD CHECK (f8 NOT IN ('NaN', 'Infinity', '-Infinity') AND f8::text <> '-0'), "
    "ADD CHECK (f4 NOT IN ('NaN', 'Infinity', '-Infinity') AND f4::text <> '-0'), "
    """ADD CHECK ("Ratio" NOT IN ('NaN', 'Infinity', '-Infinity') AND "Ratio"::text <> '-0'), """
    "ADD CHECK (cents NOT IN ('NaN'))")


def test_names_numeric_and_float_columns(dsn: str, tmp_path: Path) -> None:
    _sql(dsn, *PAYMENTS)
    code, out, warnings, problems = check(dsn, tmp_path, "public.payments,public.plain")
    # A warning does not fail the check; a table without such columns gets none.
    assert (code, problems) == (0, []), out
    assert warnings == [PAYMENTS_WARNING], out
    assert "ok: table public.payments: primary key, SELECT granted" in out
    # numeric(10,2) really cannot hold the infinities, which is why only NaN is named for cents.
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        _sql(dsn, "insert into public.payments (id, cents) values (1, 'Infinity')")


def test_json_lists_warnings_and_problems_still_fail(dsn: str, tmp_path: Path) -> None:
    _sql(dsn, *PAYMENTS)
    r = run_pgtape("check", "--json", "--dsn", dsn, "--archive", str(tmp_path), "--tables", "public.payments")
    report = json.loads(r.stdout)
    assert (r.returncode, report["ok"], report["problems"]) == (0, True, [])
    # (this fresh database has no DDL trigger yet: that is a warning of its own)
    assert report["warnings"][1:] == [{"code": "lossy_values", "message": PAYMENTS_WARNING}]
    assert report["warnings"][0]["code"] == "schema_changes_approximate"

    r = run_pgtape("check", "--json", "--dsn", dsn, "--archive", str(tmp_path), "--tables",
                   "public.payments,public.gone")
    report = json.loads(r.stdout)
    assert (r.returncode, report["ok"]) == (1, False)
    assert [p["code"] for p in report["problems"]] == ["table_missing"]
    assert [w["code"] for w in report["warnings"]] == ["schema_changes_approximate", "lossy_values"]


def test_wal2json_loses_exactly_what_the_warning_says(dsn: str) -> None:
    """The premise, on the installed wal2json: plain numeric and float columns lose NaN and the
    infinities to null and float -0 to 0; domains and arrays arrive as strings, intact."""
    _sql(dsn, *PAYMENTS, "select pg_create_logical_replication_slot('values_probe', 'wal2json')")
    for i, v in enumerate(("'NaN'", "'Infinity'", "'-Infinity'", "'-0'"), start=1):
        num = "null" if v == "'-0'" else v  # numeric has no -0 ('-0'::numeric is 0)
        _sql(dsn, f"insert into public.payments (id, amount, f8, f4, dom, fdom, arr, farr) "
                  f"values ({i}, {num}, {v}, {v}, {num}, {v}, array[{num}::numeric], array[{v}::float8])")
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute("select data from pg_logical_slot_get_changes('values_probe', null, null, "
                         "'format-version', '2', 'add-tables', 'public.payments')").fetchall()
        c.execute("select pg_drop_replication_slot('values_probe')")
    inserts = [json.loads(data) for (data,) in rows if json.loads(data)["action"] == "I"]
    got = [{col["name"]: col["value"] for col in msg["columns"]} for msg in inserts]
    plain = [(g["amount"], g["f8"], g["f4"]) for g in got]
    intact = [(g["dom"], g["fdom"], g["arr"], g["farr"]) for g in got]
    assert plain == [(None, None, None)] * 3 + [(None, 0, 0)]
    assert intact == [("NaN", "NaN", "{NaN}", "{NaN}"), ("Infinity", "Infinity", "{Infinity}", "{Infinity}"),
                      ("-Infinity", "-Infinity", "{-Infinity}", "{-Infinity}"), (None, "-0", "{NULL}", "{-0}")]
    assert '"name":"f8","type":"double precision","value":-0}' in rows[-2][0]  # -0 is a JSON integer


def test_constraints_that_rule_values_out(dsn: str, tmp_path: Path) -> None:
    _sql(dsn,
         # Counts its calls where no rollback can undo it (sequences are not transactional): a function
         # of the table owner's must never run as the role running check, whatever it claims to be.
         "create sequence public.calls",
         "create function public.no_specials(v numeric) returns boolean immutable language plpgsql as "
         "$$ begin perform nextval('public.calls'); return v not in ('NaN', 'Infinity', '-Infinity'); end $$",
         "create domain vetted as numeric check (public.no_specials(value))",
         "create table public.m (id int primary key,"
         # Ruled out: not named.
         " ok numeric check (ok not in ('NaN', 'Infinity', '-Infinity')),"
         # (okf = okf does nothing against NaN, NaN = NaN being true; okf < 'Infinity' rules it out.)
         " okf float8 check (okf > 0 and okf < 'Infinity' and okf = okf),"
         " bounded numeric check (bounded between -100 and 100),"
         # NaN sorts above every number, so >= 0 lets it (and Infinity) through; -0 >= 0 too.
         " nonneg numeric check (nonneg >= 0),"
         " nonnegf float8 check (nonnegf >= 0),"
         # Only the infinities are ruled out here; NaN is not. (finite < 'Infinity' would rule NaN out too:
         # NaN sorts above Infinity.)
         " finite numeric check (finite <> 'Infinity' and finite <> '-Infinity'),"
         # A CHECK passes when NULL: NaN gets through this one; Infinity < Infinity is false.
         " nulled numeric check (nullif(nulled, 'NaN') < 'Infinity'),"
         # Not counted: NOT VALID, on two columns, erroring for the value, a function of the owner's
         # (directly or in a domain's constraint), a volatile built-in, a row comparison.
         " unvalidated numeric,"
         " pair_a numeric, pair_b numeric, check (pair_a not in ('NaN', 'Infinity', '-Infinity') and pair_b > 0),"
         " erroring numeric check (erroring::int > 0),"
         " owned numeric check (public.no_specials(owned)),"
         " via_domain numeric check (via_domain::vetted is not null),"
         " vol numeric check (vol not in ('NaN', 'Infinity', '-Infinity') and random() >= 0),"
         " rowcmp numeric check ((rowcmp, rowcmp) < (100, 100)))",
         "alter table public.m add check (unvalidated not in ('NaN', 'Infinity', '-Infinity')) not valid")
    # The PostgreSQL semantics the expectations rest on.
    assert _value(dsn, "select array['NaN'::numeric >= 0, 'NaN'::float8 >= 0, 'NaN'::float8 = 'NaN', "
                       "'Infinity'::numeric >= 0, '-0'::float8 >= 0, '-0'::float8 = 0, '-0'::float8 > 0]") == \
        [True, True, True, True, True, True, False]
    code, out, warnings, problems = check(dsn, tmp_path, "public.m")
    assert (code, problems) == (0, []), out
    all3 = "NaN, Infinity, -Infinity"
    not3 = "NOT IN ('NaN', 'Infinity', '-Infinity')"
    assert warnings == [
        f"table public.m: {SENDS_BOTH} columns nonneg (NaN, Infinity), nonnegf (NaN, Infinity, -0), finite (NaN), "
        f"nulled (NaN, -Infinity), unvalidated ({all3}), pair_a ({all3}), pair_b ({all3}), erroring ({all3}), "
        f"owned ({all3}), via_domain ({all3}), vol ({all3}), rowcmp ({all3}); if they never occur, rule them out: "
        "ALTER TABLE public.m "
        "ADD CHECK (nonneg NOT IN ('NaN', 'Infinity')), "
        "ADD CHECK (nonnegf NOT IN ('NaN', 'Infinity') AND nonnegf::text <> '-0'), "
        "ADD CHECK (finite NOT IN ('NaN')), "
        "ADD CHECK (nulled NOT IN ('NaN', '-Infinity')), "
        f"ADD CHECK (unvalidated {not3}), ADD CHECK (pair_a {not3}), ADD CHECK (pair_b {not3}), "
        f"ADD CHECK (erroring {not3}), ADD CHECK (owned {not3}), ADD CHECK (via_domain {not3}), "
        f"ADD CHECK (vol {not3}), ADD CHECK (rowcmp {not3})"], out
    assert _value(dsn, "select is_called from public.calls") is False  # the owner's function never ran


def test_only_negative_zero(dsn: str, tmp_path: Path) -> None:
    _sql(dsn, "create table public.z (id int primary key, "
              "r real check (r not in ('NaN', 'Infinity', '-Infinity') and r >= 0))")
    code, out, warnings, _ = check(dsn, tmp_path, "public.z")
    assert code == 0, out
    assert warnings == ["table public.z: wal2json sends float -0 as 0, so the tape would lose them in column r (-0); "
                        "if they never occur, rule them out: ALTER TABLE public.z ADD CHECK (r::text <> '-0')"], out


def test_suggested_fix_rules_the_values_out(dsn: str, tmp_path: Path) -> None:
    tables = 'public.payments,public."Odd Pay"'
    _sql(dsn, *PAYMENTS,
         'create table public."Odd Pay" (id int primary key, "Net Amount" numeric check ("Net Amount" >= 0), '
         '"x y" float4 check ("x y" > 0))')
    code, out, warnings, _ = check(dsn, tmp_path, tables)
    assert code == 0 and len(warnings) == 2, out
    assert warnings[1] == (
        f'table public."Odd Pay": {SENDS_NULL} columns "Net Amount" (NaN, Infinity), "x y" (NaN, Infinity); if they '
        'never occur, rule them out: ALTER TABLE public."Odd Pay" ADD CHECK ("Net Amount" NOT IN (\'NaN\', '
        '\'Infinity\')), ADD CHECK ("x y" NOT IN (\'NaN\', \'Infinity\'))')
    _sql(dsn, *(suggested_fix(w) for w in warnings))

    code, out, warnings, problems = check(dsn, tmp_path, tables)
    assert (code, warnings, problems) == (0, [], []), out
    # The constraints reject each value they name and nothing else: +0, ordinary numbers and NULL pass.
    for column, values in [("amount", SPECIALS), ("f8", (*SPECIALS, "'-0'")), ("f4", (*SPECIALS, "'-0'")),
                           ('"Ratio"', (*SPECIALS, "'-0'")), ("cents", ("'NaN'",))]:
        for v in values:
            with pytest.raises(psycopg.errors.CheckViolation):
                _sql(dsn, f"insert into public.payments (id, {column}) values (1, {v})")
    _sql(dsn, "insert into public.payments (id, amount, f8, f4, \"Ratio\", cents) values "
              "(1, 0, 0, 0, '0', 0), (2, -1.5, -1.5, '1e-45', '-1e-300', -99.99), (3, null, null, null, null, null)")
    assert _value(dsn, "select array_agg(f8::text order by id) from public.payments") == ["0", "-1.5", None]


def test_partitioned_table_is_examined(dsn: str, tmp_path: Path) -> None:
    _sql(dsn, "create table public.p (id int primary key, v float8) partition by range (id)")
    code, out, warnings, problems = check(dsn, tmp_path, "public.p")
    assert code == 0 and problems == [] and "ok: table public.p: partitioned" in out, out
    assert warnings == [f"table public.p: {SENDS_BOTH} column v (NaN, Infinity, -Infinity, -0); if they never "
                        "occur, rule them out: ALTER TABLE public.p ADD CHECK (v NOT IN ('NaN', 'Infinity', "
                        "'-Infinity') AND v::text <> '-0')"], out


def test_role_with_only_select_gets_the_same_warnings(pg: EmbeddedPostgres, dbname: str, role: str,
                                                       tmp_path: Path) -> None:
    dsn = pg.dsn(dbname)
    _sql(dsn, *PAYMENTS, "alter table public.payments add check (amount >= 0)",
         "alter table public.payments add check (f8 > 0)", f"grant select on public.payments to {role}")
    as_owner = check(dsn, tmp_path, "public.payments")
    as_role = check(pg.dsn(dbname, user=role), tmp_path, "public.payments")
    assert as_role[0] == 0 and as_role[3] == [], as_role[1]
    assert as_role[2] == as_owner[2] and len(as_role[2]) == 1, as_role[1]
    assert "amount (NaN, Infinity), f8 (NaN, Infinity), f4 (" in as_role[2][0]
