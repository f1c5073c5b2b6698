"""Archive metadata files: JSON documents under a CRC-32, replaced atomically.

    {"crc32": "1a2b3c4d", "doc": {...}}

`crc32` is the CRC-32 (zlib polynomial, 8 lowercase hex digits) of the bytes of `doc` exactly as
they stand in the file. A changed byte, an edit by hand or a torn write fails the check, and the
reader names the file (docs/FORMAT.md). Every JSON file pgtape writes into an archive goes through
here: ARCHIVE.json, GENERATION.json, SEALED.json, TABLES.json, REBASES.json, PRUNED.json, the
snapshot catalog and the recovery points.
"""

from __future__ import annotations

import zlib
from typing import TypeVar

import msgspec

from pgtape.errors import PgtapeError
from pgtape.storage import Storage

T = TypeVar("T")


class _Envelope(msgspec.Struct):
    crc32: str
    doc: msgspec.Raw


class DamagedMetadata(PgtapeError):
    """A metadata file that fails its checksum or does not decode."""


def encode(value: object) -> bytes:
    doc = msgspec.json.encode(value)
    return b'{"crc32":"%08x","doc":%s}' % (zlib.crc32(doc), doc)


def write(storage: Storage, key: str, value: object) -> None:
    """Replaced atomically and durably (Storage.write_atomic)."""
    storage.write_atomic(key, encode(value))


def read(storage: Storage, key: str, kind: type[T]) -> T:
    """The document, checked. FileNotFoundError passes through (the caller knows what missing means)."""
    data = storage.read(key)
    path = storage.where(key)
    try:
        envelope = msgspec.json.decode(data, type=_Envelope)
    except msgspec.DecodeError as e:
        raise DamagedMetadata(f"{path} is damaged: {e} (run pgtape verify)") from None
    doc = bytes(envelope.doc)
    if f"{zlib.crc32(doc):08x}" != envelope.crc32:
        raise DamagedMetadata(f"{path} fails its checksum: it was changed or damaged after pgtape wrote it "
                              "(run pgtape verify)")
    try:
        return msgspec.json.decode(doc, type=kind)
    except msgspec.DecodeError as e:  # ValidationError included
        raise DamagedMetadata(f"{path} is damaged: {e} (run pgtape verify)") from None
