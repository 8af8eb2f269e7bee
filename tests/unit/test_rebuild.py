"""A restart's rebuild (CustomerPipeline.rebuild): one pass over the states, deadlines
indexed from their terms once the population's prior is known - the same indexes as the
incremental ones and as each state's own next deadline."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.state import CustomerState
from streams import churn
from streams import page as view
from streams.pipeline import CustomerPipeline
from streams.policy import ChurnPolicy, Policy
from streams.testing import PipelineHarness
from tests.unit.test_page import _feed


def snapshot(p: CustomerPipeline, indexes: view.PageIndexes) -> dict[str, Any]:
    """Everything the indexes hold, comparable."""
    return {
        "deadlines": dict(p.deadlines._due),
        "heaps": {k: sorted(v) for k, v in p.deadlines._heaps.items() if v},
        "population": {p: dict(part._by_subject) for p, part in p.population._parts.items() if len(part)},
        "prior": p._prior_days,
        "risk": p.risk.counts(),
        "stages": p.stages.counts(),
        "funnel": p.funnel.cells(0),
        "uplift": p.uplift.totals(),
        "interests": dict(p.interests._of),
        "recent": sorted(indexes.recent.triggers._rows),
        "suppressions": sorted(indexes.recent.suppressions._rows),
    }


@pytest.fixture(scope="module")
def fed() -> tuple[PipelineHarness, view.PageIndexes]:
    indexes = view.PageIndexes(25)
    h = PipelineHarness(Policy(), extra_indexes=indexes.all())
    _feed(h, 300, 7)
    return h, indexes


def test_next_deadline_from_its_terms_is_the_cadence_rule_for_any_prior(
    fed: tuple[PipelineHarness, view.PageIndexes],
) -> None:
    h, _ = fed
    policy = ChurnPolicy()
    seen = 0
    for state in h.store.values():
        for prior in (7.0, 30.0, 41.5, 365.0):
            got = churn.next_deadline(state, prior, policy)
            terms = churn.deadline_terms(state, policy)
            if isinstance(terms, tuple):
                seen += 1
                level = churn.risk_level(state)
                usual = churn.usual_interval_days(state, prior, policy)
                assert got == churn.risk_times(state, usual, policy)[level + 1]
            else:
                assert got == terms
    assert seen > 100


def test_rebuild_indexes_every_state_once_and_equals_the_states_own_deadlines(
    fed: tuple[PipelineHarness, view.PageIndexes],
) -> None:
    h, indexes = fed
    p = h.pipeline
    assert len(p.deadlines) > 50 and len(p.population) > 50
    live = snapshot(p, indexes)
    p.rebuild()
    # the ranks are sorted by the rebuild, not left to the first tick after a restart (the
    # churn bench's first tick sorted 1,000,000 buyers: a fifth of its time)
    assert p.population._parts and all(
        not added for part in p.population._parts.values() for added in part._added
    )
    first = snapshot(p, indexes)
    # the incremental indexes held the same (deadlines aside: they were indexed with the
    # prior of their time, re-indexed only when it drifted more than 5 %; and the page's
    # newest triggers: a state remembers only its newest trigger per type, see test_page)
    skip = ("deadlines", "heaps", "prior", "recent")
    assert {k: v for k, v in live.items() if k not in skip} == {
        k: v for k, v in first.items() if k not in skip
    }
    # each subject's deadline is what its own state says with the rebuilt population's prior
    expected = {s: d for s, st in h.store.items() if (d := p._next_deadline(st)) is not None}
    assert first["deadlines"] == expected
    assert sum(len(v) for v in first["heaps"].values()) == len(expected)
    p.rebuild()
    assert snapshot(p, indexes) == first
    # and from the states as the changelog has them (encoded, decoded again)
    decoded = {s: CustomerState.from_json(st.to_json()) for s, st in h.store.items()}
    h.store.clear()
    h.store.update(decoded)
    p.rebuild()
    assert snapshot(p, indexes) == first


def test_a_drifted_prior_indexes_the_deadlines_again_a_slice_per_batch_or_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All at once, the re-index held the processing loop for 663 ms at 50,000 customers
    (live bench); now a slice per batch or tick, and once through, every deadline is the
    state's own with the new prior."""
    import streams.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "REPRIOR_SLICE", 10)
    h = PipelineHarness(Policy())
    _feed(h, 300, 7)
    p = h.pipeline
    p.context(0)
    expected = {s: d for s, st in h.store.items() if (d := p._next_deadline(st)) is not None}
    assert len(expected) > 40
    for subject in expected:  # indexed with some other prior, far off
        p.deadlines.set(p.home_partition(subject), subject, expected[subject] + 10**12)
    p._indexed_prior *= 2  # today's prior has drifted from the one they were indexed with
    p.context(0)
    total = len(h.store)
    assert len(p._reprior) == total - 10  # one slice now, the rest later
    assert sum(p.deadlines.deadline(s) == d for s, d in expected.items()) <= 10
    calls = 1
    while p._reprior:
        p.context(1)  # any partition's batch or tick takes the next slice
        calls += 1
    assert calls == -(-total // 10)
    assert {s: p.deadlines.deadline(s) for s in expected} == expected
    p.rebuild()  # a rebuild indexes everything with the prior at once: nothing left pending
    assert p._reprior == [] and {s: p.deadlines.deadline(s) for s in expected} == expected
