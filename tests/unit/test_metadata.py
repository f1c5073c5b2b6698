"""pgtape/metadata.py: the checksummed envelope of archive metadata files."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from pgtape import metadata
from pgtape.storage import LocalStorage


class Doc(msgspec.Struct):
    name: str
    n: int


def test_round_trip_and_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "X.json"
    metadata.write(LocalStorage(tmp_path), path.name, Doc("a", 1))
    # 49bfbfa9: zlib.crc32(b'{"name":"a","n":1}'), worked out once outside pgtape
    assert path.read_bytes() == b'{"crc32":"49bfbfa9","doc":{"name":"a","n":1}}'
    assert metadata.read(LocalStorage(tmp_path), path.name, Doc) == Doc("a", 1)
    assert not list(tmp_path.glob("*.tmp"))


def test_every_flipped_byte_of_the_document_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "X.json"
    metadata.write(LocalStorage(tmp_path), path.name, Doc("abc", 12345))
    good = path.read_bytes()
    start = good.index(b'"doc":') + 6
    for i in range(start, len(good) - 1):
        bad = bytearray(good)
        bad[i] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(metadata.DamagedMetadata) as e:
            metadata.read(LocalStorage(tmp_path), path.name, Doc)
        assert str(path) in str(e.value), i


def test_edited_checksum_wrong_shape_and_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "X.json"
    path.write_bytes(b'{"crc32":"00000000","doc":{"name":"a","n":1}}')
    with pytest.raises(metadata.DamagedMetadata, match="fails its checksum"):
        metadata.read(LocalStorage(tmp_path), path.name, Doc)
    path.write_bytes(metadata.encode({"name": "a"}))
    with pytest.raises(metadata.DamagedMetadata, match="is damaged: Object missing required field `n`"):
        metadata.read(LocalStorage(tmp_path), path.name, Doc)
    path.write_bytes(metadata.encode(Doc("a", 1))[:-5])
    with pytest.raises(metadata.DamagedMetadata, match="is damaged"):
        metadata.read(LocalStorage(tmp_path), path.name, Doc)
    with pytest.raises(FileNotFoundError):
        metadata.read(LocalStorage(tmp_path), "missing.json", Doc)
