"""Catalog entries: what a sending platform may write into the store, and what import checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clicktrail.reporter.catalog import import_catalog, load_catalog, parse_catalog
from clicktrail.reporter.store import open_store

ENTRY = {"delivery_id": "d1", "name": "December newsletter", "sent_at": "2026-12-02T08:00:00Z",
         "owners": ["crm-team@example.com"],
         "links": [{"link_id": "1", "url": "https://www.example.com/offer", "label": "Offer"}]}


def parse(entry: dict, strict: bool = False):
    return parse_catalog(entry["delivery_id"], json.dumps(entry).encode(), strict=strict)


@pytest.mark.parametrize("sent_at", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_sent_at_out_of_utc_range_is_invalid(sent_at: str) -> None:
    with pytest.raises(ValueError, match="is out of range in UTC"):
        parse({**ENTRY, "sent_at": sent_at})


def test_unusable_stored_entry_not_fatal(tmp_path: Path) -> None:
    folder = tmp_path / "store" / "catalog" / "deliveries"
    folder.mkdir(parents=True)
    (folder / "d1.json").write_text(json.dumps({**ENTRY, "sent_at": "0001-01-01T00:30:00+01:00"}))

    catalog = load_catalog(open_store(str(tmp_path / "store")), "d1")

    assert not catalog.found
    assert "out of range in UTC" in (catalog.problem or "")


def test_content_must_be_named_after_the_delivery() -> None:
    # Two entries naming one file would share, or replace, one email.
    with pytest.raises(ValueError, match=r"content must be named after the delivery, d1\.html"):
        parse({**ENTRY, "content": "email.html"})

    assert parse({**ENTRY, "content": "d1.html"}).content == "d1.html"


def test_link_id_listed_twice_is_invalid() -> None:
    links = [{"link_id": "1", "type": "click"}, {"link_id": "1", "type": "unsubscribe"}]

    with pytest.raises(ValueError, match=r"links\[1\]\.link_id '1' is listed twice"):
        parse({**ENTRY, "links": links})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nmae": "typo"}, "unknown key 'nmae'; expected one of: delivery_id, name"),
        ({"links": [{"link_id": "1", "lable": "x"}]}, r"unknown key links\[0\]\.'lable'"),
        ({"owners": ["x@example.com\r\nBcc: all@example.com"]}, r"owners\[0\] .* is not an email"),
        ({"owners": ["CRM team <crm@example.com>"]}, r"owners\[0\] .* is not an email"),
    ],
)
def test_import_is_strict(change: dict, message: str) -> None:
    entry = {**ENTRY, **change}

    with pytest.raises(ValueError, match=message):
        parse(entry, strict=True)
    # Entries a platform writes into the store may carry keys of their own.
    if "owners" not in change:
        assert parse(entry).found


def test_import_names_the_file(tmp_path: Path) -> None:
    source = tmp_path / "d1.json"
    source.write_text(json.dumps({**ENTRY, "nmae": "typo"}))
    (tmp_path / "store").mkdir()

    with pytest.raises(ValueError, match=rf"^{source}: invalid catalog entry: unknown key 'nmae'"):
        import_catalog(open_store(str(tmp_path / "store")), [str(source)])
