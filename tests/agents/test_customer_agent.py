"""The Faust agents through Faust's own test context (no broker): records go in through the
agent's stream, the processor runs, outputs land in an in-memory sink."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from agents.app import create_app
from agents.settings import Settings
from agents.sink import MemorySink
from schemas.topics import Topic

T0 = 1_767_225_600_000


@pytest.fixture
def built():
    settings = Settings(
        partitions=1, app_id="agent-test", data_dir="/tmp/patronage-agent-test", fast_path=False
    )
    sink = MemorySink()
    app = create_app(settings, sink=sink)
    app.finalize()
    return app, sink


def _agent(app, name):
    for agent in app.agents.values():
        if agent.name.endswith(name):
            return agent
    raise AssertionError(f"no agent {name}: {list(app.agents)}")


async def put_on(wrapper, topic: str, value: bytes, key: bytes):
    """Faust's test wrapper names multi-topic agents' messages '<internal>'; name the topic."""
    wrapper._get_strtopic = lambda channel: topic
    return await wrapper.put(value, key=key)


async def test_customer_agent_applies_batches_and_emits_lifecycle_and_dead_letters(built) -> None:
    app, sink = built
    rt = app.runtime
    agent = _agent(app, "customers")
    async with agent.test_context() as a:
        for i in range(3):
            value = {
                "event_id": f"p{i}",
                "customer_id": "c1",
                "ts": T0 + i * 86_400_000,
                "amount": 10,
                "currency": "EUR",
            }
            await put_on(a, "purchases", orjson.dumps(value), b"c1")
        await put_on(
            a,
            "purchases",
            orjson.dumps({"event_id": "p0", "customer_id": "c1", "ts": T0, "amount": 10, "currency": "EUR"}),
            b"c1",
        )
        await put_on(a, "purchases", b"{not json", b"c1")
        await put_on(
            a,
            "purchases",
            orjson.dumps({"event_id": "p9", "customer_id": "c1", "ts": T0, "amount": -3, "currency": "EUR"}),
            b"c1",
        )
        await put_on(a, "mystery-topic", orjson.dumps({"event_id": "x"}), b"c1")
        for _ in range(100):
            if len(sink.on("dead-letters")) >= 3 and rt.store.get("c1") and rt.store["c1"].frequency == 3:
                break
            await asyncio.sleep(0.05)
    state = rt.store["c1"]
    assert (state.frequency, state.monetary_cents, state.stage) == (3, 3000, "member")
    changes = [orjson.loads(r.value) for r in sink.on("lifecycle-changes")]
    assert [c["to_stage"] for c in changes] == ["customer", "member"]
    dead = [orjson.loads(r.value) for r in sink.on("dead-letters")]
    assert dead[0]["stage"] == "decode" and dead[0]["value"] == "{not json"
    assert dead[1]["stage"] == "validate" and "amount: must not be negative" in dead[1]["error"]
    assert dead[2]["error"] == "topic 'mystery-topic' is not a customer input"
    # exactly one coalesced changelog record per batch for c1 holding the final state
    changelog = [r for r in sink.records if r.topic == "agent-test-customers-changelog"]
    assert changelog and orjson.loads(changelog[-1].value)["f"] == 3
    assert rt.profile("c1")["frequency"] == 3
    assert rt.profile("nobody") is None


async def test_stock_agent_dead_letters_invalid_arrivals(built) -> None:
    app, sink = built
    agent = _agent(app, "stock-arrivals")
    async with agent.test_context() as a:
        await a.put(
            orjson.dumps({"event_id": "s1", "ts": T0, "sku": "x", "category": "beer", "qty": 4}), key=b"beer"
        )
        await a.put(
            orjson.dumps({"event_id": "s2", "ts": T0, "sku": "x", "category": "beer", "qty": 0}), key=b"beer"
        )
        for _ in range(100):
            if sink.on("dead-letters"):
                break
            await asyncio.sleep(0.05)
    assert app.runtime.stock.accepted == 1
    dead = [orjson.loads(r.value) for r in sink.on("dead-letters")]
    assert len(dead) == 1 and "qty: Input should be greater than 0" in dead[0]["error"]


class RefusingSink(MemorySink):
    """A broker with a small message limit: refuses any record above ``limit`` bytes, the
    way Kafka answers MessageSizeTooLargeError."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.refused = 0

    async def send(self, records):  # type: ignore[no-untyped-def]
        if any(len(r.value or b"") + len(r.key or b"") > self.limit for r in records):
            self.refused += 1
            raise RuntimeError("MessageSizeTooLargeError: the broker refused the request")
        await super().send(records)


async def test_a_dead_letter_the_broker_refuses_never_stops_the_worker() -> None:
    from agents.processor import CustomerProcessor
    from streams.testing import PipelineHarness

    h = PipelineHarness(clock="wall", start_ms=T0)
    sink = RefusingSink(limit=20_000)
    processor = CustomerProcessor(
        pipeline=h.pipeline, sink=sink, topics=h.topics, partition_for=h.partitioner
    )
    good = {"event_id": "p1", "customer_id": "c1", "ts": T0, "amount": 5, "currency": "EUR"}
    p = h.pipeline.partition_of("c1")
    records = [
        h.record(Topic.PURCHASES, b"x" * 800_000, key="c1", partition=p),  # kept 64 KB > broker limit
        h.record(Topic.PURCHASES, good, partition=p),
    ]
    await processor.handle(p, records)
    assert sink.refused >= 1
    (dead,) = [orjson.loads(r.value) for r in sink.on("dead-letters")]
    assert dead["reason"] == "invalid_json" and dead["truncated"] is True and dead["value"] is None
    assert dead["value_bytes"] == 800_000 and len(dead["value_sha256"]) == 64
    state = h.state("c1")
    assert state is not None and state.frequency == 1  # the good record after it was applied
    changelog = sink.on("patronage-customers-changelog")
    assert changelog and orjson.loads(changelog[-1].value)["f"] == 1


async def test_triggers_are_sent_after_the_state_that_decided_them_is_durable() -> None:
    from agents.processor import CustomerProcessor
    from streams.testing import PipelineHarness

    h = PipelineHarness(clock="wall", start_ms=T0)
    sink = MemorySink()
    processor = CustomerProcessor(
        pipeline=h.pipeline, sink=sink, topics=h.topics, partition_for=h.partitioner
    )
    p = h.pipeline.partition_of("c1")
    for i in range(6):
        h.wall.ms = T0 + i * 10 * 86_400_000
        value = {"event_id": f"p{i}", "customer_id": "c1", "ts": h.wall.ms, "amount": 5, "currency": "EUR"}
        await processor.handle(p, [h.record(Topic.PURCHASES, value, partition=p)])
    h.wall.ms += 300 * 86_400_000
    await processor.tick(p)
    await processor.settle()  # the emptied outbox is written behind the next batch's work
    topics = [r.topic for r in sink.records]
    first_trigger = topics.index("triggers")
    written = [orjson.loads(r.value) for r in sink.records[:first_trigger] if r.topic.endswith("changelog")]
    assert written[-1]["out"] and written[-1]["out"][0]["type"] == "churn_risk"  # outbox durable first
    after = [orjson.loads(r.value) for r in sink.records[first_trigger:] if r.topic.endswith("changelog")]
    assert after and "out" not in after[-1]  # then the emptied outbox
    assert await processor.resend_outbox() == 0


async def test_a_refused_dead_letter_of_a_hop_still_names_the_record_sent() -> None:
    """Cut to the minimal record, the dead letter of a re-routed record keeps its origin
    (topic, partition, offset of the record sent) and the hop it failed on (via)."""
    from agents.processor import CustomerProcessor
    from streams.testing import PipelineHarness

    h = PipelineHarness(clock="wall", start_ms=T0)
    sink = RefusingSink(limit=20_000)
    processor = CustomerProcessor(
        pipeline=h.pipeline, sink=sink, topics=h.topics, partition_for=h.partitioner
    )
    usd = {"event_id": "p1", "customer_id": "c1", "ts": T0, "amount": 5, "currency": "USD"}
    origin = {"topic": "purchases", "partition": 3, "offset": 7}
    hop = {"kind": "event", "topic": "purchases", "event": {**usd, "note": "x" * 30_000}, "origin": origin}
    p = h.pipeline.partition_of("c1")
    record = h.record(Topic.IDENTITY, hop, key="c1", partition=p)
    await processor.handle(p, [record])
    assert sink.refused >= 1
    (dead,) = [orjson.loads(r.value) for r in sink.on("dead-letters")]
    assert dead["reason"] == "currency_mismatch" and dead["truncated"] is True
    assert {k: dead[k] for k in origin} == origin
    assert dead["via"] == {"topic": record.topic, "partition": p, "offset": record.offset}
