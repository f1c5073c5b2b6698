"""pgtape.pg.redact_dsn: what messages and logs show of a connection string."""

from __future__ import annotations

from pgtape.pg import redact_dsn


def test_every_secret_parameter_is_removed() -> None:
    shown = redact_dsn("host=db port=5432 dbname=shop user=app password='a b' sslpassword=k3y sslmode=verify-full")
    assert shown == "user=app dbname=shop host=db port=5432 sslmode=verify-full"


def test_a_uri_loses_its_password_however_encoded() -> None:
    shown = redact_dsn("postgresql://app:Pw%2F%25x@db:5433/shop?sslpassword=k3y&application_name=t")
    assert "Pw" not in shown and "k3y" not in shown and "%2F" not in shown
    assert "user=app" in shown and "host=db" in shown and "port=5433" in shown and "dbname=shop" in shown


def test_unparsable_and_empty() -> None:
    assert redact_dsn("host=db password='unterminated") == "(unparsable connection string)"
    assert redact_dsn(None) == "(libpq environment)"
