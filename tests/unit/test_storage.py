"""The storage contract, for every implementation (no PostgreSQL): what the archive code relies on.

Add an implementation to STORAGES (e.g. S3 against a local test server) and it must pass the same tests.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

import pytest

from pgtape.storage import LocalStorage, Storage

STORAGES: dict[str, Callable[[Path], Storage]] = {
    "local": lambda tmp: LocalStorage(tmp / "archive"),
}


@pytest.fixture(params=sorted(STORAGES))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return STORAGES[request.param](tmp_path)


def test_atomic_write_replaces_wholly(storage: Storage) -> None:
    storage.write_atomic("gen/0001/A.json", b"old content, longer than the new")
    storage.write_atomic("gen/0001/A.json", b"new")
    assert storage.read("gen/0001/A.json") == b"new"
    assert storage.size("gen/0001/A.json") == 3
    # No temporary object is left beside it.
    assert [(e.name, e.size) for e in storage.list("gen/0001")] == [("A.json", 3)]


def test_read_range(storage: Storage) -> None:
    storage.write_atomic("obj", bytes(range(100)))
    with storage.open_read("obj") as f:
        f.seek(10)
        assert f.read(5) == bytes(range(10, 15))
        f.seek(98)
        assert f.read(10) == bytes([98, 99])  # short at the end
        assert f.seek(0, os.SEEK_END) == 100


def test_list_by_prefix(storage: Storage) -> None:
    for key in ("t/b.tape", "t/a.tape", "t/sub/c", "u/d", "top"):
        storage.write_atomic(key, key.encode())
    assert [(e.name, e.size) for e in storage.list("t")] == [("a.tape", 8), ("b.tape", 8), ("sub", None)]
    assert [e.name for e in storage.list("")] == ["t", "top", "u"]
    assert storage.list("nothing/here") == []
    assert storage.exists("t") and storage.exists("t/sub/c") and not storage.exists("t/x")


def test_rename_publishes_and_delete_removes(storage: Storage) -> None:
    storage.write_atomic("snap/x.partial/t.snap", b"rows")
    storage.rename("snap/x.partial", "snap/x")
    assert storage.read("snap/x/t.snap") == b"rows" and not storage.exists("snap/x.partial")
    storage.write_atomic("seg.open", b"1")
    storage.rename("seg.open", "seg.sealed")
    assert storage.read("seg.sealed") == b"1" and not storage.exists("seg.open")
    storage.delete("seg.sealed")
    storage.delete("seg.sealed")  # already gone: not an error
    assert not storage.exists("seg.sealed")
    storage.delete_tree("snap/x")
    storage.delete_tree("snap/x")
    assert not storage.exists("snap/x/t.snap") and storage.list("snap") == []


def test_append_sync_truncate(storage: Storage) -> None:
    h = storage.create("tape/1.tape.open", b"HEAD")
    assert storage.read("tape/1.tape.open") == b"HEAD"  # durable with its first bytes
    h.append(b"frame1")
    h.append(b"frame2")
    h.sync()
    assert h.size() == 16 and storage.read("tape/1.tape.open") == b"HEADframe1frame2"
    h.truncate(10)  # a torn tail cut back
    h.append(b"again")
    h.sync()
    assert storage.read("tape/1.tape.open") == b"HEADframe1again"
    assert h.still_there()
    h.close()
    h = storage.open_append("tape/1.tape.open")  # after a restart: appends at the end
    assert h.size() == 15
    h.append(b"!")
    h.sync()
    h.close()
    assert storage.read("tape/1.tape.open") == b"HEADframe1again!"


def test_append_handle_notices_its_object_replaced(storage: Storage) -> None:
    h = storage.create("tape/1.tape.open", b"HEAD")
    storage.write_atomic("tape/1.tape.open", b"another")
    assert not h.still_there()
    storage.delete("tape/1.tape.open")
    assert not h.still_there()
    h.close()


def test_missing_object_raises_file_not_found(storage: Storage) -> None:
    for op in (lambda: storage.read("no/such"), lambda: storage.size("no/such"),
               lambda: storage.open_read("no/such"), lambda: storage.open_append("no/such"),
               lambda: storage.rename("no/such", "other")):
        with pytest.raises(FileNotFoundError):
            op()


def test_identity_tells_a_replaced_archive(storage: Storage, tmp_path: Path) -> None:
    storage.write_atomic("ARCHIVE.json", b"{}")
    before = storage.identity()
    assert storage.identity() == before
    if isinstance(storage, LocalStorage):
        storage.root.rename(tmp_path / "moved")
        storage.root.mkdir()
        assert storage.identity() != before


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_local_files_are_the_owners_alone_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        storage = LocalStorage(tmp_path / "archive")
        storage.write_atomic("generations/0001/GENERATION.json", b"{}")
        handle = storage.create("generations/0001/tape/1.tape.open", b"head")
        handle.append(b"more")
        handle.sync()
        handle.close()
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"archive": 0o700, "archive/generations": 0o700, "archive/generations/0001": 0o700,
                     "archive/generations/0001/GENERATION.json": 0o600, "archive/generations/0001/tape": 0o700,
                     "archive/generations/0001/tape/1.tape.open": 0o600}
