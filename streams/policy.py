"""Business thresholds in frozen dataclasses (the single place a rule's number lives).

Every field has a ``PATRONAGE_*`` setting (agents/settings.py) and is documented in the
README; the defaults here are the documented defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.timestamps import DAY_MS, HOUR_MS, SECONDS_GUARD_BELOW_MS


@dataclass(frozen=True, slots=True)
class ChurnPolicy:
    """Who is slipping away, when, and who hears about it."""

    # -- cadence: silence relative to the customer's own usual interval between purchases --
    # silent longer than factor x usual interval (and at least min days) -> stage
    at_risk_factor: float = 3.0
    lapsed_factor: float = 6.0
    lost_factor: float = 12.0
    at_risk_min_days: float = 14.0
    lapsed_min_days: float = 30.0
    lost_min_days: float = 90.0
    # usual interval = (n x own median gap + prior_weight x prior) / (n + prior_weight), n = own gaps
    prior_weight: float = 2.0
    # the prior: the live population's median usual interval once enough customers have
    # >= 3 gaps of their own, never below this fixed value (which is the prior until then)
    prior_interval_days: float = 30.0
    prior_min_customers: int = 20
    # -- who matters (80/20 and loyalty) --
    core_share: float = 0.20  # top share of buyers by lifetime spend = tier "core"
    watch_purchases: int = 3  # milestone "watch"
    care_purchases: int = 5  # milestone "care"
    # a churn-risk trigger goes out for customers in these tiers OR with >= this many purchases
    alert_tiers: frozenset[str] = frozenset({"core"})
    alert_min_purchases: int = 5
    # -- bad experiences --
    complaint_max_rating: int = 2  # a rating <= this counts as a complaint
    experience_drop: float = 1.0  # the peak-end score falling this far below its best so far ...
    experience_floor: float = 3.75  # ... to below this raises risk (reason experience)
    # -- stalled prospects (asks again and again, never buys) --
    ask_types: frozenset[str] = frozenset({"inquiry", "cart", "visit"})
    stalled_min_asks: int = 3
    stalled_after_days: float = 14.0  # at least this long since the first ask
    # -- recipients --
    default_recipient: str = "crm"  # team for churn alerts without an owner or a store
    sales_recipient: str = "sales"  # team for stalled prospects without an owner or a store
    max_stores: int = 16  # stores remembered per customer (most visited kept; stock location)
    # -- P(alive) --
    expected_horizon_days: int = 90
    # -- control group: this share of churn-risk alerts is held out (recorded with
    # deliver: false, not delivered), drawn from a hash of (experiment, customer, episode) --
    holdout_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.at_risk_factor <= self.lapsed_factor <= self.lost_factor:
            raise ValueError("churn factors must satisfy 0 < at_risk <= lapsed <= lost")
        if not 0 <= self.at_risk_min_days <= self.lapsed_min_days <= self.lost_min_days:
            raise ValueError("churn minimum days must satisfy 0 <= at_risk <= lapsed <= lost")
        if self.prior_interval_days <= 0:
            raise ValueError("prior_interval_days must be > 0")
        if not 0 < self.core_share <= 1:
            raise ValueError("core_share must be in (0, 1]")
        if self.stalled_min_asks < 1:
            raise ValueError("stalled_min_asks must be >= 1")
        if not 0 <= self.holdout_share < 1:
            raise ValueError("churn holdout share must be in [0, 1)")

    @property
    def factors(self) -> tuple[float, float, float]:
        return (self.at_risk_factor, self.lapsed_factor, self.lost_factor)

    @property
    def min_ms(self) -> tuple[int, int, int]:
        return (
            int(self.at_risk_min_days * DAY_MS),
            int(self.lapsed_min_days * DAY_MS),
            int(self.lost_min_days * DAY_MS),
        )


@dataclass(frozen=True, slots=True)
class InterestPolicy:
    """Who is interested in a category (README "New stock for your interest")."""

    # "interested" = >= min_occasions orders with the category within occasion_window_days
    # before the arrival AND a recency-weighted share of spend >= min_spend_share
    min_occasions: int = 2
    occasion_window_days: float = 365.0
    min_spend_share: float = 0.25
    half_life_days: float = 180.0  # recency weighting of spend, occasions and touches
    max_categories: int = 16  # tracked per customer; the rest is folded into "other"
    # touchpoints of these types with a category add to the score, never create interest
    touch_types: frozenset[str] = frozenset({"view", "cart", "inquiry"})
    touch_weight: float = 0.02  # score per (decayed) touch ...
    touch_max: float = 0.10  # ... at most this much
    # cross-category affinity: categories B an arrival may also reach customers interested
    # in A for, when lift(A -> B) is high ("*" = every category; empty = off)
    affinity_categories: frozenset[str] = frozenset()
    affinity_min_lift: float = 2.0
    affinity_min_support: int = 20  # customers who bought both A and B
    affinity_max_categories: int = 256  # categories counted for lift (bounded memory)
    # store -> region, for arrivals addressed to a region (learned too from arrivals that
    # name both a store and its region)
    store_regions: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.min_occasions < 1:
            raise ValueError("interest min_occasions must be >= 1")
        if not 0 <= self.min_spend_share <= 1:
            raise ValueError("interest min_spend_share must be in [0, 1]")
        if self.half_life_days <= 0 or self.occasion_window_days <= 0:
            raise ValueError("interest half_life_days and occasion_window_days must be > 0")
        if self.max_categories < 1:
            raise ValueError("interest max_categories must be >= 1")

    def affinity_on(self, category: str) -> bool:
        cats = self.affinity_categories
        return bool(cats) and ("*" in cats or category in cats)


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """The notification gate for customer-facing triggers (README "The notification gate")."""

    channels: tuple[str, ...] = ("push", "email", "sms")  # preference order among consented ones
    consent_default: bool = False  # a channel without a recorded consent is not used
    quiet_start_min: int = 21 * 60  # quiet hours in the customer's local time (minutes) ...
    quiet_end_min: int = 8 * 60  # ... a customer's own quiet_hours override these
    default_timezone: str = "UTC"  # for customers without a timezone
    cooldown_days: float = 7.0  # per category
    cap_per_day: int = 1  # rolling 24 h, customer-facing notifications
    cap_per_week: int = 3  # rolling 7 days
    just_bought_days: float = 7.0  # a purchase in the category this recently suppresses
    coalesce_s: float = 300.0  # arrivals within this window become one notification
    max_items: int = 10  # items listed in one notification
    to_payer: frozenset[str] = frozenset()  # trigger types sent to the payer (user named)
    holdout: tuple[tuple[str, float], ...] = ()  # (trigger type, share held out)
    experiment: str = "default"  # the holdout's hash salt (a new name re-draws the groups)
    log_size: int = 20  # gate decisions remembered per customer (why / why not)
    seen_ids: int = 256  # arrival ids remembered per customer (re-delivery is a no-op)
    # an arrival older than the newest customer event applied in its partition by more than
    # this is not news any more: it is offered to nobody (a re-sent or late record; 0 = off)
    max_arrival_age_days: float = 7.0

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("gate channels must name at least one channel")
        if self.cap_per_day < 0 or self.cap_per_week < 0:
            raise ValueError("gate caps must be >= 0")
        if self.max_items < 1:
            raise ValueError("gate max_items must be >= 1")
        if self.max_arrival_age_days < 0:
            raise ValueError("gate max_arrival_age_days must be >= 0")
        for _type, share in self.holdout:
            if not 0 <= share < 1:
                raise ValueError("holdout shares must be in [0, 1)")

    def holdout_share(self, type_: str) -> float:
        for name, share in self.holdout:
            if name == type_:
                return share
        return 0.0


@dataclass(frozen=True, slots=True)
class FunnelPolicy:
    """The store funnel (streams/storefunnel.py), on event time."""

    buy_window_ms: int = 2 * HOUR_MS  # a purchase at the store this long after a visit: a buyer
    retention_ms: int = 72 * HOUR_MS  # visits/purchases kept per customer before the clock's now
    max_entries: int = 256  # visits + store purchases kept per customer (newest kept)

    def __post_init__(self) -> None:
        if self.buy_window_ms < 0:
            raise ValueError("store funnel buy window must be >= 0")
        if self.retention_ms < self.buy_window_ms + HOUR_MS:
            raise ValueError("store funnel retention must be at least the buy window plus one hour")
        if self.max_entries < 1:
            raise ValueError("store funnel max entries must be >= 1")


@dataclass(frozen=True, slots=True)
class UpliftPolicy:
    """Attribution of purchases to triggers (README "Uplift")."""

    window_days: float = 14.0  # a purchase this long after the trigger (event time) converts
    max_open: int = 16  # open exposures per customer (beyond: not measured, counted)

    def __post_init__(self) -> None:
        if self.window_days <= 0:
            raise ValueError("uplift window_days must be > 0")
        if self.max_open < 1:
            raise ValueError("uplift max_open must be >= 1")

    @property
    def window_ms(self) -> int:
        return int(self.window_days * DAY_MS)


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
    # idempotency memory per customer (streams.dedupe): the newest ids by event time (20
    # bytes each); an unknown event at or before the horizon (the latest forgotten event
    # time) cannot be judged: "dead_letter" (reason beyond_dedupe_horizon) or "apply" (counted)
    purchase_id_cap: int = 512
    touch_id_cap: int = 512
    beyond_horizon: str = "dead_letter"
    max_aliases: int = 1000
    # identity
    accept_currency: str = "EUR"
    # input plausibility (reason codes ts_out_of_range, ts_in_seconds, amount_out_of_range)
    ts_floor_ms: int = 0  # 1970-01-01T00:00:00Z
    ts_max_future_ms: int = DAY_MS  # how far past the wall clock an event time may be
    ts_seconds_below_ms: int = SECONDS_GUARD_BELOW_MS  # earlier epoch values: ts_in_seconds (0: off)
    max_amount_cents: int = 10**13  # 100 billion in major units
    # dead letters keep at most this many bytes of the original key and value each
    dead_letter_max_bytes: int = 65_536
    # an input value longer than this is dead-lettered unparsed (reason too_large)
    max_value_bytes: int = 1 << 20
    churn: ChurnPolicy = field(default_factory=ChurnPolicy)
    interest: InterestPolicy = field(default_factory=InterestPolicy)
    gate: GatePolicy = field(default_factory=GatePolicy)
    funnel: FunnelPolicy = field(default_factory=FunnelPolicy)
    uplift: UpliftPolicy = field(default_factory=UpliftPolicy)

    def __post_init__(self) -> None:
        if self.bucket_retention_days <= max(self.windows_days):
            raise ValueError("bucket_retention_days must exceed the longest window")
        if self.member_min_purchases < 1:
            raise ValueError("member_min_purchases must be >= 1")
