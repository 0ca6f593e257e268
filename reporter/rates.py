"""Rates that keep their numerator and denominator, so a report can show both."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """A ratio that keeps its parts; value is None when the denominator is 0."""

    numerator: int
    denominator: int

    @property
    def value(self) -> float | None:
        if self.denominator == 0:
            return None
        return self.numerator / self.denominator

    def percent(self, digits: int = 1) -> str:
        value = self.value
        if value is None:
            return "n/a"
        return f"{value * 100:.{digits}f} %"
