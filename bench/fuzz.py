"""Feed generated hostile lines to every parser and round-trip what they return through Parquet.

Each target is one parser with one config: the access-log parser with each route preset, and
the Postfix, Exim, PowerMTA and KumoMTA parsers. For each target, the lines are mutations of a
few valid seed lines. The mutations insert quotes, escapes, NUL and control bytes, invalid
UTF-8, markup, path traversal, huge numbers, impossible dates, and JSON and CSV syntax. The
agent's own split_lines turns them into batches. After each batch the run checks that:

- the parser raised no exception;
- the events and rejects have the store's schemas;
- no parsed line is both an event and a reject, and rows stay within the batch's lines;
- the events and the masked rejects read back equal from Parquet (zstd, as the spool writes);
- the parser state, where the parser keeps one, survives a JSON round trip.

The run is bounded by --lines per target and by --max-seconds in all. The same --seed gives the
same lines. The exit status is 1 when any check failed, with the first failing batch's lines
written next to --failures.

    .venv/bin/python bench/fuzz.py --lines 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from clicktrail.agent import schema
from clicktrail.agent.batch import mask_reject_lines
from clicktrail.agent.config import SourceConfig, load_config
from clicktrail.agent.lines import split_lines
from clicktrail.agent.parsers import make_parser
from clicktrail.agent.parsers.base import LineBatch, SourceContext

MAX_LINE_BYTES = 64 * 1024
BATCH_LINES = 5_000
# Share of lines left unmutated, so that every target also produces events to round-trip.
UNMUTATED_SHARE = 0.15
MAX_MUTATIONS = 4

ACCESS_PREFIX = '192.0.2.17 - - [04/Dec/2026:20:00:00 +0000] "GET '
ACCESS_SUFFIX = ' HTTP/1.1" 200 43 "https://mail.example.com/" "Mozilla/5.0 (Windows NT 10.0)"'
POWERMTA_HEADER = ("type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,"
                   "bounceCat,srcType,srcMta,dlvType,dlvSourceIp,dlvDestinationIp,"
                   "dlvEsmtpAvailable,dlvSize,vmta,jobId,envId,queue,vmtaPool,feedbackType,"
                   "header_Message-Id")
# Lines that start every batch of a target unmutated: the PowerMTA header names the columns of
# the rows after it, as at the start of each accounting file.
PREAMBLES = {"powermta": POWERMTA_HEADER}
SEEDS: dict[str, list[str]] = {
    "access_log:adobe": [ACCESS_PREFIX + path + ACCESS_SUFFIX for path in (
        "/r/?id=h1a2b3,4d5e6,1", "/r/?id=h1a2b3,4d5e6,4d5f0&p1=x", "/r/?id=t9f,4d5e6,2")],
    "access_log:generic": [ACCESS_PREFIX + path + ACCESS_SUFFIX for path in (
        "/o/d1/r1.gif", "/r/d1/r1/l2?x=1", "/u/d1/r1", "/m/d1/r1")],
    "access_log:listmonk": [ACCESS_PREFIX + path + ACCESS_SUFFIX for path in (
        "/campaign/c1/s1/px.png", "/link/l1/c1/s1", "/subscription/c1/s1", "/campaign/c1/s1")],
    "access_log:mautic": [ACCESS_PREFIX + path + ACCESS_SUFFIX for path in (
        "/email/5f2a.gif", "/r/9b1?ct=YTo0OntzOjY6", "/email/unsubscribe/5f2a",
        "/index.php/email/view/5f2a")],
    "postfix": [
        "Dec 04 19:23:15 mx postfix/cleanup[1]: 2B38717645F: message-id=<7d81d5.5eed02.x1@m.example>",
        "Dec 04 19:23:15 mx postfix/qmgr[2]: 2B38717645F: from=<bounce-7d81d5-5eed02@b.example>, "
        "size=935, nrcpt=2 (queue active)",
        "Dec 04 19:23:15 mx postfix/smtp[3]: 2B38717645F: to=<ann@inbox-a.example>, "
        "relay=mx.inbox-a.example[192.0.2.10]:25, delay=0.01, delays=0/0/0/0.01, dsn=5.1.1, "
        "status=bounced (host mx.inbox-a.example[192.0.2.10] said: 550 5.1.1 <ann@inbox-a.example>: "
        "User unknown (in reply to RCPT TO command))",
        "Dec 04 19:23:15 mx postfix/smtp[3]: 2B38717645F: to=<bob@inbox-b.example>, relay=none, "
        "delay=0, dsn=4.4.1, status=deferred (connect to inbox-b.example[192.0.2.11]:25: refused)",
        "2026-12-04T19:28:16.123456+01:00 mx postfix/qmgr[2]: 2B38717645F: removed",
        "Dec 04 19:23:16 mx postfix/smtpd[4]: NOQUEUE: reject: RCPT from x[198.51.100.7]: 554 5.7.1 "
        "<c@d.example>: Relay access denied; from=<bounce-7d81d5-5eed03@b.example> "
        "to=<c@d.example> proto=ESMTP helo=<x>",
    ],
    "exim": [
        "2026-12-04 21:12:03 1xZaZX-0004uL-34 <= bounce-c0ffee-a001@mailer.example U=root P=local "
        "S=402 id=c0ffee.a001.x1@mailer.example",
        '2026-12-04 21:12:04 1xZaZX-0004uL-34 => ok.anna@inbox-a.example R=everything T=smtp '
        'H=mx.inbox-a.example [192.0.2.10] C="250 2.0.0 Ok: queued"',
        "2026-12-04 21:12:04 1xZaZX-0004uL-34 ** gone@inbox-a.example R=everything T=smtp "
        "H=mx.inbox-a.example [192.0.2.10]: SMTP error from remote mail server after RCPT "
        "TO:<gone@inbox-a.example>: 550 5.1.1 User unknown",
        "2026-12-04 21:12:05 1xZaZX-0004uL-34 Completed",
    ],
    "powermta": [
        POWERMTA_HEADER,
        "d,2026-12-04 19:23:11+0000,2026-12-04 19:23:10+0000,bounce-c0ffee-a001@mailer.example,"
        "ok.anna@inbox-a.example,,relayed,2.0.0 (success),smtp;250 2.0.0 Ok,mx.inbox-a.example "
        "(192.0.2.10),,smtp,mailer.example (127.0.0.1),smtp,198.51.100.5,192.0.2.10,"
        '"PIPELINING,8BITMIME",1843,vmta1,job-c0ffee,,inbox-a.example/vmta1,pool1,,'
        "<c0ffee.a001.x1@mailer.example>",
        "b,2026-12-04 19:23:12+0000,2026-12-04 19:23:10+0000,bounce-c0ffee-a002@mailer.example,"
        "gone@inbox-a.example,,failed,5.1.1 (bad destination mailbox address),smtp;550 5.1.1 User "
        "unknown,mx.inbox-a.example (192.0.2.10),bad-mailbox,smtp,mailer.example (127.0.0.1),smtp,"
        "198.51.100.5,192.0.2.10,,1843,vmta1,job-c0ffee,,inbox-a.example/vmta1,pool1,,"
        "<c0ffee.a002.x1@mailer.example>",
    ],
    "kumomta": [
        json.dumps({"type": "Delivery", "id": "1d98076abbbc11ed940250ebf67f9301",
                    "sender": "bounce-c0ffee-a001@mailer.example",
                    "recipient": "ok.anna@inbox-a.example", "queue": "inbox-a.example",
                    "response": {"code": 250, "enhanced_code": {"class": 2, "subject": 0,
                                                                "detail": 0},
                                 "content": "Ok", "command": "."},
                    "peer_address": {"name": "mx.inbox-a.example", "addr": "192.0.2.10"},
                    "timestamp": 1796412190, "created": 1796412190, "num_attempts": 0,
                    "bounce_classification": "Uncategorized", "meta": {"campaign": "c0ffee"},
                    "headers": {"Message-ID": "<c0ffee.a001.x1@mailer.example>"}}),
        json.dumps({"type": "Bounce", "id": "2d98076abbbc11ed940250ebf67f9302",
                    "sender": "bounce-c0ffee-a002@mailer.example",
                    "recipient": "gone@inbox-a.example", "queue": "inbox-a.example",
                    "response": {"code": 550, "enhanced_code": {"class": 5, "subject": 1,
                                                                "detail": 1},
                                 "content": "User unknown", "command": "RCPT TO"},
                    "peer_address": {"name": "mx.inbox-a.example", "addr": "192.0.2.10"},
                    "timestamp": 1796412191, "created": 1796412190, "num_attempts": 1,
                    "bounce_classification": "InvalidRecipient", "meta": {"campaign": "c0ffee"},
                    "headers": {}}),
    ],
}
CONFIG_HEADER = '[agent]\nhost_id = "fuzz"\nstate_dir = "state"\n\n[store]\nurl = "store"\n'
MTA_IDS = ("message_id_pattern = '^<?(?P<delivery_id>[0-9a-f]+)\\.(?P<recipient_id>[0-9a-f]+)\\.'\n"
           "envelope_sender_pattern = '^bounce-(?P<delivery_id>[0-9a-f]+)-"
           "(?P<recipient_id>[0-9a-f]+)@'\n")
SOURCE_EXTRA = {
    "postfix": MTA_IDS,
    "exim": MTA_IDS,
    "powermta": MTA_IDS + "job_id_pattern = '^job-(?P<delivery_id>[0-9a-f]+)$'\n",
    "kumomta": MTA_IDS.split("\n")[0] + '\nmeta_ids = { delivery_id = "campaign" }\n',
}

# Fragments that broke or could break a parser: quoting and escapes, control bytes, invalid
# UTF-8, markup and paths that must not escape, numbers and dates out of range, and the syntax
# of the JSON and CSV formats.
FRAGMENTS: list[bytes] = [s if isinstance(s, bytes) else s.encode() for s in (
    '"', "\\", '\\"', "\\x", "\\xzz", "\\xff", "'", "`", " ", "  ", "\t", "\r", "\x00", "\x1b[31m",
    b"\xff", b"\xfe\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x80",
    "\u202e", "\ufeff", "\u2028", "\U0001f600", "%", "%00", "%0d%0a", "%zz", "%2F..%2F",
    "../../../../etc/passwd", "/", "//", "?", "&", "=", "#", ";", ":", "::", "@", "@@", "<", ">",
    "<>", "<script>alert(1)</script>", "javascript:alert(1)", "${jndi:ldap://127.0.0.1/a}",
    "%s%n%x", "' OR 1=1 --", "[", "]", "[]", "{", "}", "{}", "(", ")", ",", ",,,,", "\"\"",
    "null", "true", "-", "0", "-1", "1e309", "-1e309", "NaN", "Infinity", "9" * 40,
    "18446744073709551616", "-9223372036854775809", "2147483648", "[31/Feb/2026:25:61:61 +9999]",
    "[04/Dec/0000:00:00:00 +0000]", "[04/Dec/9999:23:59:59 -2400]", "Feb 30 24:60:60",
    "0000-00-00 00:00:00", "9999-12-31T23:59:59.999999999+99:99", "2026-12-04 19:23:11+0000",
    "status=sent", "status=bounced", "status=deferred", "dsn=9.9.9", "removed", "reject:",
    "message-id=<", "to=<", "from=<", "=>", "<=", "**", "==", "Completed", "NOQUEUE",
    "1xZaZX-0004uL-34", "2B38717645F", "GET ", "POST ", "HEAD ", " HTTP/1.1", " HTTP/9.9",
    "http://127.0.0.1/", "/o/", "/r/?id=h", ".gif", "200", "302", "404", "99999",
    '"timestamp": 1e400', '"timestamp": -99999999999999', '"response": null', '"meta": []',
    '"recipient": 5', '"type": "Bounce"', "[[[[[[[[[[[[[[[[", "\\ud800", "\\u0000",
    "d,", "b,", "r,", 'a"b', "A" * 300, "x" * 3000,
)]


@dataclass
class TargetResult:
    """The counts of one target's run; a clean run has no exceptions and no mismatches."""

    target: str
    lines: int = 0
    events: int = 0
    rejects: int = 0
    # Batches whose parse raised, and the lines that raise when parsed alone (the lines the
    # agent's line-by-line fallback rejects).
    exceptions: int = 0
    culprit_lines: int = 0
    mismatches: int = 0
    seconds: float = 0.0
    first_failure: str = ""


def mutate(line: bytes, rng: random.Random) -> bytes:
    """Apply 1 to MAX_MUTATIONS random edits to a line; no edit adds a newline."""
    for _ in range(rng.randint(1, MAX_MUTATIONS)):
        position = rng.randint(0, len(line))
        end = min(len(line), position + rng.randint(0, 12))
        edit = rng.randrange(6)
        if edit == 0:
            line = line[:position] + rng.choice(FRAGMENTS) + line[position:]
        elif edit == 1:
            line = line[:position] + rng.choice(FRAGMENTS) + line[end:]
        elif edit == 2:
            line = line[:position] + line[end:]
        elif edit == 3:
            line = line[:end] + line[position:end] * rng.randint(2, 20) + line[end:]
        elif edit == 4:
            line = line[:position] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        else:
            fields = line.split(b" ")
            rng.shuffle(fields)
            line = b" ".join(fields)
    return line.replace(b"\n", b" ")


def generate_batch(seeds: list[bytes], count: int, rng: random.Random,
                   preamble: bytes | None = None) -> bytes:
    lines = [] if preamble is None else [preamble]
    for _ in range(count):
        line = rng.choice(seeds)
        lines.append(line if rng.random() < UNMUTATED_SHARE else mutate(line, rng))
    return b"\n".join(lines) + b"\n"


def load_sources(folder: Path) -> dict[str, SourceConfig]:
    """Return a source per target, loaded through the config loader as the agent loads them."""
    text = CONFIG_HEADER
    for target in SEEDS:
        kind, _, preset = target.partition(":")
        text += f'\n[[sources]]\nname = "{target.replace(":", "-")}"\nkind = "{kind}"\n'
        text += f'paths = ["{folder}/{kind}.log"]\n'
        text += f'routes = "{preset}"\n' if preset else SOURCE_EXTRA[kind]
    path = folder / "fuzz.toml"
    path.write_text(text)
    config = load_config(path)
    return dict(zip(SEEDS, config.sources, strict=True))


def round_trips(table: pa.Table) -> bool:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return pq.read_table(io.BytesIO(buffer.getvalue())).equals(table)


def check_batch(target: str, source: SourceConfig, parser, data: bytes, offset: int,
                result: TargetResult) -> str:
    """Parse one batch, run the checks, add to result; return a failure text or ""."""
    batch, consumed, _, _ = split_lines(data, offset, MAX_LINE_BYTES)
    result.lines += len(batch)
    ctx = SourceContext(host="fuzz", source=source.name, kind=source.kind, path=f"/fuzz/{target}",
                        generation="f00d", ingest_time=datetime(2026, 12, 5, tzinfo=UTC))
    state_before = parser.snapshot()
    try:
        parsed = parser.parse(batch, ctx)
        rejects = mask_reject_lines(parsed.rejects, source)
    except Exception as exc:  # noqa: BLE001 (counting every parser failure is the point)
        result.exceptions += 1
        fresh = make_parser(source)
        if state_before is not None:
            fresh.restore(json.loads(json.dumps(state_before)))
        culprits = find_culprits(fresh, batch, ctx)
        result.culprit_lines += len(culprits)
        example = repr(culprits[0][:300]) if culprits else "none alone"
        return f"{type(exc).__name__}: {exc}; first line that raises alone: {example}"

    result.events += parsed.events.num_rows
    result.rejects += rejects.num_rows
    problems = []
    if parsed.events.schema != schema.EVENT_SCHEMA:
        problems.append("events schema differs from EVENT_SCHEMA")
    if rejects.schema != schema.REJECT_SCHEMA:
        problems.append("rejects schema differs from REJECT_SCHEMA")
    rejected = set(rejects["source_offset"].to_pylist())
    if rejected & set(parsed.events["source_offset"].to_pylist()):
        problems.append("a line is both an event and a reject")
    if not rejected <= set(batch.offsets.tolist()):
        problems.append("a reject points outside the batch")
    if not (round_trips(parsed.events) and round_trips(rejects)):
        problems.append("Parquet round trip changed the table")
    state = parser.snapshot()
    if state is not None:
        make_parser(source).restore(json.loads(json.dumps(state)))
    result.mismatches += bool(problems)
    return "; ".join(problems)


def find_culprits(parser, batch: LineBatch, ctx: SourceContext) -> list[str]:
    """Parse each line alone, as the agent's fallback does; return the lines that raise."""
    culprits = []
    for i in range(len(batch)):
        line = LineBatch(batch.lines.slice(i, 1), batch.offsets[i:i + 1], batch.line_bytes[i:i + 1])
        try:
            parser.parse(line, ctx)
        except Exception:  # noqa: BLE001 (see check_batch)
            culprits.append(batch.lines[i].as_py())
    return culprits


def run(lines_per_target: int, seed: int, max_seconds: float,
        failures: Path | None = None) -> list[TargetResult]:
    """Fuzz every target with lines_per_target lines, within max_seconds in all."""
    deadline = time.monotonic() + max_seconds
    results = []
    with tempfile.TemporaryDirectory(prefix="clicktrail-fuzz-") as folder:
        sources = load_sources(Path(folder))
        for number, (target, source) in enumerate(sources.items()):
            rng = random.Random(seed * 1000 + number)
            seeds = [line.encode() for line in SEEDS[target]]
            parser = make_parser(source)
            result = TargetResult(target)
            started = time.monotonic()
            offset = 0
            while result.lines < lines_per_target and time.monotonic() < deadline:
                count = min(BATCH_LINES, lines_per_target - result.lines)
                preamble = PREAMBLES.get(source.kind)
                data = generate_batch(seeds, count - bool(preamble), rng,
                                      preamble.encode() if preamble else None)
                failure = check_batch(target, source, parser, data, offset, result)
                if failure and not result.first_failure:
                    result.first_failure = failure
                    if failures is not None:
                        failures.with_name(f"{failures.name}-{target.replace(':', '-')}").write_bytes(data)
                offset += len(data)
            result.seconds = time.monotonic() - started
            results.append(result)
    return results


def format_table(results: list[TargetResult]) -> str:
    rows = [f"{'target':<20} {'lines':>10} {'events':>9} {'rejects':>9} {'exceptions':>10} "
            f"{'culprits':>8} {'mismatches':>10} {'lines/s':>9}"]
    for r in results:
        rate = r.lines / r.seconds if r.seconds else 0.0
        rows.append(f"{r.target:<20} {r.lines:>10} {r.events:>9} {r.rejects:>9} "
                    f"{r.exceptions:>10} {r.culprit_lines:>8} {r.mismatches:>10} {rate:>9.0f}")
    total = sum(r.lines for r in results)
    rows.append(f"{'total':<20} {total:>10}")
    rows.extend(f"{r.target}: first failure: {r.first_failure}" for r in results if r.first_failure)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000,
                        help="generated lines per target (default 1000000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--max-seconds", type=float, default=3600.0,
                        help="stop every target after this many seconds in all (default 3600)")
    parser.add_argument("--failures", type=Path, default=None,
                        help="path prefix for the lines of each target's first failing batch")
    parser.add_argument("--json", type=Path, default=None, help="also write the counts as JSON")
    args = parser.parse_args(argv)
    if args.lines < 1:
        parser.error("--lines: expected a positive number")

    started = time.monotonic()
    results = run(args.lines, args.seed, args.max_seconds, args.failures)
    print(format_table(results))
    print(f"{time.monotonic() - started:.0f} s, seed {args.seed}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    complete = all(r.lines >= args.lines for r in results)
    if not complete:
        print(f"stopped at --max-seconds {args.max_seconds:.0f} before --lines {args.lines}",
              file=sys.stderr)
    clean = all(r.exceptions == 0 and r.mismatches == 0 for r in results)
    return 0 if clean and complete else 1


if __name__ == "__main__":
    sys.exit(main())
