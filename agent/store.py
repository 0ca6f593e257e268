"""The central store: a local directory or S3-compatible object storage, through pyarrow.fs.

Objects are written under their final name in one step (a rename on a local file system, one
PUT on S3), so a reader never sees half a file and a re-upload replaces the object.

S3 credentials come from the AWS SDK's default chain inside pyarrow (AWS SDK for C++ 1.11):
the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then the shared
files (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_PROFILE, default ~/.aws/), never the
clicktrail config. The chain ends with the EC2 instance metadata service (IMDS), which
open_store turns off unless the operator set AWS_EC2_METADATA_DISABLED, so that the agent
contacts no host other than the configured endpoint.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

# AWS SDK error names (pyarrow prints them as "AWS Error NAME during ...") that no retry can
# fix: the credentials, the permissions or the bucket must change first.
PERMANENT_AWS_ERRORS = frozenset({
    "ACCESS_DENIED",
    "INCOMPLETE_SIGNATURE",
    "INVALID_ACCESS_KEY_ID",
    "INVALID_CLIENT_TOKEN_ID",
    "INVALID_SIGNATURE",
    "MISSING_AUTHENTICATION_TOKEN",
    "NO_SUCH_BUCKET",
    "OPT_IN_REQUIRED",
    "SIGNATURE_DOES_NOT_MATCH",
    "UNRECOGNIZED_CLIENT",
    "VALIDATION",
})

# Names that a later attempt can get past: the network, an overloaded or failing server, a
# clock that NTP has not corrected yet, a multipart upload the server forgot.
TRANSIENT_AWS_ERRORS = frozenset({
    "INTERNAL_FAILURE",
    "NETWORK_CONNECTION",
    "NO_SUCH_UPLOAD",
    "REQUEST_EXPIRED",
    "REQUEST_TIME_TOO_SKEWED",
    "REQUEST_TIMEOUT",
    "SERVICE_UNAVAILABLE",
    "SLOW_DOWN",
    "THROTTLING",
})

# HTTP statuses that mean "try again later" (RFC 9110: 408 Request Timeout; RFC 6585: 429 Too
# Many Requests); any other 4xx means the request itself is refused.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429})

_AWS_ERROR = re.compile(r"AWS Error ([A-Z_]+)")
# pyarrow 26 prints "(HTTP status 503)" for errors it cannot name. The pattern also accepts
# "HTTP response code: 503", a form reported for other pyarrow releases but not seen with 26.
_HTTP_STATUS = re.compile(r"HTTP (?:status|response code:?) (\d{3})")

DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Store:
    """A store root on one pyarrow filesystem; url is the configured URL, without secrets."""

    filesystem: pafs.FileSystem
    root: str
    url: str

    def path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)


class StoreError(Exception):
    """A store operation failed.

    transient is True when a later retry can help. code is the AWS error name, HTTP status or
    errno name that decided it ("NO_SUCH_BUCKET", "HTTP 503", "EACCES"). object_name is the
    object involved.
    """

    def __init__(self, message: str, *, transient: bool, code: str | None = None,
                 object_name: str | None = None, store_url: str | None = None):
        super().__init__(message)
        self.transient = transient
        self.code = code
        self.object_name = object_name
        self.store_url = store_url


def open_store(url: str, endpoint_override: str | None = None, region: str | None = None, *,
               max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Store:
    """Open the store at url: file:///path, a plain path, or s3://bucket/prefix.

    endpoint_override is "http(s)://host:port" of an S3-compatible server (MinIO, Ceph, moto).
    max_attempts bounds the AWS SDK's own retries of one request; the forwarder's backoff
    handles longer outages. Opening does no network request.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        root = parsed.path if parsed.scheme == "file" else url
        return Store(pafs.LocalFileSystem(), os.path.abspath(root), url)

    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"invalid store URL {url!r}: the bucket name is missing; expected "
                             "s3://bucket/prefix", transient=False, store_url=url)
        filesystem = pafs.S3FileSystem(**_s3_options(endpoint_override, region, max_attempts))
        root = f"{parsed.netloc}{parsed.path}".rstrip("/")
        return Store(filesystem, root, url)

    raise StoreError(f"unsupported store URL {url!r}; expected file:///path or s3://bucket/prefix",
                     transient=False, store_url=url)


def _s3_options(endpoint_override: str | None, region: str | None,
                max_attempts: int) -> dict[str, object]:
    # Without this variable the SDK queries the EC2 instance metadata service at 169.254.169.254
    # for credentials and the region whenever the environment and shared files have none,
    # which outside EC2 costs seconds of timeouts and contacts a host the config does not name.
    # Operators who rely on an instance profile set AWS_EC2_METADATA_DISABLED=false.
    # NOTE: tests check the clients created after this call. Whether an S3FileSystem created
    # earlier in the same process honors the variable was not checked.
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

    # allow_delayed_open makes pyarrow send one PutObject for an object below its multipart part
    # size, instead of create, upload part, complete. With pyarrow 26 a 7 MiB object went up in
    # one PUT and a 12 MiB object as a multipart upload.
    options: dict[str, object] = {
        "allow_delayed_open": True,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
    }
    if endpoint_override:
        endpoint = urlparse(endpoint_override)
        options["endpoint_override"] = endpoint.netloc
        options["scheme"] = endpoint.scheme or "https"
    if region:
        options["region"] = region
    return options


def upload_file(store: Store, local_path: str, relative: str) -> int:
    """Copy a local file into the store under relative; return its size in bytes.

    Raises StoreError with transient set from the error; OSError when local_path cannot be read.
    """
    target = store.path(relative)
    size = os.path.getsize(local_path)
    with open(local_path, "rb") as source:
        try:
            if store.is_local:
                _copy_local_atomically(source, target)
            else:
                _put_object(store, source, target)
        except OSError as exc:
            raise store_error(store, relative, exc) from exc
    return size


def _put_object(store: Store, source, target: str) -> None:
    # No create_dir: S3 has no folders, and pyarrow would PUT an empty marker object per level.
    # An object larger than the part size goes up as a multipart upload, which S3 also makes
    # visible only when it completes, so readers still never see part of it.
    with store.filesystem.open_output_stream(target) as output:
        while chunk := source.read(1 << 20):
            output.write(chunk)


def _copy_local_atomically(source, target: str) -> None:
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    # A leading dot hides the temporary file from pyarrow and DuckDB readers. A process killed
    # mid-copy leaves one behind; the next upload of the same name, which follows the restart,
    # removes it.
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.tmp-*")):
        os.unlink(stale)
    temporary = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as output:
            while chunk := source.read(1 << 20):
                output.write(chunk)
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)

    directory = os.open(os.path.dirname(target), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def store_error(store: Store, relative: str, exc: OSError) -> StoreError:
    """Wrap an OSError from writing relative into a StoreError, classified and redacted."""
    transient, code = classify_error(exc)
    kind = "transient" if transient else "permanent"
    message = redact(f"cannot write {relative} to store {store.url} ({kind}, {code}): {exc}")
    return StoreError(message, transient=transient, code=code, object_name=relative,
                      store_url=store.url)


def classify_error(exc: OSError) -> tuple[bool, str]:
    """Return (transient, code) for an error raised by a pyarrow filesystem.

    pyarrow raises a plain OSError for S3 and puts the SDK's error name and the HTTP status in
    its text, so the text is all there is to go on. An error in neither list counts as
    transient, because retrying and warning loses nothing.
    """
    text = str(exc)
    name_match = _AWS_ERROR.search(text)
    name = name_match.group(1) if name_match else None
    if name in PERMANENT_AWS_ERRORS:
        return False, name
    if name in TRANSIENT_AWS_ERRORS:
        return True, name

    status_match = _HTTP_STATUS.search(text)
    if status_match:
        status = int(status_match.group(1))
        transient = status >= 500 or status in TRANSIENT_HTTP_STATUSES
        return transient, f"HTTP {status}"

    if name is not None:
        return True, name
    return _classify_local_error(exc)


def _classify_local_error(exc: OSError) -> tuple[bool, str]:
    # A local store: a full disk can be freed, a read-only mount or a missing permission
    # needs the operator.
    code = errno.errorcode.get(exc.errno, "OSError") if exc.errno else "OSError"
    permanent = isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EACCES)
    return not permanent, code


def redact(text: str) -> str:
    """Replace the values of secret AWS variables in text with "***"."""
    for variable in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(variable)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
