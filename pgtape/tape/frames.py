"""Frames: the unit of writing, checksumming and compression in a segment file.

    offset 0  4s  magic b"PGTF"
           4  B   kind      (KIND_HEADER, KIND_DATA, KIND_FOOTER)
           5  B   flags     (FLAG_ZSTD, FLAG_BOUNDARY, FLAG_ENCRYPTED)
           6  H   reserved  (0)
           8  I   payload length in bytes
          12  I   decoded payload length in bytes
          16  I   crc32 of bytes 0..15 and the payload
          20      payload: msgpack, zstd-compressed when FLAG_ZSTD;
                  when FLAG_ENCRYPTED: 12-byte nonce || AES-256-GCM(that) || 16-byte tag

All integers big-endian. A torn or flipped frame fails its checksum; see docs/FORMAT.md. In an
encrypted file (its header frame names the key: pgtape/tape/crypto.py) every later frame is
encrypted, and authenticated together with its 16 header bytes, its offset and a digest of the
file's header frame: a changed, moved or transplanted frame fails authentication.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from typing import BinaryIO, NamedTuple

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"PGTF"
HEADER = struct.Struct(">4sBBHIII")
HEADER_SIZE = HEADER.size

KIND_HEADER = 1
KIND_DATA = 2
KIND_FOOTER = 3
KIND_NAMES = {KIND_HEADER: "header", KIND_DATA: "data", KIND_FOOTER: "footer"}

FLAG_ZSTD = 1
FLAG_BOUNDARY = 2  # the frame ends between transactions: the file may be cut right after it
FLAG_ENCRYPTED = 4  # the payload is nonce || ciphertext || tag (docs/FORMAT.md, "Encryption")

NONCE_BYTES = 12
TAG_BYTES = 16
FRAME_KEY_INFO = b"pgtape frame v1"  # HKDF info of a file's frame subkey
AUTH_FAILED = "authentication failed (wrong key or tampered data)"

MAX_PAYLOAD = 256 << 20  # refuse absurd lengths from a corrupt header before allocating


class FrameError(Exception):
    """A frame that cannot be trusted. `offset` is where it starts in its file."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class AuthenticationFailed(FrameError):
    """An encrypted frame whose checksum holds but whose tag does not: tampered (or a wrong key)."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset, AUTH_FAILED)


def subkey(master: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 of a keyring key: one subkey per file (its random salt), so random nonces repeat
    with negligible probability however many files one key encrypts."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(master)


class FrameCipher:
    """AES-256-GCM for the frames of one file: its subkey, and the digest of its header frame that
    every frame's associated data carries (so frames cannot move between files, nor the header change)."""

    __slots__ = ("_aead", "_bind")

    def __init__(self, master: bytes, salt: bytes, header_frame: bytes) -> None:
        self._aead = AESGCM(subkey(master, salt, FRAME_KEY_INFO))
        self._bind = hashlib.sha256(header_frame).digest()

    def _aad(self, head: bytes, offset: int) -> bytes:
        return head + offset.to_bytes(8, "big") + self._bind

    def seal(self, head: bytes, offset: int, body: bytes) -> bytes:
        """nonce || ciphertext || tag. A fresh random nonce every time: a frame rewritten at the same
        offset (after a torn tail is cut) never reuses one."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, body, self._aad(head, offset))

    def open(self, head: bytes, offset: int, sealed: bytes) -> bytes:
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise AuthenticationFailed(offset)
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], self._aad(head, offset))
        except InvalidTag:
            raise AuthenticationFailed(offset) from None


class Frame(NamedTuple):  # (a tuple, not a frozen dataclass: made once per frame read, 5x cheaper to build)
    offset: int
    kind: int
    flags: int
    payload: bytes  # decoded (decompressed)
    size: int  # bytes on disk, header included
    disk_crc: int  # crc32 of the file's bytes up to this frame's end (chained from crc_in)

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def boundary(self) -> bool:
        return bool(self.flags & FLAG_BOUNDARY)


def encode_frame(kind: int, payload: bytes, *, boundary: bool,
                 compressor: zstandard.ZstdCompressor | None = None,
                 cipher: FrameCipher | None = None, offset: int = 0, compressed: bytes | None = None) -> bytes:
    """The frame's bytes; with `cipher`, encrypted for its place in its file: `offset`. `compressed`: the
    payload as `compressor` made it already (the same frame written to a second file)."""
    flags = FLAG_BOUNDARY if boundary else 0
    body = payload
    if compressed is not None:
        body = compressed
        flags |= FLAG_ZSTD
    elif compressor is not None:
        body = compressor.compress(payload)
        flags |= FLAG_ZSTD
    if cipher is not None:
        flags |= FLAG_ENCRYPTED
        head = HEADER.pack(MAGIC, kind, flags, 0, NONCE_BYTES + len(body) + TAG_BYTES, len(payload), 0)[:16]
        body = cipher.seal(head, offset, body)
    else:
        head = HEADER.pack(MAGIC, kind, flags, 0, len(body), len(payload), 0)[:16]
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + crc.to_bytes(4, "big") + body


def read_frame(f: BinaryIO, offset: int, decompressor: zstandard.ZstdDecompressor, crc_in: int = 0,
               cipher: FrameCipher | None = None) -> Frame | None:
    """The frame at `offset`, or None at a clean end of file. Raises FrameError if damaged
    (AuthenticationFailed if its checksum holds but its tag does not).

    `crc_in` is the crc32 of the file's bytes before `offset`, so callers get a whole-file checksum.
    `cipher`: the file is encrypted, so this frame must be (None: it must not be)."""
    head = f.read(HEADER_SIZE)
    if not head:
        return None
    if len(head) < HEADER_SIZE:
        raise FrameError(offset, f"truncated frame header ({len(head)} of {HEADER_SIZE} bytes)")
    magic, kind, flags, _, length, raw_length, crc = HEADER.unpack(head)
    if magic != MAGIC:
        raise FrameError(offset, "no frame starts here (bad magic)")
    if kind not in KIND_NAMES or length > MAX_PAYLOAD or raw_length > MAX_PAYLOAD:
        raise FrameError(offset, "corrupt frame header")
    body = f.read(length)
    if len(body) < length:
        raise FrameError(offset, f"truncated frame ({len(body)} of {length} payload bytes)")
    if zlib.crc32(body, zlib.crc32(head[:16])) != crc:
        raise FrameError(offset, "checksum mismatch")
    disk_crc = zlib.crc32(body, zlib.crc32(head, crc_in))
    if flags & FLAG_ENCRYPTED:
        if cipher is None:
            raise FrameError(offset, "encrypted frame in a file whose header names no key")
        body = cipher.open(head[:16], offset, body)
    elif cipher is not None:
        raise FrameError(offset, "unencrypted frame in an encrypted file")
    if flags & FLAG_ZSTD:
        try:
            payload = decompressor.decompress(body, max_output_size=raw_length)
        except zstandard.ZstdError as e:
            raise FrameError(offset, f"cannot decompress: {e}") from None
    else:
        payload = body
    if len(payload) != raw_length:
        raise FrameError(offset, f"decoded length {len(payload)} differs from header {raw_length}")
    return Frame(offset, kind, flags, payload, HEADER_SIZE + length, disk_crc)
