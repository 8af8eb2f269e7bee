"""Bounded idempotency memory per customer, with an exact horizon.

Each customer remembers, per kind of event (purchases, touchpoints), the 64-bit hashes of
the newest ``cap`` event ids it applied (newest by event time), each with its event time
and a 32-bit digest of the event's content, plus one number: the **horizon**, the latest
event time it ever forgot. The memory never grows past ``cap`` entries (20 bytes each), so
the per-customer cost does not depend on how many events the customer ever had.

The guarantee, exactly:
- an event whose event time is **after the horizon** is judged exactly (up to a 2^-63
  id-hash collision): if its id was applied before, it is remembered, so a re-send with the
  same content is a ``DUPLICATE`` and one with different content is a ``CONFLICT``
  (2^-32 chance of missing a conflict); otherwise it is ``NEW``;
- an unknown event whose event time is **at or before the horizon** cannot be judged (it
  may have been applied and forgotten): ``BEYOND_HORIZON``. The caller dead-letters it
  (default, never double-counts) or applies it and counts it (a setting).
A customer who never had more than ``cap`` events of a kind has no horizon: every event is
judged exactly.

Content digest: see :func:`purchase_digest` and :func:`touch_digest`.
"""

from __future__ import annotations

import zlib
from array import array
from bisect import bisect_left
from enum import Enum
from hashlib import blake2b
from typing import Any

import orjson

from schemas.events import PurchaseLike, TouchpointLike, TouchType
from schemas.state import IdMemory

# A remembered touchpoint id carries its type in the low 4 bits, so identity merges can
# tell exactly which of a visitor's events the customer already counted.
TOUCH_TYPES = tuple(t.value for t in TouchType)
TOUCH_CODES = {t: i for i, t in enumerate(TOUCH_TYPES)}
POSITIVE_REVIEW_CODE = len(TOUCH_TYPES)
TOUCH_CODE_MASK = 0xF
assert POSITIVE_REVIEW_CODE <= TOUCH_CODE_MASK


class Seen(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # a remembered id, different content
    BEYOND_HORIZON = "beyond_horizon"  # unknown id, event time at or before the horizon


def id_hash(event_id: str) -> int:
    """Stable 63-bit hash of an event id (same value in every process and release)."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


def digest(content: Any) -> int:
    """CRC-32 of the canonical orjson; never 0 (0 marks ids remembered before digests).
    A checksum, not a MAC: it tells an accidental re-send with other content from a copy
    (a producer that wants a second event only needs a new id) and costs ~0.1 us."""
    return zlib.crc32(orjson.dumps(content)) or 1


def purchase_digest(ev: PurchaseLike) -> int:
    """Content of a purchase: the validated values without the customer id (the memory's
    owner) and transport fields - ts in UTC ms, amount in cents, currency, items as
    (sku, category, qty, price), store_id, channel, payer_id. Unknown fields are not content."""
    return digest(
        (
            ev.ts,
            ev.amount_cents,
            ev.currency,
            [(i.sku, i.category, i.qty, i.price) for i in ev.items],
            ev.store_id,
            ev.channel,
            ev.payer_id,
        )
    )


def touch_digest(ev: TouchpointLike) -> int:
    """Content of a touchpoint: type, ts (UTC ms), channel, store_id, category, sku, rating,
    duration_s and, for ``identify``, the merged anonymous id. Not content: customer_id and
    anonymous_id (the memory's owner; an anonymous event forwarded to its customer after a
    merge gains a customer_id and is still the same event)."""
    alias = ev.anonymous_alias if ev.type is TouchType.identify else None
    return digest(
        (
            ev.type.value,
            ev.ts,
            ev.channel,
            ev.store_id,
            ev.category,
            ev.sku,
            ev.rating,
            getattr(ev, "duration_s", None),
            alias,
        )
    )


def contains(mem: IdMemory, h: int) -> bool:
    ids = mem.ids
    i = bisect_left(ids, h)
    return i < len(ids) and ids[i] == h


def check(mem: IdMemory, h: int, ts_ms: int, content: int, key_mask: int = 0) -> tuple[Seen, int]:
    """Judge id hash ``h`` without changing ``mem``: (verdict, insert position).

    Ids that differ only in ``key_mask`` bits are the same event id (touchpoints keep their
    type there); a different type is then different content."""
    ids = mem.ids
    key = h & ~key_mask
    i = bisect_left(ids, key)
    n = len(ids)
    if i < n and ids[i] & ~key_mask == key:
        known = mem.digests[i] if mem.digests else 0
        if ids[i] == h and (known == 0 or known == content):
            return Seen.DUPLICATE, i
        return Seen.CONFLICT, i
    if mem.horizon is not None and ts_ms <= mem.horizon:
        return Seen.BEYOND_HORIZON, i
    return Seen.NEW, bisect_left(ids, h, i)


def remember(mem: IdMemory, h: int, ts_ms: int, cap: int, content: int = 0, key_mask: int = 0) -> Seen:
    """Judge ``h`` (see :func:`check`) and remember it when it is ``NEW``.

    At most ``cap`` ids stay; the one with the oldest event time is forgotten and the
    horizon moves up to its event time."""
    seen, i = check(mem, h, ts_ms, content, key_mask)
    if seen is not Seen.NEW:
        return seen
    if not mem.ids:
        mem.ids = array("Q", (h,))
        mem.ts = array("q", (ts_ms,))
        mem.digests = array("I", (content,))
        return Seen.NEW
    ids, ts, digests = mem.ids, mem.ts, mem.digests
    assert isinstance(ids, array) and isinstance(ts, array)
    if not isinstance(digests, array):  # loaded from a record written before digests
        digests = mem.digests = array("I", bytes(4 * len(ids)))
    ids.insert(i, h)
    ts.insert(i, ts_ms)
    digests.insert(i, content)
    if len(ids) > cap:
        _forget_oldest(mem, len(ids) - cap)
    return Seen.NEW


def _forget_oldest(mem: IdMemory, n: int) -> None:
    ids, ts, digests = mem.ids, mem.ts, mem.digests
    assert isinstance(ids, array) and isinstance(ts, array) and isinstance(digests, array)
    if n == 1:
        oldest = min(ts)
        j = ts.index(oldest)
        del ids[j]
        del ts[j]
        del digests[j]
    else:  # a record written with a larger cap: trim once
        order = sorted(range(len(ids)), key=ts.__getitem__)
        oldest = ts[order[n - 1]]
        keep = sorted(order[n:])
        mem.ids = array("Q", (ids[k] for k in keep))
        mem.ts = array("q", (ts[k] for k in keep))
        mem.digests = array("I", (digests[k] for k in keep))
    if mem.horizon is None or oldest > mem.horizon:
        mem.horizon = oldest


def union(mem: IdMemory, other: IdMemory, cap: int) -> None:
    """Fold another memory into ``mem`` (identity merges), keeping the newest ``cap``; the
    horizon is the later of the two and of anything forgotten here."""
    entries: dict[int, tuple[int, int]] = {}
    for m in (mem, other):
        ds = m.digests if m.digests else bytes(4 * len(m.ids))
        for h, t, d in zip(m.ids, m.ts, ds if isinstance(ds, array) else array("I", ds), strict=True):
            entries.setdefault(h, (t, d))
    horizons = [x for x in (mem.horizon, other.horizon) if x is not None]
    if len(entries) > cap:
        by_time = sorted(entries.items(), key=lambda kv: kv[1][0])
        horizons.append(by_time[len(entries) - cap - 1][1][0])
        entries = dict(by_time[-cap:])
    order = sorted(entries)
    mem.ids = array("Q", order)
    mem.ts = array("q", (entries[h][0] for h in order))
    mem.digests = array("I", (entries[h][1] for h in order))
    mem.horizon = max(horizons) if horizons else None
