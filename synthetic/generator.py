"""Deterministic, realistic synthetic input events for demos, tests and benchmarks.

``generate(customers, seed)`` builds a population and emits the four input streams as
JSON-able dicts that validate against :mod:`schemas.events`:

- every customer has a purchase rhythm (gamma-distributed gaps, mean 5..90 days), a basket
  size, 1-3 favourite categories holding most of the spend (often the same few SKUs), a home
  store with a local time zone (EU daylight saving applied) and a store/web/app channel mix;
- touchpoints precede purchases (views, sessions, store visits, cart adds, inquiries), plus
  campaign clicks, app opens, support contacts, reviews, a few complaints and referrals;
- ~8% are *lapsing loyalists*: >= 6 purchases at a steady rhythm, then silent for at least
  four times their median gap (and >= 60 days) before ``end_ms``;
- anonymous visitors browse; about half later ``identify`` and buy as that customer;
- customer updates carry consent, time zone, loyalty membership (~20%), households/payers;
- half of the browsers (sign up, never buy) keep asking: store visits and inquiries over weeks.

``labels`` state what is true by construction, for scoring churn and stock triggers.
Timestamps are whole seconds; most are ISO-8601 (``Z`` or the local offset), some epoch
milliseconds. Every list is sorted by event time and event ids number events in that order.

Pure: no I/O, no wall clock, no global random state (one ``random.Random(seed)`` per call).
The same arguments give identical output.
"""

from __future__ import annotations

import gc
import math
import random
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import accumulate, pairwise
from statistics import median
from typing import Any

from schemas.timestamps import DAY_MS

DEFAULT_END_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z

_SEC = 1000
_HOUR_S = 3600
_DAY_S = 86_400

# name -> (sku code, min price EUR, max price EUR, popularity, max qty per line)
_CATEGORY_SPEC: dict[str, tuple[str, float, float, float, int]] = {
    "imported_fresh_food": ("IFF", 2.5, 25.0, 5, 3),
    "premium_beer": ("BEER", 1.8, 6.5, 5, 6),
    "wine": ("WINE", 5.0, 60.0, 6, 3),
    "bakery": ("BAKE", 0.8, 8.0, 9, 4),
    "dairy": ("DAIR", 0.6, 7.0, 10, 4),
    "coffee": ("COFF", 3.5, 18.0, 6, 2),
    "snacks": ("SNAK", 0.9, 5.0, 8, 4),
    "household": ("HOUS", 1.5, 15.0, 7, 3),
    "baby": ("BABY", 2.5, 30.0, 3, 3),
    "pet": ("PET", 1.5, 40.0, 4, 3),
    "frozen": ("FROZ", 1.5, 12.0, 6, 3),
    "produce": ("PROD", 0.5, 6.0, 10, 5),
    "meat": ("MEAT", 3.0, 30.0, 7, 2),
    "fish": ("FISH", 4.0, 35.0, 4, 2),
    "cosmetics": ("COSM", 2.5, 45.0, 4, 2),
    "toys": ("TOYS", 5.0, 80.0, 2, 1),
    "electronics": ("ELEC", 10.0, 400.0, 2, 1),
    "books": ("BOOK", 6.0, 35.0, 2, 1),
    "garden": ("GARD", 3.0, 90.0, 2, 2),
    "pharmacy": ("PHAR", 2.0, 25.0, 4, 2),
}
CATEGORIES: tuple[str, ...] = tuple(_CATEGORY_SPEC)
_POP_CUM = list(accumulate(spec[3] for spec in _CATEGORY_SPEC.values()))
_SKUS = 40  # catalogue size per category, sorted by price (cheap first)

# Standard UTC offset (minutes) of each zone; EU daylight saving adds 60 in summer.
_TZ_STD: dict[str, int] = {
    "Europe/Amsterdam": 60,
    "Europe/Berlin": 60,
    "Europe/Paris": 60,
    "Europe/Madrid": 60,
    "Europe/Rome": 60,
    "Europe/Vienna": 60,
    "Europe/Brussels": 60,
    "Europe/Lisbon": 0,
    "Europe/Dublin": 0,
    "Europe/Helsinki": 120,
}
_TZ_NAMES = tuple(_TZ_STD)
STORES: tuple[str, ...] = tuple(f"s{i:02d}" for i in range(1, 13))
_STORE_INFO: dict[str, tuple[str, str]] = {  # store -> (region, time zone)
    "s01": ("north", "Europe/Amsterdam"),
    "s02": ("north", "Europe/Amsterdam"),
    "s03": ("north", "Europe/Brussels"),
    "s04": ("west", "Europe/Paris"),
    "s05": ("west", "Europe/Paris"),
    "s06": ("west", "Europe/Dublin"),
    "s07": ("south", "Europe/Madrid"),
    "s08": ("south", "Europe/Rome"),
    "s09": ("south", "Europe/Lisbon"),
    "s10": ("east", "Europe/Berlin"),
    "s11": ("east", "Europe/Vienna"),
    "s12": ("east", "Europe/Helsinki"),
}
_REGIONS = ("north", "west", "south", "east")
CHANNELS = ("store", "web", "app")
# cumulative (store, web, app) shares of a customer's purchases, and how common each mix is
_CHANNEL_MIXES = ((0.85, 0.95, 1.0), (0.2, 0.85, 1.0), (0.2, 0.35, 1.0), (0.4, 0.7, 1.0))
_CHANNEL_MIX_WEIGHTS = (55, 20, 15, 10)
_FAV_WEIGHTS = {1: (1.0,), 2: (0.65, 0.35), 3: (0.5, 0.3, 0.2)}

# local hour-of-day weights: shops open 08..21, online 07..24
_STORE_HOURS = tuple(range(8, 21))
_STORE_HOURS_CUM = list(accumulate((3, 5, 7, 8, 9, 7, 6, 6, 8, 10, 11, 8, 4)))
_ONLINE_HOURS = tuple(range(7, 24))
_ONLINE_HOURS_CUM = list(accumulate((2, 3, 3, 4, 4, 6, 5, 4, 4, 4, 5, 6, 8, 10, 10, 7, 3)))
_DELIVERY_HOURS = tuple(range(4, 10))
_DELIVERY_HOURS_CUM = list(accumulate((2, 4, 5, 4, 3, 1)))

_RATINGS = (1, 2, 3, 4, 5)
_RATING_WEIGHTS = (4, 6, 14, 32, 44)

# How the population splits (shares of ``customers``).
LAPSING_SHARE = 0.08
BROWSER_SHARE = 0.04  # signed up, never bought
OCCASIONAL_SHARE = 0.20  # 1-4 purchases, then gone
ANONYMOUS_SHARE = 0.10  # anonymous visitors, about half of whom identify
COMPLAINER_SHARE = 0.02
ASKER_SHARE = 0.5  # of browsers: ask again and again (visits, inquiries) and never buy
# what counts as asking, and when a prospect counts as stalled (streams.policy.ChurnPolicy)
ASK_TYPES = frozenset({"inquiry", "cart", "visit"})
STALLED_MIN_ASKS = 3
STALLED_AFTER_DAYS = 14
LOYALTY_SHARE = 0.20
HOUSEHOLD_SHARE = 0.12


@dataclass
class SyntheticData:
    purchases: list[dict]
    touchpoints: list[dict]
    customer_updates: list[dict]
    stock_arrivals: list[dict]
    labels: dict


# ---------------------------------------------------------------------------------------------
# time helpers


@lru_cache(maxsize=256)
def _dst_window_ms(year: int) -> tuple[int, int]:
    """EU summer time: last Sunday of March 01:00 UTC .. last Sunday of October 01:00 UTC."""

    def last_sunday(month: int) -> int:
        d = datetime(year, month, 31, 1, tzinfo=UTC)
        d -= timedelta(days=(d.weekday() - 6) % 7)
        return int(d.timestamp()) * _SEC

    return last_sunday(3), last_sunday(10)


@lru_cache(maxsize=65_536)
def _offset_min(std: int, day: int) -> int:
    """UTC offset in minutes of a zone with standard offset ``std`` on UTC day ``day`` (noon)."""
    noon = day * DAY_MS + DAY_MS // 2
    year = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)).year
    begin, end = _dst_window_ms(year)
    return std + 60 if begin <= noon < end else std


@lru_cache(maxsize=65_536)
def _day_prefix(day: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(days=day)).strftime("%Y-%m-%dT")


_TWO = tuple(f"{i:02d}" for i in range(60))
_HHMM = tuple(f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
_SUFFIX = {
    off: "Z" if off == 0 else f"{'+' if off > 0 else '-'}{abs(off) // 60:02d}:{abs(off) % 60:02d}"
    for off in range(-14 * 60, 14 * 60 + 1, 15)
}


def _iso(ms: int, off_min: int) -> str:
    """ISO-8601 of whole-second ``ms``: ``...Z`` when ``off_min`` is 0, else local ``+hh:mm``."""
    day, sec = divmod(ms // _SEC + off_min * 60, _DAY_S)
    return f"{_day_prefix(day)}{_HHMM[sec // 60]}{_TWO[sec % 60]}{_SUFFIX[off_min]}"


def _render_ts(ms: int, off_min: int, r: float) -> int | str:
    """Mix the accepted formats: 15% epoch ms, 20% ISO with local offset, 65% ISO ``Z``."""
    if r < 0.15:
        return ms
    if r < 0.35:
        return _iso(ms, off_min)
    return _iso(ms, 0)


# ---------------------------------------------------------------------------------------------
# catalogue and customers


def _price_cents(eur: float) -> int:
    """Shelf price: 3.49 / 0.89 below 20 EUR, 24.99 above."""
    if eur >= 20:
        return int(eur) * 100 + 99
    return max(19, int(eur * 10) * 10 + 9)


def _catalogue(rng: random.Random) -> dict[str, list[tuple[str, int]]]:
    """``category -> [(sku, price_cents)]``, cheapest first."""
    out = {}
    for name, (code, lo, hi, _pop, _qty) in _CATEGORY_SPEC.items():
        prices = sorted(_price_cents(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(_SKUS))
        out[name] = [(f"{code}-{k:04d}", p) for k, p in enumerate(prices, 1)]
    return out


def _popular_category(rng: random.Random) -> str:
    return CATEGORIES[bisect(_POP_CUM, rng.random() * _POP_CUM[-1])]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit = math.exp(-lam)
    k = 0
    p = rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


@dataclass(slots=True)
class _Customer:
    cid: str
    kind: str  # regular | lapsing | occasional | browser
    existing: bool  # already a customer when the period starts
    gap: float  # mean days between purchases
    shape: float  # gamma shape of the gaps (higher = steadier)
    basket: float  # mean lines per basket
    favs: list[str]
    fav_cum: list[float]
    p_fav: float
    usual: dict[str, list[int]]  # favourite category -> usual SKU indices
    home: str
    chan_cum: tuple[float, float, float]
    tz: str
    std_off: int
    # purchases: [ts, offset, channel, store_id, items, payer_id]; items: [sku, category, qty, cents]
    purchases: list[list[Any]] = field(default_factory=list)
    household: str | None = None
    payer: str | None = None


# ---------------------------------------------------------------------------------------------
# the generator


class _Builder:
    def __init__(self, customers: int, seed: int, end_ms: int, days: int, currency: str) -> None:
        self.n = customers
        self.seed = seed
        self.days = days
        self.currency = currency
        self.rng = random.Random(seed)
        self.rnd = self.rng.random
        self.end_ms = end_ms
        self.start_ms = -(-(end_ms - days * DAY_MS) // _SEC) * _SEC  # first whole second
        # purchase days: any local time on these UTC days lies inside [start_ms, end_ms)
        self.first_day = -(-self.start_ms // DAY_MS)
        self.last_day = (end_ms - DAY_MS) // DAY_MS
        self.catalogue = _catalogue(self.rng)
        self.seq = 0
        self.purchases: list[tuple[int, int, int, dict]] = []
        self.touches: list[tuple[int, int, int, dict]] = []
        self.updates: list[tuple[int, int, int, dict]] = []
        self.stock: list[tuple[int, int, int, dict]] = []
        self.anon_ids: set[str] = set()
        self.stalled: list[str] = []  # known customers who ask and ask and never buy

    # -- small helpers ------------------------------------------------------------------------

    def _push(self, out: list, ts: int, off: int, fields: dict) -> None:
        self.seq += 1
        out.append((ts // _SEC * _SEC, self.seq, off, fields))  # whole seconds

    def _at(self, day: int, online: bool, std_off: int) -> tuple[int, int]:
        """A local time of day on UTC day ``day`` -> (epoch ms, offset minutes)."""
        rng = self.rng
        if online:
            hour = _ONLINE_HOURS[bisect(_ONLINE_HOURS_CUM, rng.random() * _ONLINE_HOURS_CUM[-1])]
        else:
            hour = _STORE_HOURS[bisect(_STORE_HOURS_CUM, rng.random() * _STORE_HOURS_CUM[-1])]
        off = _offset_min(std_off, day)
        sec = hour * _HOUR_S + self._ri(0, _HOUR_S) - off * 60
        return day * DAY_MS + sec * _SEC, off

    def _ri(self, lo: int, hi: int) -> int:
        """Like ``randrange(lo, hi)``, several times faster (a float draw)."""
        return lo + int(self.rnd() * (hi - lo))

    def _pick(self, seq: Any) -> Any:
        return seq[int(self.rnd() * len(seq))]

    def _off(self, c: _Customer, ts: int) -> int:
        return _offset_min(c.std_off, ts // DAY_MS)

    def _anon_id(self) -> str:
        while True:
            aid = f"anon-{self.rng.getrandbits(40):010x}"
            if aid not in self.anon_ids:
                self.anon_ids.add(aid)
                return aid

    # -- population ---------------------------------------------------------------------------

    def customer(self, i: int, kind: str) -> _Customer:
        rng = self.rng
        n_fav = rng.choices((1, 2, 3), (30, 45, 25))[0]
        favs: list[str] = []
        while len(favs) < n_fav:
            cat = _popular_category(rng)
            if cat not in favs:
                favs.append(cat)
        home = self._pick(STORES)
        tz = _STORE_INFO[home][1] if rng.random() < 0.9 else self._pick(_TZ_NAMES)
        return _Customer(
            cid=f"c{i:06d}",
            kind=kind,
            existing=rng.random() < 0.45,
            gap=math.exp(rng.uniform(math.log(5), math.log(90))),
            shape=rng.uniform(1.8, 6.0),
            basket=rng.uniform(1.3, 7.0),
            favs=favs,
            fav_cum=list(accumulate(_FAV_WEIGHTS[n_fav])),
            p_fav=rng.uniform(0.72, 0.92),
            usual={cat: [int(rng.random() ** 1.6 * _SKUS) for _ in range(3)] for cat in favs},
            home=home,
            chan_cum=rng.choices(_CHANNEL_MIXES, _CHANNEL_MIX_WEIGHTS)[0],
            tz=tz,
            std_off=_TZ_STD[tz],
        )

    def _gap_days(self, c: _Customer, lo: float, hi: float) -> int:
        g = self.rng.gammavariate(c.shape, c.gap / c.shape)
        return max(1, round(min(max(g, lo * c.gap), hi * c.gap)))

    def _purchase_days(self, c: _Customer) -> list[int]:
        rng = self.rng
        span = self.last_day - self.first_day
        if c.kind == "browser":
            return []
        if c.kind == "lapsing":
            return self._lapsing_days(c)
        if c.kind == "occasional":
            c.existing = False
            n = rng.choices((1, 2, 3, 4), (40, 30, 18, 12))[0]
            day = self.first_day + int(rng.uniform(0.0, 0.95) * span)
        else:
            n = 1 << 30
            if c.existing:
                day = self.first_day + int(rng.random() * c.gap)
            else:
                day = self.first_day + int(rng.uniform(0.02, 0.97) * span)
        out: list[int] = []
        while day <= self.last_day and len(out) < n:
            out.append(day)
            day += self._gap_days(c, 0.25, 2.5)
        return out

    def _lapsing_days(self, c: _Customer) -> list[int]:
        """>= 6 purchases at a steady rhythm, then a silence of at least 60 days, 4 x their median
        gap and 2.5 x their longest gap."""
        rng = self.rng
        span = self.last_day - self.first_day
        for _ in range(200):
            c.gap = math.exp(rng.uniform(math.log(5), math.log(35)))
            c.shape = rng.uniform(5.0, 12.0)
            n = self._ri(6, 24 + 1)
            gaps = [max(3, self._gap_days(c, 0.6, 1.6)) for _ in range(n - 1)]
            silence = math.ceil(max(60.0, median(gaps) * rng.uniform(4.0, 9.0), 2.5 * max(gaps) + 2))
            if sum(gaps) + silence <= span:
                break
        else:  # days >= 120 always leaves room for this
            c.gap, c.shape = 5.0, 12.0
            gaps, silence = [5] * 5, 60
        c.existing = False
        days = [self.last_day - silence]
        for g in reversed(gaps):
            days.append(days[-1] - g)
        days.reverse()
        return days

    def schedule(self, c: _Customer) -> None:
        """Purchase times, channels and stores (baskets come later)."""
        rng = self.rng
        for day in self._purchase_days(c):
            self._add_purchase_slot(c, day)
        if c.kind == "regular":
            # a regular buyer is, by construction, never silent for long at the end: keep the
            # final silence within 2.5 x the median gap (so lapsing loyalists stay distinct)
            for _ in range(10):
                ts = [p[0] for p in c.purchases]
                if len(ts) < 5:
                    break
                med = median(b - a for a, b in pairwise(ts))
                if self.end_ms - ts[-1] <= 2.5 * med:
                    break
                target = self.end_ms - int(med * rng.uniform(0.2, 0.8))
                self._add_purchase_slot(c, target // DAY_MS)
                if not ts[-1] < c.purchases[-1][0] < self.end_ms:
                    c.purchases[-1][0] = target // _SEC * _SEC
                    c.purchases[-1][1] = self._off(c, target)

    def _add_purchase_slot(self, c: _Customer, day: int) -> None:
        rng = self.rng
        channel = CHANNELS[bisect(c.chan_cum, rng.random())]
        if channel == "store":
            store = c.home if rng.random() < 0.85 else self._pick(STORES)
        elif channel == "app" and rng.random() < 0.3:
            store = c.home  # click & collect
        else:
            store = None
        ts, off = self._at(day, channel != "store", c.std_off)
        payer = c.payer if c.payer is not None and rng.random() < 0.5 else None
        c.purchases.append([ts, off, channel, store, [], payer])

    # -- baskets ------------------------------------------------------------------------------

    def _basket(self, c: _Customer) -> list[list[Any]]:
        rnd = self.rnd
        catalogue = self.catalogue
        favs, fav_cum, usual = c.favs, c.fav_cum, c.usual
        top = fav_cum[-1]
        k = 1 + min(39, int(math.log(1.0 - rnd()) / math.log(1.0 - 1.0 / c.basket)))
        lines: dict[str, list[Any]] = {}
        for _ in range(k):
            if rnd() < c.p_fav:
                cat = favs[bisect(fav_cum, rnd() * top)] if len(favs) > 1 else favs[0]
                if rnd() < 0.6:
                    choices = usual[cat]
                    idx = choices[int(rnd() * len(choices))]
                else:
                    idx = int(rnd() ** 1.6 * _SKUS)
                qty = 1 if rnd() < 0.6 else 1 + int(rnd() * _CATEGORY_SPEC[cat][4])
            else:  # impulse buy outside the favourites: one cheap item
                cat = CATEGORIES[bisect(_POP_CUM, rnd() * _POP_CUM[-1])]
                while cat in favs:
                    cat = CATEGORIES[bisect(_POP_CUM, rnd() * _POP_CUM[-1])]
                idx = int(rnd() ** 3 * _SKUS)
                qty = 1
            sku, price = catalogue[cat][idx]
            if rnd() < 0.08:
                price = max(1, price * 4 // 5)  # on promotion
            line = lines.get(sku)
            if line is None:
                lines[sku] = [sku, cat, qty, price]
            else:
                line[2] += qty
        return list(lines.values())

    def _favourites(self, c: _Customer) -> list[str]:
        """The customer's favourites that really lead its spend, most spent first.

        Each returned category out-spends every non-favourite category, and together they
        hold the majority of the spend. Rarely (few purchases, one pricey impulse buy) this
        needs help: the biggest non-favourite line is then swapped for a favourite item.
        """
        baskets = [p[4] for p in c.purchases]
        while True:
            spend: dict[str, int] = {}
            for items in baskets:
                for _sku, cat, qty, price in items:
                    spend[cat] = spend.get(cat, 0) + qty * price
            total = sum(spend.values())
            other = max((v for k, v in spend.items() if k not in c.favs), default=0)
            label = [f for f in c.favs if spend.get(f, 0) > other]
            label.sort(key=lambda f: (-spend[f], c.favs.index(f)))
            if label and 2 * sum(spend[f] for f in label) > total:
                return label
            items, j = max(
                ((items, j) for items in baskets for j, ln in enumerate(items) if ln[1] not in c.favs),
                key=lambda pair: pair[0][pair[1]][2] * pair[0][pair[1]][3],
            )
            del items[j]
            cat = c.favs[0]
            sku, price = self.catalogue[cat][self._pick(c.usual[cat])]
            for line in items:
                if line[0] == sku:
                    line[2] += 1
                    break
            else:
                items.append([sku, cat, 1, price])

    # -- touchpoints --------------------------------------------------------------------------

    def _pre_purchase(self, c: _Customer, p: list[Any], out: list[tuple[int, int, dict]]) -> None:
        """What happens before a purchase: store visit, or views / session / cart online."""
        rng = self.rng
        ts, off, channel, store, items, _payer = p
        cid = c.cid
        if channel == "store":
            if rng.random() < 0.9:
                t = ts - self._ri(180, 2700) * _SEC
                dur = float(self._ri(240, 3600))
                out.append(
                    (
                        t,
                        off,
                        {
                            "customer_id": cid,
                            "type": "visit",
                            "channel": "store",
                            "store_id": store,
                            "duration_s": dur,
                        },
                    )
                )
            if rng.random() < 0.25:
                sku, cat = self._pick(items)[:2]
                t = ts - self._ri(2 * _HOUR_S, 72 * _HOUR_S) * _SEC
                out.append(
                    (
                        t,
                        off,
                        {"customer_id": cid, "type": "view", "channel": "web", "category": cat, "sku": sku},
                    )
                )
            if rng.random() < 0.03:
                cat = self._pick(items)[1]
                t = ts - self._ri(_HOUR_S, 96 * _HOUR_S) * _SEC
                out.append(
                    (t, off, {"customer_id": cid, "type": "inquiry", "channel": "phone", "category": cat})
                )
            return
        for _ in range(1 + (rng.random() < 0.55) + (rng.random() < 0.25)):
            sku, cat = self._pick(items)[:2]
            t = ts - self._ri(600, 72 * _HOUR_S) * _SEC
            dur = float(self._ri(5, 300))
            out.append(
                (
                    t,
                    off,
                    {
                        "customer_id": cid,
                        "type": "view",
                        "channel": channel,
                        "category": cat,
                        "sku": sku,
                        "duration_s": dur,
                    },
                )
            )
        if rng.random() < 0.65:
            sku, cat = items[0][:2]
            t = ts - self._ri(60, 1500) * _SEC
            out.append(
                (
                    t,
                    off,
                    {"customer_id": cid, "type": "cart", "channel": channel, "category": cat, "sku": sku},
                )
            )
        if rng.random() < 0.35:
            t = ts - self._ri(120, 2400) * _SEC
            dur = float(self._ri(60, 2400))
            out.append((t, off, {"customer_id": cid, "type": "visit", "channel": channel, "duration_s": dur}))
        if rng.random() < 0.06:
            cat = self._pick(items)[1]
            t = ts - self._ri(_HOUR_S, 96 * _HOUR_S) * _SEC
            out.append((t, off, {"customer_id": cid, "type": "inquiry", "channel": "chat", "category": cat}))

    def _after(self, c: _Customer, p: list[Any], lo_s: int, hi_s: int) -> tuple[int, int]:
        t = p[0] + self._ri(lo_s, hi_s) * _SEC
        return t, self._off(c, t)

    def _online(self, c: _Customer) -> str:
        return "app" if self.rng.random() < c.chan_cum[2] - c.chan_cum[1] + 0.1 else "web"

    def _rating(self, complainer: bool) -> int:
        if complainer:
            return self._pick((1, 1, 2))
        return self.rng.choices(_RATINGS, _RATING_WEIGHTS)[0]

    def _anonymous_visitor(self, identified: _Customer | None) -> tuple[str, int | None]:
        """Anonymous browsing; for ``identified`` it ends just before that customer's first purchase."""
        rng = self.rng
        aid = self._anon_id()
        if identified is not None:
            c = identified
            ident_ts = c.purchases[0][0] - self._ri(300, 3 * _HOUR_S) * _SEC
            cats = c.favs
            std = c.std_off
            channel = self._online(c)
            lo, hi = ident_ts - self._ri(1, 45) * DAY_MS, ident_ts
        else:
            ident_ts = None
            cats = [_popular_category(rng) for _ in range(2)]
            std = _TZ_STD[self._pick(_TZ_NAMES)]
            channel = self._pick(("web", "web", "app"))
            lo = self.start_ms + self._ri(0, (self.days - 40) * _DAY_S) * _SEC
            hi = lo + self._ri(_HOUR_S, 30 * _DAY_S) * _SEC
        for _ in range(self._ri(2, 8 + 1)):
            t = self._ri(lo // _SEC, hi // _SEC) * _SEC
            cat = self._pick(cats) if rng.random() < 0.7 else _popular_category(rng)
            sku = self.catalogue[cat][int(rng.random() ** 1.6 * _SKUS)][0]
            typ = self._pick(("view", "view", "view", "visit", "cart"))
            fields: dict[str, Any] = {"anonymous_id": aid, "type": typ, "channel": channel}
            if typ == "visit":
                fields["duration_s"] = float(self._ri(30, 1800))
            else:
                fields["category"] = cat
                fields["sku"] = sku
            self._push_touch(t, _offset_min(std, t // DAY_MS), fields)
        return aid, ident_ts

    def _push_touch(self, ts: int, off: int, fields: dict) -> None:
        if self.start_ms <= ts < self.end_ms:
            self._push(self.touches, ts, off, fields)

    def _push_update(self, c: _Customer, ts: int, fields: dict) -> None:
        if self.start_ms <= ts < self.end_ms:
            self._push(self.updates, ts, self._off(c, ts), {"customer_id": c.cid, **fields})

    # -- one customer, end to end -------------------------------------------------------------

    def emit_customer(
        self,
        c: _Customer,
        *,
        identified: bool,
        complainer: bool,
        reviewer: bool,
        referrer: bool,
        support: bool,
        loyalty: bool,
    ) -> tuple[list[str] | None, str | None]:
        """Emit everything about ``c``; return (favourite label, anonymous id if identified)."""
        rng = self.rng
        cid = c.cid
        for p in c.purchases:
            p[4] = self._basket(c)
        favourites = self._favourites(c) if c.purchases else None

        touches: list[tuple[int, int, dict]] = []
        for p in c.purchases:
            self._pre_purchase(c, p, touches)
        if c.purchases:
            first = c.purchases[0]
            if not c.existing and not identified and rng.random() < 0.65:
                t = first[0] - self._ri(300, 14 * _DAY_S) * _SEC
                touches.append(
                    (t, self._off(c, t), {"customer_id": cid, "type": "signup", "channel": self._online(c)})
                )
        else:  # a browser: signs up, looks around, maybe puts something in the cart
            t = self.start_ms + self._ri(0, (self.days - 20) * _DAY_S) * _SEC
            channel = self._online(c)
            touches.append((t, self._off(c, t), {"customer_id": cid, "type": "signup", "channel": channel}))
            if rng.random() < ASKER_SHARE:  # keeps asking - store visits, inquiries - never buys
                u = t
                for _ in range(self._ri(3, 6 + 1)):
                    u += self._ri(2 * _DAY_S, 20 * _DAY_S) * _SEC
                    if u >= self.end_ms:
                        break
                    cat = self._pick(c.favs)
                    ask: dict[str, Any] = {"customer_id": cid, "category": cat}
                    if rng.random() < 0.5:
                        ask.update(
                            type="visit",
                            channel="store",
                            store_id=c.home,
                            duration_s=float(self._ri(300, 2400)),
                        )
                    else:
                        ask.update(type="inquiry", channel=self._pick(("phone", "chat", "email", "store")))
                    touches.append((u, self._off(c, u), ask))
            for _ in range(self._ri(2, 10 + 1)):
                cat = self._pick(c.favs)
                sku = self.catalogue[cat][int(rng.random() ** 1.6 * _SKUS)][0]
                typ = "view" if rng.random() < 0.8 else self._pick(("cart", "inquiry"))
                u = t + self._ri(60, 60 * _DAY_S) * _SEC
                touches.append(
                    (
                        u,
                        self._off(c, u),
                        {"customer_id": cid, "type": typ, "channel": channel, "category": cat, "sku": sku},
                    )
                )

        anon = None
        if identified:
            anon, ident_ts = self._anonymous_visitor(c)
            assert ident_ts is not None
            channel = self._online(c)
            converted = []
            for t, off, fields in touches:
                if t < ident_ts:
                    fields = {"anonymous_id": anon, **{k: v for k, v in fields.items() if k != "customer_id"}}
                converted.append((t, off, fields))
            touches = converted
            off = self._off(c, ident_ts)
            touches.append(
                (
                    ident_ts,
                    off,
                    {"customer_id": cid, "anonymous_id": anon, "type": "identify", "channel": channel},
                )
            )
            if rng.random() < 0.7:
                touches.append(
                    (ident_ts + _SEC, off, {"customer_id": cid, "type": "signup", "channel": channel})
                )

        own = [t for t, _o, f in touches if "customer_id" in f] + [p[0] for p in c.purchases]
        known = min(own)
        if c.kind == "regular":
            until = self.end_ms
        elif c.kind == "lapsing":
            until = c.purchases[-1][0] + self._ri(0, 30 * _DAY_S) * _SEC
        elif c.kind == "occasional":
            until = c.purchases[-1][0] + self._ri(0, 90 * _DAY_S) * _SEC
        else:
            until = known + self._ri(14 * _DAY_S, 200 * _DAY_S) * _SEC
        until = min(until, self.end_ms)
        months = max(0.0, (until - known) / (30 * DAY_MS))

        consent = None
        if rng.random() < 0.8:
            consent = {
                "email": rng.random() < 0.6,
                "sms": rng.random() < 0.25,
                "push": rng.random() < 0.5,
                "in_store": rng.random() < 0.8,
            }
        reach = [ch for ch in ("email", "sms", "push") if consent and consent[ch]]

        def ambient(typ: str, lam: float, fav_category: bool, channels: list[str]) -> None:
            for _ in range(_poisson(rng, lam)):
                t = self._ri(known // _SEC, max(known // _SEC + 1, until // _SEC)) * _SEC
                fields: dict[str, Any] = {"customer_id": cid, "type": typ, "channel": self._pick(channels)}
                if fav_category:
                    fields["category"] = self._pick(c.favs) if rng.random() < 0.6 else _popular_category(rng)
                touches.append((t, self._off(c, t), fields))

        ambient("campaign_click", months * (0.3 if reach else 0.04), True, reach or ["web"])
        app_w = c.chan_cum[2] - c.chan_cum[1]
        if app_w >= 0.15:
            ambient("app_open", months * 2.5 * app_w, False, ["app"])

        if c.purchases:
            if complainer:
                if c.kind == "lapsing":  # an unhappy experience shortly before they stopped
                    p = self._pick(c.purchases[-2:])
                else:
                    p = self._pick([q for q in c.purchases if q[0] < self.end_ms - 6 * DAY_MS] or c.purchases)
                t, off = self._after(c, p, 2 * _HOUR_S, 5 * _DAY_S)
                if t >= self.end_ms:  # keep the complaint inside the period
                    t = p[0] + self._ri(1, (self.end_ms - p[0]) // _SEC) * _SEC
                    off = self._off(c, t)
                sku, cat = p[4][0][:2]
                fields = {
                    "customer_id": cid,
                    "type": "complaint",
                    "channel": self._pick(("phone", "email", "store", "chat")),
                    "category": cat,
                    "sku": sku,
                }
                if p[3] is not None:
                    fields["store_id"] = p[3]
                touches.append((t, off, fields))
                if rng.random() < 0.6:
                    u = t + self._ri(_HOUR_S, 2 * _DAY_S) * _SEC
                    touches.append(
                        (u, self._off(c, u), {"customer_id": cid, "type": "support", "channel": "phone"})
                    )
                if rng.random() < 0.5:
                    u = t + self._ri(60, _DAY_S) * _SEC
                    touches.append(
                        (
                            u,
                            self._off(c, u),
                            {
                                "customer_id": cid,
                                "type": "review",
                                "channel": "web",
                                "category": cat,
                                "sku": sku,
                                "rating": self._rating(True),
                            },
                        )
                    )
            if reviewer:
                for _ in range(self._ri(1, 3 + 1)):
                    p = self._pick(c.purchases)
                    t, off = self._after(c, p, _DAY_S, 14 * _DAY_S)
                    sku, cat = p[4][0][:2]
                    touches.append(
                        (
                            t,
                            off,
                            {
                                "customer_id": cid,
                                "type": "review",
                                "channel": self._online(c),
                                "category": cat,
                                "sku": sku,
                                "rating": self._rating(complainer),
                            },
                        )
                    )
            if support:
                for _ in range(self._ri(1, 2 + 1)):
                    t, off = self._after(c, self._pick(c.purchases), _HOUR_S, 10 * _DAY_S)
                    touches.append(
                        (
                            t,
                            off,
                            {
                                "customer_id": cid,
                                "type": "support",
                                "channel": self._pick(("phone", "chat", "email", "store")),
                            },
                        )
                    )
            if referrer:
                for _ in range(self._ri(1, 2 + 1)):
                    t, off = self._after(c, self._pick(c.purchases), _HOUR_S, 10 * _DAY_S)
                    touches.append(
                        (
                            t,
                            off,
                            {
                                "customer_id": cid,
                                "type": "referral",
                                "channel": self._pick(("web", "app", "store")),
                            },
                        )
                    )

        for t, off, fields in touches:
            self._push_touch(t, off, fields)
        if not c.purchases:
            asks = sorted(t for t, _o, f in touches if f["type"] in ASK_TYPES and "customer_id" in f)
            if (
                len(asks) >= STALLED_MIN_ASKS
                and max(asks[0] + STALLED_AFTER_DAYS * DAY_MS, asks[STALLED_MIN_ASKS - 1]) < self.end_ms
            ):
                self.stalled.append(cid)

        # profile facts
        if consent is not None or rng.random() < 0.5:
            fields = {"timezone": c.tz}
            if consent is not None:
                fields["consent"] = consent
            self._push_update(c, known + self._ri(1, _HOUR_S) * _SEC, fields)
            if consent is not None and consent["email"] and rng.random() < 0.12 and until > known + DAY_MS:
                t = self._ri((known + DAY_MS) // _SEC, until // _SEC) * _SEC
                self._push_update(c, t, {"consent": {**consent, "email": False}})
        if c.household is not None:
            self._push_update(
                c,
                known + self._ri(1, _HOUR_S) * _SEC,
                {"household_id": c.household, "payer_id": c.payer},
            )
        if rng.random() < 0.05:
            start, end = self._pick((("22:00", "07:00"), ("21:00", "08:00"), ("23:00", "06:30")))
            self._push_update(
                c, known + self._ri(1, 30 * _DAY_S) * _SEC, {"quiet_hours": {"start": start, "end": end}}
            )
        if loyalty:
            if c.purchases:
                t = self._pick(c.purchases)[0] + self._ri(30, 900) * _SEC
            else:
                t = known + self._ri(60, 7 * _DAY_S) * _SEC
            self._push_update(c, t, {"loyalty_member": True})

        for ts, off, channel, store, items, payer in c.purchases:
            cents = 0
            out_items = []
            for sku, cat, qty, price in items:
                cents += qty * price
                out_items.append({"sku": sku, "category": cat, "qty": qty, "price": price / 100})
            fields = {
                "customer_id": cid,
                "amount": cents / 100,
                "currency": self.currency,
                "items": out_items,
                "channel": channel,
            }
            if store is not None:
                fields["store_id"] = store
            if payer is not None:
                fields["payer_id"] = payer
            self._push(self.purchases, ts, off, fields)
        return favourites, anon

    # -- stock --------------------------------------------------------------------------------

    def stock_arrivals(self) -> None:
        rng = self.rng
        for k in range(100 + round(self.days * 0.3)):
            cat = CATEGORIES[k] if k < len(CATEGORIES) else _popular_category(rng)
            code = _CATEGORY_SPEC[cat][0]
            day = self._ri(self.first_day, self.last_day + 1)
            if rng.random() < 0.85:
                store: str | None = self._pick(STORES)
                region, tz = _STORE_INFO[store]
            else:  # to a regional distribution centre
                store = None
                region = self._pick(_REGIONS)
                tz = "Europe/Berlin"
            std = _TZ_STD[tz]
            off = _offset_min(std, day)
            hour = _DELIVERY_HOURS[bisect(_DELIVERY_HOURS_CUM, rng.random() * _DELIVERY_HOURS_CUM[-1])]
            ts = day * DAY_MS + (hour * _HOUR_S + self._ri(0, _HOUR_S) - off * 60) * _SEC
            if rng.random() < 0.1:
                sku, tags = f"{code}-{1000 + k:04d}", ["new"]
            else:
                sku, tags = self.catalogue[cat][int(rng.random() ** 1.4 * _SKUS)][0], ["restock"]
            month = int(_day_prefix(day)[5:7])
            if cat == "imported_fresh_food":
                tags.append("imported")
            if (cat == "garden" and 3 <= month <= 6) or (cat == "toys" and month >= 10):
                tags.append("seasonal")
            if rng.random() < 0.1:
                tags.append("promo")
            qty = self._pick((12, 24, 36, 48, 60, 96, 120, 240, 480))
            fields: dict[str, Any] = {"sku": sku, "category": cat, "qty": qty}
            if store is not None:
                fields["store_id"] = store
            fields["region"] = region
            fields["tags"] = tags
            self._push(self.stock, ts, off, fields)

    def finish(self, raw: list[tuple[int, int, int, dict]], prefix: str) -> list[dict]:
        """Sort by event time, number the ids in that order, render the timestamps."""
        raw.sort()
        rnd = self.rng.random
        out = []
        for n, (ts, _seq, off, fields) in enumerate(raw, 1):
            event = {"event_id": f"{prefix}-{n}", "ts": _render_ts(ts, off, rnd())}
            event.update(fields)
            out.append(event)
        return out


def generate(
    customers: int,
    seed: int,
    *,
    end_ms: int = DEFAULT_END_MS,
    days: int = 730,
    currency: str = "EUR",
) -> SyntheticData:
    """A synthetic population of ``customers`` over the ``days`` before ``end_ms``.

    Deterministic in its arguments. Customer ids are ``c000001`` .. ; event ids ``p-<n>``,
    ``t-<n>``, ``u-<n>``, ``s-<n>`` numbered in event-time order. See the module docstring
    for what the population looks like. ``labels`` (true by construction):

    - ``seed``, ``customers``, ``end_ms``, ``days``: the arguments;
    - ``lapsing_loyalists``: customer ids with >= 6 purchases at a steady rhythm whose final
      silence is >= 60 days, >= 4 x their median gap and >= 2.5 x their longest gap (every
      other customer with >= 5 purchases is silent for at most 2.5 x their median gap);
    - ``favourite_categories``: for every buyer, 1-3 categories, most spent first; each
      out-spends every other category and together they hold the majority of the spend;
    - ``anonymous_identified``: ``anonymous_id -> customer_id`` for visitors who browsed
      anonymously, then sent ``identify`` before that customer's first purchase;
    - ``complainers``: customer ids with a ``complaint`` touchpoint (half are lapsing loyalists);
    - ``stalled_prospects``: known customers who never buy and asked (inquiry, cart add, visit)
      >= 3 times, the 3rd ask and 14 days after the first both before ``end_ms`` (half the
      browsers keep asking by construction).
    """
    if customers < 0:
        raise ValueError("customers must be >= 0")
    if days < 120:
        raise ValueError("days must be >= 120 (room for a steady rhythm and a lapse)")
    # Millions of small containers, none cyclic: the cyclic collector would only slow this down.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _generate(customers, seed, end_ms, days, currency)
    finally:
        if paused:
            gc.enable()


def _generate(customers: int, seed: int, end_ms: int, days: int, currency: str) -> SyntheticData:
    b = _Builder(customers, seed, end_ms, days, currency)
    rng = b.rng

    # 1. who is who
    order = list(range(1, customers + 1))
    rng.shuffle(order)
    n_lapsing = round(customers * LAPSING_SHARE)
    n_browser = round(customers * BROWSER_SHARE)
    n_occasional = round(customers * OCCASIONAL_SHARE)
    kind_of = {}
    for pos, i in enumerate(order):
        if pos < n_lapsing:
            kind_of[i] = "lapsing"
        elif pos < n_lapsing + n_browser:
            kind_of[i] = "browser"
        elif pos < n_lapsing + n_browser + n_occasional:
            kind_of[i] = "occasional"
        else:
            kind_of[i] = "regular"
    population = [b.customer(i, kind_of[i]) for i in range(1, customers + 1)]

    # households share a payer (payment card) and a household id
    members = rng.sample(population, round(customers * HOUSEHOLD_SHARE))
    h = 0
    while members:
        h += 1
        size = min(len(members), rng.choice((2, 2, 3)))
        for c in members[:size]:
            c.household, c.payer = f"h{h:05d}", f"pay-{h:05d}"
        members = members[size:]

    # 2. when everybody buys
    for c in population:
        b.schedule(c)
    buyers = [c for c in population if c.purchases]

    # 3. who does what
    eligible = [c for c in buyers if c.purchases[0][0] >= b.start_ms + 45 * DAY_MS]
    n_anon = round(customers * ANONYMOUS_SHARE)
    identified = {c.cid for c in rng.sample(eligible, min(len(eligible), round(n_anon / 2)))}
    n_complainers = min(len(buyers), round(customers * COMPLAINER_SHARE))
    lapsing = [c for c in buyers if c.kind == "lapsing"]
    complain = rng.sample(lapsing, min(len(lapsing), (n_complainers + 1) // 2))
    others = [c for c in buyers if c.kind != "lapsing"]
    complain += rng.sample(others, min(len(others), n_complainers - len(complain)))
    complainers = {c.cid for c in complain}
    reviewers = {c.cid for c in rng.sample(buyers, round(len(buyers) * 0.15))}
    supported = {c.cid for c in rng.sample(buyers, round(len(buyers) * 0.08))}
    loyal = [c for c in buyers if len(c.purchases) >= 10 and c.kind != "lapsing" and c.cid not in complainers]
    referrers = {c.cid for c in rng.sample(loyal, max(1, round(len(loyal) * 0.06)) if loyal else 0)}
    n_loyalty = round(customers * LOYALTY_SHARE)
    few = [c for c in population if len(c.purchases) < 3]
    many = [c for c in population if len(c.purchases) >= 3]
    k_few = min(len(few), max(1, round(n_loyalty * 0.15)) if n_loyalty else 0)
    k_many = min(len(many), n_loyalty - k_few)
    k_few = min(len(few), n_loyalty - k_many)
    members_ = {c.cid for c in rng.sample(few, k_few) + rng.sample(many, k_many)}

    # 4. events
    favourites: dict[str, list[str]] = {}
    anonymous_identified: dict[str, str] = {}
    for c in population:
        fav, anon = b.emit_customer(
            c,
            identified=c.cid in identified,
            complainer=c.cid in complainers,
            reviewer=c.cid in reviewers,
            referrer=c.cid in referrers,
            support=c.cid in supported,
            loyalty=c.cid in members_,
        )
        if fav is not None:
            favourites[c.cid] = fav
        if anon is not None:
            anonymous_identified[anon] = c.cid
    for _ in range(n_anon - len(anonymous_identified)):
        b._anonymous_visitor(None)
    b.stock_arrivals()

    labels = {
        "seed": seed,
        "customers": customers,
        "end_ms": end_ms,
        "days": days,
        "lapsing_loyalists": sorted(c.cid for c in lapsing),
        "favourite_categories": favourites,
        "anonymous_identified": anonymous_identified,
        "complainers": sorted(c.cid for c in complain),
        "stalled_prospects": sorted(b.stalled),
    }
    return SyntheticData(
        purchases=b.finish(b.purchases, "p"),
        touchpoints=b.finish(b.touches, "t"),
        customer_updates=b.finish(b.updates, "u"),
        stock_arrivals=b.finish(b.stock, "s"),
        labels=labels,
    )


def iter_purchases_fast(
    customers: int,
    purchases: int,
    seed: int,
    *,
    end_ms: int = DEFAULT_END_MS,
    days: int = 730,
    currency: str = "EUR",
) -> Iterator[dict]:
    """``purchases`` purchases over exactly ``min(customers, purchases)`` customers, in time order.

    A lighter model than :func:`generate` (for load tests): each customer has one or two
    favourite categories and a home store, activity is skewed (lognormal weights), and every
    customer buys at least once. Timestamps are spread evenly over ``days`` before ``end_ms``;
    one in eight is epoch milliseconds, the rest ISO-8601 ``Z``.
    """
    if purchases < 0 or customers < 0:
        raise ValueError("customers and purchases must be >= 0")
    if purchases and not customers:
        raise ValueError("purchases need at least one customer")
    if not purchases:
        return
    rng = random.Random(seed)
    rnd = rng.random
    catalogue = _catalogue(rng)
    n_cat = len(CATEGORIES)
    cat_lines = [[(sku, cents, cents / 100) for sku, cents in catalogue[cat]] for cat in CATEGORIES]
    fav1 = [int(rnd() * n_cat) for _ in range(customers)]
    fav2 = [int(rnd() * n_cat) for _ in range(customers)]
    home = [STORES[int(rnd() * len(STORES))] for _ in range(customers)]
    ids = [f"c{i:06d}" for i in range(1, customers + 1)]
    if purchases <= customers:
        order = rng.sample(range(customers), purchases)
    else:
        weights = list(accumulate(rng.lognormvariate(0.0, 1.0) for _ in range(customers)))
        order = list(range(customers))
        order += rng.choices(range(customers), cum_weights=weights, k=purchases - customers)
        rng.shuffle(order)
    start = end_ms - days * DAY_MS
    step = days * DAY_MS / purchases
    for n, c in enumerate(order):
        ts = int(start + (n + rnd()) * step) // _SEC * _SEC
        day, sec = divmod(ts // _SEC, _DAY_S)
        if n % 8 == 3:
            rendered: int | str = ts
        else:
            h, rem = divmod(sec, _HOUR_S)
            rendered = f"{_day_prefix(day)}{h:02d}:{rem // 60:02d}:{rem % 60:02d}Z"
        k = 1 + int(rnd() ** 2 * 6)
        items = []
        cents = 0
        for _ in range(k):
            r = rnd()
            ci = fav1[c] if r < 0.55 else fav2[c] if r < 0.8 else int(rnd() * n_cat)
            sku, price, major = cat_lines[ci][int(rnd() ** 1.6 * _SKUS)]
            qty = 1 if rnd() < 0.7 else 2
            cents += price * qty
            items.append({"sku": sku, "category": CATEGORIES[ci], "qty": qty, "price": major})
        event = {
            "event_id": f"p-{n + 1}",
            "customer_id": ids[c],
            "ts": rendered,
            "amount": cents / 100,
            "currency": currency,
            "items": items,
        }
        if rnd() < 0.7:
            event["channel"] = "store"
            event["store_id"] = home[c]
        else:
            event["channel"] = "web"
        yield event
