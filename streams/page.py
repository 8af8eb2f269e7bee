"""The page's view model (agents/page.py renders it): pure functions and indexes, no I/O.

Nothing here walks the whole table per page view. Three small indexes are kept beside the
table like the others (``update(partition, subject, state)``, rebuilt from the table on
assignment, see ``CustomerPipeline(extra_indexes=...)``):

- ``stages``: subjects per (summary stage key, base stage) - the funnel, equal to
  ``/summary``'s ``stages``;
- ``cells``: buyers per (last purchase day, frequency) - the R x F grid; the scores come
  from the population's rank tables, so a render costs the number of distinct cells, not
  the number of buyers;
- ``recent``: the newest triggers and gate suppressions (bounded), read from the states the
  pipeline changes (a trigger's record in the customer's outbox when it is decided, the
  gate's decision memory for suppressions). After a restart it is rebuilt from the states'
  durable memory (``last_triggers`` per type, the alert, the gate's last decisions), so it
  survives restarts; what a customer's state no longer remembers (an older trigger of the
  same type) is not listed again.

The at-risk list reads the churn risk index (subjects at risk or with an open alert, not the
whole table) and builds full rows (``streams.profile.churn_view``) only for the rows shown.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple, cast

from schemas.state import CustomerState
from schemas.timestamps import iso_utc, parse_ts_ms
from streams import churn
from streams.core import Context
from streams.gate import SUPPRESSIONS
from streams.lifecycle import BASE_STAGES, RISK_STAGES
from streams.profile import churn_view
from streams.projection import NO_STORE
from streams.rfm import segment

_SUPPRESSED = frozenset(d.value for d in SUPPRESSIONS)


# --- indexes --------------------------------------------------------------------------------
class _Row(NamedTuple):
    ts_ms: int
    key: str  # unique per row; the tie-break among rows of the same time
    partition: int
    subject: str
    view: dict[str, Any]


class Newest:
    """The ``limit`` newest rows offered (by time, then key), each key once."""

    __slots__ = ("_heap", "_rows", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._rows: dict[str, _Row] = {}
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def floor(self) -> int | None:
        """Rows older than this cannot enter (None: there is room)."""
        return self._heap[0][0] if len(self._heap) >= self.limit else None

    def offer(self, row: _Row) -> None:
        if row.key in self._rows or self.limit <= 0:
            return
        item = (row.ts_ms, row.key)
        if len(self._heap) >= self.limit:
            if item <= self._heap[0]:
                return
            _, gone = heapq.heappushpop(self._heap, item)
            del self._rows[gone]
        else:
            heapq.heappush(self._heap, item)
        self._rows[row.key] = row

    def drop(self, keep: Callable[[_Row], bool]) -> None:
        rows = {k: r for k, r in self._rows.items() if keep(r)}
        if len(rows) != len(self._rows):
            self._rows = rows
            self._heap = [(r.ts_ms, r.key) for r in rows.values()]
            heapq.heapify(self._heap)

    def newest(self) -> list[dict[str, Any]]:
        rows = sorted(self._rows.values(), key=lambda r: (r.ts_ms, r.key), reverse=True)
        return [{"at": iso_utc(r.ts_ms), **r.view} for r in rows]


class RecentIndex:
    """The newest ``limit`` triggers and the newest ``limit`` gate suppressions (a StateIndex)."""

    __slots__ = ("suppressions", "triggers")

    def __init__(self, limit: int) -> None:
        self.triggers = Newest(limit)
        self.suppressions = Newest(limit)

    def update(self, partition: int, subject: str, state: CustomerState | None) -> None:
        if state is None or state.erased_ms is not None:
            # every row of an erased subject goes, whatever its time (a churn trigger decided
            # before the erasure carries the later deadline's time); a customer who came back
            # after the erasure is offered again below, from the new state
            for rows in (self.triggers, self.suppressions):
                rows.drop(lambda r: r.subject != subject)
            if state is None:
                return
        triggers = self.triggers
        for record in state.outbox:  # decided in this change: the whole record is at hand
            ts = parse_ts_ms(record["ts"])
            triggers.offer(_Row(ts, record["trigger_id"], partition, subject, _trigger_view(record)))
        floor = triggers.floor()
        alert = state.alert
        for type_, (trigger_id, ts) in state.last_triggers.items():
            if (floor is None or ts >= floor) and trigger_id not in triggers._rows:
                reason = alert.reason if alert is not None and alert.trigger_id == trigger_id else None
                record = {"trigger_id": trigger_id, "type": type_, "customer_id": subject, "reason": reason}
                triggers.offer(_Row(ts, trigger_id, partition, subject, _trigger_view(record)))
        memory = state.notify
        if memory:
            suppressions = self.suppressions
            for at_ms, type_, ref, category, sku, decision in reversed(memory["log"]):
                floor = suppressions.floor()
                if floor is not None and at_ms < floor:
                    break  # the memory is in decision order: the rest is older
                if decision in _SUPPRESSED:
                    view = {
                        "customer_id": subject,
                        "type": type_,
                        "decision": decision,
                        "category": category,
                        "sku": sku,
                        "arrival": ref,
                    }
                    suppressions.offer(
                        _Row(at_ms, f"{subject}\x00{at_ms}\x00{type_}\x00{ref}", partition, subject, view)
                    )

    def clear(self, partition: int | None = None) -> None:
        for rows in (self.triggers, self.suppressions):
            rows.drop(lambda r: partition is not None and r.partition != partition)


def _trigger_view(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "trigger_id": record["trigger_id"],
        "type": record["type"],
        "customer_id": record["customer_id"],
        "reason": record.get("reason"),
        "recipient": None
        if record.get("recipient_id") is None
        else f"{record.get('recipient_kind', '')}:{record['recipient_id']}",
        # held-out notifications carry deliver: false; staff alerts are always delivered;
        # unknown for a trigger known only from the state's memory (after a restart)
        "deliver": record.get("deliver", True if "recipient_id" in record else None),
    }


class PageIndexes:
    """The page's own index, handed to ``CustomerPipeline(extra_indexes=...)``; the stage
    counts are the pipeline's (``CustomerPipeline.stages``, shared with the metrics)."""

    def __init__(self, recent_limit: int) -> None:
        self.recent = RecentIndex(recent_limit)

    def all(self) -> tuple[Any, ...]:
        return (self.recent,)


# --- view model -----------------------------------------------------------------------------
def _key(kind: str, stage: str) -> str:
    """The summary's name of a stage class (``"<stage> (anonymous)"`` for anonymous ids)."""
    return f"{stage} (anonymous)" if kind == "anonymous" else stage


def stage_counts(classes: Mapping[Hashable, int]) -> dict[str, int]:
    """``/summary``'s ``stages`` from the pipeline's stage index
    (``(kind, stage, base stage) -> subjects``)."""
    out: Counter[str] = Counter()
    for cls, n in classes.items():
        kind, stage, _ = cast(tuple[str, str, str], cls)
        out[_key(kind, stage)] += n
    return dict(sorted(out.items()))


def funnel(classes: Mapping[Hashable, int]) -> dict[str, Any]:
    """The six-stage funnel. ``now``: subjects at the stage now (the summary's numbers,
    anonymous ids included; customers in a risk stage are counted there, not here);
    ``reached``: subjects at this stage or further, by their base stage (a member at risk
    has reached member); ``conversion``: reached / reached of the stage before."""
    now: Counter[str] = Counter()
    anonymous: Counter[str] = Counter()
    base: Counter[str] = Counter()
    risk: Counter[str] = Counter()
    for cls, n in classes.items():
        kind, stage, base_stage = cast(tuple[str, str, str], cls)
        if stage in RISK_STAGES:
            risk[stage] += n
        else:
            now[stage] += n
            if kind == "anonymous":
                anonymous[stage] += n
        base[base_stage] += n
    rows: list[dict[str, Any]] = []
    reached = sum(base.values())
    before: int | None = None
    for stage in BASE_STAGES:
        rows.append(
            {
                "stage": stage,
                "now": now[stage],
                "anonymous": anonymous[stage],
                "reached": reached,
                "conversion": None if before is None or before == 0 else reached / before,
            }
        )
        before = reached
        reached -= base[stage]
    return {"stages": rows, "risk": {stage: risk[stage] for stage in RISK_STAGES}}


def rf_grid(scores: Mapping[tuple[int, int], int]) -> dict[str, Any]:
    """Buyers per R and F score (5 x 5, ``grid[r-1][f-1]``) and per RFM segment, from
    ``Population.rf_grid()`` (buyers per (R, F) score, kept beside the rank index)."""
    grid = [[0] * 5 for _ in range(5)]
    for (r, f), n in scores.items():
        grid[r - 1][f - 1] += n
    segments: Counter[str] = Counter()
    for r in range(1, 6):
        for f in range(1, 6):
            if grid[r - 1][f - 1]:
                segments[segment(r, f)] += grid[r - 1][f - 1]
    return {
        "grid": grid,
        "names": [[segment(r, f) for f in range(1, 6)] for r in range(1, 6)],
        "segments": dict(sorted(segments.items(), key=lambda kv: (-kv[1], kv[0]))),
        "buyers": sum(segments.values()),
    }


def at_risk(
    members: Iterable[tuple[str, Hashable]],
    states: Mapping[str, CustomerState],
    context_of: Callable[[str], Context],
    *,
    store: str | None,
    limit: int,
) -> dict[str, Any]:
    """Valued customers at risk now (a risk stage and valued, or an open churn alert), newest
    first (by the alert's time, else the risk stage's start), optionally only those whose
    home store (most visits and purchases) is ``store``; the first ``limit`` as rows."""
    found: list[tuple[int, str]] = []
    stores: Counter[str] = Counter()
    for subject, _ in members:
        state = states.get(subject)
        if state is None:
            continue
        since = churn.at_risk_since(state, context_of(subject))  # Redis' at_risk sets: the same rule
        if since is None:
            continue
        home = churn.home_store(state)
        where = NO_STORE if home is None else home  # "-": online only, as Redis' at_risk:- set
        stores[where] += 1
        if store is not None and where != store:
            continue
        found.append((since, subject))
    rows = []
    for _, subject in heapq.nlargest(limit, found):
        state = states[subject]
        view = churn_view(state, context_of(subject))
        assert view is not None
        alert = view["alert"]
        rows.append(
            {
                "customer_id": subject,
                "home_store": churn.home_store(state),
                "risk_stage": view["risk_stage"],
                "risk_since": view["risk_since"],
                "reason": None if alert is None else alert["reason"],
                "alert_at": None if alert is None else alert["at"],
                "days_silent": view["days_silent"],
                "usual_interval_days": view["usual_interval_days"],
                "tier": view["tier"],
                "purchases": state.frequency,
                "p_alive": view.get("p_alive"),
            }
        )
    return {
        "rows": rows,
        "matched": len(found),
        "limit": limit,
        "store": store,
        "stores": dict(sorted(stores.items())),
    }
