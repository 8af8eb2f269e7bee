"""Business thresholds in one frozen dataclass (the single place a rule's number lives)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Policy:
    # lifecycle
    member_min_purchases: int = 3
    positive_review_min_rating: int = 4
    intent_touch_types: frozenset[str] = frozenset({"inquiry", "cart", "signup"})
    # RFM windows, in UTC days, as-of the clock's "now"
    windows_days: tuple[int, ...] = (30, 90, 365)
    # day buckets older than this many days before the last purchase are dropped
    # (must exceed the longest window; the slack keeps windows exact when "now" trails
    # the newest purchase a little, e.g. event-time clock with allowed lateness)
    bucket_retention_days: int = 400
    # idempotency memory per customer: event ids remembered (16 bytes each), newest by
    # event time; beyond this a re-sent *old* event cannot be recognised (and is counted)
    purchase_id_cap: int = 4096
    touch_id_cap: int = 4096
    max_aliases: int = 1000
    # identity
    accept_currency: str = "EUR"

    def __post_init__(self) -> None:
        if self.bucket_retention_days <= max(self.windows_days):
            raise ValueError("bucket_retention_days must exceed the longest window")
        if self.member_min_purchases < 1:
            raise ValueError("member_min_purchases must be >= 1")
