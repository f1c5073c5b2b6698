"""Encryption at rest: which key a file uses, and the errors when it cannot be had.

A generation with a keyring configured when it started is encrypted throughout (GENERATION.json
`encrypted`): every tape segment and snapshot table file names its cipher, key id and a random salt
in its plaintext header frame, and every later frame is AES-256-GCM encrypted under a subkey of
the key (pgtape/tape/frames.py). TABLES.json, the one metadata file holding row values (the
`missing` values of added columns), holds its document sealed the same way. docs/FORMAT.md,
"Encryption", is the specification.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Iterable, TypeVar

import msgspec
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pgtape import metadata
from pgtape.errors import PgtapeError
from pgtape.keys import KEY_FILE_ENV, Keyring
from pgtape.storage import Storage
from pgtape.tape import FORMAT_VERSION
from pgtape.tape.frames import AUTH_FAILED, NONCE_BYTES, Frame, FrameCipher, FrameError, read_frame, subkey

T = TypeVar("T")

CIPHER = "AES-256-GCM"
SALT_BYTES = 32
DOC_KEY_INFO = b"pgtape doc v1"
# An encrypted file's header says format FORMAT_VERSION + 1: a pgtape from before encryption refuses it
# by its version ("this pgtape reads format 3") instead of reporting its frames as damaged.
ENCRYPTED_FORMAT_VERSION = FORMAT_VERSION + 1


class Encryption(msgspec.Struct, frozen=True):
    """In a file's plaintext header: how the rest of it is encrypted."""

    cipher: str  # CIPHER
    key_id: str  # pgtape/keys.py: which key of the keyring
    salt: bytes  # 32 random bytes: the file's subkey is HKDF-SHA256(key, salt, "pgtape frame v1")


class _Header(msgspec.Struct):
    """What every header frame (segment, snapshot table file) may say about encryption."""

    format_version: int
    encryption: Encryption | None = None


class KeyUnavailable(PgtapeError):
    """An encrypted file whose key is not configured, or not in the configured keyring."""


def new_encryption(keyring: Keyring) -> Encryption:
    """For a new file: the active key, a fresh salt."""
    return Encryption(CIPHER, keyring.active_id, os.urandom(SALT_BYTES))


def format_version(encryption: Encryption | None) -> int:
    return FORMAT_VERSION if encryption is None else ENCRYPTED_FORMAT_VERSION


def version_problem(version: int, encryption: Encryption | None) -> str | None:
    """Why a header's format version (with or without encryption) cannot be read, or None."""
    if version == format_version(encryption):
        return None
    if version in (FORMAT_VERSION, ENCRYPTED_FORMAT_VERSION):
        return f"format version {version} does not match the header's encryption (damaged?)"
    return f"format version {version}; this pgtape reads {FORMAT_VERSION} and {ENCRYPTED_FORMAT_VERSION} (encrypted)"


def generation_mismatch(encrypted_file: bool, generation: int, encrypted_generation: bool) -> str | None:
    """Why a file does not belong in its generation: a plaintext file in an encrypted one would be a file
    put in place of one pgtape wrote (nothing authenticates it), or None."""
    if encrypted_file == encrypted_generation:
        return None
    if encrypted_generation:
        return f"not encrypted, but generation {generation} is (a file replaced?)"
    return f"encrypted, but generation {generation} is not"


def key_for(keyring: Keyring | None, kid: str, what: str) -> bytes:
    """The key with id `kid`, or one line saying how to configure it. `what` names the file."""
    if keyring is None:
        raise KeyUnavailable(f"{what} is encrypted with key {kid}, but no key is configured: set {KEY_FILE_ENV} "
                             "or [archive] key_file to the keyring that holds it")
    key = keyring.key(kid)
    if key is None:
        raise KeyUnavailable(f"{what} is encrypted with key {kid}, which is not in the keyring {keyring.path} "
                             f"(pgtape key list {keyring.path}): configure the keyring that holds it")
    return key


def cipher_for(keyring: Keyring | None, encryption: Encryption, header_frame: bytes, what: str) -> FrameCipher:
    if encryption.cipher != CIPHER:
        raise KeyUnavailable(f"{what} is encrypted with {encryption.cipher}; this pgtape knows {CIPHER}")
    return FrameCipher(key_for(keyring, encryption.key_id, what), encryption.salt, header_frame)


def header_encryption(payload: bytes) -> Encryption | None:
    """The encryption a header frame's payload names (None: none, or undecodable: the caller's to say)."""
    try:
        return msgspec.msgpack.decode(payload, type=_Header).encryption
    except msgspec.DecodeError:
        return None


def file_cipher(keyring: Keyring | None, f: BinaryIO, header: Frame, what: str) -> FrameCipher | None:
    """The cipher of the file whose (plaintext) header frame is `header`; None if it is not encrypted."""
    encryption = header_encryption(header.payload)
    if encryption is None:
        return None
    f.seek(header.offset)
    return cipher_for(keyring, encryption, f.read(header.size), what)


# -- metadata documents -------------------------------------------------------------------------
class SealedDoc(msgspec.Struct, frozen=True):
    """A metadata document (JSON) encrypted: AES-256-GCM under HKDF-SHA256(key, salt, "pgtape doc v1"),
    the file's key in the archive as associated data (a sealed document cannot be moved)."""

    cipher: str
    key_id: str
    salt: bytes
    nonce: bytes
    data: bytes  # ciphertext || tag


def seal_doc(keyring: Keyring, key: str, value: object) -> SealedDoc:
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    aead = AESGCM(subkey(keyring.active_key(), salt, DOC_KEY_INFO))
    data = aead.encrypt(nonce, msgspec.json.encode(value), key.encode())
    return SealedDoc(CIPHER, keyring.active_id, salt, nonce, data)


def open_doc(keyring: Keyring | None, sealed: SealedDoc, key: str, what: str, kind: type[T]) -> T:
    if sealed.cipher != CIPHER:
        raise KeyUnavailable(f"{what} is encrypted with {sealed.cipher}; this pgtape knows {CIPHER}")
    aead = AESGCM(subkey(key_for(keyring, sealed.key_id, what), sealed.salt, DOC_KEY_INFO))
    try:
        doc = aead.decrypt(sealed.nonce, sealed.data, key.encode())
    except (InvalidTag, ValueError):
        raise PgtapeError(f"{what}: {AUTH_FAILED}") from None
    return msgspec.json.decode(doc, type=kind)


class _MaybeSealed(msgspec.Struct):
    sealed: SealedDoc | None = None


_FRAMED_FILES = (".tape", ".tape.open", ".snap")


def key_ids_in_use(storage: Storage, leaving_out: Iterable[str] = ()) -> set[str]:
    """The key ids the archive's files name (segments, snapshot files, sealed metadata), from their headers;
    files under the keys `leaving_out` (what a prune deletes) left out. Unreadable headers are verify's."""
    skip = tuple(leaving_out)
    used: set[str] = set()
    pending = [""]
    dec = zstandard.ZstdDecompressor()
    while pending:
        directory = pending.pop()
        for e in storage.list(directory):
            key = f"{directory}/{e.name}" if directory else e.name
            if any(key == s or key.startswith(f"{s}/") for s in skip):
                continue
            if e.size is None:
                pending.append(key)
            elif e.name.endswith(_FRAMED_FILES):
                try:
                    with storage.open_read(key) as f:
                        header = read_frame(f, 0, dec)
                except (FrameError, FileNotFoundError):
                    continue
                encryption = header_encryption(header.payload) if header is not None else None
                if encryption is not None:
                    used.add(encryption.key_id)
            elif e.name.endswith(".json"):
                try:
                    sealed = metadata.read(storage, key, _MaybeSealed).sealed
                except (PgtapeError, FileNotFoundError):
                    continue
                if sealed is not None:
                    used.add(sealed.key_id)
    return used
