"""`pgtape check`'s warning about DSNs that allow an unencrypted connection to a host that is not local."""

from __future__ import annotations

import pytest

from pgtape.capture.preflight import plaintext_warning


def warns(dsn: str, **environ: str) -> bool:
    return plaintext_warning(dsn, environ) is not None


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "127.0.0.1", "127.0.0.2", "127.255.0.9", "::1",
                                  "/var/run/postgresql", "/tmp", "@abstract"])
def test_local_hosts_do_not_warn(host: str) -> None:
    for mode in ("", " sslmode=disable", " sslmode=prefer"):
        assert not warns(f"host={host} dbname=x{mode}")


@pytest.mark.parametrize("dsn", ["", "dbname=x", "host='' dbname=x", "host=, dbname=x"])
def test_no_host_is_the_unix_socket(dsn: str) -> None:
    assert not warns(dsn)


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", None])
def test_remote_host_without_tls_warns(mode: str | None) -> None:
    dsn = "host=db.example.com dbname=x user=u password=secret" + (f" sslmode={mode}" if mode else "")
    warning = plaintext_warning(dsn, {})
    assert warning is not None
    assert warning.code == "unencrypted_connection"
    assert "db.example.com" in warning.message
    assert f"sslmode={mode or 'prefer'}" in warning.message
    assert "sslmode=verify-full" in warning.message and "sslrootcert" in warning.message
    assert "secret" not in warning.message


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_remote_host_with_tls_required_does_not_warn(mode: str) -> None:
    assert not warns(f"host=10.1.2.3 dbname=x sslmode={mode}")
    assert not warns(f"postgresql://u@db.example.com/x?sslmode={mode}")


def test_uri_and_remote_addresses() -> None:
    assert warns("postgresql://u:pw@db.example.com:5432/x")
    assert warns("host=10.0.0.5")
    assert warns("host=2001:db8::1")
    assert warns("host=128.0.0.1")  # outside 127.0.0.0/8


def test_any_remote_host_of_a_list_warns_and_is_named() -> None:
    warning = plaintext_warning("host=/tmp,localhost,db2.example.com,127.0.0.1", {})
    assert warning is not None and "to db2.example.com," in warning.message
    assert not warns("host=/tmp,localhost,::1")


def test_hostaddr_is_where_libpq_connects() -> None:
    assert warns("host=localhost hostaddr=10.0.0.5")
    assert not warns("host=db.example.com hostaddr=127.0.0.1")


def test_environment_counts_where_the_dsn_is_silent() -> None:
    assert warns("dbname=x", PGHOST="db.example.com")
    assert warns("dbname=x", PGHOSTADDR="10.0.0.5")
    assert not warns("dbname=x", PGHOST="db.example.com", PGSSLMODE="verify-full")
    assert warns("host=db.example.com", PGSSLMODE="disable")
    assert not warns("host=db.example.com", PGSSLMODE="require")
    # The DSN wins over the environment, as in libpq.
    assert warns("host=db.example.com sslmode=prefer", PGSSLMODE="verify-full")
    assert not warns("host=db.example.com sslmode=require", PGSSLMODE="disable")
    assert not warns("host=localhost", PGHOST="db.example.com")


def test_unparsable_dsn_is_left_to_connect() -> None:
    assert plaintext_warning("host='unterminated", {}) is None
