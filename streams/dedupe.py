"""Bounded, event-time-ordered idempotency memory.

Each customer keeps the 64-bit hashes of the event ids it has applied, newest ``cap`` by
event time. A re-sent event whose id is remembered is a duplicate. An unknown id older
than everything remembered (memory full) cannot be checked: it is applied and reported as
``NEW_BEYOND_HORIZON`` so operators can see how often that happens.
"""

from __future__ import annotations

from bisect import bisect_right
from enum import Enum
from hashlib import blake2b


class Seen(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    NEW_BEYOND_HORIZON = "new_beyond_horizon"


def id_hash(event_id: str) -> int:
    """Stable 63-bit hash of an event id (same value in every process and release)."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


def remember(ids: list[int], id_ts: list[int], h: int, ts_ms: int, cap: int) -> Seen:
    """Record ``h`` (an id hash at event time ``ts_ms``) unless already present.

    ``ids``/``id_ts`` are parallel lists ordered by event time and mutated in place.
    """
    if h in ids:
        return Seen.DUPLICATE
    beyond = len(ids) >= cap and ts_ms < id_ts[0]
    i = bisect_right(id_ts, ts_ms)
    ids.insert(i, h)
    id_ts.insert(i, ts_ms)
    if len(ids) > cap:
        del ids[0]
        del id_ts[0]
    return Seen.NEW_BEYOND_HORIZON if beyond else Seen.NEW


def union(ids: list[int], id_ts: list[int], other_ids: list[int], other_ts: list[int], cap: int) -> None:
    """Merge another memory into ``ids``/``id_ts`` (used when identities merge)."""
    known = set(ids)
    pairs = list(zip(id_ts, ids, strict=True))
    pairs.extend((t, h) for h, t in zip(other_ids, other_ts, strict=True) if h not in known)
    pairs.sort()
    pairs = pairs[-cap:]
    ids[:] = [h for _, h in pairs]
    id_ts[:] = [t for t, _ in pairs]
