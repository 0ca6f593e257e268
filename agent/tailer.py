"""Find the files of a source, tell their generations apart, and read them from an offset.

A generation is one file's content, wherever it currently lives: `access.log`, then
`access.log.1` after a rename, then `access.log.2.gz` after compression. Its id is derived from
the source name and the file's first line, so the same content gets the same id under every
name and after the agent lost its state; the reading offset is stored per generation. Files
with no complete line yet have no generation and wait.

NOTE: two files of one source that start with the very same line share a generation. Log lines
start with a timestamp, which makes this unlikely, but formats with a fixed header line (CSV
accounting files) need more than the first line.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import logging
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger(__name__)

COMPRESSED_SUFFIXES = (".gz",)
_NUMBERED = re.compile(r"\.(\d{1,4})$")
_DATED = re.compile(r"[-._](\d{8}(?:[-_]?\d{2,6})?)$")


@dataclass(frozen=True)
class LogFile:
    path: str
    generation: str
    device: int
    inode: int
    size: int
    compressed: bool
    fingerprint: bytes


def discover(patterns: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[str]:
    """Expand the source's globs into existing regular files, oldest rotation first."""
    paths: set[str] = set()
    for pattern in patterns:
        for path in glob.glob(pattern):
            if any(glob.fnmatch.fnmatch(path, ex) for ex in exclude):
                continue
            if os.path.isfile(path):
                paths.add(path)
    return sorted(paths, key=rotation_key)


def rotation_key(path: str) -> tuple[str, int, str, str]:
    """Order a log and its rotated copies from oldest to newest.

    logrotate numbers copies (`x.log.3.gz` is older than `x.log.1`), dateext and Postfix's
    maillog rotation stamp them (`x.log.20261204-192356.gz`); the live file has no suffix.
    """
    name = path
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    numbered = _NUMBERED.search(name)
    if numbered:
        return (name[: numbered.start()], 1, f"{10_000 - int(numbered.group(1)):05d}", path)
    dated = _DATED.search(name)
    if dated:
        return (name[: dated.start()], 0, dated.group(1), path)
    return (name, 2, "", path)


def identify(path: str, source: str, fingerprint_bytes: int, max_line_bytes: int) -> LogFile | None:
    """Return the file's generation, or None while it has no complete first line."""
    compressed = path.endswith(COMPRESSED_SUFFIXES)
    try:
        stat = os.stat(path)
        with open_log(path) as f:
            head = f.read(max(fingerprint_bytes, max_line_bytes) + 1)
    except FileNotFoundError:
        return None
    except (OSError, EOFError, zlib.error) as exc:
        log.warning("cannot read %s of source %s: %s", path, source, exc)
        return None

    newline = head.find(b"\n")
    if newline < 0 and len(head) <= max_line_bytes:
        return None
    first_line = head[: newline if newline >= 0 else max_line_bytes]
    digest = hashlib.blake2b(source.encode() + b"\x00" + first_line[:fingerprint_bytes],
                             digest_size=8).hexdigest()
    return LogFile(path=path, generation=digest, device=stat.st_dev, inode=stat.st_ino,
                   size=stat.st_size, compressed=compressed, fingerprint=head[:fingerprint_bytes])


def open_log(path: str) -> BinaryIO:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_chunks(log_file: LogFile, offset: int, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, data) from offset to the current end of the file.

    A plain file is read with seek; a compressed one is decompressed from its start and the
    first `offset` bytes are skipped, since gzip streams cannot seek.
    """
    with open_log(log_file.path) as f:
        if log_file.compressed:
            remaining = offset
            while remaining > 0:
                skipped = f.read(min(remaining, chunk_bytes))
                if not skipped:
                    return
                remaining -= len(skipped)
        else:
            f.seek(offset)
        while True:
            data = f.read(chunk_bytes)
            if not data:
                return
            yield offset, data
            offset += len(data)
