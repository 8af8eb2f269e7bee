"""Table recovery in bulk: changelog records applied straight from the fetch.

Faust's recovery hands every changelog record on its own through the consumer's
per-message path (a task per record in ``wait_first``, the conductor's lock, an Event, a
queue put and a ``wait_for`` get in ``Recovery._slurp_changelogs``, a recovery-end check).
At a restart that was about a third of the main thread (py-spy, 100,000 customers; README
"Restart recovery"). The batching consumer offers each fetched run of records of a
changelog partition to :class:`BulkChangelog` first; while that partition is being
recovered (an active partition of a recovery in progress), the records go into the table
here in one pass, with the same bookkeeping Faust's loop keeps:

- a record at or below the offset already applied for the partition is skipped;
- a tombstone (value None) deletes the key; any other value replaces it (last one wins);
- the partition's applied offset moves to the run's last record, and once no active
  partition has records left to read, recovery is ended and signalled as Faust does
  (``Recovery._slurp_changelogs`` ``_maybe_signal_recovery_end``);
- the garbage collector is paused from the first record on: what comes in is long-lived
  state without reference cycles, which young collections only walked again and again.
  ``Runtime.on_recovered`` (agents/app.py) freezes it and enables the collector again.

Anything else (standby partitions, a changelog record outside a recovery) still takes
Faust's own path. Records of a partition never take both paths during one recovery: the
changelog partitions are fetched only while recovering, and every fetched run of an
active partition is taken here.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

log = logging.getLogger(__name__)

# (partition, records) -> None: put the records' keys and values into the table
ApplyRecords = Callable[[int, Sequence[Any]], None]


class BulkChangelog:
    """``__call__(tp, records) -> bool``: applied (True), or left to Faust (False)."""

    def __init__(self, app: Any, changelog_topic: str, apply: ApplyRecords) -> None:
        self.app = app
        self.changelog_topic = changelog_topic
        self.apply = apply
        self.records = 0  # applied here since start (tests, logs)

    def __call__(self, tp: Any, records: Sequence[Any]) -> bool:
        if tp.topic != self.changelog_topic or not records:
            return False
        recovery = self.app.tables.recovery
        if not recovery.in_recovery or tp not in recovery.active_tps:
            return False
        offsets = recovery.active_offsets
        seen = offsets.get(tp)
        if seen is not None and records[0].offset <= seen:
            records = [r for r in records if r.offset > seen]
            if not records:
                return True
        if gc.isenabled():
            # the recovered values are long-lived: no collection walks them while they come
            # in (Runtime.on_recovered freezes them and enables the collector again)
            gc.disable()
        self.apply(tp.partition, records)
        self.records += len(records)
        offsets[tp] = records[-1].offset
        recovery._active_events_received_at[tp] = monotonic()
        if not recovery.need_recovery():
            # as Faust's _maybe_signal_recovery_end: what Faust's own path buffered goes
            # first (nothing for these partitions), then recovery ends and is signalled
            recovery.flush_buffers()
            recovery._set_recovery_ended()
            recovery.signal_recovery_end.set()
            log.info("changelog recovered in bulk: %d records", self.records)
        return True
