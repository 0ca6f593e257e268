"""Find the files of a source, tell their generations apart, and read them from an offset.

A generation is one file's content, wherever it lives: `access.log`, then `access.log.1` after
a rename, then `access.log.2.gz` after compression, or the copy logrotate's copytruncate made.
Its id is derived from the source name and the file's first line, so the same content gets the
same id under every name and even after the agent lost its state. Files with no complete line
yet have no generation and wait.

Each file found is matched against the generations already known, in this order:
1. the same (device, inode) with a compatible head and at least the known offset in size:
   the file grew or was renamed;
2. the id of its first line, with a compatible head (and, uncompressed, not shorter than the
   offset): a compressed or copied rotation of a known file. An uncompressed copy that is
   still shorter than the offset is being written and waits for the next scan;
3. otherwise a new generation. When the first-line id is already taken by different content
   (two files that start with the same line, or a file truncated and rewritten with the same
   first line), the id is derived from that id and the file's (device, inode).
Heads are compatible when one is a prefix of the other: a short file's head grows with it.
"""

from __future__ import annotations

import errno
import glob
import gzip
import hashlib
import logging
import os
import re
import stat as stat_module
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch, fnmatchcase
from typing import BinaryIO

import zstandard

from .logutil import RateLimitedLogger

log = logging.getLogger(__name__)
# A file that cannot be read fails again at every scan, so the warning is logged once a minute
# with a count.
warnings = RateLimitedLogger(log, interval_s=60.0)

COMPRESSED_SUFFIXES = (".gz", ".zst")
# Frame magic numbers: gzip (RFC 1952) and zstd (RFC 8878). KumoMTA names its zstd log segments
# without a suffix, so a file without one is recognised by its first bytes.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Exceptions that a truncated or damaged compressed file raises while it is read.
DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (EOFError, zlib.error, zstandard.ZstdError)
_NUMBERED = re.compile(r"\.(\d{1,4})$")
_DATED = re.compile(r"[-._](\d{8}(?:[-_]?\d{2,6})?)$")
# max_compression_ratio applies once this many bytes were decompressed, because the header
# and the read-ahead of the decompressor make the ratio of a small file meaningless.
MIN_RATIO_CHECK_BYTES = 64 * 1024 * 1024
# Flags for every open of a log: O_NONBLOCK, so that a FIFO swapped in place of a log cannot
# block the agent in open(), and O_NOFOLLOW, so that the last component is not a symlink.
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_GLOB_MAGIC = re.compile(r"[*?[]")


class FileChanged(Exception):
    """The file at a path changed between the scan and the read; the next scan sorts it out."""


class UnsafeFile(OSError):
    """A path of the globs is a symlink to a file outside them, or not a regular file."""


class DecompressionLimit(Exception):
    """A rotated file decompresses beyond the source's limits: a decompression bomb, or no log.

    Permanent for that file: the agent stops reading it and keeps the lines read until then.
    """

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class DecompressionLimits:
    """A source's max_decompressed_bytes and max_compression_ratio."""

    max_bytes: int
    max_ratio: int


@dataclass(frozen=True)
class FileState:
    """The result of one stat and one read of the head of a file found by the globs."""

    path: str
    device: int
    inode: int
    size: int
    compressed: bool
    head: bytes
    base_generation: str
    compression: str | None = None


@dataclass
class Generation:
    """A known generation: where it was last seen and how far it was read."""

    generation: str
    base_generation: str
    path: str
    device: int | None
    inode: int | None
    head: bytes
    offset: int
    complete: bool = False


def discover(patterns: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[str]:
    """Expand the source's globs into existing regular files, oldest rotation first."""
    paths: set[str] = set()
    for pattern in patterns:
        for path in glob.glob(pattern):
            if any(fnmatch(path, ex) for ex in exclude):
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


def open_log(path: str, patterns: tuple[str, ...] = ()) -> BinaryIO:
    """Open a log for reading, unless it is a symlink out of the globs or not a regular file.

    Anyone who can write to a log folder can replace a log with a symlink to a file that only
    the agent may read; its lines would reach the store. A symlink is followed only when the
    file it resolves to also matches one of patterns (Apache's `rotatelogs -L` links the live
    name to the current file this way), and that file is opened with O_NOFOLLOW, so that a
    swap after the check fails instead of being followed. Raises FileNotFoundError when the
    path is gone, and UnsafeFile when it is refused.
    """
    target = path
    if os.path.islink(path):
        target = os.path.realpath(path)
        if not matches_globs(target, patterns):
            raise UnsafeFile(f"{path} is a symlink to {target!r}, which none of the source's "
                             "paths matches; not followed")
    try:
        fd = os.open(target, OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(f"{path} became a symlink while being opened; not followed") from None
        raise
    if not stat_module.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFile(f"{path} is not a regular file; not read")
    return os.fdopen(fd, "rb")


def matches_globs(path: str, patterns: tuple[str, ...]) -> bool:
    """Tell whether a resolved path matches a glob, with '*' not crossing '/' as in glob.glob.

    A pattern's folder is also tried resolved, so that /var/log/x/*.log still matches when
    /var/log is itself a symlink to another disk.
    """
    parts = path.split("/")
    for pattern in patterns:
        folder, name = os.path.split(pattern)
        candidates = {pattern}
        if not _GLOB_MAGIC.search(folder):
            candidates.add(os.path.join(os.path.realpath(folder), name))
        for candidate in candidates:
            pattern_parts = candidate.split("/")
            if len(pattern_parts) != len(parts):
                continue
            pairs = zip(parts, pattern_parts, strict=True)
            if all(fnmatchcase(part, pattern_part) for part, pattern_part in pairs):
                return True
    return False


def stat_file(path: str, source: str, fingerprint_bytes: int, max_line_bytes: int,
              patterns: tuple[str, ...] = ()) -> FileState | None:
    """Stat a file and read its head; None while it has no complete first line or is gone.

    The file is opened with open_log, so a symlink out of patterns is logged and skipped.
    """
    try:
        with open_log(path, patterns) as raw:
            stat = os.fstat(raw.fileno())
            compression = _compression_of(path, raw)
            reader = _decompressing(raw, compression) if compression else raw
            head = reader.read(max(fingerprint_bytes, max_line_bytes) + 1)
    except FileNotFoundError:
        return None
    except (OSError, *DECOMPRESSION_ERRORS) as exc:
        warnings.warning((source, path, type(exc).__name__), "source %s: cannot read %s: %s",
                         source, path, exc)
        return None

    newline = head.find(b"\n")
    if newline < 0 and len(head) <= max_line_bytes:
        return None
    first_line = head[: newline if newline >= 0 else max_line_bytes]
    base = hashlib.blake2b(source.encode() + b"\x00" + first_line[:fingerprint_bytes],
                           digest_size=8).hexdigest()
    return FileState(path=path, device=stat.st_dev, inode=stat.st_ino, size=stat.st_size,
                     compressed=compression is not None, head=head[:fingerprint_bytes],
                     base_generation=base, compression=compression)


def heads_compatible(a: bytes, b: bytes) -> bool:
    shared = min(len(a), len(b))
    return a[:shared] == b[:shared]


def resolve(state: FileState, known: dict[str, Generation]) -> Generation | None:
    """Return the known generation this file holds, a new one at offset 0, or None to wait."""
    if not state.compressed:
        for generation in known.values():
            if ((generation.device, generation.inode) == (state.device, state.inode)
                    and heads_compatible(generation.head, state.head)
                    and state.size >= generation.offset):
                return generation

    for generation in known.values():
        if (generation.base_generation == state.base_generation
                and heads_compatible(generation.head, state.head)):
            if state.compressed or state.size >= generation.offset:
                return generation
            if (generation.device, generation.inode) != (state.device, state.inode):
                # A copy still being written (copytruncate, cp): it contains this generation but
                # has not reached its offset yet. Wait for the next scan rather than read it
                # as new content.
                return None

    generation_id = state.base_generation
    if generation_id in known:
        # Same first line, different content: derive an id that this file alone has.
        key = f"{generation_id}:{state.device}:{state.inode}".encode()
        generation_id = hashlib.blake2b(key, digest_size=8).hexdigest()
        log.warning("file %s starts like generation %s but contains other content; reading it as "
                 "generation %s", state.path, state.base_generation, generation_id)
    return Generation(generation=generation_id, base_generation=state.base_generation,
                      path=state.path, device=state.device, inode=state.inode, head=state.head,
                      offset=0)


def _compression_of(path: str, raw: BinaryIO) -> str | None:
    """Return "gzip", "zstd" or None, from the suffix or, without one, the first bytes."""
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith(".zst"):
        return "zstd"
    magic = os.pread(raw.fileno(), len(ZSTD_MAGIC), 0)
    return "zstd" if magic == ZSTD_MAGIC else None


def _decompressing(raw: BinaryIO, compression: str) -> BinaryIO:
    if compression == "zstd":
        # A segment may hold several frames; a stream reader stops after the first otherwise.
        return zstandard.ZstdDecompressor().stream_reader(  # type: ignore[return-value]
            raw, read_across_frames=True, closefd=False)
    return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]


def read_compressed(state: FileState, offset: int, chunk_bytes: int, limits: DecompressionLimits,
                    patterns: tuple[str, ...] = ()) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, data) from a gzip or zstd file, decompressing from its start.

    A compressed stream cannot seek, so the first `offset` bytes are decompressed and skipped. A file
    still being compressed ends early; what was read so far is yielded and EOFError is raised.
    The file is read only if it is still the one stat_file saw: rotation renames compressed
    copies, and the same name may now hold another generation. FileChanged is raised when it is not.
    DecompressionLimit is raised when the file grows beyond limits, after the data before it.
    """
    try:
        raw = open_log(state.path, patterns)
    except (FileNotFoundError, UnsafeFile):
        raise FileChanged(f"{state.path} was renamed, removed or replaced") from None
    with raw:
        stat = os.fstat(raw.fileno())
        if (stat.st_dev, stat.st_ino) != (state.device, state.inode):
            raise FileChanged(f"{state.path} now contains another file")
        yield from _decompress(raw, state.compression or "gzip", state.path, offset, chunk_bytes,
                               limits)


def _decompress(raw: BinaryIO, compression: str, path: str, offset: int, chunk_bytes: int,
                limits: DecompressionLimits) -> Iterator[tuple[int, bytes]]:
    with _decompressing(raw, compression) as f:
        position = 0
        while position < offset:
            skipped = f.read(min(offset - position, chunk_bytes))
            if not skipped:
                return
            position += len(skipped)
            _check_limits(path, position, raw.tell(), limits)
        while True:
            _check_limits(path, position, raw.tell(), limits)
            # Reading one byte past the limit distinguishes a file of exactly max_bytes from a
            # larger one.
            data = f.read(min(chunk_bytes, limits.max_bytes + 1 - position))
            if not data:
                return
            if position + len(data) > limits.max_bytes:
                if position < limits.max_bytes:
                    # The lines before the limit are kept.
                    yield position, data[: limits.max_bytes - position]
                _check_limits(path, position + len(data), raw.tell(), limits)
            yield position, data
            position += len(data)


def _check_limits(path: str, decompressed: int, compressed: int,
                  limits: DecompressionLimits) -> None:
    """Raise DecompressionLimit when the bytes decompressed so far exceed a limit."""
    if decompressed > limits.max_bytes:
        raise DecompressionLimit(path, f"decompresses to more than max_decompressed_bytes "
                                 f"({limits.max_bytes})")
    if decompressed >= MIN_RATIO_CHECK_BYTES and decompressed > limits.max_ratio * compressed:
        raise DecompressionLimit(path, f"{decompressed} bytes decompressed from {compressed}, a "
                                 f"ratio above max_compression_ratio ({limits.max_ratio})")
