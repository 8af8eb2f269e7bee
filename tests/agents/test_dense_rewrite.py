"""Writing every state of a partition to the changelog again (after a broker loss) hands a
dense store's encoded values over as they are: nothing decoded, the same bytes."""

from __future__ import annotations

import asyncio

from agents.processor import CustomerProcessor
from agents.sink import MemorySink
from schemas.state import CustomerState
from schemas.topics import Topic
from streams.store import StateStore
from streams.testing import PipelineHarness


def test_rewrite_sends_the_encoded_values_without_decoding_them() -> None:
    h = PipelineHarness(hot_states=0)
    assert isinstance(h.store, StateStore)
    purchases = h.topics.real(Topic.PURCHASES)
    expected: dict[int, dict[bytes, bytes]] = {}
    for i in range(40):
        state = CustomerState(f"c{i}")
        state.frequency = i
        raw = state.to_json()
        h.store.put_encoded(state.subject, raw)
        p = h.partitioner(purchases, state.subject)
        expected.setdefault(p, {})[state.subject.encode()] = raw
    hot = h.store["c3"]  # one decoded (and changed): encoded from the object
    hot.frequency = 99
    expected[h.partitioner(purchases, "c3")][b"c3"] = hot.to_json()
    sink = MemorySink()
    processor = CustomerProcessor(
        pipeline=h.pipeline, sink=sink, topics=h.topics, partition_for=h.partitioner, delivered=None
    )
    for p, want in expected.items():
        sink.records.clear()
        assert asyncio.run(processor.rewrite_changelog(p, purchases)) == len(want)
        got = {r.key: r.value for r in sink.on(h.topics.real(Topic.CHANGELOG))}
        assert got == want and all(r.partition == p for r in sink.records)
    assert h.store.hot_count() == 1
