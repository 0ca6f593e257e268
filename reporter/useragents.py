"""Describe a user agent as mail client, browser, OS and device type.

ua-parser (1.x, with the regexes of uap-core) names the browser, OS and device. It does not name
mail clients, so the rules below find them from the tokens each client is known to send:

- Outlook for Windows sends `Microsoft Office/16.0 (...; Microsoft Outlook 16.0...)` or, in
  older versions, `Mozilla/4.0 (compatible; ms-office; MSOffice 16)`.
- Apple Mail on iPhone, iPad and Mac renders with WebKit and sends no `Safari/` or `Version/`
  token, which Safari itself always sends.
- Gmail and Yahoo Mail fetch images through their proxies (`GoogleImageProxy`,
  `YahooMailProxy`), which hide the reader's device.
- Apple Mail Privacy Protection fetches every image with the bare user agent `Mozilla/5.0`.

The user agent is untrusted text from a log. The browser and OS names may contain parts of it,
because ua-parser copies names and versions out of the string, so templates must escape them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import ua_parser

# Mail clients, as the reports and the per-recipient history name them.
OUTLOOK = "Outlook"
APPLE_MAIL = "Apple Mail"
THUNDERBIRD = "Thunderbird"
GMAIL_PROXY = "Gmail image proxy"
YAHOO_PROXY = "Yahoo Mail proxy"
APPLE_MPP = "Apple Mail Privacy Protection"
ANDROID_APP = "Android app (WebView)"
WEBMAIL = "Webmail or browser"
BOT = "Bot or script"
UNKNOWN = "unknown"

# Device types. A proxy's user agent says nothing about the reader's device.
DESKTOP = "Desktop"
PHONE = "Phone"
TABLET = "Tablet"
IMAGE_PROXY = "Image proxy"

# The user agents of browsers and mail clients run to a few hundred characters. A longer one is
# padding or an attack, and ua-parser's regex time grows with the length, so it is not parsed.
MAX_USER_AGENT_CHARS = 1024
# Distinct user agents kept parsed. The size is an estimate: a delivery to 100,000 recipients is
# expected to show a few thousand distinct user agents, so each is parsed once per run.
MAX_CACHED_USER_AGENTS = 20_000

# Values that Apache and other servers log for a request without a User-Agent header.
ABSENT_USER_AGENTS = frozenset({"", "-"})

OUTLOOK_TOKENS = ("Microsoft Office/", "ms-office", "Microsoft Outlook")
APPLE_MAIL_DEVICES = ("iPhone", "iPad", "Macintosh")
# Families that ua-parser gives libraries, command-line tools and headless browsers. Crawlers get
# the device family "Spider" instead.
BOT_BROWSER_FAMILIES = frozenset({
    "curl", "Wget", "Python Requests", "Python-urllib", "Go-http-client", "HeadlessChrome",
    "PhantomJS", "Java", "Apache-HttpClient", "okhttp",
})
# Security gateways that follow links under a name of their own.
BOT_PATTERN = re.compile(r"bot\b|crawler|spider|Mimecast|Barracuda|Proofpoint|scanner",
                         re.IGNORECASE)
DESKTOP_OS_FAMILIES = frozenset({
    "Windows", "Mac OS X", "Linux", "Ubuntu", "Fedora", "Debian", "Chrome OS", "FreeBSD",
    "OpenBSD", "NetBSD",
})


@dataclass(frozen=True)
class ClientDescription:
    mail_client: str
    browser: str
    os: str
    # Desktop, Phone, Tablet, Image proxy, Bot or script, or unknown.
    device: str


UNKNOWN_CLIENT = ClientDescription(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)


def describe_user_agent(user_agent: str | None) -> ClientDescription:
    """Describe a user agent from a log; absent, empty, `-` and over-long ones are unknown."""
    if user_agent is None:
        return UNKNOWN_CLIENT
    user_agent = user_agent.strip()
    if user_agent in ABSENT_USER_AGENTS or len(user_agent) > MAX_USER_AGENT_CHARS:
        return UNKNOWN_CLIENT
    return _describe(user_agent)


def mail_client(user_agent: str | None) -> str:
    """Return the mail client's short name for a user agent, such as "Outlook" or "unknown"."""
    return describe_user_agent(user_agent).mail_client


@functools.lru_cache(maxsize=MAX_CACHED_USER_AGENTS)
def _describe(user_agent: str) -> ClientDescription:
    result = ua_parser.parse(user_agent)
    browser = result.user_agent.family if result.user_agent else UNKNOWN
    os_family = result.os.family if result.os else UNKNOWN
    device_family = result.device.family if result.device else None
    client = _mail_client(user_agent, browser, device_family)

    # The proxies' user agents name a made-up browser and OS (Gmail's claims Firefox 11 on
    # Windows XP), so only the proxy itself is reported.
    if client in (GMAIL_PROXY, YAHOO_PROXY, APPLE_MPP):
        return ClientDescription(client, client, UNKNOWN, IMAGE_PROXY)
    if client == BOT:
        return ClientDescription(client, browser, os_family, BOT)
    return ClientDescription(client, browser, os_family,
                             _device_type(user_agent, client, os_family, device_family))


def _mail_client(user_agent: str, browser: str, device_family: str | None) -> str:
    # Proxies first, because Gmail's proxy user agent also looks like a desktop Firefox.
    if user_agent == "Mozilla/5.0":
        return APPLE_MPP
    if "GoogleImageProxy" in user_agent:
        return GMAIL_PROXY
    if "YahooMailProxy" in user_agent:
        return YAHOO_PROXY
    if any(token in user_agent for token in OUTLOOK_TOKENS):
        return OUTLOOK
    if "Thunderbird/" in user_agent:
        return THUNDERBIRD
    if device_family == "Spider" or browser in BOT_BROWSER_FAMILIES or BOT_PATTERN.search(user_agent):
        return BOT
    if _is_apple_mail(user_agent):
        return APPLE_MAIL
    # An Android app that renders HTML in a WebView marks it with "; wv)".
    if "; wv)" in user_agent and "Android" in user_agent:
        return ANDROID_APP
    if browser != UNKNOWN and browser != "Other":
        return WEBMAIL
    return UNKNOWN


def _is_apple_mail(user_agent: str) -> bool:
    # NOTE: any iOS app that renders HTML in a WKWebView sends the same user agent as Apple Mail,
    # so such apps are counted as Apple Mail.
    return ("AppleWebKit/" in user_agent
            and "Safari/" not in user_agent
            and "Version/" not in user_agent
            and any(f"({device};" in user_agent or f"({device})" in user_agent
                    for device in APPLE_MAIL_DEVICES))


def _device_type(user_agent: str, client: str, os_family: str,
                 device_family: str | None) -> str:
    if device_family == "iPad":
        return TABLET
    if device_family == "iPhone" or "Windows Phone" in user_agent:
        return PHONE
    # Android browsers send "Mobile" on phones and leave it out on tablets.
    if os_family == "Android":
        return PHONE if "Mobile" in user_agent else TABLET
    if os_family in DESKTOP_OS_FAMILIES:
        return DESKTOP
    # The Outlook tokens without an OS ("ms-office") come from Outlook for Windows.
    if client == OUTLOOK:
        return DESKTOP
    return UNKNOWN
