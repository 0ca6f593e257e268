"""Read delivery catalog entries: `<store>/catalog/deliveries/<delivery_id>.json`.

The sending platform writes one entry per delivery: its name, subject, send time, owners and
the type of each tracked link. An entry is optional. Without it the reports show the ids and
the URLs seen in the logs. An invalid entry is reported in the data-quality box, never fatal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clicktrail.agent import store as agent_store
from clicktrail.agent.schema import SAFE_ID

from .errors import StoreError
from .store import Store, catalog_path

log = logging.getLogger(__name__)

MAX_CATALOG_BYTES = 4 * 1024 * 1024
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


def parse_catalog(delivery_id: str, raw: bytes) -> DeliveryCatalog:
    """Parse and check one catalog entry; raises ValueError naming the invalid key."""
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")

    written_id = data.get("delivery_id", delivery_id)
    if written_id != delivery_id:
        raise ValueError(f"delivery_id is {written_id!r}, expected {delivery_id!r}")

    owners = data.get("owners", [])
    if not isinstance(owners, list) or not all(isinstance(o, str) for o in owners):
        raise ValueError("owners must be a list of strings")

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
    )


def _optional_str(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _parse_time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("sent_at must be an ISO 8601 string")

    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"sent_at {value!r} has no UTC offset")
    return parsed.astimezone(UTC)


def _parse_links(items: object) -> dict[str, CatalogLink]:
    if not isinstance(items, list):
        raise ValueError("links must be a list")

    links: dict[str, CatalogLink] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("link_id"), str):
            raise ValueError(f"links[{index}] must be an object with a string link_id")
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


def import_catalog(store: Store, paths: list[str]) -> list[str]:
    """Check catalog entries from local JSON files and write them into the store.

    Returns the delivery ids written. Every file is checked before any is written, so one
    invalid file leaves the store unchanged; the ValueError names the file and the problem.
    """
    entries = []
    for path in paths:
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
            parse_catalog(delivery_id, raw)
        except RecursionError:
            raise ValueError(f"{path}: invalid catalog entry: JSON nested too deeply") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid catalog entry: {exc}") from exc
        entries.append((delivery_id, path))

    for delivery_id, path in entries:
        try:
            agent_store.upload_file(store.agent_store(), path, catalog_path(delivery_id))
        except agent_store.StoreError as exc:
            raise StoreError(str(exc), store_url=store.url, transient=exc.transient) from exc
        log.info("imported catalog entry of delivery %s from %s", delivery_id, path)
    return [delivery_id for delivery_id, _ in entries]
