"""Lines found by bench/fuzz.py that once made a parser raise: now read, or rejected alone.

The parsers are meant never to raise. When one does anyway, the batch is parsed again line by
line and only the lines that raise alone are rejected, so the valid lines around them become
events.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
from click.testing import CliRunner
from clicktrail.agent.cli import main as agent_main

KUMO_DELIVERY = {
    "type": "Delivery", "id": "1d98076abbbc11ed940250ebf67f9301",
    "sender": "bounce-c0ffee-a001@mailer.example", "recipient": "ok.anna@inbox-a.example",
    "queue": "inbox-a.example",
    "response": {"code": 250, "enhanced_code": None, "content": "Ok", "command": "."},
    "peer_address": {"name": "mx.inbox-a.example", "addr": "192.0.2.10"},
    "timestamp": 1796412190, "created": 1796412190, "num_attempts": 0,
    "bounce_classification": "Uncategorized", "meta": {}, "headers": {},
}
POWERMTA_HEADER = ("type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,"
                   "bounceCat,srcType,srcMta,dlvType,dlvSourceIp,dlvDestinationIp,"
                   "dlvEsmtpAvailable,dlvSize,vmta,jobId,envId,queue,vmtaPool,feedbackType,"
                   "header_Message-Id")
POWERMTA_ROW = ("d,2026-12-04 19:23:11{offset},2026-12-04 19:23:10+0000,bounce@mailer.example,"
                "{rcpt},,relayed,2.0.0 (success),smtp;250 2.0.0 Ok,mx.example (192.0.2.10),,smtp,"
                "mailer.example (127.0.0.1),smtp,198.51.100.5,192.0.2.10,,1843,vmta1,job-1,,"
                "q/vmta1,pool1,,<c0ffee.a001.x1@mailer.example>")


def kumo_record(recipient: str, content: str) -> str:
    record = dict(KUMO_DELIVERY, recipient=recipient)
    record["response"] = dict(KUMO_DELIVERY["response"], content=content)
    # json.dumps writes a lone surrogate as the escape \ud800, as a hostile peer's reply can be.
    return json.dumps(record)


def run_source(tmp_path: Path, kind: str, text: str) -> tuple[list[str], list[str]]:
    """Run `clicktrail-agent once` on one file; return the event domains and reject reasons."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "mta.log").write_text(text)
    config = tmp_path / "clicktrail.toml"
    config.write_text(f'[agent]\nhost_id = "mx1"\nstate_dir = "state"\n[store]\nurl = "store"\n'
                      f'[[sources]]\nname = "mta"\nkind = "{kind}"\npaths = ["logs/mta.log"]\n')

    result = CliRunner().invoke(agent_main, ["once", "--config", str(config)])

    assert result.exit_code == 0, result.output
    events = ds.dataset(tmp_path / "store" / "events", partitioning="hive").to_table()
    rejects_dir = tmp_path / "store" / "rejects"
    rejects = (ds.dataset(rejects_dir, partitioning="hive").to_table().column("reason").to_pylist()
               if rejects_dir.exists() else [])
    return sorted(events.column("recipient_domain").to_pylist()), rejects


def test_kumomta_lone_surrogate_keeps_batch(tmp_path):
    lines = [kumo_record("ok.anna@inbox-a.example", "Ok"),
             kumo_record("x@inbox-x.example", "\ud800 reply"),
             kumo_record("ok.bob@inbox-b.example", "Ok")]

    domains, rejects = run_source(tmp_path, "kumomta", "\n".join(lines) + "\n")

    # The lone surrogate becomes "?", so the record is read like any other.
    assert domains == ["inbox-a.example", "inbox-b.example", "inbox-x.example"]
    assert rejects == []


def test_powermta_day_offset_keeps_batch(tmp_path):
    lines = [POWERMTA_HEADER,
             POWERMTA_ROW.format(offset="+0000", rcpt="ann@inbox-a.example"),
             POWERMTA_ROW.format(offset="+3020", rcpt="x@inbox-x.example"),
             POWERMTA_ROW.format(offset="-0100", rcpt="bob@inbox-b.example")]

    domains, rejects = run_source(tmp_path, "powermta", "\n".join(lines) + "\n")

    # An offset of 30 hours is no valid time: that line alone is rejected.
    assert domains == ["inbox-a.example", "inbox-b.example"]
    assert len(rejects) == 1
