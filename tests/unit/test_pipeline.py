"""The pipeline seam without Kafka: routing, reason codes, dead-letter sizes, clocks, indexes."""

from __future__ import annotations

import base64
import hashlib
import os
import random

import orjson
import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from schemas.outputs import DeadLetter
from schemas.state import CustomerState
from schemas.topics import Topic, TopicNames
from streams.clock import EventClock
from streams.indexes import CountIndex, DeadlineIndex
from streams.partitioning import murmur2
from streams.pipeline import Batch
from streams.testing import T0, ManualWall, PipelineHarness

DAY = 86_400_000


def purchase(eid: str, cid: str, ts: object = T0, amount: object = 10) -> dict:
    return {"event_id": eid, "customer_id": cid, "ts": ts, "amount": amount, "currency": "EUR"}


def test_murmur2_is_the_java_clients_partitioner() -> None:
    rnd = random.Random(5)
    keys = [b"", b"a", b"ab", b"abc", b"c000017", "kundé/#?".encode()]
    keys += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(40))) for _ in range(500)]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key


def test_every_topic_name_comes_from_one_registry() -> None:
    names = TopicNames(prefix="acme.", app_id="crm")
    assert names.real(Topic.PURCHASES) == "acme.purchases"
    assert names.real(Topic.IDENTITY) == "acme.crm-identity"
    assert names.real(Topic.CHURN_MODEL) == "acme.crm-churn-model"
    assert names.real(Topic.CHANGELOG) == "acme.crm-customers-changelog"  # prefixed like every topic
    assert all(names.logical(names.real(t)) is t for t in Topic)
    assert names.logical("somebody-elses") is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{nope", "invalid_json"),
        (b"[1]", "not_an_object"),
        (None, "empty_value"),
        (orjson.dumps({"event_id": "e", "ts": T0, "amount": 1, "currency": "EUR"}), "missing_field"),
        (orjson.dumps(purchase("e", "c", ts="2026-01-01T00:00:00")), "ts_no_offset"),
        (orjson.dumps(purchase("e", "c", ts=1767225600)), "ts_in_seconds"),
        (orjson.dumps(purchase("e", "c", ts=T0 * 1000)), "ts_out_of_range"),
        (orjson.dumps(purchase("e", "c", ts=T0 + 3 * DAY)), "ts_out_of_range"),  # too far ahead
        (orjson.dumps(purchase("e", "c", amount=1e30)), "amount_out_of_range"),
        (orjson.dumps(purchase("e", "c", amount="1" + "0" * 30)), "amount_out_of_range"),
        (orjson.dumps(purchase("e", "c", amount="1e30")), "invalid_field"),  # decimal digits only
        (orjson.dumps(purchase("e", "c") | {"event_id": 1e20}), "invalid_field"),  # ids are strings
        (orjson.dumps(purchase("e", "c", amount=-1)), "invalid_field"),
        (orjson.dumps({**purchase("e", "c"), "currency": "USD"}), "currency_mismatch"),
    ],
)
def test_bad_input_becomes_a_dead_letter_with_a_stable_reason_code(value: bytes | None, reason: str) -> None:
    h = PipelineHarness(clock="wall", start_ms=T0)
    h.deliver([h.record(Topic.PURCHASES, value, key="c", partition=h.pipeline.partition_of("c"))])
    (dead,) = h.dead_letters()
    assert dead["reason"] == reason, dead["error"]
    assert dead["truncated"] is False  # a field of the contract, there also when nothing was cut
    DeadLetter.model_validate(dead)
    assert h.batches[-1].stats.dead_letters == {("purchases", dead["stage"], reason): 1}
    assert h.state("c") is None


@pytest.mark.parametrize(
    ("topic", "value"),
    [
        (Topic.PURCHASES, purchase("e", "")),
        (Topic.TOUCHPOINTS, {"event_id": "e", "customer_id": "", "ts": T0, "type": "view"}),
        (
            Topic.TOUCHPOINTS,
            {"event_id": "e", "customer_id": "", "anonymous_id": "a1", "ts": T0, "type": "view"},
        ),
        (Topic.CUSTOMER_UPDATES, {"event_id": "e", "customer_id": "", "ts": T0, "loyalty_member": True}),
    ],
)
def test_an_empty_customer_id_is_named_plainly_in_the_dead_letter(topic: Topic, value: dict) -> None:
    h = PipelineHarness(clock="wall", start_ms=T0)
    h.send(topic, value)
    (dead,) = h.dead_letters()
    assert dead["reason"] == "invalid_field"
    assert dead["error"] == 'customer_id: is empty (""): must be a non-empty string (1 to 200 characters)'


def test_an_amount_over_the_cap_names_the_field_that_is_over_it_exactly() -> None:
    """Found by an outside run: an item price over the cap was reported as the (valid)
    amount, and a huge integer amount was shown rounded through a float."""
    h = PipelineHarness(clock="wall", start_ms=T0)
    item = {"sku": "s1", "category": "tea", "qty": 1, "price": 1e300}
    h.send(Topic.PURCHASES, purchase("e1", "c", amount="1.00") | {"items": [{**item, "price": 2}, item]})
    h.send(Topic.PURCHASES, purchase("e2", "c", amount="123456789012345678901234567890"))
    first, second = h.dead_letters()
    assert first["reason"] == second["reason"] == "amount_out_of_range"
    assert first["error"].startswith("items.1.price: 1e+300 is above PATRONAGE_MAX_AMOUNT")
    assert second["error"].startswith("amount: 123456789012345678901234567890.00 is above")


def test_an_identify_merging_a_customer_into_itself_says_so() -> None:
    h = PipelineHarness(clock="wall", start_ms=T0)
    h.send(
        Topic.TOUCHPOINTS,
        {"event_id": "e", "customer_id": "bad-c", "anonymous_id": "bad-c", "ts": T0, "type": "identify"},
    )
    (dead,) = h.dead_letters()
    assert dead["reason"] == "invalid_field"
    assert "anonymous_id equals customer_id" in dead["error"], dead["error"]


def test_an_id_too_long_says_how_long_it_is_and_the_limit() -> None:
    h = PipelineHarness(clock="wall", start_ms=T0)
    h.send(Topic.PURCHASES, purchase("e", "c" * 201))
    (dead,) = h.dead_letters()
    assert dead["reason"] == "invalid_field"
    assert dead["error"] == "customer_id: is 201 characters long: must be at most 200"


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "", "utc+3"])
def test_an_unknown_time_zone_is_a_dead_letter_not_a_silent_utc(zone: str) -> None:
    h = PipelineHarness(clock="wall", start_ms=T0)
    h.send(Topic.CUSTOMER_UPDATES, {"event_id": "u1", "customer_id": "c", "ts": T0, "timezone": zone})
    (dead,) = h.dead_letters()
    assert dead["reason"] in ("invalid_field", "missing_field"), dead
    assert "timezone" in dead["error"]
    h.send(Topic.CUSTOMER_UPDATES, {"event_id": "u2", "customer_id": "c", "ts": T0, "timezone": "Asia/Tokyo"})
    state = h.state("c")
    assert state is not None and state.fact("timezone") == "Asia/Tokyo"


def test_history_from_1997_loads() -> None:
    h = PipelineHarness(clock="event", start_ms=T0)
    h.send(Topic.PURCHASES, purchase("old", "c1", ts="1997-03-25T10:00:00Z"))
    state = h.state("c1")
    assert not h.dead_letters() and state is not None and state.frequency == 1


@pytest.mark.parametrize(
    "value",
    [os.urandom(800_000), b'"' * 600_000, ("é" * 400_000).encode(), b"\x00" * 300_000],
    ids=["random-bytes", "quotes", "multibyte", "nul"],
)
def test_a_dead_letter_always_fits_and_says_what_it_cut(value: bytes) -> None:
    h = PipelineHarness(clock="wall", start_ms=T0)
    h.deliver([h.record(Topic.PURCHASES, value, key="k" * 300_000, partition=0)])
    (dead,) = h.dead_letters()
    encoded = orjson.dumps(dead)
    assert len(encoded) < 600_000, len(encoded)  # ~4x under a 1 MB broker limit at worst
    assert dead["truncated"] is True and dead["value_bytes"] == len(value)
    assert dead["value_sha256"] == hashlib.sha256(value).hexdigest()
    kept = dead["value"].encode() if dead["value"] is not None else base64.b64decode(dead["value_b64"])
    assert value.startswith(kept) and 0 < len(kept) <= 65_536


def test_records_keyed_to_the_wrong_partition_are_rerouted_and_counted_under_their_topic() -> None:
    h = PipelineHarness(clock="wall", start_ms=T0)
    home = h.pipeline.partition_of("c1")
    wrong = (home + 1) % h.partitions
    h.deliver([h.record(Topic.PURCHASES, purchase("p1", "c1"), key="c1", partition=wrong)])
    state = h.state("c1")
    assert state is not None and state.frequency == 1
    first, second = h.batches[0], h.batches[1]
    assert first.partition == wrong and first.stats.outcomes == {("purchases", "rerouted"): 1}
    assert second.partition == home and second.stats.outcomes == {("purchases", "applied"): 1}


def test_a_rerouted_records_dead_letter_names_the_record_sent_and_the_hop_as_via() -> None:
    h = PipelineHarness(clock="wall", start_ms=T0)
    home = h.pipeline.partition_of("c1")
    wrong = (home + 1) % h.partitions
    h.deliver([h.record(Topic.PURCHASES, purchase("p0", "c9"), key="c9", partition=wrong)])  # offset 0
    sent = h.record(Topic.PURCHASES, {**purchase("p1", "c1"), "currency": "USD"}, key="c1", partition=wrong)
    h.deliver([sent])  # valid where it lands, refused at c1's partition (the currency)
    (hop,) = [r for b in h.batches for r in b.emits if r.topic is Topic.IDENTITY and r.key == "c1"]
    assert hop.value is not None
    assert hop.value["origin"] == {"topic": "purchases", "partition": wrong, "offset": 1}
    (dead,) = h.dead_letters()
    assert dead["reason"] == "currency_mismatch"
    assert (dead["topic"], dead["partition"], dead["offset"]) == ("purchases", wrong, 1)
    assert dead["via"] == {"topic": "patronage-identity", "partition": home, "offset": 0}
    assert orjson.loads(dead["value"])["event"]["event_id"] == "p1"  # the hop's bytes, as read
    DeadLetter.model_validate(dead)


def test_the_origin_is_kept_from_hop_to_hop() -> None:
    """Keyed to the wrong partition (hop 1, to the anonymous id), forwarded to the customer
    it was merged into (hop 2), refused there: the dead letter names the record sent."""
    h = PipelineHarness(clock="wall", start_ms=T0)
    touch = {"ts": T0, "type": "view"}
    h.send(Topic.TOUCHPOINTS, {**touch, "event_id": "t0", "anonymous_id": "a1"})
    h.send(
        Topic.TOUCHPOINTS,
        {**touch, "event_id": "t1", "customer_id": "c1", "type": "identify", "alias_of": "a1"},
    )
    h.send(Topic.TOUCHPOINTS, {**touch, "event_id": "t2", "customer_id": "c1"})
    state = h.state("a1")
    assert state is not None and state.merged_into == "c1"
    wrong = next(
        p
        for p in range(h.partitions)
        if p not in (h.pipeline.partition_of("a1"), h.pipeline.partition_of("c1"))
    )
    sent = h.record(
        Topic.TOUCHPOINTS, {**touch, "event_id": "t2", "anonymous_id": "a1", "type": "cart"}, partition=wrong
    )
    h.deliver([sent])  # same id as c1's t2, other content: a conflict, found two hops later
    (dead,) = h.dead_letters()
    assert dead["reason"] == "duplicate_conflict"
    assert (dead["topic"], dead["partition"], dead["offset"]) == (sent.topic, sent.partition, sent.offset)
    assert dead["via"]["topic"] == "patronage-identity"
    assert dead["via"]["partition"] == h.pipeline.partition_of("c1")


def test_a_hop_without_an_origin_is_dead_lettered_where_it_was_read() -> None:
    """Hops written before they carried their origin: the identity topic's position, no via."""
    h = PipelineHarness(clock="wall", start_ms=T0)
    hop = {"kind": "event", "topic": "purchases", "event": {**purchase("p1", "c1"), "currency": "USD"}}
    rec = h.record(Topic.IDENTITY, hop, key="c1", partition=h.pipeline.partition_of("c1"))
    h.deliver([rec])
    (dead,) = h.dead_letters()
    assert (dead["topic"], dead["partition"], dead["offset"]) == (rec.topic, rec.partition, rec.offset)
    assert "via" not in dead


def test_event_clock_is_the_oldest_active_input_per_partition_and_never_goes_back() -> None:
    wall = ManualWall(T0)
    clock = EventClock(wall, allowed_lateness_ms=0, idle_ms=5000)
    assert clock.now_ms(0) == T0  # nothing seen: real time
    clock.observe(0, "purchases", T0 - 10 * DAY)
    clock.observe(0, "touchpoints", T0 - 2 * DAY)
    assert clock.now_ms(0) == T0 - 10 * DAY  # purchases hold it back
    clock.observe(1, "purchases", T0 - 1 * DAY)
    wall.advance(6000)  # partition 0's inputs went quiet: it follows the newest event anywhere
    assert clock.now_ms(0) == T0 - 1 * DAY
    clock.observe(0, "purchases", T0 - 5 * DAY)  # active again, older: the clock does not go back
    assert clock.now_ms(0) == T0 - 1 * DAY
    late = EventClock(wall, allowed_lateness_ms=DAY)
    late.observe(3, "purchases", T0)
    assert late.now_ms(3) == T0 - DAY
    late.restore(4, T0 + DAY)
    assert late.now_ms(4) == T0


def test_deadline_index_keeps_the_newest_deadline_and_sweeps_stale_entries() -> None:
    index = DeadlineIndex(lambda s: s.last_event_ms)
    states = {f"c{i}": CustomerState(f"c{i}") for i in range(10_000)}
    for i, (subject, state) in enumerate(states.items()):
        state.last_event_ms = i
        index.update(0, subject, state)
    for _ in range(3):  # moving every deadline leaves stale heap entries behind ...
        for state in states.values():
            assert state.last_event_ms is not None
            state.last_event_ms += 100_000
            index.update(0, state.subject, state)
    assert len(index._heaps[0]) < 4 * 10_000 + 4096  # ... which are swept, not kept forever
    assert index.pop_due(0, 299_999) == []
    due = index.pop_due(0, 300_009)
    assert due == [f"c{i}" for i in range(10)]
    index.update(0, "c20", None)
    assert "c20" not in index.pop_due(0, 10**9)
    index.clear(0)
    assert len(index) == 0


def test_count_index_tracks_classes_incrementally() -> None:
    index = CountIndex(lambda s: s.risk)
    a, b = CustomerState("a"), CustomerState("b")
    a.risk = b.risk = "at_risk"
    index.update(0, "a", a)
    index.update(1, "b", b)
    assert index.counts() == {"at_risk": 2}
    a.risk = "lapsed"
    index.update(0, "a", a)
    index.clear(1)
    assert index.counts() == {"lapsed": 1}


def test_event_clock_never_lets_a_topic_with_a_backlog_count_as_idle() -> None:
    wall = ManualWall(T0)
    clock = EventClock(wall, idle_ms=1000)
    clock.observe(0, "purchases", T0 - 30 * DAY)
    clock.observe(0, "touchpoints", T0 - 2 * DAY)
    clock.backlog(0, "purchases", 5000)  # a busy worker: purchases still to be read
    wall.advance(10_000)
    clock.observe(0, "touchpoints", T0 - DAY)
    assert clock.now_ms(0) == T0 - 30 * DAY  # held back by the unread purchases
    clock.backlog(0, "purchases", 0)
    assert clock.now_ms(0) == T0 - DAY  # read and quiet: idle


def test_event_clock_after_a_restart_waits_for_the_partitions_own_inputs() -> None:
    wall = ManualWall(T0)
    clock = EventClock(wall, idle_ms=1000)
    clock.restore(0, T0 - 50 * DAY)
    clock.restore(1, T0 - 10 * DAY)
    wall.advance(60_000)
    assert clock.now_ms(0) == T0 - 50 * DAY  # not the newest of partition 1 ...
    clock.backlog(0, "purchases", 0)
    clock.backlog(0, "touchpoints", 0)
    assert clock.now_ms(0) == T0 - 10 * DAY  # ... until its own inputs are read and quiet
    fresh = EventClock(wall, idle_ms=1000)
    fresh.observe(1, "purchases", T0)
    assert fresh.now_ms(0) == T0  # nothing anywhere here: the newest seen, but not pinned
    fresh.observe(0, "purchases", T0 - 20 * DAY)
    assert fresh.now_ms(0) == T0 - 20 * DAY


def test_event_clock_waits_for_an_input_with_records_to_read_but_none_applied_yet() -> None:
    wall = ManualWall(T0)
    clock = EventClock(wall, idle_ms=1000)
    clock.restore(0, T0 - 40 * DAY)  # after a restart
    clock.backlog(0, "purchases", 800)  # purchases to read again, none applied yet
    clock.observe(0, "touchpoints", T0 - 5 * DAY)  # the fetch brought only touchpoints
    assert clock.now_ms(0) == T0 - 40 * DAY
    clock.observe(0, "purchases", T0 - 30 * DAY)
    assert clock.now_ms(0) == T0 - 30 * DAY
    fresh = EventClock(wall, idle_ms=1000)
    fresh.backlog(2, "purchases", 10)
    fresh.observe(2, "touchpoints", T0 - 9 * DAY)
    fresh.observe(2, "touchpoints", T0 - 3 * DAY)
    assert fresh.now_ms(2) == T0 - 9 * DAY  # the oldest it applied: nothing can be due yet


def test_event_clock_never_passes_a_record_held_back_in_its_partition() -> None:
    wall = ManualWall(T0)
    clock = EventClock(wall, idle_ms=1000)
    clock.observe(0, "purchases", T0 - 30 * DAY)
    clock.observe(0, "touchpoints", T0 - 30 * DAY)
    clock.pending(0, T0 - 25 * DAY)  # a batch held its newer records back
    clock.observe(1, "purchases", T0)  # another partition runs ahead
    for topic in ("purchases", "touchpoints"):
        clock.backlog(0, topic, 0)
    wall.advance(10_000)  # partition 0's inputs look idle: nothing applied for 10 s ...
    assert clock.now_ms(0) == T0 - 25 * DAY  # ... but the held records are in hand
    clock.pending(0, None)  # applied
    assert clock.now_ms(0) == T0  # now it is idle, and follows the newest event anywhere
    late = EventClock(wall, allowed_lateness_ms=DAY, idle_ms=1000)
    late.pending(2, T0 - 5 * DAY)  # held before anything of partition 2 was applied
    late.observe(3, "purchases", T0)
    assert late.now_ms(2) == T0 - 6 * DAY
    late.restore(4, T0 - 20 * DAY)
    late.pending(4, T0 - 9 * DAY)
    for topic in ("purchases", "touchpoints"):
        late.backlog(4, topic, 0)
    wall.advance(10_000)  # restored, read and quiet: follows the others, not past its held records
    assert late.now_ms(4) == T0 - 10 * DAY


def test_a_partition_whose_records_wait_fires_no_deadline_ahead_of_them() -> None:
    """Found on a paced replay of the demo data: a partition's records were held back for
    seconds (stock arrivals on their way), its inputs looked idle meanwhile, its clock
    followed another partition months ahead, and churn alerts fired for customers whose
    purchase before the deadline was among the held records - then that purchase closed
    each one with a won_back older than its alert."""
    wall = T0 + 400 * DAY
    h = PipelineHarness(clock="event", start_ms=wall, idle_ms=1000)
    start = T0
    p = h.pipeline.partition_of("c1")
    q = next(x for x in range(h.partitions) if x != p)
    other = next(f"d{i}" for i in range(1000) if h.pipeline.partition_of(f"d{i}") == q)
    buys = [h.record(Topic.PURCHASES, purchase(f"p{i}", "c1", start + i * 7 * DAY, 80)) for i in range(10)]
    h._complete(h.pipeline.apply(p, buys, align=True))
    last = start + 63 * DAY
    due = h.pipeline.deadlines.deadline("c1")
    assert due is not None and last < due < last + 40 * DAY  # a valued customer: an alert at due
    for topic in ("purchases", "touchpoints", "customer-updates"):
        h.clock.backlog(p, topic, 0)
    # c1 bought again before the deadline; the batch holds it back (stock on its way: nothing
    # newer than what the partition applied goes yet)
    back = h.record(Topic.PURCHASES, purchase("p10", "c1", due - 5 * DAY, 80))
    batch = Batch(p)
    for _ in h.pipeline.apply_steps(p, [back], batch, align=True, stock_until=last):
        pass
    h._complete(batch)
    assert batch.held == [back]
    h._complete(h.pipeline.apply(q, [h.record(Topic.PURCHASES, purchase("q1", other, due + 10 * DAY))]))
    h.advance(5_000)  # longer than the idle time: the timer ticks every partition
    assert h.clock.now_ms(p) <= due - 5 * DAY
    assert not h.triggers("churn_risk")
    h._complete(h.pipeline.apply(p, [back]))  # offered again and applied
    h.advance(5_000)
    assert not h.triggers("churn_risk") and not h.triggers("won_back")
    state = h.state("c1")
    assert state is not None and state.risk is None and state.frequency == 11


@pytest.mark.parametrize("kind", ["murmur2", "crc32"])
def test_faust_table_routing_partitions_keys_as_the_pipeline_does(kind: str) -> None:
    import zlib

    from streams.partitioning import KeyPartitioner, faust_partitioner

    part = KeyPartitioner({"t": 6}, kind=kind)  # type: ignore[arg-type]
    route = faust_partitioner(kind)  # type: ignore[arg-type]
    for key in ("c1", "ana/ü 1", "", "x" * 300):
        assert route(key.encode(), list(range(6)), list(range(6))) == part("t", key)  # type: ignore[operator]
        if kind == "crc32":  # librdkafka consistent_random: CRC-32 of the key, modulo
            assert part("t", key) == zlib.crc32(key.encode()) % 6


def test_a_partition_is_reprojected_once_its_clock_has_moved_on_and_is_steady() -> None:
    from streams.projection import clock_moved_on

    day = 86_400_000
    projected: dict[int, int] = {}
    seen: dict[int, int] = {}
    assert clock_moved_on(projected, seen, {0: 0, 1: 0}, day) == []  # first sight: written now
    # a replay races through months of event time: not at every check
    assert clock_moved_on(projected, seen, {0: 30 * day, 1: 0}, day) == []
    assert clock_moved_on(projected, seen, {0: 200 * day, 1: day // 2}, day) == []
    # partition 0 caught up (its clock now moves slowly): due once; partition 1 moved < a day
    assert clock_moved_on(projected, seen, {0: 200 * day + 5000, 1: day // 2 + 5000}, day) == [0]
    projected[0] = 200 * day + 5000  # the caller records the clock of the whole projection
    assert clock_moved_on(projected, seen, {0: 200 * day + 10_000, 1: day // 2 + 10_000}, day) == []
    # live operation: the clock creeps past the step, due again one day later
    assert clock_moved_on(projected, seen, {0: 201 * day + 10_000, 1: day + 20_000}, day) == [0, 1]
    # a clock that went back (wall time before the first event, then a replay of old history)
    assert clock_moved_on({0: 900 * day}, {0: 900 * day}, {0: 10 * day}, day) == []
    assert clock_moved_on({0: 900 * day}, {0: 10 * day}, {0: 10 * day + 5000}, day) == [0]
    assert clock_moved_on({}, {}, {0: 5}, 0) == [] and clock_moved_on({0: 0}, {0: 0}, {0: 9 * day}, 0) == []


def test_a_value_that_is_not_utf8_says_so_and_where() -> None:
    from schemas.errors import Rejected
    from streams.pipeline import decode_object

    with pytest.raises(Rejected) as caught:
        decode_object(b'{"customer_id": "c\xff"}')
    assert caught.value.reason.value == "invalid_json"
    assert "not UTF-8 text (byte 18" in str(caught.value)


def test_a_number_no_double_holds_says_so_and_where() -> None:
    """Found by an outside run: ``1e999`` is JSON by the grammar but overflows a double;
    the dead letter says that, not only "invalid JSON"."""
    from schemas.errors import Rejected
    from streams.pipeline import decode_object

    with pytest.raises(Rejected) as caught:
        decode_object(b'{"amount": 1e999}')
    assert caught.value.reason.value == "invalid_json"
    assert "beyond a 64-bit float's range" in str(caught.value) and "char 11" in str(caught.value)


@pytest.mark.parametrize("raw", [b'{"amount": NaN}', b'{"amount": -Infinity}', b'{"amount":Infinity,"x":1}'])
def test_nan_and_infinity_are_named_in_the_dead_letter(raw: bytes) -> None:
    """Found by two outside runs: NaN and Infinity got orjson's bare "unexpected character"."""
    from schemas.errors import Rejected
    from streams.pipeline import decode_object

    with pytest.raises(Rejected) as caught:
        decode_object(raw)
    assert caught.value.reason.value == "invalid_json"
    assert "JSON has no NaN or Infinity" in str(caught.value) and str(caught.value).split()[2] in (
        "NaN",
        "Infinity",
    )


def test_an_event_stamped_ahead_of_real_time_does_not_move_the_clock_past_it() -> None:
    """Found by an outside run: one touchpoint stamped 23 h ahead (a producer's fast clock)
    moved every idle partition's event clock a day ahead, for good, and churn triggers of
    that day fired at once."""
    from streams.clock import CappedEventClock

    wall = [T0]
    clock = CappedEventClock(lambda: wall[0], idle_ms=1000, max_ahead_ms=0)
    clock.observe(0, "purchases", T0 - DAY)
    clock.backlog(0, "purchases", 0)
    assert clock.now_ms(0) == T0 - DAY
    clock.observe(1, "touchpoints", T0 + 23 * 3_600_000)  # skewed, in another partition
    wall[0] += 2000  # everything idle: partition 0 would follow the newest time anywhere
    assert clock.now_ms(0) == T0 + 2000 and clock.now_ms(1) == T0 + 2000 and clock.now_ms() == T0 + 2000
    wall[0] = T0 + 24 * 3_600_000  # real time passed it: the cap lifts, never backwards
    assert clock.now_ms(1) == T0 + 23 * 3_600_000
    ahead = CappedEventClock(lambda: wall[0], max_ahead_ms=3_600_000)
    ahead.observe(0, "purchases", wall[0] + 5 * 3_600_000)
    assert ahead.now_ms(0) == wall[0] + 3_600_000


def test_records_held_back_are_not_decoded_again_when_offered_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog's hold is offered again with every fetch: decoding and validating all of it
    each time held the event loop for up to 2.6 s per batch. The same record objects offered
    again are taken as prepared; new objects (fetched again after a rebalance) are decoded."""
    import streams.pipeline as pipeline_module

    decoded: list[bytes] = []
    real = pipeline_module.decode_object

    def counting(raw: bytes | None, max_bytes: int = 1 << 20) -> dict:
        decoded.append(raw or b"")
        return real(raw, max_bytes)

    monkeypatch.setattr(pipeline_module, "decode_object", counting)
    h = PipelineHarness()
    p = h.pipeline.partition_of("c1")
    early = [h.record(Topic.PURCHASES, purchase(f"p{i}", "c1", T0 - (30 - i) * DAY)) for i in range(3)]
    late = [h.record(Topic.PURCHASES, purchase(f"p{i}", "c1", T0 - (10 - i) * DAY)) for i in range(3, 6)]
    touch = h.record(
        Topic.TOUCHPOINTS, {"event_id": "t1", "customer_id": "c1", "ts": T0 - 28 * DAY, "type": "view"}
    )
    first = h.pipeline.apply(p, [*early, *late, touch], align=True)
    assert first.held == late  # beyond the touchpoints' newest time
    assert len(decoded) == 7
    decoded.clear()
    touch2 = h.record(
        Topic.TOUCHPOINTS, {"event_id": "t2", "customer_id": "c1", "ts": T0 - 5 * DAY, "type": "view"}
    )
    second = h.pipeline.apply(p, [*first.held, touch2], align=True)
    assert decoded == [touch2.value]  # the held ones were not decoded again ...
    assert not second.held
    assert h.pipeline.store.get("c1").frequency == 6  # ... and were applied, once each
    h.pipeline.forget_held()
    again = [h.record(Topic.PURCHASES, purchase("p3", "c1", T0 - 7 * DAY))]
    decoded.clear()
    assert h.pipeline.apply(p, again).stats.outcomes  # a new object: decoded
    assert decoded == [again[0].value]


def test_a_partition_never_read_does_not_take_another_partitions_time_while_an_input_is_unread() -> None:
    """After a restart with some partitions at the end of a backlog, a partition never read
    before took their time as its clock: the hold's clamp for an input with records still
    to read (none in hand) let its purchases run far ahead of its unread touchpoints (a
    SIGTERM under load reordered 483 customers' stages). Its own time starts at its oldest
    record."""
    h = PipelineHarness(start_ms=T0 + 400 * DAY)
    done, fresh = (
        "c1",
        next(
            c
            for c in (f"c{i}" for i in range(2, 200))
            if h.pipeline.partition_of(c) != h.pipeline.partition_of("c1")
        ),
    )
    p_done, p_fresh = h.pipeline.partition_of(done), h.pipeline.partition_of(fresh)
    # one partition is at the end of the data
    h._complete(h.pipeline.apply(p_done, [h.record(Topic.PURCHASES, purchase("d1", done, T0 + 300 * DAY))]))
    assert not h.pipeline.clock.started(p_fresh)
    buys = [h.record(Topic.PURCHASES, purchase(f"f{i}", fresh, T0 + i * 10 * DAY)) for i in range(5)]
    touchpoints = h.topics.real(Topic.TOUCHPOINTS)
    batch = Batch(p_fresh)
    for _ in h.pipeline.apply_steps(p_fresh, buys, batch, align=True, waiting=[touchpoints]):
        pass
    h._complete(batch)
    # nothing went: even its oldest record may be newer than the touchpoints not read yet
    # (a restart from no commits applied a purchase before the customer's first touchpoint)
    assert batch.held == buys
    assert h.state(fresh) is None
    touch = h.record(
        Topic.TOUCHPOINTS, {"event_id": "t0", "customer_id": fresh, "ts": T0 - DAY, "type": "view"}
    )
    batch = Batch(p_fresh)
    for _ in h.pipeline.apply_steps(p_fresh, [*buys, touch], batch, align=True):
        pass
    h._complete(batch)
    state = h.state(fresh)  # the touchpoint first; the purchases wait for the touchpoints' time
    assert state is not None and state.stage == "visitor" and state.frequency == 0 and batch.held == buys
