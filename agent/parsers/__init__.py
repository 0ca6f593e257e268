"""Parsers by source kind."""

from __future__ import annotations

from typing import Any

from .base import Parser


def make_parser(source: Any) -> Parser:
    """Create the parser for a configured source."""
    if source.kind == "access_log":
        from .access_log import AccessLogParser

        return AccessLogParser(source)
    if source.kind == "postfix":
        from .postfix import PostfixParser

        return PostfixParser(source)
    if source.kind == "exim":
        from .exim import EximParser

        return EximParser(source)
    if source.kind == "powermta":
        from .powermta import PowerMtaParser

        return PowerMtaParser(source)
    if source.kind == "kumomta":
        from .kumomta import KumoMtaParser

        return KumoMtaParser(source)
    raise ValueError(f"no parser for source kind {source.kind!r}")
