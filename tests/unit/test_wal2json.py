"""capture/wal2json.py: format-2 messages, written by hand as wal2json sends them, to tape fields."""

from __future__ import annotations

from pgtape.capture.wal2json import (decoder, lsn, options_sql, parse_commit_time, plugin_options,
                                     to_field)

INSERT = rb"""{"action":"I","xid":771,"lsn":"0/1A2B3C8","schema":"public","table":"payments",
"columns":[{"name":"id","type":"bigint","value":9223372036854775807},
{"name":"amount","type":"numeric(12,2)","value":0.10},
{"name":"huge","type":"numeric","value":12345678901234567890.123},
{"name":"wide","type":"numeric","value":123456789012345678901234567890},
{"name":"ratio","type":"double precision","value":1.0000000000000002e-300},
{"name":"note","type":"text","value":"tab\there\nnew line \\ back \u0007 bell"},
{"name":"quote","type":"text","value":"say \"hi\" \u00fcn\u00efc\u00f8d\u00e9 \ud834\udd1e"},
{"name":"missing","type":"text","value":null},
{"name":"paid","type":"boolean","value":true},
{"name":"void","type":"boolean","value":false},
{"name":"blob","type":"bytea","value":"deadbeef"},
{"name":"meta","type":"jsonb","value":"{\"a\": [1, 2.50]}"},
{"name":"tags","type":"text[]","value":"{a,\"b c\",NULL}"}],
"pk":[{"name":"id","type":"bigint"}]}"""


def fields(raw: bytes) -> list[str]:
    m = decoder.decode(raw)
    assert m.columns is not None
    return [to_field(c.value, c.type) for c in m.columns]


def test_insert_values_become_copy_fields_exactly() -> None:
    m = decoder.decode(INSERT)
    assert (m.action, m.xid, m.schema, m.table, lsn(m.lsn)) == ("I", 771, "public", "payments", 0x1A2B3C8)
    assert [k.name for k in m.pk or []] == ["id"]
    assert fields(INSERT) == [
        "9223372036854775807",
        "0.10",  # not 0.1: numbers never become binary floats
        "12345678901234567890.123",
        "123456789012345678901234567890",
        "1.0000000000000002e-300",
        "tab\\there\\nnew line \\\\ back \x07 bell",  # COPY escapes only \\ \b \f \n \r \t \v
        'say "hi" ünïcødé 𝄞',
        "\\N",
        "t",
        "f",
        "\\\\xdeadbeef",  # bytea output \xdeadbeef, its backslash escaped
        '{"a": [1, 2.50]}',
        '{a,"b c",NULL}',
    ]


def test_update_with_identity_and_unchanged_toast_column() -> None:
    # wal2json leaves an unchanged out-of-line (TOAST) column out of "columns" altogether
    raw = rb"""{"action":"U","xid":5,"lsn":"16/B374D848","schema":"public","table":"t",
    "columns":[{"name":"id","type":"integer","value":2},{"name":"v","type":"text","value":"new"}],
    "identity":[{"name":"id","type":"integer","value":1}],"pk":[{"name":"id","type":"integer"}]}"""
    m = decoder.decode(raw)
    assert [c.name for c in m.columns or []] == ["id", "v"]
    assert [to_field(c.value, c.type) for c in m.identity or []] == ["1"]
    assert lsn(m.lsn) == (0x16 << 32) | 0xB374D848


def test_delete_truncate_message_begin_commit() -> None:
    d = decoder.decode(b'{"action":"D","schema":"public","table":"t","identity":[{"name":"id","type":"integer",'
                       b'"value":-0.0}]}')
    assert d.columns is None and [to_field(c.value, c.type) for c in d.identity or []] == ["-0.0"]
    t = decoder.decode(b'{"action":"T","xid":9,"lsn":"0/10","schema":"s","table":"x"}')
    assert (t.action, t.schema, t.table, t.columns) == ("T", "s", "x", None)
    msg = decoder.decode(b'{"action":"M","xid":9,"lsn":"0/20","transactional":true,"prefix":"pgtape",'
                         b'"content":"point \\"a\\"\\tb"}')
    assert (msg.transactional, msg.prefix, msg.content) == (True, "pgtape", 'point "a"\tb')
    b = decoder.decode(b'{"action":"B","xid":9,"lsn":"0/30","nextlsn":"0/58",'
                       b'"timestamp":"2026-11-25 14:02:59.885393+00"}')
    assert lsn(b.nextlsn) == 0x58
    assert parse_commit_time(b.timestamp or "") == 1795615379885393
    assert parse_commit_time("2026-11-25 15:02:59+01") == 1795615379000000


def test_plugin_options_escape_table_names() -> None:
    opts = plugin_options(["public.payments", 'public."Ledger Entries"', '"a.b"."c,d"'])
    assert opts["add-tables"] == "public.payments,public.Ledger\\ Entries,a\\.b.c\\,d"
    assert opts["format-version"] == "2" and opts["add-msg-prefixes"] == "pgtape,pgtape_schema"
    assert options_sql({"x": "it's"}) == "\"x\" 'it''s'"
