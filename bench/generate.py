"""Generate a tracking-server access log for the benchmarks, in Debian's Apache combined format.

    %h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"

The requests follow the generic route preset: opens `/o/<delivery>/<recipient>.gif`, clicks
`/r/<delivery>/<recipient>/<link>` redirected with a 302, unsubscribes `/u/<delivery>/<recipient>` (GET
page views and POST confirmations), mirror pages `/m/<delivery>/<recipient>`. Around them come
what a real tracking server sees: Apple Mail Privacy Protection and Gmail/Yahoo image proxies,
security scanners that follow every link of a message within a second or two (HEAD or GET),
cached pixels (304), tracking URLs with unknown ids (404), vulnerability probes, robots.txt,
favicon requests and an occasional TLS handshake sent to the plain HTTP port (400, with Apache's
\\x escapes in the request field).

The output depends only on --seed and --lines. Next to the log, <output>.truth.json records the
number of lines and of lines that must become events, per event type, for the benchmarks and
their smoke test to check against.

    .venv/bin/python bench/generate.py --lines 1000000 /tmp/clicktrail-bench/access.log
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

# The log starts at this instant (UTC) and its lines are written with this UTC offset.
START_EPOCH_S = 1796342400  # 2026-12-04 00:00:00 UTC
UTC_OFFSET = "+0100"
UTC_OFFSET_S = 3600
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Mean requests per second; the gaps between requests are exponential.
MEAN_REQUESTS_PER_S = 120.0
WRITE_CHUNK_LINES = 50_000

BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70",
    "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; .NET4.0C; .NET4.0E; Microsoft Outlook "
    "16.0.17928; ms-office; MSOffice 16)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Thunderbird/128.5.0",
)
# Apple Mail Privacy Protection fetches the pixel with a bare user agent from Apple's ranges.
APPLE_PREFETCH_AGENT = "Mozilla/5.0"
GMAIL_PROXY_AGENT = ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
                     "(via ggpht.com GoogleImageProxy)")
YAHOO_PROXY_AGENT = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
SCANNER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/99.0.4844.51 Safari/537.36",
    "Barracuda Sentinel (EE)",
    "Mozilla/5.0 (compatible; Proofpoint URL Defense)",
    "python-requests/2.31.0",
)
BOT_AGENTS = (
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/7.88.1",
    "Mozilla/5.0 zgrab/0.x",
    "-",
)
PROBES = ("/wp-login.php", "/.env", "/.git/config", "/index.php?s=/Index/think",
          "/cgi-bin/luci/;stok=/locale", "/phpmyadmin/index.php", "/admin/config.php",
          "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php")
REFERERS = ("-", "-", "-", "https://mail.google.com/", "https://outlook.live.com/")

# Share of each kind of traffic, per thousand requests or scanner bursts.
KINDS = (
    ("open", 380), ("open_apple", 180), ("open_proxy", 90), ("open_cached", 30),
    ("click", 150), ("scanner_burst", 20), ("unsubscribe_get", 6), ("unsubscribe_post", 4),
    ("mirror", 10), ("unknown_id", 25), ("probe", 50), ("robots", 10), ("favicon", 30),
    ("home", 14), ("tls_handshake", 1),
)
LINKS_PER_DELIVERY = 6
DELIVERIES = 24
RECIPIENTS_PER_DELIVERY = 40_000


class Clock:
    """Advances the log time by exponential gaps; formats %t once per second."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.now = float(START_EPOCH_S)
        self.cached_second = -1
        self.cached_text = ""

    def tick(self) -> str:
        self.now += self.rng.expovariate(MEAN_REQUESTS_PER_S)
        second = int(self.now)
        if second != self.cached_second:
            local = time.gmtime(second + UTC_OFFSET_S)
            self.cached_text = (f"[{local.tm_mday:02d}/{MONTHS[local.tm_mon - 1]}/{local.tm_year}:"
                                f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} "
                                f"{UTC_OFFSET}]")
            self.cached_second = second
        return self.cached_text


class Generator:
    """Yields log lines and counts the ones the generic preset turns into events."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.clock = Clock(self.rng)
        self.deliveries = [f"{self.rng.getrandbits(24):06x}" for _ in range(DELIVERIES)]
        self.links = {d: [str(i) for i in range(1, LINKS_PER_DELIVERY + 1)]
                      for d in self.deliveries}
        self.kinds = [name for name, _ in KINDS]
        self.weights = [weight for _, weight in KINDS]
        self.truth: Counter[str] = Counter()

    def client_ip(self) -> str:
        r = self.rng.getrandbits(32)
        return f"{(r >> 24) % 223 + 1}.{(r >> 16) & 255}.{(r >> 8) & 255}.{r & 255 or 1}"

    def ids(self) -> tuple[str, str]:
        # A few deliveries get most of the traffic, as the latest campaigns do.
        delivery = self.deliveries[min(int(self.rng.expovariate(0.25)), DELIVERIES - 1)]
        recipient = f"{self.rng.randrange(RECIPIENTS_PER_DELIVERY) * 7919 % 16**6:x}"
        return delivery, recipient

    def line(self, ip: str, request: str, status: int, size: int, agent: str,
             referer: str = "-") -> str:
        return f'{ip} - - {self.clock.tick()} "{request}" {status} {size} "{referer}" "{agent}"\n'

    def lines(self, count: int) -> Iterator[str]:
        written = 0
        while written < count:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            for text in self.emit(kind):
                if written == count:
                    return
                yield text
                written += 1

    def emit(self, kind: str) -> list[str]:
        rng = self.rng
        delivery, recipient = self.ids()
        pixel = f"/o/{delivery}/{recipient}.gif"
        if kind == "open":
            self.truth["open"] += 1
            return [self.line(self.client_ip(), f"GET {pixel} HTTP/1.1", 200, 324,
                              rng.choice(BROWSERS), rng.choice(REFERERS))]
        if kind == "open_apple":
            self.truth["open"] += 1
            ip = f"17.{rng.randrange(58, 60)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            return [self.line(ip, f"GET {pixel} HTTP/1.1", 200, 324, APPLE_PREFETCH_AGENT)]
        if kind == "open_proxy":
            self.truth["open"] += 1
            agent, ip = ((GMAIL_PROXY_AGENT, f"66.102.{rng.randrange(8)}.{rng.randrange(1, 255)}")
                         if rng.random() < 0.8 else
                         (YAHOO_PROXY_AGENT, f"98.137.{rng.randrange(256)}.{rng.randrange(1, 255)}"))
            return [self.line(ip, f"GET {pixel}?t={rng.getrandbits(20)} HTTP/1.1", 200, 324, agent)]
        if kind == "open_cached":
            self.truth["open"] += 1
            return [self.line(self.client_ip(), f"GET {pixel} HTTP/1.1", 304, 182,
                              rng.choice(BROWSERS))]
        if kind == "click":
            self.truth["click"] += 1
            link = rng.choice(self.links[delivery])
            return [self.line(self.client_ip(), f"GET /r/{delivery}/{recipient}/{link} HTTP/1.1",
                              302, 613, rng.choice(BROWSERS), rng.choice(REFERERS))]
        if kind == "scanner_burst":
            return self.scanner_burst(delivery, recipient)
        return self.other(kind, delivery, recipient)

    def scanner_burst(self, delivery: str, recipient: str) -> list[str]:
        """Emit a security gateway's requests for every link of one message, HEAD or GET, in a burst."""
        rng = self.rng
        ip = f"{rng.choice(('52.0', '40.107', '148.163'))}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        method = rng.choice(("HEAD", "GET"))
        agent = rng.choice(SCANNER_AGENTS)
        burst = []
        for link in self.links[delivery]:
            self.truth["click"] += 1
            burst.append(self.line(ip, f"{method} /r/{delivery}/{recipient}/{link} HTTP/1.1", 302,
                                   0 if method == "HEAD" else 613, agent))
        return burst

    def other(self, kind: str, delivery: str, recipient: str) -> list[str]:
        rng = self.rng
        ip = self.client_ip()

        if kind == "unsubscribe_get":
            self.truth["unsubscribe"] += 1
            return [self.line(ip, f"GET /u/{delivery}/{recipient} HTTP/1.1", 200, 1841,
                              rng.choice(BROWSERS))]
        if kind == "unsubscribe_post":
            self.truth["unsubscribe"] += 1
            # RFC 8058 one-click unsubscribe: the mailbox provider POSTs without a referer.
            return [self.line(ip, f"POST /u/{delivery}/{recipient} HTTP/1.1", 200, 412,
                              rng.choice(BROWSERS))]
        if kind == "mirror":
            self.truth["mirror"] += 1
            return [self.line(ip, f"GET /m/{delivery}/{recipient} HTTP/1.1", 200, 24187,
                              rng.choice(BROWSERS))]
        if kind == "unknown_id":
            # A truncated or forged tracking URL: the server returns 404, which is no event.
            target = rng.choice((f"/r/{delivery}/{recipient}/99", f"/o/{delivery}/zz.gif"))
            return [self.line(ip, f"GET {target} HTTP/1.1", 404, 455, rng.choice(BROWSERS))]
        if kind == "probe":
            return [self.line(ip, f"GET {rng.choice(PROBES)} HTTP/1.1", 404, 455,
                              rng.choice(BOT_AGENTS))]
        if kind == "robots":
            return [self.line(ip, "GET /robots.txt HTTP/1.1", 200, 287, rng.choice(BOT_AGENTS))]
        if kind == "favicon":
            return [self.line(ip, "GET /favicon.ico HTTP/1.1", 404, 455, rng.choice(BROWSERS))]
        if kind == "home":
            return [self.line(ip, "GET / HTTP/1.1", 200, 3380, rng.choice(BOT_AGENTS))]
        # A TLS ClientHello on the HTTP port, as Apache logs it (a 400 with \x escapes).
        return [self.line(ip, "\\x16\\x03\\x01\\x02", 400, 483, "-")]


def generate(path: Path, lines: int, seed: int) -> dict[str, int]:
    """Write `lines` log lines to path and its .truth.json; return the truth counts."""
    generator = Generator(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="ascii", newline="\n") as out:
        chunk: list[str] = []
        for text in generator.lines(lines):
            chunk.append(text)
            if len(chunk) == WRITE_CHUNK_LINES:
                out.write("".join(chunk))
                chunk.clear()
        out.write("".join(chunk))

    truth = {"lines": lines, "seed": seed, "events": sum(generator.truth.values()),
             **{kind: generator.truth[kind] for kind in ("open", "click", "unsubscribe", "mirror")}}
    truth_path(path).write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def truth_path(path: Path) -> Path:
    return path.with_name(path.name + ".truth.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="log file to write (keep it under /tmp)")
    parser.add_argument("--lines", type=int, default=1_000_000,
                        help="number of lines, 100000 to 10000000 for the benchmarks "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    args = parser.parse_args()
    if args.lines < 1:
        parser.error(f"--lines must be at least 1, got {args.lines}")

    started = time.monotonic()
    truth = generate(args.output, args.lines, args.seed)
    print(f"wrote {truth['lines']} lines ({truth['events']} events: {truth['open']} opens, "
          f"{truth['click']} clicks, {truth['unsubscribe']} unsubscribes, {truth['mirror']} "
          f"mirror views) to {args.output} in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
