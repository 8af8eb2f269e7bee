"""/healthz while a worker waits for the consumer group (found by an outside run: after a
``kill -9`` of a worker without PATRONAGE_INSTANCE_ID, noida-db kept the dead member and the
restarted worker re-joined for over ten minutes while /healthz said "tables not recovered")."""

from __future__ import annotations

import time
from types import SimpleNamespace

from agents.app import GroupWatch, Runtime, join_warn_after_s, joining_reason
from agents.settings import Settings


def _runtime(settings: Settings, **kw: object) -> SimpleNamespace:
    base = dict(
        ready=False,
        store={},
        joining_since=None,
        settings=settings,
        broker_lost_since=None,
        offset_regressions={},
        last_offset_regression=None,
    )
    return SimpleNamespace(**(base | kw))


def test_health_says_the_worker_waits_for_the_group_and_after_long_why() -> None:
    settings = Settings(session_timeout_s=10)
    runtime = _runtime(settings)
    watch = GroupWatch(runtime)  # type: ignore[arg-type]
    status, doc = Runtime.health(runtime)  # type: ignore[arg-type]
    assert (status, doc["reason"]) == (503, "tables not recovered yet")  # not joining yet

    state = watch.on_rebalance_start(None)
    first = runtime.joining_since
    assert first is not None
    watch.on_rebalance_start(None)  # a re-join keeps the start of the wait
    assert runtime.joining_since == first
    status, doc = Runtime.health(runtime)  # type: ignore[arg-type]
    assert status == 503 and doc["reason"].startswith("joining the consumer group: no partitions")
    assert "PATRONAGE_INSTANCE_ID" not in doc["reason"]  # a normal rebalance: no alarm yet

    runtime.joining_since = time.monotonic() - join_warn_after_s(settings) - 1
    status, doc = Runtime.health(runtime)  # type: ignore[arg-type]
    assert status == 503 and "noida-db never does" in doc["reason"] and doc["joining_group_s"] >= 30

    watch.on_rebalance_return(None, state)  # the assignment came: recovery next
    assert runtime.joining_since is None
    assert Runtime.health(runtime)[1]["reason"] == "tables not recovered yet"  # type: ignore[arg-type]
    runtime.ready = True
    assert Runtime.health(runtime)[0] == 200  # type: ignore[arg-type]


def test_a_static_member_is_not_told_to_set_an_instance_id() -> None:
    settings = Settings(session_timeout_s=10, instance_id="worker-0")
    reason = joining_reason(join_warn_after_s(settings) + 5, settings)
    assert reason.startswith("joining the consumer group") and "PATRONAGE_INSTANCE_ID" not in reason
    assert join_warn_after_s(Settings(session_timeout_s=60)) == 180
