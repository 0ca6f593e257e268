"""The central store: a local directory or S3-compatible object storage, through pyarrow.fs.

Objects are written under their final name in one step (a rename on a local file system, one
PUT on S3), so a reader never sees half a file and a re-upload replaces the object.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Store:
    filesystem: pafs.FileSystem
    root: str
    url: str

    def path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"


class StoreError(Exception):
    """A store operation failed; transient says whether a retry can help."""

    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient


def open_store(url: str, endpoint_override: str | None = None, region: str | None = None) -> Store:
    """Open the store at url: file:///path, a plain path, or s3://bucket/prefix.

    S3 credentials come from the environment or the AWS shared files (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE), never from the clicktrail config.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        root = parsed.path if parsed.scheme == "file" else url
        return Store(pafs.LocalFileSystem(), os.path.abspath(root), url)
    if parsed.scheme == "s3":
        options: dict[str, object] = {}
        if endpoint_override:
            endpoint = urlparse(endpoint_override)
            options["endpoint_override"] = endpoint.netloc
            options["scheme"] = endpoint.scheme or "https"
        if region:
            options["region"] = region
        filesystem = pafs.S3FileSystem(**options)
        root = f"{parsed.netloc}{parsed.path}".rstrip("/")
        return Store(filesystem, root, url)
    raise StoreError(f"unsupported store URL {url!r}; expected file:///path or s3://bucket/prefix",
                     transient=False)


def upload_file(store: Store, local_path: str, relative: str) -> int:
    """Copy a local file into the store under relative; return its size in bytes."""
    target = store.path(relative)
    parent = target.rsplit("/", 1)[0]
    size = os.path.getsize(local_path)
    try:
        store.filesystem.create_dir(parent, recursive=True)
        if isinstance(store.filesystem, pafs.LocalFileSystem):
            _copy_local_atomically(local_path, target)
        else:
            with open(local_path, "rb") as src, store.filesystem.open_output_stream(target) as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    except PermissionError as exc:
        raise StoreError(f"permission denied writing {target}: {exc}", transient=False) from exc
    except OSError as exc:
        raise StoreError(f"cannot write {target}: {exc}", transient=_is_transient(exc)) from exc
    return size


def _copy_local_atomically(local_path: str, target: str) -> None:
    temporary = f"{target}.tmp-{uuid.uuid4().hex}"
    try:
        with open(local_path, "rb") as src, open(temporary, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    directory = os.open(os.path.dirname(target), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _is_transient(exc: OSError) -> bool:
    text = str(exc).lower()
    permanent = ("access denied", "accessdenied", "nosuchbucket", "no such bucket",
                 "invalidaccesskeyid", "signaturedoesnotmatch", "forbidden")
    return not any(word in text for word in permanent)
