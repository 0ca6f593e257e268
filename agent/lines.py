"""Split raw bytes into complete lines as Arrow strings, keeping each line's byte offset.

Only lines that end in a newline are returned: a partial last line waits for its end. Reading
is in bytes; text is decoded as UTF-8, and a line with invalid bytes is kept with U+FFFD in their
place and counted, never dropped.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .parsers.base import LineBatch

NEWLINE = 0x0A


def split_lines(data: bytes, base_offset: int, max_line_bytes: int) -> tuple[LineBatch, int, int, int]:
    """Split `data` (read at base_offset) into complete lines.

    Returns (batch, consumed, replaced_chars, cut_lines): consumed counts the bytes up to and
    including the last newline, so the next read starts at base_offset + consumed. A line longer
    than max_line_bytes is cut to that length here; its offset still points at its start, and the
    caller learns how many were cut.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == NEWLINE)
    if len(ends) == 0:
        return _empty_batch(), 0, 0, 0

    consumed = int(ends[-1]) + 1
    starts = np.empty(len(ends), dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts

    # A CR before the LF belongs to the line end, not to the text (CRLF logs).
    has_cr = np.zeros(len(ends), dtype=bool)
    nonempty = lengths > 0
    has_cr[nonempty] = buf[ends[nonempty] - 1] == 0x0D
    text_lengths = lengths - has_cr

    cut = text_lengths > max_line_bytes
    cut_lines = int(cut.sum())
    kept_lengths = np.minimum(text_lengths, max_line_bytes)

    lines, replaced = _decode(data, starts, ends, kept_lengths, cut_lines > 0)
    batch = LineBatch(lines=lines, offsets=starts + base_offset, line_bytes=text_lengths.astype(np.int64))
    return batch, consumed, replaced, cut_lines


def _decode(data: bytes, starts: np.ndarray, ends: np.ndarray, lengths: np.ndarray,
            any_cut: bool) -> tuple[pa.StringArray, int]:
    """Decode the lines as UTF-8.

    The fast path wraps the bytes in an Arrow array without copying them or looping in Python:
    each value spans its line and line end, which utf8_rtrim then drops.
    """
    consumed = int(ends[-1]) + 1
    if not any_cut:
        offsets = np.empty(len(starts) + 1, dtype=np.int64)
        offsets[:-1] = starts
        offsets[-1] = consumed
        raw = pa.Array.from_buffers(
            pa.large_binary(), len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )
        try:
            text = raw.cast(pa.large_string())
        except pa.ArrowInvalid:
            pass
        else:
            return pc.utf8_rtrim(text, characters="\r\n").cast(pa.string()), 0

    texts = []
    replaced = 0
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        raw_line = data[start:start + length]
        try:
            texts.append(raw_line.decode("utf-8"))
        except UnicodeDecodeError:
            decoded = raw_line.decode("utf-8", errors="replace")
            replaced += decoded.count("\ufffd") - raw_line.count("\ufffd".encode())
            texts.append(decoded)
    return pa.array(texts, pa.string()), replaced


def _empty_batch() -> LineBatch:
    return LineBatch(
        lines=pa.array([], pa.string()),
        offsets=np.empty(0, dtype=np.int64),
        line_bytes=np.empty(0, dtype=np.int64),
    )
