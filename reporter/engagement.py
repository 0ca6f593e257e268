"""Engagement figures of one delivery in one view (all hits, or human-only), with their rates.

Adobe Campaign's indicator definitions where they exist (REFERENCE.md section 1); each figure
and rate is defined, with numerator and denominator, in docs/glossary.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rates import Rate


@dataclass(frozen=True)
class Engagement:
    # "all" (every hit) or "human" (hits not classed as machines; proxy opens once per recipient)
    view: str
    opens: int
    unique_opens: int
    opens_including_clicks: int
    clicks: int
    unique_clickers: int
    person_clicks: int
    delivered: int
    # Messages of the delivery sent as text only, which cannot report opens (catalog entry).
    text_only_messages: int = 0

    @property
    def estimated_opens(self) -> int:
        """Opens including clicks scaled up to the messages that could report an open."""
        if self.text_only_messages <= 0:
            return self.opens_including_clicks
        can_report = self.delivered - self.text_only_messages
        if can_report <= 0:
            return 0
        return round(self.opens_including_clicks * self.delivered / can_report)

    @property
    def forwards(self) -> int:
        return max(self.person_clicks - self.unique_clickers, 0)

    @property
    def open_rate(self) -> Rate:
        return Rate(self.opens_including_clicks, self.delivered)

    @property
    def estimated_open_rate(self) -> Rate:
        return Rate(self.estimated_opens, self.delivered)

    @property
    def click_through_rate(self) -> Rate:
        return Rate(self.unique_clickers, self.delivered)

    @property
    def raw_reactivity(self) -> Rate:
        return Rate(self.unique_clickers, self.opens_including_clicks)

    @property
    def reactivity(self) -> Rate:
        return Rate(self.unique_clickers, self.estimated_opens)

    @property
    def distinct_clicks_rate(self) -> Rate:
        return Rate(self.person_clicks, self.delivered)

    @property
    def cumulated_clicks_rate(self) -> Rate:
        return Rate(self.clicks, self.delivered)
