"""The storage contract (tests/unit/test_storage.py) over S3Storage, against the suite's own SeaweedFS
(tests/conftest.py's s3_server: a real server, never a mock), plus what only a remote store does."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from pgtape.storage import s3
from pgtape.storage.s3 import RemoteStorageError, S3Storage, file_sha256_b64, parse_url
from unit.test_storage import (test_append_handle_notices_its_object_replaced, test_append_sync_truncate,
                                     test_atomic_write_replaces_wholly, test_identity_tells_a_replaced_archive,
                                     test_list_by_prefix, test_missing_object_raises_file_not_found,
                                     test_read_range, test_rename_publishes_and_delete_removes)
from testkit.seaweed import SeaweedS3

CONTRACT = (test_append_handle_notices_its_object_replaced, test_append_sync_truncate,
            test_atomic_write_replaces_wholly, test_identity_tells_a_replaced_archive, test_list_by_prefix,
            test_missing_object_raises_file_not_found, test_read_range, test_rename_publishes_and_delete_removes)


@pytest.fixture
def storage(s3_url: str) -> S3Storage:  # the contract tests above, collected here, get this one
    return S3Storage(s3_url)


def test_contract_is_collected_here() -> None:
    assert all(t.__name__.startswith("test_") for t in CONTRACT)


def test_range_reads_stream_and_are_pinned_to_the_opened_version(storage: S3Storage) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    storage.write_atomic("big", data)
    with storage.open_read("big") as f:
        f.seek(1_000_000)
        assert f.read(10) == data[1_000_000:1_000_010]
        f.seek(-7, os.SEEK_END)
        assert f.read() == data[-7:]
        f.seek(5)
        storage.write_atomic("big", b"replaced")
        with pytest.raises(FileNotFoundError):
            f.read(5 << 20)  # outside what was read ahead: the version it opened is gone


def test_upload_is_checked_by_the_store(storage: S3Storage, tmp_path: Path) -> None:
    p = tmp_path / "seg"
    p.write_bytes(b"frames" * 1000)
    storage.put_file("a/seg", p, file_sha256_b64(p))
    assert storage.head("a/seg") == (6000, file_sha256_b64(p))
    p.write_bytes(b"other!" * 1000)  # the body no longer matches the checksum sent: refused, nothing stored
    with pytest.raises(RemoteStorageError, match="BadDigest"):
        storage.put_file("a/seg2", p, storage.head("a/seg")[1] or "")
    assert not storage.exists("a/seg2")


def test_unreachable_store_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                       s3_server: SeaweedS3) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(RemoteStorageError, match="s3://b0b/x/ARCHIVE.json"):
        S3Storage("s3://b0b/x").read("ARCHIVE.json")


def test_urls() -> None:
    assert parse_url("s3://bucket") == ("bucket", "")
    assert parse_url("s3://my.bucket/a/b/") == ("my.bucket", "a/b")
    for bad in ("s3://", "s3://B", "http://x/y", "s3://bucket//x", "s3://bucket/../x"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_a_large_file_goes_up_in_parts_each_checked(storage: S3Storage, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(s3, "PART_SIZE", 5 << 20)
    p = tmp_path / "big.snap"
    data = os.urandom((12 << 20) + 3)
    p.write_bytes(data)
    storage.put_file("g/big.snap", p, file_sha256_b64(p))
    assert storage.size("g/big.snap") == len(data) and storage.read("g/big.snap") == data
    # The store's own checksum of it is a composite of the parts'; the whole file's SHA-256 travels
    # as metadata, so a crashed uploader recognises it (head) and pull checks it (download).
    assert storage.head("g/big.snap") == (len(data), file_sha256_b64(p))
    out = io.BytesIO()
    assert storage.download("g/big.snap", out) == (len(data), file_sha256_b64(p)) and out.getvalue() == data
    with pytest.raises(FileNotFoundError):
        p.unlink()
        storage.put_file("g/other.snap", p, "")
    assert not storage.exists("g/other.snap")
