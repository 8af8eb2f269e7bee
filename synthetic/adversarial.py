"""An adversarial corpus: bad records of every kind mixed into valid traffic on every input
topic, deterministic for a seed (``tests/integration/test_garbage.py`` sends it through the
broker; ``python -m synthetic.adversarial`` prints its composition).

Every record says what must become of it: ``valid`` (applied exactly once), ``resend`` (an
identical re-send: a silent duplicate), or a bad kind with the reason codes its dead letter
may carry. The valid records (first copies) are in ``Corpus.valid`` for the oracle.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.topics import Topic

DAY_MS = 86_400_000
# Customer ids that must work everywhere (URL paths, CLI arguments, the page, Redis keys).
AWKWARD_IDS = ("a/b", "x?y", "#1", "with space", "ünï", "🙂 emoji", "100%", "dot.", "..", "a+b&c=d")
ITEM_CATEGORIES = ("beer", "wine", "cheese", "bread")


@dataclass(slots=True)
class Sent:
    topic: Topic
    key: bytes | None
    value: bytes | None
    kind: str  # "valid", "resend", or the bad kind
    reasons: frozenset[str] = frozenset()  # a bad record's acceptable reason codes


@dataclass
class Corpus:
    records: list[Sent]
    valid: dict[Topic, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def bad(self) -> list[Sent]:
        return [r for r in self.records if r.reasons]

    def composition(self) -> dict[str, int]:
        return dict(sorted(Counter(r.kind for r in self.records).items()))


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


class _Gen:
    def __init__(self, seed: int, now_ms: int, customers: int) -> None:
        self.rnd = random.Random(seed)
        self.now_ms = now_ms
        self.ids = [f"adv-{i:04d}" for i in range(customers)] + list(AWKWARD_IDS)
        self.serial = 0
        self.update_ts: dict[str, int] = {}

    def eid(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial:06d}"

    def ts(self) -> int:
        return self.now_ms - self.rnd.randint(DAY_MS, 60 * DAY_MS)

    def purchase(self) -> dict[str, Any]:
        items = [
            {"sku": f"sku-{self.rnd.randint(1, 40)}", "category": self.rnd.choice(ITEM_CATEGORIES),
             "qty": self.rnd.randint(1, 3), "price": self.rnd.randint(100, 5000) / 100}
            for _ in range(self.rnd.randint(1, 3))
        ]  # fmt: skip
        amount = round(sum(i["qty"] * i["price"] for i in items), 2)
        return {"event_id": self.eid("p"), "customer_id": self.rnd.choice(self.ids), "ts": self.ts(),
                "amount": amount, "currency": "EUR", "items": items, "store_id": f"s{self.rnd.randint(1, 5)}"}  # fmt: skip

    def touch(self) -> dict[str, Any]:
        t = {"event_id": self.eid("t"), "customer_id": self.rnd.choice(self.ids), "ts": self.ts(),
             "type": self.rnd.choice(("view", "visit", "cart", "review", "app_open")), "channel": "app"}  # fmt: skip
        if t["type"] == "review":
            t["rating"] = self.rnd.randint(1, 5)
        if t["type"] in ("view", "cart"):
            t["category"] = self.rnd.choice(ITEM_CATEGORIES)
        return t

    def update(self) -> dict[str, Any]:
        cid = self.rnd.choice(self.ids)
        # strictly newer per customer: each update is applied (an older one would be stale)
        ts = self.update_ts.get(cid, self.now_ms - 90 * DAY_MS) + self.rnd.randint(1, 10_000)
        self.update_ts[cid] = ts
        return {"event_id": self.eid("u"), "customer_id": cid, "ts": ts,
                "loyalty_member": self.rnd.random() < 0.5}  # fmt: skip

    def stock(self) -> dict[str, Any]:
        return {"event_id": self.eid("k"), "ts": self.now_ms - self.rnd.randint(60_000, DAY_MS // 2),
                "sku": f"sku-{self.rnd.randint(1, 40)}", "category": self.rnd.choice(ITEM_CATEGORIES),
                "qty": self.rnd.randint(1, 50)}  # fmt: skip

    def valid(self, topic: Topic) -> dict[str, Any]:
        return {
            Topic.PURCHASES: self.purchase,
            Topic.TOUCHPOINTS: self.touch,
            Topic.CUSTOMER_UPDATES: self.update,
            Topic.STOCK_ARRIVALS: self.stock,
        }[topic]()


def _key(topic: Topic, obj: dict[str, Any]) -> bytes | None:
    field_ = "category" if topic is Topic.STOCK_ARRIVALS else "customer_id"
    value = obj.get(field_)
    return value.encode() if isinstance(value, str) else None


# (kind, topics it applies to, builder(gen, topic, base) -> (value bytes or None, reasons))
Builder = Any


def _bad_kinds() -> list[tuple[str, Builder]]:
    def truncated(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        raw = _dumps(b)
        return raw[: g.rnd.randint(1, len(raw) - 1)], {"invalid_json"}

    def non_object(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        return g.rnd.choice([b"[1, 2]", b'"a string"', b"42", b"null", b"true", b"[]", b"3.5"]), {
            "not_an_object"
        }

    def wrong_type(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        choices: list[tuple[str, Any]] = [("event_id", 12345), ("event_id", 1e20), ("event_id", ["x"]),
                                          ("ts", True), ("ts", {"at": 1}), ("ts", "yesterday")]  # fmt: skip
        if t is Topic.PURCHASES:
            choices += [("amount", "abc"), ("amount", True), ("items", "x"), ("customer_id", 7),
                        ("items", [{"sku": "s", "category": "c", "qty": "2", "price": 1}]), ("currency", 978)]  # fmt: skip
        elif t is Topic.TOUCHPOINTS:
            choices += [("type", 5), ("rating", "5"), ("customer_id", 1.0), ("duration_s", "long")]
        elif t is Topic.CUSTOMER_UPDATES:
            choices += [("loyalty_member", "true"), ("consent", {"email": "yes"}), ("customer_id", 99)]
        else:
            choices += [("qty", "3"), ("tags", "new"), ("category", 12)]
        name, value = g.rnd.choice(choices)
        return _dumps({**b, name: value}), {"invalid_field", "ts_invalid", "missing_field"}

    def nan_inf(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        name = {Topic.PURCHASES: "amount", Topic.TOUCHPOINTS: "duration_s", Topic.STOCK_ARRIVALS: "qty"}.get(
            t, "ts"
        )
        token = g.rnd.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400"])
        raw = _dumps({**b, name: 0}).replace(f'"{name}":0'.encode(), f'"{name}":'.encode() + token)
        return raw, {"invalid_json"}

    def absurd_amount(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        if t is Topic.PURCHASES:
            value, reason = g.rnd.choice([(1e15, "amount_out_of_range"), ("1" + "0" * 35, "amount_out_of_range"),
                                          (-5, "invalid_field"), (-0.01, "invalid_field")])  # fmt: skip
            return _dumps({**b, "amount": value}), {reason}
        if t is Topic.STOCK_ARRIVALS:
            return _dumps({**b, "qty": g.rnd.choice([-3, 0, 10**12])}), {"invalid_field"}
        if t is Topic.TOUCHPOINTS:
            return _dumps({**b, "type": "review", "rating": g.rnd.choice([0, 6, -1, 1000])}), {
                "invalid_field"
            }
        return _dumps({**b, "quiet_hours": {"start": "25:00", "end": "07:00"}}), {"invalid_field"}

    def ts_no_offset(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        return _dumps({**b, "ts": g.rnd.choice(["2026-10-01T10:00:00", "2026-10-01", "2026-10-01 10:00"])}), {
            "ts_no_offset"
        }

    def ts_seconds(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        return _dumps({**b, "ts": g.now_ms // 1000 - g.rnd.randint(0, 10**6)}), {"ts_in_seconds"}

    def ts_far(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        value = g.rnd.choice(["1900-01-01T00:00:00Z", "2999-01-01T00:00:00Z", g.now_ms + 30 * DAY_MS, 10**15])
        return _dumps({**b, "ts": value}), {"ts_out_of_range"}

    def unknown_type(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        if t is Topic.TOUCHPOINTS:
            return _dumps({**b, "type": g.rnd.choice(["teleport", "VIEW", ""])}), {"invalid_field"}
        if t is Topic.PURCHASES:
            return _dumps({**b, "currency": "USD"}), {"currency_mismatch"}
        if t is Topic.CUSTOMER_UPDATES:
            return _dumps({**b, "consent": {"fax": True}}), {"invalid_field"}
        return _dumps({**b, "tags": [{"nested": True}]}), {"invalid_field"}

    def missing_id(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        drop = g.rnd.choice(["event_id", "category" if t is Topic.STOCK_ARRIVALS else "customer_id"])
        obj = {k: v for k, v in b.items() if k != drop}
        if t is Topic.TOUCHPOINTS:
            obj.pop("customer_id", None)  # neither customer_id nor anonymous_id
        return _dumps(obj), {"missing_field", "invalid_field"}

    def invalid_utf8(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        raw = _dumps({**b, "event_id": "AAAA"})
        return raw.replace(b"AAAA", g.rnd.choice([b"\xff\xfe", b"\xc3(", b"\xed\xa0\x80", b"a\x80b"])), {
            "invalid_json"
        }

    def control_chars(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        name = "category" if t is Topic.STOCK_ARRIVALS else "event_id"
        if g.rnd.random() < 0.5:  # escaped: valid JSON, an id with a control character
            return _dumps({**b, name: g.rnd.choice(["a\u0000b", "tab\tid", "new\nline", "del\u007f"])}), {
                "invalid_field"
            }
        raw = _dumps({**b, name: "CTRL"})
        return raw.replace(b"CTRL", b"a\x01b"), {"invalid_json"}  # raw control byte in a string

    def long_id(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        name = "category" if t is Topic.STOCK_ARRIVALS else g.rnd.choice(["event_id", "customer_id"])
        if t is Topic.STOCK_ARRIVALS:
            name = g.rnd.choice(["event_id", "category", "sku"])
        return _dumps({**b, name: "x" * 10_000}), {"invalid_field"}

    def deep_nesting(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        depth = g.rnd.choice([600, 5000, 100_000])
        if g.rnd.random() < 0.5:
            return b"[" * depth + b"]" * depth, {"invalid_json", "not_an_object"}
        inner = b'{"a":' * depth + b"1" + b"}" * depth
        raw = _dumps({**b, "extra": "NEST"}).replace(b'"NEST"', inner)
        # orjson refuses nesting deeper than 1024 (invalid JSON); shallower is an ignored field
        return raw, {"invalid_json"} if depth > 1000 else set()

    def tombstone(g: _Gen, t: Topic, b: dict[str, Any]) -> tuple[bytes | None, set[str]]:
        return None, {"empty_value"}

    return [
        ("truncated_json", truncated),
        ("non_object", non_object),
        ("wrong_type", wrong_type),
        ("nan_infinity", nan_inf),
        ("absurd_or_negative", absurd_amount),
        ("ts_no_offset", ts_no_offset),
        ("ts_in_seconds", ts_seconds),
        ("ts_far_past_or_future", ts_far),
        ("unknown_type", unknown_type),
        ("missing_id", missing_id),
        ("invalid_utf8", invalid_utf8),
        ("control_characters", control_chars),
        ("long_id", long_id),
        ("deep_nesting", deep_nesting),
        ("tombstone", tombstone),
    ]


TOPICS = (Topic.PURCHASES, Topic.TOUCHPOINTS, Topic.CUSTOMER_UPDATES, Topic.STOCK_ARRIVALS)


def _big(g: _Gen, topic: Topic, size: int) -> bytes:
    base = _dumps({**g.valid(topic), "padding": ""})
    return base.replace(b'"padding":""', b'"padding":"' + b"x" * (size - len(base)) + b'"')


def generate(
    seed: int = 8,
    now_ms: int = 1_793_491_200_000,
    *,
    bad: int = 10_000,
    valid: int = 3_000,
    customers: int = 150,
    resend_share: float = 0.1,
    conflicts: int = 200,
    big: tuple[tuple[int, int], ...] = ((1_100_000, 4), (10_500_000, 2)),
    null_key_share: float = 0.05,
) -> Corpus:
    """``bad`` bad records (plus ``conflicts`` and the ``big`` values), spread over every
    input topic and every kind, mixed at random into ``valid`` valid records (and identical
    re-sends of ``resend_share`` of them). Conflicting re-sends (same event id, other content)
    come after their original on the same key, so which copy is the conflict is defined."""
    g = _Gen(seed, now_ms, customers)
    weights = {Topic.PURCHASES: 4, Topic.TOUCHPOINTS: 4, Topic.CUSTOMER_UPDATES: 1, Topic.STOCK_ARRIVALS: 1}
    valid_by: dict[Topic, list[dict[str, Any]]] = {t: [] for t in TOPICS}
    stream: list[Sent] = []
    for _ in range(valid):
        topic = g.rnd.choices(TOPICS, weights=[weights[t] for t in TOPICS])[0]
        obj = g.valid(topic)
        valid_by[topic].append(obj)
        key = (
            None
            if topic is not Topic.CUSTOMER_UPDATES and g.rnd.random() < null_key_share
            else _key(topic, obj)
        )
        stream.append(Sent(topic, key, _dumps(obj), "valid"))
    # customer updates must arrive in their ts order per customer: keep the valid ones in order
    resends = [s for s in stream if g.rnd.random() < resend_share and s.topic is not Topic.CUSTOMER_UPDATES]
    kinds = _bad_kinds()
    bads: list[Sent] = []
    while len(bads) < bad:
        topic = TOPICS[len(bads) % len(TOPICS)]
        kind, build = kinds[(len(bads) // len(TOPICS)) % len(kinds)]
        base = g.valid(topic)
        value, reasons = build(g, topic, base)
        if not reasons:  # a shallow nesting is valid: not part of the bad count
            continue
        # refused only after routing (currency): keyed, so its dead letter names its own
        # coordinates (a null-key one would be refused on the identity topic it was re-routed to)
        after_routing = reasons <= {"currency_mismatch"}
        key = None if g.rnd.random() < 0.2 and not after_routing else _key(topic, base)
        bads.append(Sent(topic, key, value, kind, frozenset(reasons)))
    for size, n in big:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            label = f"value_{size // 1_000_000}mb"
            bads.append(Sent(topic, None, _big(g, topic, size), label, frozenset({"too_large"})))
    mixed: list[Sent] = []
    for s in [*resends, *bads]:
        mixed.append(Sent(s.topic, s.key, s.value, "resend" if s.kind == "valid" else s.kind, s.reasons))
    # interleave: each valid record keeps its relative order; bad ones and re-sends land anywhere after
    out: list[Sent] = list(stream)
    for s in mixed:
        out.insert(g.rnd.randint(0, len(out)), s)
    # a re-send must not come before its original (then the original would be the duplicate;
    # the counts are the same, but keep the story simple): move each after its original
    position = {id(s): i for i, s in enumerate(out)}
    first = {s.value: i for i, s in reversed(list(enumerate(out))) if s.kind == "valid"}
    fixed = [s for s in out if not (s.kind == "resend" and position[id(s)] < first[s.value])]
    fixed += [s for s in out if s.kind == "resend" and position[id(s)] < first[s.value]]
    # conflicts: same event id and key as a keyed valid purchase or touchpoint, other content
    keyed = [s for s in stream if s.key is not None and s.topic in (Topic.PURCHASES, Topic.TOUCHPOINTS)]
    for s in g.rnd.sample(keyed, conflicts):
        obj = orjson.loads(s.value or b"{}")
        if s.topic is Topic.PURCHASES:
            obj["amount"] = round(obj["amount"] + 1, 2)
        else:
            obj["channel"] = "web"  # valid touchpoints say "app"
        fixed.append(
            Sent(s.topic, s.key, _dumps(obj), "duplicate_conflict", frozenset({"duplicate_conflict"}))
        )
    return Corpus(fixed, valid_by)


if __name__ == "__main__":
    c = generate()
    print(orjson.dumps({"records": len(c.records), "bad": len(c.bad), **c.composition()}).decode())
