"""The adversarial corpus through the pure pipeline (fast; the broker version is
tests/integration/test_garbage.py): every bad record is a dead letter with an expected
reason code, every valid one applied exactly, and the counts add up."""

from __future__ import annotations

from collections import Counter

from schemas.topics import Topic
from streams.testing import PipelineHarness
from synthetic import adversarial
from tests import oracle

NOW = 1_793_491_200_000


def test_corpus_is_deterministic_and_covers_every_kind_on_every_topic() -> None:
    a = adversarial.generate(seed=3, bad=2_000, valid=500, big=())
    b = adversarial.generate(seed=3, bad=2_000, valid=500, big=())
    assert [(r.topic, r.key, r.value) for r in a.records] == [(r.topic, r.key, r.value) for r in b.records]
    kinds = {(r.kind, r.topic) for r in a.bad}
    for kind, _ in adversarial._bad_kinds():
        for topic in adversarial.TOPICS:
            assert (kind, topic) in kinds, (kind, topic)
    assert adversarial.generate().composition()["valid"] == 3_000
    assert len(adversarial.generate().bad) >= 10_000


def test_corpus_through_the_pipeline_dead_letters_every_bad_record_and_applies_the_rest() -> None:
    corpus = adversarial.generate(seed=5, bad=3_000, valid=1_200, big=((1_100_000, 2),))
    h = PipelineHarness(clock="wall", start_ms=NOW)
    customer = [r for r in corpus.records if r.topic is not Topic.STOCK_ARRIVALS]
    recs = []
    for r in customer:
        key = None if r.key is None else r.key.decode()
        partition = None if key is not None else 0
        recs.append(h.record(r.topic, r.value, key=key, partition=partition))
    expected_reason = {}
    for rec, sent in zip(recs, customer, strict=True):
        if sent.reasons:
            expected_reason[(rec.topic, rec.partition, rec.offset)] = sent
    for i in range(0, len(recs), 400):
        h.deliver(recs[i : i + 400])
    dead = h.dead_letters()
    by_origin = {(d["topic"], d["partition"], d["offset"]): d for d in dead}
    assert len(by_origin) == len(dead) == len(expected_reason)
    for origin, sent in expected_reason.items():
        d = by_origin.get(origin)
        assert d is not None, (sent.kind, sent.value[:200] if sent.value else None)
        assert d["reason"] in sent.reasons, (sent.kind, d["reason"], d["error"])
    # counts: every record sent is applied, a duplicate or a dead letter (a re-routed one
    # is counted where it is finally handled)
    outcomes: Counter[tuple[str, str]] = Counter()
    for batch in h.batches:
        outcomes.update(batch.stats.outcomes)
    for topic in (Topic.PURCHASES, Topic.TOUCHPOINTS, Topic.CUSTOMER_UPDATES):
        sent = [r for r in customer if r.topic is topic]
        got = {o: n for (t, o), n in outcomes.items() if t == topic.value}
        assert got.get("applied", 0) == len(corpus.valid[topic]), (topic, got)
        assert got.get("duplicate", 0) == sum(r.kind == "resend" for r in sent), (topic, got)
        assert got.get("dead_letter", 0) == sum(bool(r.reasons) for r in sent), (topic, got)
        assert len(sent) == got.get("applied", 0) + got.get("duplicate", 0) + got.get("dead_letter", 0)
    expected = oracle.compute(corpus.valid[Topic.PURCHASES], corpus.valid[Topic.TOUCHPOINTS])
    for cid, e in expected.items():
        s = h.state(cid)
        assert s is not None, cid
        assert (s.frequency, s.monetary_cents) == (e.frequency, e.monetary_cents), cid
        assert s.touch_counts == e.touches, cid
