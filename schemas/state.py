"""The per-customer table value (what the ``customers`` table and its changelog hold).

A plain slotted class, not a pydantic model: it is created and serialised once per touched
customer per batch on the hot path, so it must be cheap. The changelog encoding is compact
JSON (orjson) with stable short keys; ``to_json``/``from_json`` round-trip exactly.

Money is integer minor units (cents) so sums are exact and independent of event order.
"""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any, NamedTuple

import orjson

# 2: typed facts, stores, churn (risk, episode, alert), experience, stalled prospect, outbox.
# 3: interest profile and notification-gate memory (new stock for your interest).
# 4: uplift exposures and tallies (streams.uplift); the churn alert may be held out.
# 5: the id memories carry a content digest per id and the horizon (streams.dedupe).
# Older records load with the newer fields empty. Fields added without a version bump
# (older readers ignore them): "fun" (store funnel entries).
STATE_VERSION = 5
_READABLE_VERSIONS = (1, 2, 3, 4, 5)


class Fact(NamedTuple):
    """A profile field from ``customer-updates``: the newest (ts, event_id) wins."""

    ts_ms: int
    event_id: str
    value: Any


class Alert(NamedTuple):
    """The churn alert of the current episode (at most one per episode)."""

    ts_ms: int  # when the condition arose (configured clock)
    reason: str  # lapse | complaint | experience
    trigger_id: str
    held_out: bool = False  # in the churn-risk control group (recorded, not delivered)


class Experience(NamedTuple):
    """Rated moments (reviews, rated support, complaints as 1), for the peak-end score."""

    rated: int  # how many rated moments
    total: int  # sum of ratings
    worst: int
    best: int
    last: int  # rating of the most recent moment (event time)
    last_ms: int
    score: float  # peak-end score after the latest rated moment, 1..5
    peak: float  # the highest score so far (a fall is measured from it)


class Ask(NamedTuple):
    """A recent "ask" touchpoint of a prospect who has not bought (for stalled-prospect alerts)."""

    ts_ms: int
    type: str
    channel: str | None
    store_id: str | None
    category: str | None


_NO_HORIZON = -(2**63)
# The only cap releases before state version 5 shipped: a memory that full had forgotten
# ids, so its oldest remembered time becomes the horizon when it loads.
LEGACY_ID_CAP = 4096


class IdMemory:
    """Compact idempotency memory (see :mod:`streams.dedupe`): 64-bit id hashes (sorted),
    each one's event time and 32-bit content digest, and the horizon (the latest event time
    forgotten, None while nothing was). 20 bytes per id.

    Changelog encoding, one base64 string: version 5 = horizon (int64) + ids (uint64) + event
    times (int64) + digests (uint32), little-endian; versions 1-4 = ids + event times (no
    digests: such ids match any content; no horizon unless the memory was full).
    """

    __slots__ = ("digests", "horizon", "ids", "ts")

    _EMPTY: tuple[int, ...] = ()

    def __init__(self) -> None:
        # arrays are created on the first insert (most customers never use one of the two)
        self.ids: array[int] | tuple[int, ...] = IdMemory._EMPTY
        self.ts: array[int] | tuple[int, ...] = IdMemory._EMPTY
        self.digests: array[int] | tuple[int, ...] = IdMemory._EMPTY
        self.horizon: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self) -> str:
        if not self.ids:
            return ""
        ids, ts, ds = self.ids, self.ts, self.digests
        assert isinstance(ids, array) and isinstance(ts, array)
        if not isinstance(ds, array):
            ds = array("I", bytes(4 * len(ids)))
        head = array("q", (_NO_HORIZON if self.horizon is None else self.horizon,))
        if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
            head, ids, ts, ds = array("q", head), array("Q", ids), array("q", ts), array("I", ds)
            for a in (head, ids, ts, ds):
                a.byteswap()
        return base64.b64encode(head.tobytes() + ids.tobytes() + ts.tobytes() + ds.tobytes()).decode("ascii")

    @classmethod
    def decode(cls, text: str, version: int = 5) -> IdMemory:
        raw = base64.b64decode(text)
        mem = cls()
        if not raw:
            return mem
        if version < 5:
            if len(raw) % 16:
                raise ValueError("corrupt id memory (length not a multiple of 16)")
            n = len(raw) // 16
            mem.ids = array("Q", raw[: 8 * n])
            mem.ts = array("q", raw[8 * n :])
            head = None
        else:
            if (len(raw) - 8) % 20:
                raise ValueError("corrupt id memory (length not 8 + 20 per id)")
            n = (len(raw) - 8) // 20
            head = array("q", raw[:8])
            mem.ids = array("Q", raw[8 : 8 + 8 * n])
            mem.ts = array("q", raw[8 + 8 * n : 8 + 16 * n])
            mem.digests = array("I", raw[8 + 16 * n :])
        if sys.byteorder != "little":  # pragma: no cover
            for a in (head, mem.ids, mem.ts, mem.digests):
                if isinstance(a, array):
                    a.byteswap()
        if head is not None:
            mem.horizon = None if head[0] == _NO_HORIZON else head[0]
        elif n >= LEGACY_ID_CAP:
            mem.horizon = min(mem.ts)
        return mem

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, IdMemory)
            and list(self.ids) == list(other.ids)
            and list(self.ts) == list(other.ts)
            and (list(self.digests) or [0] * len(self.ids)) == (list(other.digests) or [0] * len(other.ids))
            and self.horizon == other.horizon
        )

    __hash__ = None  # type: ignore[assignment]


class CustomerState:
    """Everything patronage knows about one subject (a customer id or an anonymous id)."""

    __slots__ = (
        "subject",
        "anonymous",
        # RFM (event time)
        "frequency",
        "monetary_cents",
        "first_purchase_ms",
        "last_purchase_ms",
        "days",
        "purchase_ids",
        # touchpoints
        "touch_counts",
        "first_touch_ms",
        "last_touch_ms",
        "positive_reviews",
        "touch_ids",
        # profile facts from customer-updates: field -> Fact
        "facts",
        # where they shop: store id -> purchases + visits (bounded, see policy.max_stores)
        "stores",
        # churn: risk stage (at_risk | lapsed | lost | None) on the configured clock
        "risk",
        "risk_since_ms",
        "episode",  # churn episodes closed so far (a come-back closes one)
        "alert",  # Alert of the current episode, or None
        "experience",
        # stalled prospect
        "asks",
        "stalled_ms",
        # triggers decided but not yet confirmed sent (outbox), and the last one per type
        "outbox",
        "last_triggers",
        # interest profile per category (streams.interest) and the notification gate's
        # memory (streams.gate): plain JSON-able dicts, None until first used
        "interest",
        "notify",
        # store funnel (streams.storefunnel): {"v": [[store, ts]], "p": [[store, ts, cents]]},
        # recent store visits and store purchases, None when there are none
        "funnel",
        # uplift exposures (open) and closed tallies (streams.uplift); None until first used
        "uplift",
        # derived, never encoded: the own-rhythm summary of the day buckets, recomputed
        # only when they change (streams.rfm.rhythm)
        "rhythm_cache",
        # lifecycle
        "stage",
        "stage_since_ms",
        # identity
        "aliases",
        "merged_into",
        "erased_ms",
        "last_event_ms",
    )

    def __init__(self, subject: str, anonymous: bool = False) -> None:
        self.subject = subject
        self.anonymous = anonymous
        self.frequency = 0
        self.monetary_cents = 0
        self.first_purchase_ms: int | None = None
        self.last_purchase_ms: int | None = None
        # UTC day number -> [purchases, cents]; only the trailing retention window is kept.
        self.days: dict[int, list[int]] = {}
        # Bounded idempotency memory (see streams.dedupe).
        self.purchase_ids = IdMemory()
        self.touch_counts: dict[str, int] = {}
        self.first_touch_ms: int | None = None
        self.last_touch_ms: int | None = None
        self.positive_reviews = 0
        self.touch_ids = IdMemory()
        self.facts: dict[str, Fact] = {}
        self.stores: dict[str, int] = {}
        self.risk: str | None = None
        self.risk_since_ms: int | None = None
        self.episode = 0
        self.alert: Alert | None = None
        self.experience: Experience | None = None
        self.asks: list[Ask] = []
        self.stalled_ms: int | None = None
        self.outbox: list[dict[str, Any]] = []
        self.last_triggers: dict[str, list[Any]] = {}  # type -> [trigger_id, ts_ms]
        self.interest: dict[str, Any] | None = None
        self.notify: dict[str, Any] | None = None
        self.funnel: dict[str, list[list[Any]]] | None = None
        self.uplift: dict[str, Any] | None = None
        self.rhythm_cache: tuple[int, int, float, int] | None = None
        self.stage = "stranger"
        self.stage_since_ms: int | None = None
        self.aliases: list[str] = []
        self.merged_into: str | None = None
        self.erased_ms: int | None = None
        self.last_event_ms: int | None = None

    # --- encoding -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": STATE_VERSION, "s": self.subject}
        if self.anonymous:
            d["anon"] = True
        if self.frequency:
            d["f"] = self.frequency
            d["m"] = self.monetary_cents
            d["fp"] = self.first_purchase_ms
            d["lp"] = self.last_purchase_ms
            d["days"] = self.days  # int keys: encoded with OPT_NON_STR_KEYS
            d["pid"] = self.purchase_ids.encode()
        if self.touch_counts:
            d["tc"] = self.touch_counts
            d["ft"] = self.first_touch_ms
            d["lt"] = self.last_touch_ms
            d["tid"] = self.touch_ids.encode()
        if self.positive_reviews:
            d["pr"] = self.positive_reviews
        if self.facts:
            d["facts"] = {k: list(f) for k, f in self.facts.items()}
        if self.stores:
            d["sto"] = self.stores
        if self.risk is not None:
            d["rk"] = self.risk
            d["rks"] = self.risk_since_ms
        if self.episode:
            d["ep"] = self.episode
        if self.alert is not None:
            d["alr"] = list(self.alert)
        if self.experience is not None:
            d["exp"] = list(self.experience)
        if self.asks:
            d["ask"] = [list(a) for a in self.asks]
        if self.stalled_ms is not None:
            d["stl"] = self.stalled_ms
        if self.outbox:
            d["out"] = self.outbox
        if self.last_triggers:
            d["ltr"] = self.last_triggers
        if self.interest:
            d["int"] = self.interest
        if self.notify:
            d["ntf"] = self.notify
        if self.funnel:
            d["fun"] = self.funnel
        if self.uplift:
            d["upl"] = self.uplift
        d["st"] = self.stage
        if self.stage_since_ms is not None:
            d["ss"] = self.stage_since_ms
        if self.aliases:
            d["al"] = self.aliases
        if self.merged_into is not None:
            d["mi"] = self.merged_into
        if self.erased_ms is not None:
            d["er"] = self.erased_ms
        if self.last_event_ms is not None:
            d["le"] = self.last_event_ms
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_dict(cls, d: dict[str, Any], id_memory: bool = True) -> CustomerState:
        """``id_memory=False``: the two id memories are left empty - a read-only view for
        building indexes (a restart's rebuild decodes every customer once and drops it;
        no index reads event ids). Such a state must never be stored or encoded."""
        version = d.get("v")
        if version not in _READABLE_VERSIONS:
            raise ValueError(f"unsupported customer state version {version!r}")
        # every slot set once, without __init__'s defaults first (a restart decodes every
        # customer once, a cold customer is decoded again on each touch: streams/store.py)
        s = cls.__new__(cls)
        get = d.get
        s.subject = d["s"]
        s.anonymous = bool(get("anon", False))
        if "f" in d:
            s.frequency = d["f"]
            s.monetary_cents = d["m"]
            s.first_purchase_ms = d["fp"]
            s.last_purchase_ms = d["lp"]
            s.days = {int(day): [n, c] for day, (n, c) in d["days"].items()}
            s.purchase_ids = IdMemory.decode(d["pid"], version) if id_memory else IdMemory()
        else:
            s.frequency = 0
            s.monetary_cents = 0
            s.first_purchase_ms = None
            s.last_purchase_ms = None
            s.days = {}
            s.purchase_ids = IdMemory()
        if "tc" in d:
            s.touch_counts = d["tc"]
            s.first_touch_ms = d["ft"]
            s.last_touch_ms = d["lt"]
            s.touch_ids = IdMemory.decode(d["tid"], version) if id_memory else IdMemory()
        else:
            s.touch_counts = {}
            s.first_touch_ms = None
            s.last_touch_ms = None
            s.touch_ids = IdMemory()
        s.positive_reviews = get("pr", 0)
        facts = get("facts")
        s.facts = {k: Fact(*f) for k, f in facts.items()} if facts else {}
        s.stores = get("sto", {})
        s.risk = get("rk")
        s.risk_since_ms = get("rks")
        s.episode = get("ep", 0)
        alert = get("alr")
        s.alert = None if alert is None else Alert(*alert)
        exp = get("exp")
        s.experience = None if exp is None else Experience(*exp)
        asks = get("ask")
        s.asks = [Ask(*a) for a in asks] if asks else []
        s.stalled_ms = get("stl")
        s.outbox = get("out", [])
        s.last_triggers = get("ltr", {})
        s.interest = get("int")
        s.notify = get("ntf")
        s.funnel = get("fun")
        s.uplift = get("upl")
        s.rhythm_cache = None
        s.stage = get("st", "stranger")
        s.stage_since_ms = get("ss")
        s.aliases = get("al", [])
        s.merged_into = get("mi")
        s.erased_ms = get("er")
        s.last_event_ms = get("le")
        return s

    @classmethod
    def from_json(cls, raw: bytes, id_memory: bool = True) -> CustomerState:
        return cls.from_dict(orjson.loads(raw), id_memory)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CustomerState) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"CustomerState({self.to_dict()!r})"

    __hash__ = None  # type: ignore[assignment]

    def fact(self, name: str, default: Any = None) -> Any:
        """Current value of a customer-update field (``loyalty_member``, ``timezone``...)."""
        entry = self.facts.get(name)
        return default if entry is None else entry.value
