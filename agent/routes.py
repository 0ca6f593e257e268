"""Route tables: which tracking-server requests are opens, clicks, unsubscribes or mirror views.

A route is (event type, allowed methods, a regular expression on the normalised path and query,
with named groups delivery_id, recipient_id, link_id, token and url). Patterns run in RE2 through
pyarrow.compute over a whole batch, so they use the syntax both Python and RE2 accept: named
groups are fine, look-arounds and back-references are not (the config rejects them).

Many senders put the ids into one opaque token; a route with token_decode splits the decoded
token by token_separator into token_fields. A token that does not decode gives a reject, never
made-up ids.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

ROUTE_EVENTS = ("open", "click", "unsubscribe", "mirror", "web")
ID_FIELDS = ("delivery_id", "recipient_id", "link_id")
GROUP_NAMES = (*ID_FIELDS, "token", "url", "content")
TOKEN_DECODINGS = ("none", "base64url", "base64", "hex")
DEFAULT_METHODS = ("GET", "HEAD")
# Ids in presets, and ids decoded from tokens, must look like ids: this also keeps path
# separators and markup out of every id column.
PRESET_ID = r"[0-9A-Za-z_-]{1,64}"
VALID_ID = re.compile(r"^[0-9A-Za-z_.:@+=-]{1,128}$")


class RouteError(Exception):
    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class TokenError(ValueError):
    """A token that does not decode into the configured fields."""


@dataclass(frozen=True)
class Route:
    event: str
    pattern: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    token_decode: str = "none"
    token_fields: tuple[str, ...] = ()
    token_separator: str = ":"
    # Link ids that are the open pixel rather than a link (Adobe Campaign reserves url id 1).
    open_link_ids: tuple[str, ...] = ()
    name: str = ""

    def decode_token(self, token: str) -> dict[str, str]:
        """Decode a token into id fields; raise TokenError when it does not decode."""
        raw = _decode(self.token_decode, token)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenError("token is not UTF-8 after decoding") from None
        parts = text.split(self.token_separator)
        if len(parts) != len(self.token_fields):
            raise TokenError(f"token has {len(parts)} field(s) after decoding, expected "
                             f"{len(self.token_fields)} separated by {self.token_separator!r}")
        for part in parts:
            if not VALID_ID.match(part):
                raise TokenError("token field is empty or contains characters an id cannot have")
        return dict(zip(self.token_fields, parts, strict=True))


def _decode(method: str, token: str) -> bytes:
    try:
        if method == "base64url":
            return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if method == "base64":
            return base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        if method == "hex":
            return bytes.fromhex(token)
    except (binascii.Error, ValueError):
        raise TokenError(f"token is not valid {method}") from None
    return token.encode("utf-8")


def check_pattern(pattern: str) -> None:
    """Raise ValueError when pattern does not compile in both Python and RE2."""
    compiled = re.compile(pattern)
    unknown = set(compiled.groupindex) - set(GROUP_NAMES)
    if unknown:
        raise ValueError(f"unknown named group(s) {sorted(unknown)}; expected names from: "
                         f"{', '.join(GROUP_NAMES)}")
    try:
        pc.extract_regex(pa.array([], pa.string()), pattern)
    except pa.ArrowInvalid as exc:
        if "unnamed groups" in str(exc):
            raise ValueError("every group must be named, as (?P<delivery_id>...), or "
                             "non-capturing, as (?:...)") from None
        raise ValueError(f"not supported by the RE2 engine ({exc}); look-arounds and "
                         "back-references are not allowed") from None


def route_from_table(table: dict[str, Any]) -> Route:
    """Build a Route from a [[sources.route]] table; raise RouteError naming the bad key."""
    allowed = ("event", "methods", "pattern", "token_decode", "token_fields", "token_separator",
               "open_link_ids", "name")
    for key in table:
        if key not in allowed:
            raise RouteError(key, f"unknown key; expected one of: {', '.join(allowed)}")

    event = table.get("event")
    if event not in ROUTE_EVENTS:
        raise RouteError("event", f"invalid value {event!r}; expected one of: "
                         f"{', '.join(ROUTE_EVENTS)}")
    pattern = table.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise RouteError("pattern", f"expected a regular expression string, got {pattern!r}")
    try:
        check_pattern(pattern)
    except (re.error, ValueError) as exc:
        raise RouteError("pattern", f"invalid pattern {pattern!r}: {exc}") from None

    methods = table.get("methods", list(DEFAULT_METHODS))
    if (not isinstance(methods, list) or not methods
            or not all(isinstance(m, str) and re.fullmatch(r"[A-Z]{1,20}", m) for m in methods)):
        raise RouteError("methods", f"expected a list of upper-case HTTP methods such as "
                         f"[\"GET\", \"HEAD\"], got {methods!r}")

    token_decode = table.get("token_decode", "none")
    if token_decode not in TOKEN_DECODINGS:
        raise RouteError("token_decode", f"invalid value {token_decode!r}; expected one of: "
                         f"{', '.join(TOKEN_DECODINGS)}")
    fields = table.get("token_fields", [])
    if not isinstance(fields, list) or not all(f in ID_FIELDS for f in fields):
        raise RouteError("token_fields", f"expected a list of names from "
                         f"{', '.join(ID_FIELDS)}, got {fields!r}")
    has_token = "token" in re.compile(pattern).groupindex
    if has_token and not fields:
        raise RouteError("token_fields", "the pattern has a group named token, so token_fields "
                         "must list what the token holds, e.g. [\"delivery_id\", \"recipient_id\"]")
    if fields and not has_token:
        raise RouteError("pattern", "token_fields is set but the pattern has no group named token")
    separator = table.get("token_separator", ":")
    if not isinstance(separator, str) or not separator:
        raise RouteError("token_separator", f"expected a non-empty string, got {separator!r}")

    open_ids = table.get("open_link_ids", [])
    if not isinstance(open_ids, list) or not all(isinstance(i, str) for i in open_ids):
        raise RouteError("open_link_ids", f"expected a list of strings, got {open_ids!r}")
    name = table.get("name", "")
    if not isinstance(name, str):
        raise RouteError("name", f"expected a string, got {name!r}")

    return Route(event=event, pattern=pattern, methods=tuple(methods), token_decode=token_decode,
                 token_fields=tuple(fields), token_separator=separator,
                 open_link_ids=tuple(open_ids), name=name or f"custom-{event}")


def _preset(name: str, event: str, pattern: str, methods: tuple[str, ...] = DEFAULT_METHODS,
            **extra: Any) -> Route:
    check_pattern(pattern)
    return Route(event=event, pattern=pattern, methods=methods, name=name, **extra)


ID = PRESET_ID
# An optional trailing slash and query string after the ids.
QUERY = r"/?(?:\?.*)?$"
WITH_POST = ("GET", "HEAD", "POST")

PRESETS: dict[str, tuple[Route, ...]] = {
    "none": (),
    # Adobe Campaign Classic: /r/?id=<content letter><broadlog hex>,<delivery hex>,<url id hex>.
    # The broadlog id (one message to one recipient) is the recipient_id; url id 1 is the pixel.
    # Opt-out and mirror-page links are clicks here; the reporter reads their type from the
    # delivery catalog.
    "adobe": (
        _preset("adobe-tracking", "click",
                r"^/r/\?id=(?P<content>[a-z])(?P<recipient_id>[0-9a-f]{1,16}),"
                r"(?P<delivery_id>[0-9a-f]{1,16}),(?P<link_id>[0-9a-f]{1,16})(?:&.*)?$",
                open_link_ids=("1",)),
    ),
    # The simple path scheme of DESIGN: /o/<d>/<r>.gif, /r/<d>/<r>/<l>, /u/<d>/<r>, /m/<d>/<r>.
    "generic": (
        _preset("generic-open", "open",
                rf"^/o/(?P<delivery_id>{ID})/(?P<recipient_id>{ID})\.gif{QUERY}"),
        _preset("generic-click", "click",
                rf"^/r/(?P<delivery_id>{ID})/(?P<recipient_id>{ID})/(?P<link_id>{ID}){QUERY}"),
        _preset("generic-unsubscribe", "unsubscribe",
                rf"^/u/(?P<delivery_id>{ID})/(?P<recipient_id>{ID}){QUERY}", WITH_POST),
        _preset("generic-mirror", "mirror",
                rf"^/m/(?P<delivery_id>{ID})/(?P<recipient_id>{ID}){QUERY}"),
    ),
    # listmonk: campaign and subscriber UUIDs in the path.
    "listmonk": (
        _preset("listmonk-open", "open",
                rf"^/campaign/(?P<delivery_id>{ID})/(?P<recipient_id>{ID})/px\.png{QUERY}"),
        _preset("listmonk-click", "click",
                rf"^/link/(?P<link_id>{ID})/(?P<delivery_id>{ID})/(?P<recipient_id>{ID}){QUERY}"),
        _preset("listmonk-unsubscribe", "unsubscribe",
                rf"^/subscription/(?P<delivery_id>{ID})/(?P<recipient_id>{ID}){QUERY}", WITH_POST),
        _preset("listmonk-mirror", "mirror",
                rf"^/campaign/(?P<delivery_id>{ID})/(?P<recipient_id>{ID}){QUERY}"),
    ),
    # Mautic: the stat hash identifies one message to one contact; it becomes the recipient_id.
    # Its click token (ct) is serialised PHP data and is not decoded here.
    "mautic": (
        _preset("mautic-open", "open", rf"^(?:/index\.php)?/email/(?P<recipient_id>{ID})\.gif{QUERY}"),
        _preset("mautic-click", "click", rf"^(?:/index\.php)?/r/(?P<link_id>{ID}){QUERY}"),
        _preset("mautic-unsubscribe", "unsubscribe",
                rf"^(?:/index\.php)?/email/unsubscribe/(?P<recipient_id>{ID}){QUERY}", WITH_POST),
        _preset("mautic-mirror", "mirror",
                rf"^(?:/index\.php)?/email/view/(?P<recipient_id>{ID}){QUERY}"),
    ),
}
