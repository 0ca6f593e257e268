"""Open the Parquet store through pyarrow.fs and expose its areas as pyarrow datasets.

DuckDB scans these datasets directly, with projection and filter pushdown, so the reporter
never needs DuckDB's httpfs extension (which is downloaded at run time).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from clicktrail.agent import store as agent_store
from clicktrail.agent.schema import (
    CATALOG_DIR,
    EVENT_SCHEMA,
    EVENTS_DIR,
    REJECT_SCHEMA,
    REJECTS_DIR,
    SAFE_ID,
)

from .errors import StoreError

log = logging.getLogger(__name__)

PARTITION_SCHEMA = pa.schema([pa.field("event_date", pa.date32())])
EVENTS_DATASET_SCHEMA = EVENT_SCHEMA.append(pa.field("event_date", pa.date32()))
REJECTS_DATASET_SCHEMA = REJECT_SCHEMA.append(pa.field("event_date", pa.date32()))


@dataclass(frozen=True)
class Store:
    """A store root on one pyarrow filesystem."""

    url: str
    filesystem: pafs.FileSystem
    root: str

    def path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    def agent_store(self) -> agent_store.Store:
        """Return the same store as the agent's writer type."""
        return agent_store.Store(self.filesystem, self.root, self.url)

    def is_dir(self, relative: str) -> bool:
        info = self._info(relative)
        return info.type == pafs.FileType.Directory

    def is_file(self, relative: str) -> bool:
        info = self._info(relative)
        return info.type == pafs.FileType.File

    def _info(self, relative: str) -> pafs.FileInfo:
        try:
            return self.filesystem.get_file_info(self.path(relative))
        except OSError as exc:
            raise StoreError(
                f"cannot read {relative!r} in store {self.url}: {exc}",
                store_url=self.url,
                transient=True,
            ) from exc

    def read_bytes(self, relative: str, max_bytes: int) -> bytes:
        """Read a small file, raising StoreError if it is larger than max_bytes."""
        try:
            with self.filesystem.open_input_stream(self.path(relative)) as stream:
                data = stream.read(max_bytes + 1)
        except OSError as exc:
            raise StoreError(
                f"cannot read {relative!r} in store {self.url}: {exc}",
                store_url=self.url,
                transient=True,
            ) from exc

        if len(data) > max_bytes:
            raise StoreError(
                f"{relative!r} in store {self.url} is larger than {max_bytes} bytes",
                store_url=self.url,
            )
        return data


def open_store(store_url: str, endpoint_override: str | None = None,
               region: str | None = None) -> Store:
    """Open a store from `file:///abs/path`, a plain local path or `s3://bucket/prefix`.

    The URL is resolved by the agent's store module, so both halves read the same place.
    Raises StoreError when the URL is invalid or the store root does not exist.
    """
    try:
        opened = agent_store.open_store(store_url, endpoint_override, region)
    except (agent_store.StoreError, pa.ArrowInvalid, OSError) as exc:
        raise StoreError(f"invalid store URL {store_url!r}: {exc}", store_url=store_url) from exc

    store = Store(url=store_url, filesystem=opened.filesystem, root=opened.root)
    if not store.is_dir(""):
        raise StoreError(
            f"store not found: {store_url} is not a directory; check [store] url in the config",
            store_url=store_url,
        )
    return store


def events_dataset(store: Store) -> ds.Dataset:
    """Return the events area as a Hive-partitioned dataset (event_date is a date column).

    Raises StoreError when the store has no events/ folder, which means the agent never wrote
    to it or the URL points at the wrong place.
    """
    if not store.is_dir(EVENTS_DIR):
        raise StoreError(
            f"store {store.url} has no {EVENTS_DIR}/ folder: no agent has written to it yet, "
            "or [store] url points at the wrong place",
            store_url=store.url,
        )
    return _dataset(store, EVENTS_DIR, EVENTS_DATASET_SCHEMA)


def rejects_dataset(store: Store) -> ds.Dataset | None:
    """Return the rejects area as a dataset, or None when no line was ever rejected."""
    if not store.is_dir(REJECTS_DIR):
        return None
    return _dataset(store, REJECTS_DIR, REJECTS_DATASET_SCHEMA)


def _dataset(store: Store, area: str, schema: pa.Schema) -> ds.Dataset:
    # The explicit schema keeps an empty area queryable and makes files with a subset of the
    # columns (older agents) read as nulls instead of failing.
    partitioning = ds.partitioning(PARTITION_SCHEMA, flavor="hive")
    try:
        return ds.dataset(
            store.path(area),
            filesystem=store.filesystem,
            format="parquet",
            partitioning=partitioning,
            schema=schema,
            exclude_invalid_files=False,
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise StoreError(
            f"cannot list {area}/ in store {store.url}: {exc}", store_url=store.url
        ) from exc


def catalog_path(delivery_id: str) -> str:
    """Return the catalog entry path of a delivery id that matched schema.SAFE_ID."""
    return f"{CATALOG_DIR}/{delivery_id}.json"


def safe_file_stem(kind: str, value: str) -> str:
    """Build a file name stem from a fixed word and an id, hashing ids that are not plain names.

    The hashed form `<kind>.id-<hash>` (24 hex digits of SHA-256) contains a dot, which SAFE_ID
    excludes, so it cannot equal the stem of a plain id.
    """
    if SAFE_ID.fullmatch(value):
        return f"{kind}-{value}"
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{kind}.id-{digest}"
