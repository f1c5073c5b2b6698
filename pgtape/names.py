"""Table names: one identity per table, from what a user types to the tape and back.

A captured table is known everywhere (configuration, tape, catalog, replay, log, status, verify,
diff) by its *canonical name*: `schema.table`, each part written as SQL needs it, bare when that is
unambiguous and double-quoted otherwise: `public.payments`, `public."Ledger Entries"`,
`"Billing"."Ledger Entries"`. What a user types follows SQL: unquoted parts fold to lower case,
quoted parts are kept as they are, a missing schema means `public`.
"""

from __future__ import annotations

import re

from pgtape.errors import UsageError

_BARE = re.compile(r"[a-z_][a-z0-9_$]*")
_UNQUOTED = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_name(name: str) -> str:
    """An identifier as one would type it: bare when that is unambiguous, else quoted."""
    return name if _BARE.fullmatch(name) else quote_ident(name)


def canonical(schema: str, table: str) -> str:
    """The canonical name of the table `schema`.`table` (both as stored in the catalog)."""
    return f"{sql_name(schema)}.{sql_name(table)}"


def _parts(text: str) -> list[str] | None:
    """`a."B c".d` -> ['a', 'B c', 'd'] with SQL's folding; None when it is not a dotted name."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while j < n:
                if text[j] == '"':
                    if text[j + 1:j + 2] != '"':
                        break
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n or not buf:
                return None  # unterminated or empty quoted name
            parts.append("".join(buf))
            i = j + 1
        else:
            m = _UNQUOTED.match(text, i)
            if m is None:
                return None
            parts.append(m.group().translate(_ASCII_LOWER))  # as PostgreSQL folds in UTF-8
            i = m.end()
        if i == n:
            return parts
        if text[i] != ".":
            return None
        i += 1


def parse_table(text: str) -> str:
    """What a user typed (`payments`, `public."Ledger Entries"`) -> the canonical name."""
    parts = _parts(text.strip())
    if parts is None or len(parts) > 2:
        raise ValueError(f"invalid table name {text!r}: use table or schema.table as in SQL, e.g. public.payments "
                         'or public."Ledger Entries"')
    return canonical(*parts) if len(parts) == 2 else canonical("public", parts[0])


def split_list(text: str) -> list[str]:
    """A comma-separated list of names; commas inside double quotes belong to a name."""
    items: list[str] = []
    buf: list[str] = []
    in_quotes = False
    for c in text:
        if c == '"':
            in_quotes = not in_quotes  # a doubled "" toggles twice: still inside
        if c == "," and not in_quotes:
            items.append("".join(buf))
            buf = []
        else:
            buf.append(c)
    items.append("".join(buf))
    return [i.strip() for i in items if i.strip()]


def split_table(name: str) -> tuple[str, str]:
    """A canonical (or typed) name -> (schema, table) as stored in the catalog."""
    parts = _parts(parse_table(name))
    assert parts is not None and len(parts) == 2
    return parts[0], parts[1]


def quoted(name: str) -> str:
    """The table as an SQL expression: `"schema"."table"`."""
    schema, table = split_table(name)
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def file_stem(name: str) -> str:
    """`schema.table` with what a file name cannot hold percent-encoded (a dot separates the two)."""
    def enc(part: str) -> str:
        return "".join(c if c.isalnum() or c in "_-$" else f"%{ord(c):02X}" for c in part)
    schema, table = split_table(name)
    return f"{enc(schema)}.{enc(table)}"


def resolve(typed: list[str], captured: list[str], what: str = "--tables") -> list[str]:
    """Names a user typed -> captured canonical names; anything not captured is an error that
    lists what is."""
    out: list[str] = []
    for t in typed:
        try:
            name = parse_table(t)
        except ValueError as e:
            raise UsageError(f"{what}: {e}") from None
        if name not in captured:
            raise UsageError(f"{what}: table {name} is not captured (captured: {', '.join(captured)})")
        if name not in out:
            out.append(name)
    return out


def names_in_one_schema(tables: list[str]) -> dict[str, str]:
    """The table name each table gets when several are put side by side in one schema (a recovery
    schema, `diff --schema`): its own name, or `schema.table` (one identifier) when two of them share
    a name."""
    counts: dict[str, int] = {}
    for t in tables:
        counts[split_table(t)[1]] = counts.get(split_table(t)[1], 0) + 1
    return {t: (name if counts[name] == 1 else f"{schema}.{name}") for t in tables
            for schema, name in [split_table(t)]}

