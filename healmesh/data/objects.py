"""One interface for object storage (put, get, list by prefix, delete) with two stores: a local
folder (the default profile) and an S3-compatible bucket (AWS, MinIO, moto).

``put`` is atomic in both: a reader sees the whole object or none of it. Locally the bytes go to
a hidden temporary file in the same folder, are fsynced, and are renamed over the name
(``os.replace``); S3 makes a PUT visible only once it is complete. ``list`` returns keys in
name order and never a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

TEMP_PREFIX = ".tmp-"


class ObjectStore(Protocol):
    url: str  # where it is, without credentials (safe to log)

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete_prefix(self, prefix: str) -> int: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.rstrip("/").split("/")):
        raise ValueError(f"an object key must be a relative path without '..', but was {key!r}")
    return key


class LocalObjectStore:
    """Objects as files under ``root`` (a key's slashes are folders)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def put(self, key: str, data: bytes) -> None:
        path = self.root / _check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: the name now points at the whole object
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        # the rename itself survives a power cut only once its folder is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        return (self.root / _check_key(key)).read_bytes()

    def list(self, prefix: str) -> list[str]:
        # walk only the folder the prefix names (a day's listing reads a day's folders)
        folder, _, stem = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return []
        out = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith(TEMP_PREFIX):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete_prefix(self, prefix: str) -> int:
        gone = 0
        for key in self.list(prefix):
            with contextlib.suppress(FileNotFoundError):
                (self.root / key).unlink()
                gone += 1
        return gone


class S3ObjectStore:
    """Objects in an S3-compatible bucket, under an optional key prefix."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", url: str | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = url or f"s3://{bucket}/{self.prefix}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + _check_key(key), Body=data)

    def get(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + _check_key(key))["Body"]
        return bytes(body.read())

    def list(self, prefix: str) -> list[str]:
        out: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        for page in pages:
            out.extend(obj["Key"][len(self.prefix):] for obj in page.get("Contents", ()))
        return sorted(out)

    def delete_prefix(self, prefix: str) -> int:
        names = self.list(prefix)
        for start in range(0, len(names), 1_000):  # DeleteObjects takes at most 1,000 keys
            chunk = names[start:start + 1_000]
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self.prefix + k} for k in chunk], "Quiet": True})
        return len(names)


def open_store(url: str, *, endpoint_url: str | None = None, region: str = "us-east-1",
               access_key_id: str | None = None, secret_access_key: str | None = None) -> ObjectStore:
    """The store a URL names: ``file:///abs/folder`` or ``s3://bucket[/prefix]``. Credentials
    go to the client only; the store's ``url`` never carries them."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalObjectStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"an s3 URL needs a bucket (s3://bucket/prefix), but was {url!r}")
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                              aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                              config=Config(retries={"max_attempts": 5, "mode": "standard"}))
        return S3ObjectStore(client, parsed.netloc, parsed.path, url=f"s3://{parsed.netloc}{parsed.path}")
    raise ValueError(f"an archive URL must be file:///... or s3://bucket/prefix, but was {url!r}")
