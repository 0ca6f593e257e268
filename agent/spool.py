"""The local spool: sealed batch files waiting for upload, laid out like the store.

A batch file is written under a temporary name, fsynced, renamed to its final name and its
folder fsynced; only then may the checkpoint move past its lines. Its name is fixed by (host,
source, generation, first offset), so a batch replayed after a crash lands on the same name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import schema

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"


def spool_root(state_dir: str) -> str:
    return os.path.join(state_dir, SPOOL_DIR)


def write_batch(state_dir: str, area: str, table: pa.Table, time_column: str, file_name: str) -> list[str]:
    """Write table into one spool file per UTC day of time_column; return the relative paths."""
    if table.num_rows == 0:
        return []
    days = pc.cast(pc.cast(table[time_column], pa.timestamp("us", tz="UTC")), pa.date32())
    written = []
    distinct_days = pc.unique(days).to_pylist()
    for day in distinct_days:
        # A batch usually falls within one day, and filtering would copy the whole table.
        part = (table if len(distinct_days) == 1
                else table.filter(pc.equal(days, pa.scalar(day, pa.date32()))))
        relative = f"{schema.partition_dir(area, day)}/{file_name}"
        _write_durably(os.path.join(spool_root(state_dir), relative), part)
        written.append(relative)
    return written


def _write_durably(path: str, table: pa.Table) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        # NOTE: writing the columns that rarely repeat (event_id, source_offset, recipient_id,
        # client_ip, the MTA ids) without a dictionary cut the write time by a quarter and the
        # file size by a fifth (docs/benchmarks.md). It is not done yet, because
        # tests/test_outage.py needs files this large to fill its 64 KiB spool.
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pending(state_dir: str) -> Iterator[str]:
    """Yield the relative paths of sealed spool files, oldest first."""
    root = spool_root(state_dir)
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".parquet"):
                full = os.path.join(folder, name)
                found.append((os.path.getmtime(full), os.path.relpath(full, root)))
    for _, relative in sorted(found):
        yield relative


def spool_bytes(state_dir: str) -> int:
    root = spool_root(state_dir)
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            total += os.path.getsize(os.path.join(folder, name))
    return total


def spool_usage(state_dir: str) -> tuple[int, float | None]:
    """Return the spool's total bytes and the modification time of its oldest sealed file."""
    root = spool_root(state_dir)
    total = 0
    oldest: float | None = None
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                stat = os.stat(os.path.join(folder, name))
            except FileNotFoundError:
                continue  # uploaded and deleted meanwhile
            total += stat.st_size
            if name.endswith(".parquet") and (oldest is None or stat.st_mtime < oldest):
                oldest = stat.st_mtime
    return total, oldest
