"""Produce a real Exim main log for the Exim parser tests (run as root, Debian's exim4 installed).

    python make_fixture.py plain OUT_DIR     # default log format
    python make_fixture.py zoned OUT_DIR     # log_timezone, +millisec, timezone Asia/Kathmandu

Exim runs from a private config file passed with -C: no daemon, no listening socket, no DNS.
Every domain is routed by IP address to an aiosmtpd sink on 127.0.0.1, except dead.example,
which goes to a closed port on 127.0.0.1. The sink answers by recipient local part (unknown*
550 5.1.1, full* 452 4.2.2, blocked* 554 5.7.1, disabled* 550 5.2.1, greylist* 451 4.7.1 on the
first attempt, else 250) and writes each reply to sink-journal.jsonl, from which
expected.json is derived. Queue runners run every 15 s until the queue is empty, bounded to
MAX_RUN_S, and the retry rule gives up after 3 minutes, so deferrals expire within the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from aiosmtpd.controller import Controller

EXIM = "/usr/sbin/exim4"
EXIM_USER = "Debian-exim"
MAX_RUN_S = 420
QUEUE_RUN_INTERVAL_S = 15
SINK_PORTS = {"plain": 2631, "zoned": 2632}
CLOSED_PORTS = {"plain": 2639, "zoned": 2640}

CONFIG = """\
primary_hostname = mx.clicktrail.test
qualify_domain = clicktrail.test
exim_path = {exim}
spool_directory = {work}/spool
log_file_path = {work}/log/%slog
{log_options}
host_lookup =
rfc1413_hosts =
never_users =
keep_environment =
trusted_users = root

begin routers

dead:
  driver = manualroute
  domains = dead.example
  route_list = * 127.0.0.1
  self = send
  transport = smtp_closed_port

everything:
  driver = manualroute
  route_list = * 127.0.0.1
  self = send
  transport = smtp_sink

begin transports

smtp_sink:
  driver = smtp
  port = {sink_port}
  hosts_avoid_tls = *
  hosts_try_chunking =

smtp_closed_port:
  driver = smtp
  port = {closed_port}
  hosts_avoid_tls = *

begin retry

*  *  F,3m,20s
"""

LOG_OPTIONS = {
    "plain": "",
    "zoned": "log_timezone = true\ntimezone = Asia/Kathmandu\nlog_selector = +millisec",
}

# (envelope sender, recipients, Message-ID or None to let Exim add one)
MESSAGES = [
    ("bounce-c0ffee-a001@mailer.example", ["ok.anna@inbox-a.example"],
     "<c0ffee.a001.x1@mailer.example>"),
    ("bounce-c0ffee-a002@mailer.example", ["unknown.bob@inbox-a.example"],
     "<c0ffee.a002.x1@mailer.example>"),
    ("bounce-c0ffee-a003@mailer.example", ["full.carl@inbox-b.example"],
     "<c0ffee.a003.x1@mailer.example>"),
    ("bounce-c0ffee-a004@mailer.example", ["blocked.dora@inbox-b.example"],
     "<c0ffee.a004.x1@mailer.example>"),
    ("bounce-c0ffee-a005@mailer.example", ["disabled.emil@inbox-a.example"],
     "<c0ffee.a005.x1@mailer.example>"),
    ("bounce-c0ffee-a006@mailer.example", ["greylist.fay@inbox-b.example"],
     "<c0ffee.a006.x1@mailer.example>"),
    ("bounce-c0ffee-a007@mailer.example", ["gus@dead.example"],
     "<c0ffee.a007.x1@mailer.example>"),
    ("bounce-c0ffee-a008@mailer.example",
     ["ok.hal@inbox-c.example", "ok.ida@inbox-c.example", "unknown.jan@inbox-c.example"],
     "<c0ffee.a008.x1@mailer.example>"),
    ("bounce-c0ffee-a009@mailer.example", ["ok.kim@inbox-a.example"], None),
    ("bounce-beef01-b001@mailer.example",
     ["ok.lea@inbox-d.example", "full.max@inbox-d.example"],
     "<beef01.b001.x1@mailer.example>"),
]

RULES = [
    ("unknown", "550 5.1.1 <{a}>: user unknown"),
    ("full", "452 4.2.2 <{a}>: mailbox full"),
    ("blocked", "554 5.7.1 <{a}>: rejected for policy reasons"),
    ("disabled", "550 5.2.1 <{a}>: account disabled"),
]


class Sink:
    """Answer RCPT TO by local part and journal every reply."""

    def __init__(self, journal_path: Path) -> None:
        self.journal_path = journal_path
        self.lock = threading.Lock()
        self.greylisted: set[str] = set()

    def journal(self, **record: object) -> None:
        record["t"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self.lock, open(self.journal_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        reply = "250 2.1.5 Ok"
        for prefix, template in RULES:
            if local.startswith(prefix):
                reply = template.format(a=address)
        if local.startswith("greylist"):
            with self.lock:
                first = address not in self.greylisted
                self.greylisted.add(address)
            if first:
                reply = f"451 4.7.1 <{address}>: greylisted, try again later"
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        self.journal(event="rcpt", rcpt=address, mail_from=envelope.mail_from, reply=reply)
        return reply

    async def handle_DATA(self, server, session, envelope):
        reply = "250 2.0.0 Ok: queued"
        self.journal(event="data", mail_from=envelope.mail_from, rcpts=envelope.rcpt_tos,
                     reply=reply)
        return reply


def exim(config: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXIM, "-C", str(config), *args], input=stdin, capture_output=True,
                          timeout=120, check=False)


def message_text(sender: str, recipients: list[str], message_id: str | None) -> bytes:
    headers = [f"From: Mailer <{sender}>", f"To: {', '.join(recipients)}",
               "Subject: clicktrail exim fixture"]
    if message_id:
        headers.append(f"Message-ID: {message_id}")
    return ("\n".join(headers) + "\n\nHello.\n").encode()


def main(variant: str, out_dir: Path) -> None:
    work = Path(f"/tmp/clicktrail-exim-{variant}")
    shutil.rmtree(work, ignore_errors=True)
    (work / "spool").mkdir(parents=True)
    (work / "log").mkdir()
    shutil.chown(work / "spool", EXIM_USER, EXIM_USER)
    shutil.chown(work / "log", EXIM_USER, EXIM_USER)
    config = work / "exim.conf"
    config.write_text(CONFIG.format(exim=EXIM, work=work, log_options=LOG_OPTIONS[variant],
                                    sink_port=SINK_PORTS[variant],
                                    closed_port=CLOSED_PORTS[variant]))
    os.chmod(config, 0o644)

    # A config error would otherwise show only as failed submissions.
    check = exim(config, "-bV")
    if check.returncode != 0:
        sys.exit(check.stdout.decode() + check.stderr.decode())

    journal = work / "sink-journal.jsonl"
    controller = Controller(Sink(journal), hostname="127.0.0.1", port=SINK_PORTS[variant],
                            ready_timeout=10)
    controller.start()
    try:
        for sender, recipients, message_id in MESSAGES:
            result = exim(config, "-odi", "-f", sender, *recipients,
                          stdin=message_text(sender, recipients, message_id))
            print("submitted", sender, result.returncode, result.stderr.decode().strip())

        deadline = time.monotonic() + MAX_RUN_S
        while time.monotonic() < deadline:
            time.sleep(QUEUE_RUN_INTERVAL_S)
            exim(config, "-q")
            count = exim(config, "-bpc").stdout.decode().strip()
            print("queue run done, messages left:", count)
            if count == "0":
                break
    finally:
        controller.stop()

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "log" / "mainlog", out_dir / f"mainlog-{variant}")
    shutil.copy(journal, out_dir / f"sink-journal-{variant}.jsonl")
    print(exim(config, "-bV").stdout.decode().splitlines()[0])


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
