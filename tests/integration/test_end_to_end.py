"""Through the real broker: replay generated data (shuffled, with duplicates and garbage),
then compare every customer's profile with the independent batch computation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from schemas.timestamps import DAY_MS, parse_ts_ms
from synthetic import generate
from tests import oracle
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def garble(rows: list[dict[str, Any]], rnd: random.Random, dup_share: float) -> list[Any]:
    """Shuffle, and re-send a share of the events (at-least-once producers do that)."""
    out: list[Any] = list(rows) + [r for r in rows if rnd.random() < dup_share]
    rnd.shuffle(out)
    return out


GARBAGE = [
    b"{this is not json",
    b'["a", "list"]',
    b'{"event_id": "g1", "customer_id": "c-bad", "ts": "2026-10-01T10:00:00", "amount": 5, "currency": "EUR"}',
    b'{"event_id": "g2", "customer_id": "c-bad", "ts": 1790000000000, "amount": -5, "currency": "EUR"}',
    b'{"event_id": "g3", "ts": 1790000000000, "amount": 5, "currency": "EUR"}',
    b'{"event_id": "g4", "customer_id": "c-bad", "ts": 1790000000000, "amount": 5, "currency": "USD"}',
]


def check_customer(doc: dict[str, Any], e: oracle.Expected, scores: dict[str, tuple[int, int, int]]) -> None:
    cid = e.customer_id
    assert doc["frequency"] == e.frequency, cid
    assert round(doc["monetary"] * 100) == e.monetary_cents, cid
    first = None if doc["first_purchase_at"] is None else parse_ts_ms(doc["first_purchase_at"])
    last = None if doc["last_purchase_at"] is None else parse_ts_ms(doc["last_purchase_at"])
    assert (first, last) == (e.first_ms, e.last_ms), cid
    now = parse_ts_ms(doc["as_of"])
    for days in (30, 90, 365):
        n, c = e.window(now, days)
        w = doc["windows"][f"{days}d"]
        assert (w["purchases"], round(w["monetary"] * 100)) == (n, c), (cid, days)
    assert doc["touchpoints"] == dict(sorted(e.touches.items())), cid
    assert doc["positive_reviews"] == e.positive_reviews, cid
    assert doc["base_stage"] == e.stage(), cid
    assert doc["lifecycle_stage"] in (e.stage(), "at_risk", "lapsed", "lost"), cid
    assert set(doc["merged_anonymous_ids"]) == e.aliases, cid
    if e.frequency:
        assert (doc["rfm"]["r"], doc["rfm"]["f"], doc["rfm"]["m"]) == scores[cid], cid
        if e.frequency >= 2:
            expected_gap = (e.last_ms - e.first_ms) / DAY_MS / (e.frequency - 1)  # type: ignore[operator]
            assert doc["avg_interpurchase_days"] == pytest.approx(expected_gap, abs=1e-3), cid
    else:
        assert doc["rfm"] is None, cid


@pytest.mark.parametrize("fast_path", ["true", "false"], ids=["batch-dispatch", "faust-agent"])
def test_replay_with_duplicates_shuffle_and_garbage_gives_exact_state(
    cluster: Cluster, fast_path: str
) -> None:
    data = generate(250, seed=11)
    rnd = random.Random(11)
    purchases = garble(data.purchases, rnd, 0.15)
    touches = garble(data.touchpoints, rnd, 0.15)
    updates = garble(data.customer_updates, rnd, 0.1)
    assert len(data.purchases) + len(data.touchpoints) > 2000, "want a few thousand events"

    cluster.start_worker(PATRONAGE_FAST_PATH=fast_path)
    csv = cluster.tmp / "extra.csv"
    csv.write_text(
        "event_id,customer_id,ts,amount,currency,items\n"
        'x1,csv-1,2026-10-30T10:00:00+01:00,19.99,EUR,"[{""sku"":""w"",""category"":""wine"",""qty"":1,""price"":19.99}]"\n'
        "x2,csv-1,1793000000000,5,EUR,\n"
    )
    cluster.replay(csv, "purchases")
    cluster.replay(cluster.write("updates.jsonl", updates), "customer-updates")
    cluster.replay(cluster.write("touchpoints.jsonl", touches), "touchpoints")
    out = cluster.replay(cluster.write("purchases.jsonl", [*purchases, *GARBAGE]), "purchases")
    assert "3 unreadable lines" in out
    cluster.replay(cluster.write("stock.jsonl", data.stock_arrivals), "stock-arrivals")
    cluster.wait()

    csv_rows = [
        {
            "event_id": "x1",
            "customer_id": "csv-1",
            "ts": "2026-10-30T10:00:00+01:00",
            "amount": "19.99",
            "currency": "EUR",
        },
        {"event_id": "x2", "customer_id": "csv-1", "ts": 1793000000000, "amount": 5, "currency": "EUR"},
    ]
    expected = oracle.compute([*data.purchases, *csv_rows], data.touchpoints, data.customer_updates)
    scores = oracle.rfm_scores(expected, int(cluster.env["PATRONAGE_PARTITIONS"]))
    assert len(expected) >= 250
    final_stage = {}
    for cid, e in expected.items():
        doc = cluster.profile(cid)
        assert doc is not None, f"no profile for {cid}"
        check_customer(doc, e, scores)
        final_stage[cid] = doc["lifecycle_stage"]
    assert cluster.profile("c-bad") is None
    assert cluster.profile("never-seen") is None
    cli = cluster.run("profile", "never-seen", "--url", cluster.url(), check=False)
    assert cli.returncode == 1 and "unknown customer 'never-seen'" in cli.stderr
    from_csv = cluster.profile("csv-1")
    assert from_csv is not None and from_csv["frequency"] == 2 and from_csv["monetary"] == 24.99

    dead = cluster.read_topic("dead-letters")
    errors = sorted(d["error"] for d in dead)
    assert len(dead) == len(GARBAGE), errors
    assert any("invalid JSON" in e for e in errors)
    assert any("expected a JSON object" in e for e in errors)
    assert any("ts: timestamp '2026-10-01T10:00:00' has no UTC offset" in e for e in errors)
    assert any("amount: must not be negative" in e for e in errors)
    assert any("no key: needs customer_id" in e for e in errors)
    assert any("currency: USD is not the configured currency EUR" in e for e in errors)
    worker_dead = [d for d in dead if d["stage"] != "replay"]
    assert all(d["partition"] is not None and d["offset"] is not None for d in worker_dead)

    changes = cluster.read_topic("lifecycle-changes")
    ids = [c["change_id"] for c in changes]
    assert len(ids) == len(set(ids)), "a lifecycle change was emitted twice"
    chains: dict[str, list[dict[str, Any]]] = {}
    for c in changes:
        chains.setdefault(c["customer_id"], []).append(c)
    for cid, e in expected.items():
        chain = chains.get(cid, [])
        stages = {c["from_stage"] for c in chain} | {c["to_stage"] for c in chain}
        now_stage = final_stage[cid]
        # the chain ends where the profile is (a risk stage hides base-stage moves under it)
        assert now_stage in {c["to_stage"] for c in chain} or now_stage == "stranger", cid
        if now_stage not in ("at_risk", "lapsed", "lost"):
            assert now_stage == e.stage(), cid
        assert "stranger" in stages or not chain, cid

    status, summary = cluster.get("/summary/")
    assert status == 200
    assert sum(v for k, v in summary["stages"].items() if "anonymous" not in k) == summary["customers"]
    assert summary["buyers"] == len(scores)
    _, metrics = 0, cluster.run("tail", "dead-letters", "--limit", "0").stdout
    assert "6 records" in metrics
