"""Frame encryption on its own (docs/FORMAT.md, "Encryption"): every changed byte fails, a frame is
bound to its offset, its file and its file's header; nonces are never reused; keyrings; recovery."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
import zstandard

from pgtape.errors import UsageError
from pgtape.keys import Keyring, generate, key_id, load, rotate
from pgtape.storage import LocalStorage, local_file
from pgtape.tape.crypto import KeyUnavailable, new_encryption, open_doc, seal_doc
from pgtape.tape.frames import (FLAG_ENCRYPTED, HEADER_SIZE, KIND_DATA, KIND_HEADER, NONCE_BYTES,
                                AuthenticationFailed, FrameCipher, FrameError, encode_frame, read_frame)
from pgtape.tape.records import Begin, Change, Commit, Relation
from pgtape.tape.segment import (SegmentError, SegmentReader, SegmentWriter, open_segment_progress, read_footer)

DEC = zstandard.ZstdDecompressor()
KEY = bytes(range(32))
HEADER_FRAME = encode_frame(KIND_HEADER, b"header of file A", boundary=True)


def _cipher(header: bytes = HEADER_FRAME, key: bytes = KEY, salt: bytes = b"s" * 32) -> FrameCipher:
    return FrameCipher(key, salt, header)


def _with_crc(frame: bytearray) -> bytes:
    """The frame with its CRC recomputed: a change only authentication can catch."""
    struct.pack_into(">I", frame, 16, zlib.crc32(bytes(frame[HEADER_SIZE:]), zlib.crc32(bytes(frame[:16]))))
    return bytes(frame)


def _read(frame: bytes, offset: int, cipher: FrameCipher | None) -> bytes:
    f = io.BytesIO(b"\0" * offset + frame)
    f.seek(offset)
    got = read_frame(f, offset, DEC, 0, cipher)
    assert got is not None
    return got.payload


def test_round_trip_and_every_changed_byte_fails() -> None:
    payload = b"1\tsecret row value\t12.50\n" * 40
    frame = encode_frame(KIND_DATA, payload, boundary=True, compressor=zstandard.ZstdCompressor(), cipher=_cipher(),
                         offset=100)
    assert frame[5] & FLAG_ENCRYPTED and b"secret" not in frame
    assert _read(frame, 100, _cipher()) == payload
    for pos in [*range(16), *range(HEADER_SIZE, len(frame))]:  # every byte but the CRC's (which it recomputes)
        damaged = bytearray(frame)
        damaged[pos] ^= 0x01
        with pytest.raises(FrameError):  # authentication, or the header's own checks (magic, kind, length)
            _read(_with_crc(damaged), 100, _cipher())
    body = bytearray(frame)
    body[HEADER_SIZE + NONCE_BYTES + 3] ^= 0x80  # inside the ciphertext
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        _read(_with_crc(body), 100, _cipher())


def test_frame_is_bound_to_its_offset_its_file_and_its_key() -> None:
    frame = encode_frame(KIND_DATA, b"row", boundary=True, cipher=_cipher(), offset=64)
    with pytest.raises(AuthenticationFailed):
        _read(frame, 65, _cipher())  # moved within the file
    other_header = encode_frame(KIND_HEADER, b"header of file B", boundary=True)
    with pytest.raises(AuthenticationFailed):
        _read(frame, 64, _cipher(header=other_header))  # transplanted into another file (or header edited)
    with pytest.raises(AuthenticationFailed):
        _read(frame, 64, _cipher(salt=b"t" * 32))  # another file's salt: another subkey
    with pytest.raises(AuthenticationFailed):
        _read(frame, 64, _cipher(key=bytes(32)))  # another key
    with pytest.raises(FrameError, match="names no key"):
        _read(frame, 64, None)  # an encrypted frame where the header names no key
    plain = encode_frame(KIND_DATA, b"row", boundary=True)
    with pytest.raises(FrameError, match="unencrypted frame in an encrypted file"):
        _read(plain, 64, _cipher())  # a plaintext frame slipped into an encrypted file


def test_nonces_are_fresh_for_the_same_frame_at_the_same_offset() -> None:
    frames = {encode_frame(KIND_DATA, b"same", boundary=True, cipher=_cipher(), offset=20) for _ in range(50)}
    assert len({f[HEADER_SIZE:HEADER_SIZE + NONCE_BYTES] for f in frames}) == 50


def test_keyring_generate_rotate_load_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    old = os.umask(0)
    try:
        first = generate(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(Exception, match="exists already"):
        generate(path)
    second = rotate(path)
    ring = load(path)
    assert ring.ids == [first, second] and ring.active_id == second and key_id(ring.active_key()) == second
    material = path.read_text().split()[-1]
    assert repr(ring) == f"Keyring({str(path)!r}, ids={[first, second]})" and material not in repr(ring)
    path.chmod(0o640)
    with pytest.raises(UsageError, match="accessible by group or others"):
        load(path)
    path.chmod(0o600)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:-1], lines[-1][:-6] + "AAAAA="]) + "\n")
    with pytest.raises(UsageError, match="does not match its id|expected"):
        load(path)
    with pytest.raises(UsageError, match="cannot read the keyring"):
        load(tmp_path / "missing")


def test_sealed_document_is_bound_to_its_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    generate(path)
    ring = load(path)
    sealed = seal_doc(ring, "generations/0001/TABLES.json", {"v": "secret"})
    assert open_doc(ring, sealed, "generations/0001/TABLES.json", "x", dict) == {"v": "secret"}
    with pytest.raises(Exception, match="authentication failed"):
        open_doc(ring, sealed, "generations/0002/TABLES.json", "x", dict)
    with pytest.raises(KeyUnavailable, match="no key is configured"):
        open_doc(None, sealed, "generations/0001/TABLES.json", "x", dict)


def _txn(xid: int, end: int) -> list:
    return [Begin(xid, end - 8, end, 1_700_000_000_000_000 + xid),
            Change("I", 0, f"{xid}\tsecret".encode(), -1, None), Commit(end, 1)]


def _keyed_storage(tmp_path: Path) -> LocalStorage:
    generate(tmp_path / "keyring")
    storage = LocalStorage(tmp_path)
    storage.keyring = load(tmp_path / "keyring")
    return storage


def test_encrypted_segment_recovers_a_torn_tail_and_goes_on_with_fresh_nonces(tmp_path: Path) -> None:
    storage = _keyed_storage(tmp_path)
    w = SegmentWriter.create(storage, "tape", 1, "42", "slot", 100)
    w.append([Relation(0, "public", "t", ["id", "v"], ["integer", "text"], ["id"])], boundary=True)
    for i in range(3):
        w.append(_txn(i + 1, 200 + i * 100), boundary=True)
    good = w.offset
    w.append([Begin(9, 990, 1000, 0), Change("I", 0, b"9\tsecret", -1, None)], boundary=False)
    w.sync()
    w.close()
    path = tmp_path / w.key
    torn = path.read_bytes()
    os.truncate(path, path.stat().st_size - 3)
    assert b"secret" not in path.read_bytes()
    recovered, cut = SegmentWriter.recover(storage, w.key)
    assert cut > 0 and recovered.offset == good
    recovered.append(_txn(10, 1100), boundary=True)  # at the offset the cut frame had: a new nonce
    recovered.sync()
    assert path.read_bytes()[good + HEADER_SIZE:good + HEADER_SIZE + NONCE_BYTES] \
        != torn[good + HEADER_SIZE:good + HEADER_SIZE + NONCE_BYTES]
    assert open_segment_progress(storage, recovered.key, 100).stats.transactions == 4
    sealed = tmp_path / recovered.seal()
    reader = SegmentReader(storage, sealed.relative_to(tmp_path).as_posix())
    assert [r.xid for r in reader.records() if isinstance(r, Begin)] == [1, 2, 3, 10] and reader.encrypted
    assert read_footer(storage, sealed.relative_to(tmp_path).as_posix()).transactions == 4

    # Without the keyring, or with one that lacks the key: one line naming the key id.
    kid = storage.keyring.active_id if storage.keyring else ""
    with pytest.raises(KeyUnavailable, match=f"{kid}.*no key is configured"):
        SegmentReader(*local_file(sealed))
    other = LocalStorage(tmp_path)
    other.keyring = Keyring(tmp_path / "other", [bytes(32)])
    with pytest.raises(KeyUnavailable, match=f"{kid}.*not in the keyring"):
        read_footer(other, sealed.relative_to(tmp_path).as_posix())


def test_recovery_refuses_a_tampered_frame_instead_of_cutting_it(tmp_path: Path) -> None:
    storage = _keyed_storage(tmp_path)
    w = SegmentWriter.create(storage, "tape", 1, "42", "slot", 100)
    w.append([Relation(0, "public", "t", ["id", "v"], ["integer", "text"], ["id"])], boundary=True)
    start = w.offset
    w.append(_txn(1, 200), boundary=True)
    w.sync()
    w.close()
    path = tmp_path / w.key
    data = bytearray(path.read_bytes())
    data[start + HEADER_SIZE + NONCE_BYTES + 1] ^= 0x10
    path.write_bytes(bytes(data[:start]) + _with_crc(data[start:]))
    before = path.read_bytes()
    with pytest.raises(SegmentError, match="authentication failed"):
        SegmentWriter.recover(storage, w.key)
    assert path.read_bytes() == before  # nothing cut


def test_encryption_header_names_key_and_fresh_salt(tmp_path: Path) -> None:
    generate(tmp_path / "k")
    ring = load(tmp_path / "k")
    a, b = new_encryption(ring), new_encryption(ring)
    assert a.key_id == b.key_id == ring.active_id and a.salt != b.salt and len(a.salt) == 32
