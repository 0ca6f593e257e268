"""What every parser takes and returns.

A parser turns a batch of complete lines of one file generation into Arrow columns: one table of
events (schema.EVENT_SCHEMA) and one of rejected lines (schema.REJECT_SCHEMA). A parser must not
raise on bad input: a line it cannot read is a reject with a reason, and reading goes on. If one
raises anyway, Batch parses that batch line by line and rejects only the failing lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema


@dataclass(frozen=True)
class SourceContext:
    """The origin of a batch of lines: the provenance columns of every row."""

    host: str
    source: str
    kind: str
    path: str
    generation: str
    ingest_time: datetime


@dataclass
class LineBatch:
    """Complete lines of one file generation, without their line ends.

    offsets[i] is the byte offset of line i in the (decompressed) file; line_bytes[i] its length
    in bytes before decoding, newline excluded.
    """

    lines: pa.StringArray
    offsets: np.ndarray
    line_bytes: np.ndarray

    def __len__(self) -> int:
        return len(self.lines)


@dataclass
class ParseResult:
    events: pa.Table
    rejects: pa.Table
    # Named counts for status and metrics, for example {"lines": 10, "rejected": 1,
    # "not_routed": 3, "status_not_2xx_3xx": 2}.
    counters: dict[str, int] = field(default_factory=dict)


class Parser(Protocol):
    def parse(self, batch: LineBatch, ctx: SourceContext) -> ParseResult: ...

    def snapshot(self) -> dict[str, Any] | None:
        """Return state that must survive a restart (None for stateless parsers)."""
        ...

    def restore(self, state: dict[str, Any]) -> None: ...


def provenance_columns(ctx: SourceContext, offsets: np.ndarray) -> dict[str, pa.Array]:
    """Build the provenance columns for rows whose lines start at offsets."""
    n = len(offsets)
    return {
        "source_kind": pa.repeat(pa.scalar(ctx.kind, pa.string()), n),
        "source_name": pa.repeat(pa.scalar(ctx.source, pa.string()), n),
        "source_host": pa.repeat(pa.scalar(ctx.host, pa.string()), n),
        "source_path": pa.repeat(pa.scalar(ctx.path, pa.string()), n),
        "source_generation": pa.repeat(pa.scalar(ctx.generation, pa.string()), n),
        "source_offset": pa.array(offsets, pa.int64()),
        "ingest_time": pa.repeat(pa.scalar(ctx.ingest_time, schema.TIMESTAMP), n),
    }


def event_ids(ctx: SourceContext, offsets: np.ndarray, indexes: np.ndarray | None = None) -> pa.Array:
    """Build schema.event_id for every row, without a Python call per row."""
    prefix = f"{ctx.host}:{ctx.source}:{ctx.generation}:"
    ids = pc.binary_join_element_wise(prefix, pc.cast(pa.array(offsets, pa.int64()), pa.string()), "")
    if indexes is None:
        return ids
    index_array = pa.array(indexes, pa.int64())
    suffix = pc.if_else(pc.equal(index_array, 0), "",
                        pc.binary_join_element_wise(":", pc.cast(index_array, pa.string()), ""))
    return pc.binary_join_element_wise(ids, suffix, "")


def build_events(columns: dict[str, Any], ctx: SourceContext, offsets: np.ndarray,
                 indexes: np.ndarray | None = None) -> pa.Table:
    """Assemble an EVENT_SCHEMA table; columns missing from `columns` are all null.

    `columns` maps column names to Arrow arrays or Python lists of the rows' values, in the order
    of offsets. event_id and the provenance columns are derived from ctx and offsets.
    """
    n = len(offsets)
    given = dict(columns)
    given["event_id"] = event_ids(ctx, offsets, indexes)
    given.update(provenance_columns(ctx, offsets))

    arrays = []
    for fld in schema.EVENT_SCHEMA:
        value = given.pop(fld.name, None)
        if value is None:
            arrays.append(pa.nulls(n, fld.type))
        elif isinstance(value, pa.ChunkedArray | pa.Array):
            arrays.append(value.cast(fld.type) if value.type != fld.type else value)
        else:
            arrays.append(pa.array(value, fld.type))
    if given:
        raise ValueError(f"columns not in the event schema: {sorted(given)}")
    return pa.Table.from_arrays(arrays, schema=schema.EVENT_SCHEMA)


def build_rejects(ctx: SourceContext, offsets: np.ndarray, lines: pa.Array | list,
                  line_bytes: np.ndarray, reasons: list[str] | pa.Array) -> pa.Table:
    """Assemble a REJECT_SCHEMA table for the given rejected lines."""
    if isinstance(lines, list):
        lines = pa.array(lines, pa.string())
    cut = pc.utf8_slice_codeunits(lines, 0, schema.MAX_REJECT_LINE_CHARS)
    columns = provenance_columns(ctx, offsets)
    arrays = []
    for fld in schema.REJECT_SCHEMA:
        if fld.name == "reason":
            arrays.append(pa.array(reasons, pa.string()) if isinstance(reasons, list) else reasons)
        elif fld.name == "line":
            arrays.append(cut)
        elif fld.name == "line_bytes":
            arrays.append(pa.array(line_bytes, pa.int64()))
        else:
            arrays.append(columns[fld.name])
    return pa.Table.from_arrays(arrays, schema=schema.REJECT_SCHEMA)
