"""Retention and erasure in the store: delete old partitions, remove one recipient's rows.

Both work through the store's pyarrow filesystem, so the same code serves a local folder and
S3-compatible storage.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from clicktrail.agent.schema import CLASSIFIED_DIR, EVENTS_DIR, REJECTS_DIR, SUMMARIES_DIR

from .errors import StoreError
from .store import Store

log = logging.getLogger(__name__)

# Each area with the Hive key of its dated partitions, whose value is a UTC day: of the events,
# or for recipient summaries of the delivery's first event. So a purge also deletes every
# summary that counts an event of a purged day.
PURGED_AREAS = (
    (EVENTS_DIR, "event_date"),
    (REJECTS_DIR, "event_date"),
    (CLASSIFIED_DIR, "event_date"),
    (SUMMARIES_DIR, "first_event_date"),
)
PARTITION_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Areas whose rows carry a recipient_id column.
ERASED_AREAS = (EVENTS_DIR, SUMMARIES_DIR)
# The characters and length that the agent accepts in ids (routes.VALID_ID), so that every
# stored id can be erased.
ERASABLE_ID = re.compile(r"[A-Za-z0-9_.:@+=-]{1,128}")


@dataclass
class PurgeResult:
    """Partitions deleted (or, in a dry run, to delete) and entries left alone."""

    deleted: list[str] = field(default_factory=list)
    kept: int = 0
    # Entries of an area whose name is not its partition key (event_date or first_event_date)
    # with a valid YYYY-MM-DD date.
    unrecognised: list[str] = field(default_factory=list)


@dataclass
class EraseResult:
    """Files rewritten without the recipient's rows, files deleted because no row remained."""

    files_scanned: int = 0
    files_rewritten: list[str] = field(default_factory=list)
    files_deleted: list[str] = field(default_factory=list)
    # Event rows and reject rows together; reject_rows_removed counts the latter alone.
    rows_removed: int = 0
    reject_rows_removed: int = 0


def purge_before(store: Store, before: date, *, dry_run: bool = False) -> PurgeResult:
    """Delete the partitions of events/, rejects/, classified/ and summaries/recipients/ dated
    before `before`.

    Partition dates are UTC days, as the agent and the nightly run write them. Raises
    StoreError when the store cannot be listed or a partition cannot be deleted. Partitions
    deleted until then stay deleted and are logged.
    """
    result = PurgeResult()
    for area, key in PURGED_AREAS:
        for info in _list(store, area, recursive=False):
            relative = f"{area}/{info.base_name}"
            day = _partition_date(info, key)
            if day is None:
                result.unrecognised.append(relative)
                continue
            if day >= before:
                result.kept += 1
                continue
            if not dry_run:
                try:
                    store.filesystem.delete_dir(info.path)
                except OSError as exc:
                    raise StoreError(f"cannot delete {relative} in store {store.url}: {exc}",
                                     store_url=store.url, transient=True) from exc
                log.info("deleted partition %s from %s", relative, store.url)
            result.deleted.append(relative)
    return result


def partition_key(relative: str) -> str:
    """Return the partition key of the area that contains relative (a path in the store)."""
    for area, key in PURGED_AREAS:
        if relative.startswith(f"{area}/"):
            return key
    raise ValueError(f"{relative!r} is in no purged area")


def _partition_date(info: pafs.FileInfo, key: str) -> date | None:
    if info.type != pafs.FileType.Directory:
        return None
    name, _, value = info.base_name.partition("=")
    if name != key or not PARTITION_DATE.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def erase_recipient(store: Store, recipient_id: str,
                    delivery_id: str | None = None) -> EraseResult:
    """Rewrite every events/, summaries/recipients/ and rejects/ file that contains rows of
    recipient_id without them.

    With delivery_id, only that delivery's rows of the recipient are removed. An event or
    summary row matches on its recipient_id (and delivery_id) column. A reject row keeps only the raw
    line, so it matches when the line contains the id as text, as it is or percent-encoded
    (and the delivery id too, when given). A short id can therefore remove rejects of other
    recipients: rejects are diagnostics, and erasure errs toward removing them. A file left
    with no rows is deleted. Raises ValueError on an invalid id and StoreError when a file
    cannot be read or written. Files rewritten until then stay rewritten.

    NOTE: Files that the agent uploads while it runs are not scanned, so run it again after
    the agent has uploaded everything up to the request.
    """
    check_erasable_ids(recipient_id, delivery_id)
    result = EraseResult()

    def event_rows(table: pa.Table) -> pa.ChunkedArray:
        matches = pc.equal(table.column("recipient_id"), recipient_id)
        if delivery_id is not None:
            matches = pc.and_(matches, pc.equal(table.column("delivery_id"), delivery_id))
        return matches

    def reject_rows(table: pa.Table) -> pa.ChunkedArray:
        matches = _line_contains(table.column("line"), recipient_id)
        if delivery_id is not None:
            matches = pc.and_(matches, _line_contains(table.column("line"), delivery_id))
        return matches

    for area in ERASED_AREAS:
        _erase_rows(store, area, event_rows, result)
    before = result.rows_removed
    _erase_rows(store, REJECTS_DIR, reject_rows, result)
    result.reject_rows_removed = result.rows_removed - before
    return result


def _line_contains(lines: pa.ChunkedArray, value: str) -> pa.ChunkedArray:
    """Tell which lines contain value as it is or percent-encoded (upper or lower hex)."""
    encoded = quote(value, safe="")
    matches = pc.match_substring(lines, value)
    for form in {encoded, encoded.lower()} - {value}:
        matches = pc.or_(matches, pc.match_substring(lines, form, ignore_case=False))
    return matches


def _erase_rows(store: Store, area: str, rows_of: Callable[[pa.Table], pa.ChunkedArray],
                result: EraseResult) -> None:
    """Rewrite every Parquet file of area without the rows that rows_of selects."""
    for info in _list(store, area, recursive=True):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        if _is_hidden(store, info.path):
            continue
        result.files_scanned += 1
        relative = info.path[len(store.root.rstrip("/")) + 1:]
        table = _read_parquet(store, info.path)
        try:
            matches = rows_of(table).fill_null(False)
        except KeyError as exc:
            raise StoreError(f"cannot erase from {relative} in store {store.url}: the file has "
                             f"no {exc} column; move it out of the store",
                             store_url=store.url) from None
        removed = pc.sum(matches).as_py() or 0
        if removed == 0:
            continue

        remaining = table.filter(pc.invert(matches))
        if remaining.num_rows == 0:
            _delete_file(store, info.path, relative)
            result.files_deleted.append(relative)
        else:
            _replace_parquet(store, info.path, remaining, relative)
            result.files_rewritten.append(relative)
        result.rows_removed += removed
        log.info("removed %d rows of one recipient from %s", removed, relative)


def check_erasable_ids(recipient_id: str, delivery_id: str | None = None) -> None:
    """Raise ValueError naming the option when an id is not one the agent could have stored."""
    for label, value in (("--recipient-id", recipient_id), ("--delivery-id", delivery_id)):
        if value is not None and not ERASABLE_ID.fullmatch(value):
            raise ValueError(f"invalid {label} {value!r}; expected 1-128 characters of letters, "
                             "digits and _.:@+=-")


def _list(store: Store, area: str, *, recursive: bool) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(store.path(area), allow_not_found=True, recursive=recursive)
    try:
        return sorted(store.filesystem.get_file_info(selector), key=lambda info: info.path)
    except OSError as exc:
        raise StoreError(f"cannot list {area}/ in store {store.url}: {exc}",
                         store_url=store.url, transient=True) from exc


def _is_hidden(store: Store, path: str) -> bool:
    # Names starting with '.' or '_' are temporary or metadata files, which pyarrow datasets
    # skip too (their default ignore_prefixes).
    parts = path[len(store.root.rstrip("/")) + 1:].split("/")
    return any(part.startswith((".", "_")) for part in parts)


def _read_parquet(store: Store, path: str) -> pa.Table:
    # ParquetFile reads the file alone: pq.read_table would add event_date from the folder name.
    try:
        with store.filesystem.open_input_file(path) as source:
            return pq.ParquetFile(source).read()
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"cannot read {path} in store {store.url}: {exc}",
                         store_url=store.url, transient=isinstance(exc, OSError)) from exc


def _replace_parquet(store: Store, path: str, table: pa.Table, relative: str) -> None:
    """Replace the file at path with table, so that readers see the old or the new file whole.

    On a local store the new file is written under a hidden name in the same folder, then
    renamed over the old one. On S3 a PUT to the same key replaces the object in one step.
    """
    is_local = isinstance(store.filesystem, pafs.LocalFileSystem)
    folder, _, name = path.rpartition("/")
    target = f"{folder}/.{name}.erase-{uuid.uuid4().hex}" if is_local else path
    try:
        with store.filesystem.open_output_stream(target) as output:
            # zstd, as the agent's spool writes batch files.
            pq.write_table(table, output, compression="zstd")
        if is_local:
            store.filesystem.move(target, path)
    except OSError as exc:
        if is_local:
            _remove_quietly(store, target)
        raise StoreError(f"cannot rewrite {relative} in store {store.url}: {exc}",
                         store_url=store.url, transient=True) from exc


def _delete_file(store: Store, path: str, relative: str) -> None:
    try:
        store.filesystem.delete_file(path)
    except OSError as exc:
        raise StoreError(f"cannot delete {relative} in store {store.url}: {exc}",
                         store_url=store.url, transient=True) from exc


def _remove_quietly(store: Store, path: str) -> None:
    try:
        store.filesystem.delete_file(path)
    except OSError as exc:
        log.warning("cannot remove temporary file %s: %s", path, exc)
