"""Two workers in one group split the partitions; either answers for any customer."""

from __future__ import annotations

import pytest

from synthetic import generate
from tests import oracle
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def test_two_workers_share_partitions_and_route_profile_requests(cluster: Cluster) -> None:
    data = generate(150, seed=8)
    # with an access token: a request routed to the worker that owns the customer carries it
    cluster.env["PATRONAGE_WEB_TOKEN"] = "two-workers-token"
    cluster.start_worker(0)
    cluster.start_worker(1)
    cluster.replay(cluster.write("t.jsonl", data.touchpoints), "touchpoints")
    cluster.replay(cluster.write("p.jsonl", data.purchases), "purchases")
    cluster.wait()

    summaries = [cluster.get("/summary/", i)[1] for i in (0, 1)]
    assert all(s["customers"] > 0 for s in summaries), "both workers should own some partitions"
    expected = oracle.compute(data.purchases, data.touchpoints)
    assert sum(s["totals"]["purchases"] for s in summaries) == sum(e.frequency for e in expected.values())
    assert sum(s["totals"]["monetary_cents"] for s in summaries) == sum(
        e.monetary_cents for e in expected.values()
    )
    for cid, e in list(expected.items())[:60]:
        a, b = cluster.profile(cid, 0), cluster.profile(cid, 1)
        assert a is not None and b is not None, cid
        assert a["frequency"] == b["frequency"] == e.frequency, cid
        assert a["base_stage"] == b["base_stage"] == e.stage(), cid
        assert a["lifecycle_stage"] == b["lifecycle_stage"], cid
