"""Read sources from their checkpoints, parse, seal batches into the spool, commit, forward.

The order of the steps is the exactly-once contract. A batch (lines [A, B) of one generation) is
sealed in the spool under a name fixed by (host, source, generation, A). Only then does its
checkpoint move to B, and only after that is it uploaded. `clicktrail-agent once` runs the steps until
every file is read to its end; the daemon runs them whenever files change.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from . import spool, tailer
from .batch import Batch
from .checkpoint import CheckpointStore, FileCheckpoint
from .config import Config, SourceConfig
from .forwarder import forward_pending
from .lines import split_lines
from .parsers import make_parser
from .parsers.base import Parser
from .store import open_store

log = logging.getLogger(__name__)

# A rotated file that left the globs (or was deleted) while open is read through its open
# descriptor until it has not grown for this long, because old web server workers may still
# write to it.
VANISHED_GRACE_S = 60.0


@dataclass
class PassResult:
    files: set[str] = field(default_factory=set)
    lines: int = 0
    events: int = 0
    rejects: int = 0
    uploaded: int = 0
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    events_by_type: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def files_read(self) -> int:
        return len(self.files)


def run_once(config: Config) -> PassResult:
    """Read every source to the end of every file, seal and commit, then forward the spool."""
    result = PassResult()
    checkpoints = CheckpointStore(config.agent.state_dir)
    try:
        discard_uncommitted(config.agent.state_dir, checkpoints)
        for source in config.sources:
            tail = SourceTail(config, source, checkpoints)
            try:
                while True:
                    more = tail.poll(result)
                    tail.flush(result)
                    if not more:
                        break
                tail.flush(result)
            finally:
                tail.close()
        store = open_store(config.store.url, config.store.endpoint_override, config.store.region)
        result.uploaded = forward_pending(config.agent.state_dir, store, checkpoints)
    finally:
        checkpoints.close()
    return result


def discard_uncommitted(state_dir: str, checkpoints: CheckpointStore) -> None:
    """Delete spool files of batches whose checkpoint never committed.

    A crash between sealing a batch and committing its checkpoint leaves such a file. The batch
    is read again from the committed offset, possibly with other boundaries, so the old file
    must not reach the store. It was never uploaded, because uploads start after the commit.
    """
    offsets = {(cp.source, cp.generation): cp.offset for cp in checkpoints.files()}
    root = spool.spool_root(state_dir)
    for relative in list(spool.pending(state_dir)):
        name = os.path.basename(relative)[: -len(".parquet")]
        host_source_generation, _, first_offset = name.rpartition("-")
        host_source, _, generation = host_source_generation.rpartition("-")
        committed = 0
        for (source, known_generation), offset in offsets.items():
            if known_generation == generation and host_source.endswith(f"-{source}"):
                committed = offset
        if int(first_offset) >= committed:
            log.warning("discarding uncommitted spool file %s; its lines will be read again",
                        relative)
            os.unlink(os.path.join(root, relative))


def _head_unchanged(handle: BinaryIO, generation: tailer.Generation) -> bool:
    """Tell whether the open file still starts with the generation's head."""
    current = os.pread(handle.fileno(), len(generation.head), 0)
    return len(current) > 0 and generation.head.startswith(current)


class SourceTail:
    """Follows the files of one source through one parser, batch by batch."""

    def __init__(self, config: Config, source: SourceConfig, checkpoints: CheckpointStore):
        self.agent = config.agent
        self.source = source
        self.checkpoints = checkpoints
        self.parser: Parser = make_parser(source)
        state = checkpoints.parser_state(source.name)
        if state is not None:
            self.parser.restore(state)

        self.known: dict[str, tailer.Generation] = {}
        for cp in checkpoints.files(source.name):
            self.known[cp.generation] = tailer.Generation(
                generation=cp.generation, base_generation=cp.base_generation, path=cp.path,
                device=cp.device, inode=cp.inode, head=cp.fingerprint, offset=cp.offset,
                complete=cp.complete)
        self.batches: dict[str, Batch] = {}
        self.handles: dict[str, BinaryIO] = {}
        # generation -> (offset where a line longer than max_line_bytes starts, its head)
        self.skipping: dict[str, tuple[int, bytes]] = {}
        self.vanished: dict[str, float] = {}
        self.oldest_unflushed: float | None = None
        self.last_scan: list[tuple[tailer.FileState, tailer.Generation]] = []
        self.stat_cache: dict[str, tuple[tuple[int, int, int, int], tailer.FileState]] = {}
        # generation -> size of a zstd segment when it was last read to its end
        self.read_sizes: dict[str, int] = {}

    @property
    def pending_bytes(self) -> int:
        return sum(batch.size_bytes for batch in self.batches.values())

    def unflushed_age(self, now: float) -> float:
        return 0.0 if self.oldest_unflushed is None else now - self.oldest_unflushed

    def lag_bytes(self) -> tuple[int, int]:
        """Return the unread bytes of the live file and of rotated files, as of the last scan.

        A compressed file counts its compressed size until it is read to its end, because its
        offset counts decompressed bytes.
        """
        current = rotated = 0
        for state, generation in self.last_scan:
            if generation.complete:
                continue
            unread = state.size if state.compressed else max(state.size - generation.offset, 0)
            if tailer.rotation_key(state.path)[1] == 2:
                current += unread
            else:
                rotated += unread
        return current, rotated

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()

    def poll(self, result: PassResult) -> bool:
        """Read new complete lines from every file; True when it stopped at max_batch_bytes."""
        found = self._scan()
        self.last_scan = found
        for state, generation in found:
            if generation.complete:
                continue
            if self._read(state, generation, result):
                return True
        self._drain_vanished({generation.generation for _, generation in found}, result)
        return False

    def _scan(self) -> list[tuple[tailer.FileState, tailer.Generation]]:
        chosen: dict[str, tuple[tailer.FileState, tailer.Generation]] = {}
        cache: dict[str, tuple[tuple[int, int, int, int], tailer.FileState]] = {}
        for path in tailer.discover(self.source.paths, self.source.exclude):
            state = self._stat(path, cache)
            if state is None:
                continue
            generation = tailer.resolve(state, self.known)
            if generation is None:
                continue
            previous = chosen.get(generation.generation)
            # The same content under two names (x.log.1 while gzip writes x.log.2.gz): read the
            # uncompressed one, which can be read from an offset without decompressing.
            if previous is None or (previous[0].compressed and not state.compressed):
                chosen[generation.generation] = (state, generation)

        self.stat_cache = cache
        for state, generation in chosen.values():
            if generation.generation not in self.known:
                log.info("source %s: new file %s (generation %s)", self.source.name, state.path,
                         generation.generation)
                self.known[generation.generation] = generation
            elif generation.path != state.path:
                log.info("source %s: generation %s moved from %s to %s", self.source.name,
                         generation.generation, generation.path, state.path)
            generation.path = state.path
            if not state.compressed:
                generation.device, generation.inode = state.device, state.inode
            if len(state.head) > len(generation.head):
                generation.head = state.head
            self.vanished.pop(generation.generation, None)
        return sorted(chosen.values(), key=lambda item: tailer.rotation_key(item[0].path))

    def _stat(self, path: str, cache: dict) -> tailer.FileState | None:
        """Stat a file; reuse the head read at the last scan when the file did not change.

        Reading the head means decompressing the start of every rotated .gz copy, which a
        source with many copies would otherwise repeat at every scan.
        """
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self.stat_cache.get(path)
        if cached is not None and cached[0] == key:
            cache[path] = cached
            return cached[1]
        state = tailer.stat_file(path, self.source.name, self.agent.fingerprint_bytes,
                                 self.agent.max_line_bytes, self.source.paths)
        if state is not None:
            cache[path] = (key, state)
        return state

    def _read(self, state: tailer.FileState, generation: tailer.Generation,
              result: PassResult) -> bool:
        if state.compressed:
            return self._read_compressed(state, generation, result)

        handle = self._handle(generation, state)
        if handle is None:
            return False
        return self._read_handle(handle, generation, result)

    def _handle(self, generation: tailer.Generation, state: tailer.FileState) -> BinaryIO | None:
        handle = self.handles.pop(generation.generation, None)
        if handle is not None:
            stat = os.fstat(handle.fileno())
            if (stat.st_dev, stat.st_ino) == (state.device, state.inode):
                self.handles[generation.generation] = handle
                return handle
            handle.close()
        try:
            handle = tailer.open_log(state.path, self.source.paths)
        except OSError as exc:
            tailer.warnings.warning((self.source.name, state.path, type(exc).__name__),
                                    "source %s: cannot open %s: %s", self.source.name,
                                    state.path, exc)
            return None
        stat = os.fstat(handle.fileno())
        if (stat.st_dev, stat.st_ino) != (state.device, state.inode):
            handle.close()
            return None  # replaced between stat and open: the next scan finds the new file
        self.handles[generation.generation] = handle
        return handle

    def _read_handle(self, handle: BinaryIO, generation: tailer.Generation,
                     result: PassResult) -> bool:
        handle.seek(generation.offset)
        while True:
            chunk_bytes = self._chunk_bytes()
            data = handle.read(chunk_bytes)
            if not data:
                return False
            if not _head_unchanged(handle, generation):
                # copytruncate truncated the file between the scan and this read: what was
                # read belongs to the new content. The copy contains the rest of this generation.
                log.info("source %s: %s was truncated while being read; rescanning",
                         self.source.name, generation.path)
                handle.close()
                del self.handles[generation.generation]
                return False
            self._consume(generation, data, result)
            handle.seek(generation.offset)
            if self.pending_bytes >= self.agent.max_batch_bytes:
                return True
            if len(data) < chunk_bytes:
                return False

    def _chunk_bytes(self) -> int:
        """Size the next read so that a batch stays near max_batch_bytes.

        A read longer than max_line_bytes always contains a newline or starts a skipped line, so
        the size never goes below that.
        """
        budget = self.agent.max_batch_bytes - self.pending_bytes
        return max(min(self.agent.read_chunk_bytes, budget), self.agent.max_line_bytes + 1)

    def _read_compressed(self, state: tailer.FileState, generation: tailer.Generation,
                         result: PassResult) -> bool:
        if self.read_sizes.get(generation.generation) == state.size:
            return False  # a zstd segment read to its end that has not grown since
        buffer = b""
        buffer_offset = generation.offset
        try:
            limits = tailer.DecompressionLimits(self.source.max_decompressed_bytes,
                                                self.source.max_compression_ratio)
            for offset, data in tailer.read_compressed(state, generation.offset,
                                                       self._chunk_bytes(), limits,
                                                       self.source.paths):
                if not buffer:
                    buffer_offset = offset
                buffer += data
                consumed = self._consume(generation, buffer, result, buffer_offset)
                buffer = buffer[consumed:]
                buffer_offset += consumed
                if self.pending_bytes >= self.agent.max_batch_bytes:
                    return True
        except tailer.FileChanged as exc:
            log.debug("source %s: %s", self.source.name, exc)
            return False
        except tailer.DecompressionLimit as exc:
            self._stop_reading(generation, exc)
            return False
        except tailer.DECOMPRESSION_ERRORS as exc:
            # Still being written by gzip, or damaged: read again at the next scan.
            log.info("source %s: %s ends early (%s); will read it again", self.source.name,
                     state.path, exc)
            return False
        except OSError as exc:
            log.error("source %s: %s", self.source.name, exc)
            generation.complete = True
            return False

        if state.compression == "zstd":
            # KumoMTA appends frames to its current segment, so a zstd file read to its end may
            # still grow: it is read again when its size changes, and never marked complete.
            self.read_sizes[generation.generation] = state.size
            return False
        if buffer and generation.generation not in self.skipping:
            # A gzip copy is finished: its last line will never get its newline.
            self._consume(generation, buffer + b"\n", result, buffer_offset)
        if generation.generation not in self.skipping:
            generation.complete = True
            self._batch(generation).touch(generation.offset)
        return False

    def _stop_reading(self, generation: tailer.Generation, exc: tailer.DecompressionLimit) -> None:
        """Give up a compressed file beyond the source's limits: keep its lines read so far.

        The generation is marked complete, so its checkpoint stops it being read again.
        """
        tailer.warnings.warning((self.source.name, exc.path, "decompression limit"),
                                "source %s: %s; stopped reading it, the lines before are kept",
                                self.source.name, exc)
        self.skipping.pop(generation.generation, None)
        generation.complete = True
        batch = self._batch(generation)
        batch.count({"compressed_files_stopped": 1})
        batch.touch(generation.offset)

    def _consume(self, generation: tailer.Generation, data: bytes, result: PassResult,
                 data_offset: int | None = None) -> int:
        """Parse the complete lines at the start of data; return the bytes consumed.

        While a line longer than max_line_bytes is skipped, the batch ends where that line
        starts, so a checkpoint never lands inside it and a restart skips it again from its
        start (and rejects it once).
        """
        data_offset = generation.offset if data_offset is None else data_offset
        max_line = self.agent.max_line_bytes
        batch = self._batch(generation)
        consumed = 0

        skipping = self.skipping.get(generation.generation)
        if skipping is not None:
            newline = data.find(b"\n")
            if newline < 0:
                generation.offset = data_offset + len(data)
                return len(data)
            start, head = skipping
            batch.reject_long_line(start, head, data_offset + newline - start)
            del self.skipping[generation.generation]
            consumed = newline + 1

        lines, used, replaced, _ = split_lines(data[consumed:], data_offset + consumed, max_line)
        consumed += used
        batch.add(lines, replaced)
        batch.touch(data_offset + consumed)
        if len(data) - consumed > max_line:
            # A line longer than max_line_bytes with no end in sight: keep its head for the
            # reject and skip the rest up to its newline instead of buffering it whole.
            self.skipping[generation.generation] = (data_offset + consumed,
                                                    data[consumed:consumed + max_line])
            consumed = len(data)

        generation.offset = data_offset + consumed
        if len(lines):
            result.files.add(generation.path)
            if self.oldest_unflushed is None:
                self.oldest_unflushed = time.monotonic()
        return consumed

    def _batch(self, generation: tailer.Generation) -> Batch:
        batch = self.batches.get(generation.generation)
        if batch is None:
            batch = Batch(self.agent.host_id, self.source, generation, self.parser,
                          self.agent.max_line_bytes)
            self.batches[generation.generation] = batch
        return batch

    def _drain_vanished(self, present: set[str], result: PassResult) -> None:
        """Read files that left the globs or were deleted through their open descriptors."""
        now = time.monotonic()
        for generation_id, handle in list(self.handles.items()):
            if generation_id in present:
                continue
            generation = self.known[generation_id]
            before = generation.offset
            self._read_handle(handle, generation, result)
            if generation_id not in self.handles:
                continue
            if generation_id not in self.vanished or generation.offset != before:
                self.vanished[generation_id] = now
                log.info("source %s: %s is gone from the globs; reading it through its open "
                         "descriptor", self.source.name, generation.path)
            elif now - self.vanished[generation_id] >= VANISHED_GRACE_S:
                handle.close()
                del self.handles[generation_id]
                del self.vanished[generation_id]
                generation.complete = generation_id not in self.skipping
                self._batch(generation).touch(generation.offset)

    def flush(self, result: PassResult) -> None:
        """Seal every open batch of the source into the spool, then commit one checkpoint."""
        moved = [b for b in self.batches.values() if b.end_offset > b.first_offset or b.changed]
        if not moved:
            return

        checkpoints: list[FileCheckpoint] = []
        counters: dict[str, int] = {}
        for batch in moved:
            sealed = batch.seal(self.agent.state_dir)
            result.events += sealed.events
            result.rejects += sealed.rejects
            by_type = result.events_by_type.setdefault(self.source.name, {})
            for event_type, count in sealed.events_by_type.items():
                by_type[event_type] = by_type.get(event_type, 0) + count
            for name, value in batch.counters.items():
                counters[name] = counters.get(name, 0) + value
            generation = batch.generation
            checkpoints.append(FileCheckpoint(
                source=self.source.name, generation=generation.generation,
                base_generation=generation.base_generation, path=generation.path,
                device=generation.device, inode=generation.inode, fingerprint=generation.head,
                offset=batch.end_offset, size=batch.end_offset, complete=generation.complete))

        self.checkpoints.commit(checkpoints, self.source.name, self.parser.snapshot(), counters)
        result.lines += counters.get("lines", 0)
        totals = result.counters.setdefault(self.source.name, {})
        for name, value in counters.items():
            totals[name] = totals.get(name, 0) + value
        for batch in moved:
            batch.reset()
        self.oldest_unflushed = None
