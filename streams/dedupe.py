"""Bounded idempotency memory per customer.

Each customer remembers the 64-bit hashes of the event ids it has applied (16 bytes each
with their event time), up to ``cap`` per kind of event, so re-sent events - redeliveries
after a crash, producer retries, a file replayed twice - are recognised in any order. When
a customer exceeds the cap, the ids with the oldest event time are forgotten; an unknown id
older than everything remembered is then applied and reported as ``NEW_BEYOND_HORIZON``
(counted in ``patronage_dedupe_beyond_horizon_total``) because it cannot be checked.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from enum import Enum
from hashlib import blake2b

from schemas.events import TouchType
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
    NEW_BEYOND_HORIZON = "new_beyond_horizon"


def id_hash(event_id: str) -> int:
    """Stable 63-bit hash of an event id (same value in every process and release)."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


def contains(mem: IdMemory, h: int) -> bool:
    ids = mem.ids
    i = bisect_left(ids, h)
    return i < len(ids) and ids[i] == h


def remember(mem: IdMemory, h: int, ts_ms: int, cap: int) -> Seen:
    """Record id hash ``h`` seen at event time ``ts_ms`` unless already present."""
    ids = mem.ids
    if not ids:
        mem.ids = array("Q", (h,))
        mem.ts = array("q", (ts_ms,))
        return Seen.NEW
    i = bisect_left(ids, h)
    if i < len(ids) and ids[i] == h:
        return Seen.DUPLICATE
    assert isinstance(ids, array) and isinstance(mem.ts, array)
    ids.insert(i, h)
    mem.ts.insert(i, ts_ms)
    if len(ids) > cap:
        oldest = min(mem.ts)
        j = mem.ts.index(oldest)
        del ids[j]
        del mem.ts[j]
        if j == i or (oldest == ts_ms and not contains(mem, h)):
            return Seen.NEW_BEYOND_HORIZON
    return Seen.NEW


def union(mem: IdMemory, other: IdMemory, cap: int) -> None:
    """Fold another memory into ``mem`` (identity merges), keeping the newest ``cap``."""
    pairs = dict(zip(mem.ids, mem.ts, strict=True))
    for h, t in zip(other.ids, other.ts, strict=True):
        if h not in pairs:
            pairs[h] = t
    if len(pairs) > cap:
        keep = sorted(pairs.items(), key=lambda kv: kv[1])[-cap:]
        pairs = dict(keep)
    mem.ids = array("Q", sorted(pairs))
    mem.ts = array("q", (pairs[h] for h in mem.ids))
