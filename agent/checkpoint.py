"""Checkpoint state in SQLite (WAL mode): file offsets, parser state, counters, uploads.

One transaction commits the offset reached in a file generation together with the parser state
at that point (the Postfix queue) and the counters, so a crash leaves either all of them at the
old point or all at the new one. synchronous=FULL makes a commit durable across power loss.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    source TEXT NOT NULL,
    generation TEXT NOT NULL,
    base_generation TEXT NOT NULL,
    path TEXT NOT NULL,
    device INTEGER,
    inode INTEGER,
    fingerprint BLOB NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (source, generation)
);
CREATE TABLE IF NOT EXISTS parser_state (
    source TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (source, name)
);
CREATE TABLE IF NOT EXISTS uploads (
    name TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    uploaded REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_status (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass
class FileCheckpoint:
    source: str
    generation: str
    base_generation: str
    path: str
    device: int | None
    inode: int | None
    fingerprint: bytes
    offset: int
    size: int
    complete: bool


_FILE_COLUMNS = ("source, generation, base_generation, path, device, inode, fingerprint, offset, "
                 "size, complete")


class CheckpointStore:
    def __init__(self, state_dir: str):
        os.makedirs(state_dir, mode=0o750, exist_ok=True)
        self.path = os.path.join(state_dir, "checkpoints.sqlite")
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def file(self, source: str, generation: str) -> FileCheckpoint | None:
        row = self.db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE source = ? AND "
                              "generation = ?", (source, generation)).fetchone()
        return _checkpoint(row) if row else None

    def files(self, source: str | None = None) -> list[FileCheckpoint]:
        query = f"SELECT {_FILE_COLUMNS} FROM files"
        rows = (self.db.execute(query + " WHERE source = ? ORDER BY updated", (source,))
                if source else self.db.execute(query + " ORDER BY source, updated"))
        return [_checkpoint(row) for row in rows]

    def parser_state(self, source: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT state FROM parser_state WHERE source = ?",
                              (source,)).fetchone()
        return json.loads(row[0]) if row else None

    def counters(self, source: str | None = None) -> dict[str, dict[str, int]]:
        rows = self.db.execute("SELECT source, name, value FROM counters" +
                               (" WHERE source = ?" if source else ""),
                               (source,) if source else ())
        result: dict[str, dict[str, int]] = {}
        for src, name, value in rows:
            result.setdefault(src, {})[name] = value
        return result

    def commit(self, checkpoints: list[FileCheckpoint], source: str,
               parser_state: dict[str, Any] | None, counters: dict[str, int]) -> None:
        """Record the offsets reached in a source's files, with the parser state and counts.

        One transaction: after a crash either all of them are at the new point or none.
        """
        now = time.time()
        with self._transaction():
            for checkpoint in checkpoints:
                self.db.execute(
                    f"INSERT INTO files ({_FILE_COLUMNS}, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (source, generation) DO UPDATE SET path = excluded.path, "
                    "device = excluded.device, inode = excluded.inode, "
                    "fingerprint = excluded.fingerprint, offset = excluded.offset, "
                    "size = excluded.size, complete = excluded.complete, "
                    "updated = excluded.updated",
                    (checkpoint.source, checkpoint.generation, checkpoint.base_generation,
                     checkpoint.path, checkpoint.device, checkpoint.inode, checkpoint.fingerprint,
                     checkpoint.offset, checkpoint.size, int(checkpoint.complete), now))
            if parser_state is not None:
                self.db.execute(
                    "INSERT INTO parser_state (source, state) VALUES (?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET state = excluded.state",
                    (source, json.dumps(parser_state, separators=(",", ":"))))
            for name, value in counters.items():
                self.db.execute(
                    "INSERT INTO counters (source, name, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (source, name) DO UPDATE SET value = value + excluded.value",
                    (source, name, int(value)))

    def record_upload(self, name: str, size: int) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO uploads (name, bytes, uploaded) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET bytes = excluded.bytes, "
                "uploaded = excluded.uploaded", (name, size, time.time()))
            self.set_status("last_upload", json.dumps({"name": name, "time": time.time()}))

    def set_status(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO agent_status (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def status(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM agent_status").fetchall())

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")


def _checkpoint(row: tuple) -> FileCheckpoint:
    source, generation, base, path, device, inode, fingerprint, offset, size, complete = row
    return FileCheckpoint(source=source, generation=generation, base_generation=base, path=path,
                          device=device, inode=inode, fingerprint=fingerprint, offset=offset,
                          size=size, complete=bool(complete))
