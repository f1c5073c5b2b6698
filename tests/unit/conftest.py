"""Unit tests: pure logic, no PostgreSQL. The session cluster of tests/conftest.py (fixture `pg`)
is only started by tests that request it; here asking for it is a mistake, so it fails at once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pg() -> None:
    raise AssertionError("tests/unit must not start PostgreSQL: move the test to tests/")
