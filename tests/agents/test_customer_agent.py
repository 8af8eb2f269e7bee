"""The Faust agents through Faust's own test context (no broker): records go in through the
agent's stream, the processor runs, outputs land in an in-memory sink."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from agents.app import create_app
from agents.settings import Settings
from agents.sink import MemorySink

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
