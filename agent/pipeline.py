"""Read sources from their checkpoints, parse, seal batches into the spool, commit, forward.

This is the one pass behind `clicktrail-agent once`; the daemon loop runs the same steps when
files change. The order of the steps is the exactly-once contract: a batch is sealed in the
spool before its checkpoint moves, and uploaded only after that.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from . import schema, spool, tailer
from .checkpoint import CheckpointStore, FileCheckpoint
from .config import Config, SourceConfig
from .forwarder import forward_pending
from .lines import split_lines
from .parsers import make_parser
from .parsers.base import LineBatch, Parser, SourceContext, build_rejects
from .store import open_store

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    files_read: int = 0
    lines: int = 0
    events: int = 0
    rejects: int = 0
    uploaded: int = 0
    counters: dict[str, dict[str, int]] = field(default_factory=dict)


def run_once(config: Config) -> PassResult:
    """Read every source to the end of every file, seal and commit, then forward the spool."""
    result = PassResult()
    checkpoints = CheckpointStore(config.agent.state_dir)
    try:
        discard_uncommitted(config.agent.state_dir, checkpoints)
        for source in config.sources:
            SourceReader(config, source, checkpoints).read_all(result)
        store = open_store(config.store.url, config.store.endpoint_override, config.store.region)
        result.uploaded = forward_pending(config.agent.state_dir, store, checkpoints)
    finally:
        checkpoints.close()
    return result


def discard_uncommitted(state_dir: str, checkpoints: CheckpointStore) -> None:
    """Delete spool files of batches whose checkpoint never committed.

    A crash between sealing a batch and committing its checkpoint leaves such a file; the batch
    is read again from the committed offset, possibly with other boundaries, so the old file
    must not reach the store. It was never uploaded: uploads start after the commit.
    """
    offsets = {(cp.source, cp.generation): cp.offset for cp in checkpoints.files()}
    root = spool.spool_root(state_dir)
    for relative in list(spool.pending(state_dir)):
        name = os.path.basename(relative)[: -len(".parquet")]
        host_source_generation, _, first_offset = name.rpartition("-")
        rest, _, generation = host_source_generation.rpartition("-")
        source = next((s for (s, g) in offsets if g == generation and rest.endswith(f"-{s}")), None)
        committed = offsets.get((source, generation), 0) if source else 0
        if int(first_offset) >= committed:
            log.warning("discarding uncommitted spool file %s; its lines will be read again",
                        relative)
            os.unlink(os.path.join(root, relative))


class SourceReader:
    """Reads the files of one source in rotation order through one parser."""

    def __init__(self, config: Config, source: SourceConfig, checkpoints: CheckpointStore):
        self.agent = config.agent
        self.source = source
        self.checkpoints = checkpoints
        self.parser: Parser = make_parser(source)
        state = checkpoints.parser_state(source.name)
        if state is not None:
            self.parser.restore(state)

    def read_all(self, result: PassResult) -> None:
        seen: set[str] = set()
        for path in tailer.discover(self.source.paths, self.source.exclude):
            log_file = tailer.identify(path, self.source.name, self.agent.fingerprint_bytes,
                                       self.agent.max_line_bytes)
            if log_file is None or log_file.generation in seen:
                continue
            seen.add(log_file.generation)
            checkpoint = self.checkpoints.file(self.source.name, log_file.generation)
            if checkpoint is not None and checkpoint.complete:
                continue
            offset = checkpoint.offset if checkpoint else 0
            if not log_file.compressed and log_file.size < offset:
                log.warning("source %s: %s is shorter (%d bytes) than its checkpoint (%d); "
                            "skipping it until it grows", self.source.name, path, log_file.size,
                            offset)
                continue
            self._read_file(log_file, offset, result)

    def _read_file(self, log_file: tailer.LogFile, offset: int, result: PassResult) -> None:
        batch = _BatchBuilder(self, log_file, offset)
        carry = b""
        carry_offset = offset
        skipping_from: int | None = None
        max_line = self.agent.max_line_bytes

        for chunk_offset, data in tailer.read_chunks(log_file, offset, self.agent.read_chunk_bytes):
            if skipping_from is not None:
                newline = data.find(b"\n")
                if newline < 0:
                    continue
                batch.note_long_line(skipping_from, carry, chunk_offset + newline + 1 - skipping_from)
                data = data[newline + 1:]
                chunk_offset += newline + 1
                carry, carry_offset, skipping_from = b"", chunk_offset, None

            buffer = carry + data if carry else data
            lines, consumed, replaced, _ = split_lines(buffer, carry_offset, max_line)
            batch.add(lines, carry_offset + consumed, replaced)
            carry = buffer[consumed:]
            carry_offset += consumed

            if len(carry) > max_line:
                # A line longer than max_line_bytes with no end in sight: keep its head for the
                # reject and skip the rest up to its newline instead of buffering it whole.
                skipping_from, carry = carry_offset, carry[:max_line]
            if batch.size_bytes >= self.agent.max_batch_bytes:
                batch.flush(result)

        batch.flush(result, complete=log_file.compressed and skipping_from is None and not carry)
        result.files_read += 1


class _BatchBuilder:
    """Collects parse results of one file generation until they are flushed as one batch."""

    def __init__(self, reader: SourceReader, log_file: tailer.LogFile, offset: int):
        self.reader = reader
        self.log_file = log_file
        self.first_offset = offset
        self.end_offset = offset
        self.events: list[pa.Table] = []
        self.rejects: list[pa.Table] = []
        self.counters: dict[str, int] = {}
        self.size_bytes = 0

    def context(self) -> SourceContext:
        source = self.reader.source
        return SourceContext(host=self.reader.agent.host_id, source=source.name, kind=source.kind,
                             path=self.log_file.path, generation=self.log_file.generation,
                             ingest_time=datetime.now(UTC))

    def add(self, lines: LineBatch, end_offset: int, replaced: int) -> None:
        self.end_offset = end_offset
        if len(lines) == 0:
            return
        max_line = self.reader.agent.max_line_bytes
        too_long = lines.line_bytes > max_line
        if too_long.any():
            rows = np.flatnonzero(too_long)
            self._reject_rows(lines, rows, f"line longer than max_line_bytes ({max_line})")
            keep = pa.array(np.flatnonzero(~too_long))
            lines = LineBatch(lines.lines.take(keep), lines.offsets[~too_long],
                              lines.line_bytes[~too_long])

        result = self.reader.parser.parse(lines, self.context())
        self.events.append(result.events)
        self.rejects.append(result.rejects)
        self._count(result.counters)
        self._count({"bytes_read": int(lines.line_bytes.sum()) + len(lines),
                     "replaced_characters": replaced})
        self.size_bytes += int(lines.line_bytes.sum())

    def note_long_line(self, start: int, head: bytes, length: int) -> None:
        text = head.decode("utf-8", errors="replace")
        line = LineBatch(pa.array([text]), np.array([start]), np.array([length]))
        self._reject_rows(line, np.array([0]),
                          f"line longer than max_line_bytes ({self.reader.agent.max_line_bytes})")

    def _reject_rows(self, lines: LineBatch, rows: np.ndarray, reason: str) -> None:
        self.rejects.append(build_rejects(self.context(), lines.offsets[rows],
                                          lines.lines.take(pa.array(rows)),
                                          lines.line_bytes[rows], [reason] * len(rows)))
        self._count({"long_lines": len(rows), "rejected": len(rows)})

    def _count(self, counters: dict[str, int]) -> None:
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0) + int(value)

    def flush(self, result: PassResult, complete: bool = False) -> None:
        if self.end_offset == self.first_offset and not complete:
            return
        source = self.reader.source
        agent = self.reader.agent
        events = pa.concat_tables(self.events) if self.events else schema.empty_events()
        rejects = (pa.concat_tables(self.rejects) if self.rejects
                   else schema.REJECT_SCHEMA.empty_table())

        name = schema.batch_file_name(agent.host_id, source.name, self.log_file.generation,
                                      self.first_offset)
        spool.write_batch(agent.state_dir, schema.EVENTS_DIR, events, "event_time", name)
        spool.write_batch(agent.state_dir, schema.REJECTS_DIR, rejects, "ingest_time", name)

        self.reader.checkpoints.commit(
            FileCheckpoint(source=source.name, generation=self.log_file.generation,
                           path=self.log_file.path, device=self.log_file.device,
                           inode=self.log_file.inode, fingerprint=self.log_file.fingerprint,
                           offset=self.end_offset, size=self.log_file.size, complete=complete),
            self.reader.parser.snapshot(), self.counters)
        log.info("source %s: sealed batch %s (bytes %d-%d of %s): %d events, %d rejects",
                 source.name, name, self.first_offset, self.end_offset, self.log_file.path,
                 events.num_rows, rejects.num_rows)

        result.lines += self.counters.get("lines", 0)
        result.events += events.num_rows
        result.rejects += rejects.num_rows
        totals = result.counters.setdefault(source.name, {})
        for key, value in self.counters.items():
            totals[key] = totals.get(key, 0) + value

        self.first_offset = self.end_offset
        self.events, self.rejects, self.counters, self.size_bytes = [], [], {}, 0
