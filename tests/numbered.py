"""Numbered access-log lines for tailing tests: line n is an open by recipient n."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pyarrow.dataset as ds

LINE = '127.0.0.1 - - [04/Dec/2026:20:00:00 +0000] "GET /o/d1/{n}.gif HTTP/1.1" 200 42 "-" "t"\n'


def line(n: int) -> bytes:
    return LINE.format(n=n).encode()


def config_text(workdir: Path, pattern: str = "t.log*", **agent: object) -> str:
    settings = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in agent.items())
    return f"""
[agent]
host_id = "test"
state_dir = "{workdir / 'state'}"
{settings}
[store]
url = "{workdir / 'store'}"

[[sources]]
name = "tracking"
kind = "access_log"
paths = ["{workdir / 'logs' / pattern}"]
routes = "generic"
"""


def write_config(workdir: Path, pattern: str = "t.log*", **agent: object) -> Path:
    for name in ("logs", "state", "store"):
        (workdir / name).mkdir(exist_ok=True)
    path = workdir / "clicktrail.toml"
    path.write_text(config_text(workdir, pattern, **agent))
    return path


def append(path: Path, numbers) -> None:
    with path.open("ab") as f:
        for n in numbers:
            f.write(line(n))


def rotate_rename(log: Path) -> None:
    """logrotate's default: shift .N, rename the live file to .1, create an empty one."""
    shift(log)
    log.rename(log.with_name(log.name + ".1"))
    log.touch()


def rotate_copytruncate(log: Path) -> None:
    shift(log)
    shutil.copy2(log, log.with_name(log.name + ".1"))
    with log.open("r+b") as f:
        f.truncate(0)


def shift(log: Path) -> None:
    """Move x.log.N(.gz) to x.log.N+1(.gz), compressing .1 on the way (delaycompress)."""
    rotated = sorted(log.parent.glob(log.name + ".*"), key=lambda p: -_number(p))
    for path in rotated:
        n = _number(path)
        target = log.with_name(f"{log.name}.{n + 1}.gz")
        if path.name.endswith(".gz"):
            path.rename(target)
        else:
            target.write_bytes(gzip.compress(path.read_bytes()))
            os.unlink(path)


def _number(path: Path) -> int:
    return int(path.name.split(".")[2])


def stored_numbers(store: Path) -> list[int]:
    folder = store / "events"
    if not folder.exists():
        return []
    table = ds.dataset(folder, format="parquet", partitioning="hive").to_table(
        columns=["recipient_id", "event_id"])
    assert len(set(table.column("event_id").to_pylist())) == table.num_rows, "duplicate event_id"
    return sorted(int(n) for n in table.column("recipient_id").to_pylist())
