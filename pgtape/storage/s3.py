"""S3Storage: an archive in an S3-compatible bucket (AWS S3, MinIO, SeaweedFS, R2, Ceph...), `s3://bucket/prefix`.

The offsite copy of a local archive (pgtape/offsite/) and what every reading command opens with
`--archive s3://...` (disaster recovery from the bucket alone). Keys are the local layout's, under
the prefix. What an object store does differently (docs/ARCHITECTURE.md, "Storage"):
- write_atomic is one PUT, atomic by nature, sent with its SHA-256 (x-amz-checksum-sha256): the store
  refuses a body that does not match it (BadDigest), so what it keeps is what was sent.
- every object also carries its whole SHA-256 as user metadata (x-amz-meta-sha256), which head()
  returns: the store's own checksum of a multipart object is a composite of its parts' (`...-N`),
  which no local file hash equals, so without it a crashed uploader would send the object again.
- open_read is ranged GETs (read ahead in chunks), pinned to the version it opened (If-Match on the
  ETag): replay streams a segment, it never downloads the archive first.
- rename is copy then delete (a crash may leave both); delete_tree deletes each object.
- an append handle keeps the object in memory and PUTs it whole on sync: for small objects only
  (the audit log of a command run on a remote archive); the tape is never written here directly.

Client: boto3, so credentials come from the standard AWS chain (environment, ~/.aws/config and
credentials, instance roles) and the endpoint from AWS_ENDPOINT_URL (or [offsite] endpoint_url).
It is imported when the first S3Storage is made: importing it costs ~0.3 s, which every other
command would pay for nothing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib
import io
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, Callable, Hashable, Iterator, TypeVar, cast

from pgtape.storage.base import AppendHandle, Entry, Storage

T = TypeVar("T")
URL_RE = re.compile(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?")
READ_AHEAD = 4 << 20  # bytes per ranged GET when reading sequentially
NOT_FOUND = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")
SHA_META = "sha256"  # user metadata (x-amz-meta-sha256): the object's whole SHA-256, base64
MULTIPART_THRESHOLD = 1 << 30  # bytes: larger files go up in parts (tests lower it)
PART_SIZE = 128 << 20  # bytes per part (at least 5 MiB, the S3 minimum, except the last)


class RemoteStorageError(OSError):
    """The store refused or could not be reached (after the client's retries): one line, naming the object."""


def is_remote(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith("s3://")


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"). ValueError for anything else."""
    m = URL_RE.fullmatch(url.rstrip("/"))
    if not m or (m.group(2) is not None and any(p in ("", ".", "..") for p in m.group(2).split("/"))):
        raise ValueError(f"invalid S3 URL {url!r}: use s3://bucket or s3://bucket/prefix")
    return m.group(1), (m.group(2) or "")


@functools.cache
def _sdk() -> tuple[ModuleType, ModuleType, ModuleType]:
    return (importlib.import_module("boto3"), importlib.import_module("botocore.config"),
            importlib.import_module("botocore.exceptions"))


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def file_sha256_b64(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


class S3Storage(Storage):
    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        self.bucket, self.prefix = parse_url(url)
        boto3, config, self._errors = _sdk()
        # A few quick retries: a reader fails in seconds when the store is down, and the uploader has its own backoff.
        cfg = config.Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
        self.client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=cfg)

    # -- names ---------------------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix and key else (key or self.prefix)

    def _dir(self, prefix: str) -> str:
        full = self._key(prefix)
        return f"{full}/" if full else ""

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    # -- errors --------------------------------------------------------------------------------------------
    def _call(self, key: str, fn: Callable[[], T]) -> T:
        """`fn()`, with a missing object as FileNotFoundError and any other failure as RemoteStorageError."""
        try:
            return fn()
        except self._errors.ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code in NOT_FOUND or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise FileNotFoundError(2, "no such object", self.where(key)) from None
            raise RemoteStorageError(f"{self.where(key)}: {code} {err.get('Message', '')}".strip()) from None
        except self._errors.BotoCoreError as e:
            raise RemoteStorageError(f"{self.where(key)}: {e}") from None

    # -- reading -------------------------------------------------------------------------------------------
    def identity(self) -> Hashable:
        if not self.list(""):
            raise FileNotFoundError(2, "no such archive", self.where(""))
        return ("s3", self.bucket, self.prefix)

    def _pages(self, prefix: str, delimiter: bool) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._dir(prefix)}
        if delimiter:
            kwargs["Delimiter"] = "/"
        paginator = self.client.get_paginator("list_objects_v2")
        yield from self._call(prefix, lambda: list(paginator.paginate(**kwargs)))

    def list(self, prefix: str) -> list[Entry]:
        base = self._dir(prefix)
        entries: dict[str, Entry] = {}
        for page in self._pages(prefix, True):
            for p in page.get("CommonPrefixes", []):
                name = p["Prefix"][len(base):].rstrip("/")
                # Some stores (SeaweedFS) keep a "directory" once emptied: it exists only while it holds objects.
                if name and self._holds_objects(p["Prefix"]):
                    entries[name] = Entry(name, None)
            for o in page.get("Contents", []):
                name = o["Key"][len(base):]
                if name and "/" not in name:
                    entries[name] = Entry(name, int(o["Size"]))
        return sorted(entries.values(), key=lambda e: e.name)

    def list_tree(self, prefix: str) -> dict[str, int]:
        """Every object under `prefix` ("" for the whole archive), recursively: key -> size."""
        base = self._dir(prefix)
        out: dict[str, int] = {}
        for page in self._pages(prefix, False):
            for o in page.get("Contents", []):
                out[(prefix + "/" if prefix else "") + o["Key"][len(base):]] = int(o["Size"])
        return out

    def head(self, key: str) -> tuple[int, str | None]:
        """The object's size and its whole SHA-256: from its metadata, else as the store recorded it
        (None if it was stored without one, or only with a composite checksum of its parts)."""
        r = self._call(key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key),
                                                             ChecksumMode="ENABLED"))
        return int(r["ContentLength"]), _whole_sha(r)

    def _holds_objects(self, full_prefix: str) -> bool:
        r = self._call(full_prefix, lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=full_prefix,
                                                                         MaxKeys=1))
        return any(not o["Key"].endswith("/") for o in r.get("Contents", []))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
            return True
        except FileNotFoundError:
            return self._holds_objects(self._dir(key))

    def size(self, key: str) -> int:
        return self.head(key)[0]

    def read(self, key: str) -> bytes:
        r = self._call(key, lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key)))
        return cast(bytes, self._call(key, lambda: r["Body"].read()))

    def open_read(self, key: str) -> BinaryIO:
        r = self._call(key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        return cast(BinaryIO, _RangeReader(self, key, int(r["ContentLength"]), r.get("ETag")))

    def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        """Bytes [start, end) of the object, of the version `etag` (else FileNotFoundError: replaced meanwhile)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Range": f"bytes={start}-{end - 1}"}
        if etag:
            kwargs["IfMatch"] = etag
        try:
            r = self._call(key, lambda: self.client.get_object(**kwargs))
        except RemoteStorageError as e:
            if "PreconditionFailed" in str(e):
                raise FileNotFoundError(2, "object replaced while read", self.where(key)) from None
            raise
        return cast(bytes, self._call(key, lambda: r["Body"].read()))

    def download(self, key: str, f: BinaryIO) -> tuple[int, str]:
        """The object's bytes into `f`, streamed; its size and SHA-256 (base64). A checksum the store
        recorded that does not match what arrived is a RemoteStorageError naming the object."""
        r = self._call(key, lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                                            ChecksumMode="ENABLED"))
        h, size = hashlib.sha256(), 0
        body = r["Body"]
        while chunk := self._call(key, lambda: body.read(1 << 20)):
            h.update(chunk)
            f.write(chunk)
            size += len(chunk)
        sha = base64.b64encode(h.digest()).decode()
        if (stored := _whole_sha(r)) and stored != sha:
            raise RemoteStorageError(f"{self.where(key)}: bytes received differ from the SHA-256 it was stored with")
        return size, sha

    # -- writing -------------------------------------------------------------------------------------------
    def write_atomic(self, key: str, data: bytes) -> None:
        sha = sha256_b64(data)
        self._call(key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                                        ChecksumSHA256=sha, Metadata={SHA_META: sha}))

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        """Upload a local file as the object `key`, streamed, with its SHA-256 (`file_sha256_b64`) for the
        store to check: a body that does not match is refused, never stored. Above MULTIPART_THRESHOLD
        (a single PUT stops at 5 GiB) in parts of PART_SIZE, each with its own SHA-256; the object
        appears only when the upload completes (else it is aborted). Either way `sha256` is kept as
        the object's metadata (head() returns it)."""
        if path.stat().st_size > MULTIPART_THRESHOLD:
            self._put_parts(key, path, sha256)
            return
        with open(path, "rb") as f:
            self._call(key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=f,
                                                            ChecksumSHA256=sha256, Metadata={SHA_META: sha256}))

    def _put_parts(self, key: str, path: Path, sha256: str) -> None:
        full = self._key(key)
        up = self._call(key, lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=full,
                                                                          ChecksumAlgorithm="SHA256",
                                                                          Metadata={SHA_META: sha256}))
        upload_id = up["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            with open(path, "rb") as f:
                while chunk := f.read(PART_SIZE):
                    n, sha = len(parts) + 1, sha256_b64(chunk)
                    r = self._call(key, lambda: self.client.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=n, Body=chunk,
                        ChecksumSHA256=sha))
                    parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": sha})
            self._call(key, lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:
                pass  # (the store's lifecycle rules clean up an upload nobody completes)
            raise

    def create(self, key: str, initial: bytes) -> AppendHandle:
        self.write_atomic(key, initial)
        return self.open_append(key)

    def open_append(self, key: str) -> AppendHandle:
        return _S3Append(self, key, self.read(key))

    def rename(self, src: str, dst: str) -> None:
        objects = self.list_tree(src) if not self._is_object(src) else {src: 0}
        if not objects:
            raise FileNotFoundError(2, "no such object", self.where(src))
        for key in objects:
            target = dst + key[len(src):]
            self._call(key, lambda: self.client.copy_object(
                Bucket=self.bucket, Key=self._key(target), CopySource={"Bucket": self.bucket, "Key": self._key(key)}))
        for key in objects:
            self.delete(key)

    def _is_object(self, key: str) -> bool:
        try:
            self.head(key)
            return True
        except FileNotFoundError:
            return False

    def delete(self, key: str) -> None:
        self._call(key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def delete_tree(self, prefix: str) -> None:
        keys = list(self.list_tree(prefix))
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
            self._call(prefix, lambda: self.client.delete_objects(Bucket=self.bucket,
                                                                   Delete={"Objects": batch, "Quiet": True}))


def _whole_sha(r: dict[str, Any]) -> str | None:
    """The object's whole SHA-256 from a HEAD or GET response: its metadata, else the store's checksum
    unless that is a multipart composite (`<base64>-<parts>`)."""
    meta = r.get("Metadata") or {}
    if meta.get(SHA_META):
        return str(meta[SHA_META])
    stored = r.get("ChecksumSHA256")
    return None if not stored or "-" in stored else str(stored)


class _RangeReader(io.RawIOBase):
    """A seekable reader of one object version: each read past the buffer is one ranged GET of at least READ_AHEAD."""

    def __init__(self, storage: S3Storage, key: str, size: int, etag: str | None) -> None:
        super().__init__()
        self._s, self._key, self._size, self._etag = storage, key, size, etag
        self._pos = 0
        self._buf, self._buf_start = b"", 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        buf_end = self._buf_start + len(self._buf)
        if not (self._buf_start <= self._pos and end <= buf_end):
            fetch_end = min(self._size, max(end, self._pos + READ_AHEAD))
            self._buf, self._buf_start = self._s.get_range(self._key, self._pos, fetch_end, self._etag), self._pos
        out = self._buf[self._pos - self._buf_start:end - self._buf_start]
        self._pos += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _S3Append(AppendHandle):
    """Appends held in memory; sync PUTs the whole object (small objects only, see the module's docstring)."""

    def __init__(self, storage: S3Storage, key: str, data: bytes) -> None:
        self._s, self.key, self._data = storage, key, bytearray(data)
        self._etag = self._current_etag()
        self._closed = False

    def _current_etag(self) -> str | None:
        try:
            r = self._s._call(self.key, lambda: self._s.client.head_object(Bucket=self._s.bucket,
                                                                            Key=self._s._key(self.key)))
        except FileNotFoundError:
            return None
        return cast("str | None", r.get("ETag"))

    def append(self, data: bytes) -> None:
        self._data += data

    def sync(self) -> None:
        self._s.write_atomic(self.key, bytes(self._data))
        self._etag = self._current_etag()

    def size(self) -> int:
        return len(self._data)

    def truncate(self, length: int) -> None:
        del self._data[length:]
        self.sync()

    def still_there(self) -> bool:
        return self._etag is not None and self._current_etag() == self._etag

    def close(self) -> None:
        self._closed = True
