"""Read delivery catalog entries: `<store>/catalog/deliveries/<delivery_id>.json`.

The sending platform writes one entry per delivery: its name, subject, send time, owners,
the type of each tracked link and, in `content`, the name of the email's HTML file beside the
JSON file. An entry is optional. Without it the reports show the ids and the URLs seen in the
logs. An invalid entry is reported in the data-quality box, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clicktrail.agent import store as agent_store
from clicktrail.agent.schema import CATALOG_DIR, SAFE_ID

from .errors import StoreError
from .store import Store, catalog_path

log = logging.getLogger(__name__)

MAX_CATALOG_BYTES = 4 * 1024 * 1024
ENTRY_KEYS = ("delivery_id", "name", "subject", "sent_at", "owners", "content", "links",
              "text_only_messages")
LINK_KEYS = ("link_id", "url", "label", "type", "category")
# A plain address: no display name, no spaces, commas, angle brackets or control characters.
OWNER_ADDRESS = re.compile(r"[^@\s<>,;\"\x00-\x1f\x7f]{1,64}@[^@\s<>,;\"\x00-\x1f\x7f]{1,255}")
# An email's HTML is read whole and laid out on the hot clicks page, so the limit bounds the
# memory and layout time one hostile file can take. Campaign HTML is usually tens of kilobytes;
# inline images (data: URIs, which the page removes anyway) are what makes a file larger.
MAX_CONTENT_BYTES = 2 * 1024 * 1024
# The content file is named by the sender and becomes part of a store path, so only a plain
# name is accepted: no folder, no dot-dot, no control character.
CONTENT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.html")
# The HTML parser under the sanitiser takes time quadratic in the nesting depth (40,000 nested
# divs took 4 s on a 2-core build machine), and an element needs a start tag, so bounding the
# start tags bounds that time. Campaign HTML has a few thousand tags.
MAX_CONTENT_TAGS = 20_000
START_TAG = re.compile(r"<[A-Za-z]")
# Catalog link types whose clicks are page views, not clicks. Adobe Campaign's URL types map
# onto catalog types as 1 email click -> "click", 3 opt-out -> "unsubscribe", 6 mirror page ->
# "mirror"; other types are kept as written and their clicks count.
LINK_TYPES_NOT_CLICKS = ("unsubscribe", "mirror")


@dataclass(frozen=True)
class CatalogLink:
    link_id: str
    url: str | None
    label: str | None
    type: str
    # A grouping the sender chose (product line, section of the email...), optional.
    category: str | None = None


@dataclass(frozen=True)
class DeliveryCatalog:
    """One delivery's catalog entry, or its absence (`found` False) and why it is unusable."""

    delivery_id: str
    found: bool = False
    problem: str | None = None
    name: str | None = None
    subject: str | None = None
    sent_at: datetime | None = None
    owners: tuple[str, ...] = ()
    links: dict[str, CatalogLink] = field(default_factory=dict)
    # Messages sent as text only (no HTML part, so no open pixel): the estimated opens scale
    # the measured opens up to them, as Adobe Campaign's indicator does.
    text_only_messages: int = 0
    # The file name of the email's HTML in the catalog folder, checked against CONTENT_NAME.
    content: str | None = None

    def link_type(self, link_id: str | None) -> str | None:
        link = self.links.get(link_id or "")
        return link.type if link else None


def load_catalog(store: Store, delivery_id: str) -> DeliveryCatalog:
    """Load the catalog entry of a delivery; a missing or invalid entry gives found=False."""
    # An id from a log becomes part of a path only when it is a plain name.
    if not SAFE_ID.match(delivery_id):
        return DeliveryCatalog(delivery_id, problem="the delivery id is not a plain name")

    relative = catalog_path(delivery_id)
    if not store.is_file(relative):
        return DeliveryCatalog(delivery_id)

    try:
        raw = store.read_bytes(relative, MAX_CATALOG_BYTES)
        return parse_catalog(delivery_id, raw)
    except (StoreError, ValueError) as exc:
        log.warning("catalog entry %s in store %s is unusable: %s", relative, store.url, exc)
        return DeliveryCatalog(delivery_id, problem=f"invalid catalog entry: {exc}")


def parse_catalog(delivery_id: str, raw: bytes, *, strict: bool = False) -> DeliveryCatalog:
    """Parse and check one catalog entry; raises ValueError naming the invalid key.

    strict (import-catalog) also rejects unknown keys and owners that are not plain email
    addresses. Entries that a sending platform writes into the store directly may carry keys of
    its own, so loading them is lenient. The mail step checks owners again.
    """
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if strict:
        _check_keys(data, ENTRY_KEYS, "")
        for index, item in enumerate(data.get("links") or []):
            if isinstance(item, dict):
                _check_keys(item, LINK_KEYS, f"links[{index}].")

    written_id = data.get("delivery_id", delivery_id)
    if written_id != delivery_id:
        raise ValueError(f"delivery_id is {written_id!r}, expected {delivery_id!r}")

    owners = data.get("owners", [])
    if not isinstance(owners, list) or not all(isinstance(o, str) for o in owners):
        raise ValueError("owners must be a list of strings")
    if strict:
        for index, owner in enumerate(owners):
            if not OWNER_ADDRESS.fullmatch(owner):
                raise ValueError(f"owners[{index}] {owner!r:.100} is not an email address such "
                                 "as crm-team@example.com")

    text_only = data.get("text_only_messages", 0)
    if isinstance(text_only, bool) or not isinstance(text_only, int) or text_only < 0:
        raise ValueError(f"text_only_messages must be a count (an integer 0 or more), "
                         f"got {text_only!r}")

    return DeliveryCatalog(
        delivery_id=delivery_id,
        found=True,
        name=_optional_str(data, "name"),
        subject=_optional_str(data, "subject"),
        sent_at=_parse_time(data.get("sent_at")),
        owners=tuple(owners),
        links=_parse_links(data.get("links", [])),
        text_only_messages=text_only,
        content=_parse_content_name(data.get("content"), delivery_id),
    )


def _check_keys(data: dict, allowed: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise ValueError(f"unknown key {prefix}{key!r:.100}; expected one of: "
                             f"{', '.join(allowed)}")


def _optional_str(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _parse_content_name(value: object, delivery_id: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not CONTENT_NAME.fullmatch(value):
        raise ValueError(f"content must be a file name of 1-64 letters, digits, '_' or '-' "
                         f"ending in .html, got {value!r:.100}")
    # All entries share one folder: a name of the delivery's own keeps two deliveries from
    # sharing, or replacing, one email.
    if value != f"{delivery_id}.html":
        raise ValueError(f"content must be named after the delivery, {delivery_id}.html, got "
                         f"{value!r:.100}; rename the HTML file")
    return value


def _parse_time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("sent_at must be an ISO 8601 string")

    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"sent_at {value!r} has no UTC offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"sent_at {value!r:.100} is out of range in UTC") from None


def _parse_links(items: object) -> dict[str, CatalogLink]:
    if not isinstance(items, list):
        raise ValueError("links must be a list")

    links: dict[str, CatalogLink] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("link_id"), str):
            raise ValueError(f"links[{index}] must be an object with a string link_id")
        if item["link_id"] in links:
            raise ValueError(f"links[{index}].link_id {item['link_id']!r:.100} is listed twice; "
                             "each link needs its own id")
        link_type = item.get("type", "click")
        if not isinstance(link_type, str):
            raise ValueError(f"links[{index}].type must be a string")
        links[item["link_id"]] = CatalogLink(
            link_id=item["link_id"],
            url=_optional_str(item, "url"),
            label=_optional_str(item, "label"),
            type=link_type,
            category=_optional_str(item, "category"),
        )
    return links


def load_content(store: Store, catalog: DeliveryCatalog) -> str | None:
    """Read the email's HTML that a catalog entry names; None when the entry names none.

    Raises ContentError (a ValueError) naming the delivery and the file when the file is
    missing, too large or not UTF-8; StoreError when the store cannot be read.
    """
    if catalog.content is None:
        return None

    relative = content_path(catalog.content)
    if not store.is_file(relative):
        raise ContentError(f"content file {catalog.content} of delivery {catalog.delivery_id} "
                           f"is missing from {CATALOG_DIR}/ in store {store.url}; import it "
                           "with clicktrail-report import-catalog", catalog.delivery_id)
    try:
        raw = store.read_bytes(relative, MAX_CONTENT_BYTES)
    except StoreError as exc:
        # read_bytes raises a permanent StoreError only for a file over the limit.
        if exc.transient:
            raise
        raise ContentError(_too_large(catalog.delivery_id, catalog.content),
                           catalog.delivery_id) from exc
    return decode_content(catalog.delivery_id, catalog.content, raw)


class ContentError(ValueError):
    """The email's HTML of a delivery is missing, too large or not UTF-8."""

    def __init__(self, message: str, delivery_id: str) -> None:
        super().__init__(message)
        self.delivery_id = delivery_id


def content_path(name: str) -> str:
    """Return the store path of a content file name that matched CONTENT_NAME."""
    return f"{CATALOG_DIR}/{name}"


def decode_content(delivery_id: str, name: str, raw: bytes) -> str:
    """Decode an email's HTML as UTF-8 (a byte order mark is allowed and dropped) and check
    that it has at most MAX_CONTENT_TAGS start tags."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ContentError(f"content file {name} of delivery {delivery_id} is not valid UTF-8 "
                           f"at byte {exc.start} ({exc.reason}); save the HTML as UTF-8",
                           delivery_id) from None

    tags = sum(1 for _ in START_TAG.finditer(text))
    if tags > MAX_CONTENT_TAGS:
        raise ContentError(f"content file {name} of delivery {delivery_id} has {tags} tags, "
                           f"more than {MAX_CONTENT_TAGS}; the hot clicks page shows email "
                           "HTML of usual size only", delivery_id)
    return text


def _too_large(delivery_id: str, name: str) -> str:
    return (f"content file {name} of delivery {delivery_id} is larger than "
            f"{MAX_CONTENT_BYTES} bytes; remove inline images (data: URIs) from the HTML")


def import_catalog(store: Store, paths: list[str]) -> list[str]:
    """Check catalog entries from local JSON files and write them into the store.

    An entry that names a content file brings that HTML file along: it must lie in the same
    folder as the JSON file. Returns the delivery ids written. Every file is checked before
    any is written, so one invalid file leaves the store unchanged; the ValueError names the
    file and the problem.
    """
    entries = [_check_entry_file(path) for path in paths]

    for delivery_id, path, content in entries:
        # The HTML goes first, so that a reader never finds an entry naming a missing file.
        if content is not None:
            _upload(store, content, content_path(os.path.basename(content)))
        _upload(store, path, catalog_path(delivery_id))
        log.info("imported catalog entry of delivery %s from %s", delivery_id, path)
    return [delivery_id for delivery_id, _, _ in entries]


def _check_entry_file(path: str) -> tuple[str, str, str | None]:
    """Check one local catalog entry and its content file; return (delivery id, path, content)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CATALOG_BYTES + 1)
        if len(raw) > MAX_CATALOG_BYTES:
            raise ValueError(f"larger than {MAX_CATALOG_BYTES} bytes")
        data = json.loads(raw.decode("utf-8"))
        delivery_id = data.get("delivery_id") if isinstance(data, dict) else None
        if not isinstance(delivery_id, str) or not SAFE_ID.match(delivery_id):
            raise ValueError(f"delivery_id must be 1-64 characters of letters, digits, '_' "
                             f"or '-', got {delivery_id!r}")
        catalog = parse_catalog(delivery_id, raw, strict=True)
    except RecursionError:
        raise ValueError(f"{path}: invalid catalog entry: JSON nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid catalog entry: {exc}") from exc

    if catalog.content is None:
        return delivery_id, path, None
    content = os.path.join(os.path.dirname(path), catalog.content)
    try:
        with open(content, "rb") as f:
            raw_content = f.read(MAX_CONTENT_BYTES + 1)
        if len(raw_content) > MAX_CONTENT_BYTES:
            raise ContentError(_too_large(delivery_id, catalog.content), delivery_id)
        decode_content(delivery_id, catalog.content, raw_content)
    except OSError as exc:
        raise ValueError(f"{path}: content file {catalog.content} of delivery {delivery_id} "
                         f"cannot be read: {exc.strerror}; put it beside the JSON file") from exc
    except ContentError as exc:
        raise ValueError(f"{content}: {exc}") from exc
    return delivery_id, path, content


def _upload(store: Store, local_path: str, relative: str) -> None:
    try:
        agent_store.upload_file(store.agent_store(), local_path, relative)
    except agent_store.StoreError as exc:
        raise StoreError(str(exc), store_url=store.url, transient=exc.transient) from exc
