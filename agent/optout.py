"""The recipient opt-out list: recipients whose events the agent drops before the spool.

The file named by [agent] optout_file contains one entry per line. Blank lines and text after
'#' are ignored. Each entry is compared with the recipient_id of every event. An entry that
contains '@' is also taken as a recipient address. MTA parsers store no address, only
recipient_key (a digest of the lowercased address), so the entry is digested the same way and
compared with that column.

The entries are personal data. They are never logged, and errors name the line number, not
the entry.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .parsers.postfix import _recipient_key as recipient_key

log = logging.getLogger(__name__)

# Far more than any opt-out list needs, so that loading the wrong file stops with an error
# instead of filling memory.
MAX_OPTOUT_FILE_BYTES = 256 * 1024 * 1024
# An address is at most 254 characters (RFC 5321 path limit); ids are at most 128.
MAX_ENTRY_CHARS = 320


class OptOutFileError(Exception):
    """The opt-out file cannot be read or has an invalid line; the message names no entry."""


@dataclass(frozen=True, eq=False)
class OptOutList:
    """Recipient ids and address digests whose events are dropped at ingest.

    The values are kept as Arrow arrays, built once per load, because every batch looks them up.
    """

    path: str
    recipient_ids: pa.Array
    recipient_keys: pa.Array

    def drop(self, events: pa.Table) -> tuple[pa.Table, int]:
        """Return the events without those of listed recipients, and the number dropped."""
        if events.num_rows == 0 or len(self.recipient_ids) == 0:
            return events, 0

        listed = pc.is_in(events["recipient_id"], value_set=self.recipient_ids)
        if len(self.recipient_keys):
            listed = pc.or_(listed, pc.is_in(events["recipient_key"], value_set=self.recipient_keys))
        listed = listed.fill_null(False)
        dropped = pc.sum(listed).as_py() or 0
        if dropped == 0:
            return events, 0
        return events.filter(pc.invert(listed)), dropped


def read_optout_file(path: str) -> OptOutList:
    """Read an opt-out file; raise OptOutFileError naming the file and the line."""
    try:
        if os.stat(path).st_size > MAX_OPTOUT_FILE_BYTES:
            raise OptOutFileError(f"file {path} is larger than {MAX_OPTOUT_FILE_BYTES} bytes; "
                                  "expected one recipient id or address per line")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise OptOutFileError(f"file not found: {path}; expected a file with one recipient id "
                              "or address per line (an empty file lists nobody)") from None
    except UnicodeDecodeError as exc:
        raise OptOutFileError(f"file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise OptOutFileError(f"cannot read file {path}: {exc.strerror}; the service user "
                              "needs read access") from None

    ids: set[str] = set()
    for number, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if len(entry) > MAX_ENTRY_CHARS or any(c.isspace() for c in entry):
            raise OptOutFileError(f"{path} line {number}: invalid entry; expected one recipient "
                                  f"id or address of at most {MAX_ENTRY_CHARS} characters, "
                                  "without spaces")
        ids.add(entry)

    # Addresses are digested as the MTA parsers digest them, angle brackets removed.
    keys = {recipient_key(entry.strip("<>")) for entry in ids if "@" in entry}
    log.info("opt-out list %s: %d entries, %d of them addresses", path, len(ids), len(keys))
    return OptOutList(path=path, recipient_ids=pa.array(sorted(ids), pa.string()),
                      recipient_keys=pa.array(sorted(keys), pa.string()))
