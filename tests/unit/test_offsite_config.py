"""The offsite options and s3:// archive locations (pgtape/config.py), no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgtape.config import load_config
from pgtape.errors import UsageError


def test_an_s3_archive_stays_a_url_and_writers_refuse_it() -> None:
    c = load_config(None, {"archive": "s3://bucket/some/prefix/"}, environ={})
    assert c.archive == "s3://bucket/some/prefix" and c.archive_location() == "s3://bucket/some/prefix"
    with pytest.raises(UsageError, match="needs a local archive directory"):
        c.require_archive()
    local = load_config(None, {"archive": "/var/lib/pgtape"}, environ={})
    assert local.require_archive() == Path("/var/lib/pgtape")


def test_offsite_options(tmp_path: Path) -> None:
    p = tmp_path / "pgtape.toml"
    p.write_text('[offsite]\nurl = "s3://bk0/x"\nendpoint_url = "http://127.0.0.1:9000"\ninterval = "3s"\n'
                 'keep_local = "unsent"\n')
    c = load_config(str(p), environ={})
    assert (c.offsite_url, c.offsite_endpoint_url, c.offsite_interval, c.offsite_keep_local) == (
        "s3://bk0/x", "http://127.0.0.1:9000", 3.0, "unsent")
    d = load_config(None, environ={})
    assert (d.offsite_url, d.offsite_interval, d.offsite_keep_local) == (None, 10.0, "all")
    for bad in ('url = "http://b0/x"', 'url = "s3://B/x"', 'keep_local = "some"', 'interval = "0s"'):
        p.write_text(f"[offsite]\n{bad}\n")
        with pytest.raises(UsageError, match=r"\[offsite\]"):
            load_config(str(p), environ={})
