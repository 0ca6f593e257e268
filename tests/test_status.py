"""`clicktrail-agent status`: files, spool, last upload and forwarding state."""

from __future__ import annotations

import json

from click.testing import CliRunner
from clicktrail.agent.checkpoint import CheckpointStore
from clicktrail.agent.cli import main

from .numbered import append, line, write_config


def test_status_shows_offsets_lag_and_forwarding(tmp_path):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(3))
    runner = CliRunner()
    assert runner.invoke(main, ["once", "--config", str(config)]).exit_code == 0
    append(log, [3])
    checkpoints = CheckpointStore(str(tmp_path / "state"))
    checkpoints.set_status("forwarding", "stopped: access denied")
    checkpoints.close()

    result = runner.invoke(main, ["status", "--config", str(config), "--json"])
    report = json.loads(result.output)

    assert result.exit_code == 0
    assert [(f["path"], f["offset"], f["size"], f["lag_bytes"]) for f in report["files"]] == [
        (str(log), 3 * len(line(0)), 4 * len(line(0)), len(line(0)))]
    assert report["spool_bytes"] == 0
    assert report["last_upload"]["name"].startswith("events/event_date=2026-12-04/test-tracking-")
    assert report["forwarding"] == "stopped: access denied"
    assert report["counters"]["tracking"]["lines"] == 3

    text = runner.invoke(main, ["status", "--config", str(config)]).output
    assert "forwarding: stopped: access denied" in text
