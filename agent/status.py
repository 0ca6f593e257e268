"""The report of `clicktrail-agent status`: per file offset, size and lag; spool; last upload."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from . import spool, tailer
from .checkpoint import CheckpointStore
from .config import Config

# Counters of the ingest defences, shown when not zero: events of recipients on the opt-out
# list, and rotated files given up as decompression bombs.
GUARD_COUNTERS = ("opted_out", "compressed_files_stopped")


def collect_status(config: Config) -> dict[str, Any]:
    checkpoints = CheckpointStore(config.agent.state_dir)
    try:
        files = []
        for source in config.sources:
            by_generation = {cp.generation: cp for cp in checkpoints.files(source.name)}
            for path in tailer.discover(source.paths, source.exclude):
                log_file = tailer.stat_file(path, source.name, config.agent.fingerprint_bytes,
                                            config.agent.max_line_bytes, source.paths)
                known = {g: tailer.Generation(g, cp.base_generation, cp.path, cp.device, cp.inode,
                                              cp.fingerprint, cp.offset, cp.complete)
                         for g, cp in by_generation.items()}
                generation = tailer.resolve(log_file, known) if log_file else None
                cp = by_generation.get(generation.generation) if generation else None
                size = os.path.getsize(path) if os.path.exists(path) else 0
                offset = cp.offset if cp else 0
                # A compressed copy's offset counts decompressed bytes, so its size cannot
                # give the lag.
                if cp is not None and (cp.complete or log_file.compressed):
                    lag = 0
                else:
                    lag = max(size - offset, 0)
                files.append({"source": source.name, "path": path,
                              "generation": generation.generation if generation else None,
                              "offset": offset, "size": size, "lag_bytes": lag,
                              "complete": bool(cp and cp.complete)})
        oldest = _oldest_spool_age(config.agent.state_dir)
        status = checkpoints.status()
        return {
            "files": files,
            "spool_bytes": spool.spool_bytes(config.agent.state_dir),
            "spool_oldest_age_s": oldest,
            "last_upload": json.loads(status["last_upload"]) if "last_upload" in status else None,
            "last_error": status.get("last_error"),
            "forwarding": status.get("forwarding", "not started"),
            "counters": checkpoints.counters(),
        }
    finally:
        checkpoints.close()


def _oldest_spool_age(state_dir: str) -> float | None:
    root = spool.spool_root(state_dir)
    ages = [time.time() - os.path.getmtime(os.path.join(root, rel)) for rel in spool.pending(state_dir)]
    return max(ages) if ages else None


def format_status(report: dict[str, Any]) -> str:
    lines = [f"{'source':<12} {'generation':<17} {'offset':>12} {'size':>12} {'lag':>10}  path"]
    for f in report["files"]:
        lines.append(f"{f['source']:<12} {f['generation'] or '-':<17} {f['offset']:>12} "
                     f"{f['size']:>12} {f['lag_bytes']:>10}  {f['path']}")
    lines.append(f"spool: {report['spool_bytes']} bytes, oldest file "
                 f"{report['spool_oldest_age_s'] or 0:.0f} s")
    upload = report["last_upload"]
    lines.append(f"last upload: {upload['name'] if upload else 'none'}")
    lines.append(f"last error: {report['last_error'] or 'none'}")
    lines.append(f"forwarding: {report['forwarding']}")
    for source, counters in sorted(report["counters"].items()):
        guarded = [f"{name} {counters[name]}" for name in GUARD_COUNTERS if counters.get(name)]
        if guarded:
            lines.append(f"source {source}: {', '.join(guarded)}")
    return "\n".join(lines)
