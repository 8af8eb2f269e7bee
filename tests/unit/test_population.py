"""The population index against a brute-force count over the buyers it holds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.state import CustomerState
from schemas.timestamps import DAY_MS
from streams.population import Population
from streams.rfm import quintile_score

SHARES = (0.01, 0.2, 0.5, 1.0)


def buyer(subject: str, day: int, freq: int, cents: int) -> CustomerState:
    s = CustomerState(subject)
    s.frequency = freq
    s.monetary_cents = cents
    s.first_purchase_ms = s.last_purchase_ms = day * DAY_MS
    return s


updates = st.lists(
    st.tuples(
        st.integers(0, 30),  # subject
        st.one_of(
            st.none(),  # removed (erased, merged, or gone with its partition)
            st.tuples(st.integers(18_000, 18_010), st.integers(1, 4), st.integers(0, 40)),
        ),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(updates)
def test_ranks_scores_and_core_equal_a_count_over_the_buyers(steps: list) -> None:
    pop = Population()
    held: dict[str, CustomerState] = {}
    for n, (who, values) in enumerate(steps):
        subject = f"c{who}"
        state = None if values is None else buyer(subject, *values)
        pop.update(0, subject, state)
        if state is None:
            held.pop(subject, None)
        else:
            held[subject] = state
        if n % 7 and n != len(steps) - 1:
            continue  # check now and then (the cached tables must follow every change)
        buyers = list(held.values())
        total = len(buyers)
        assert len(pop) == total
        for s in buyers:
            below = [
                sum(b.last_purchase_ms // DAY_MS < s.last_purchase_ms // DAY_MS for b in buyers),
                sum(b.frequency < s.frequency for b in buyers),
                sum(b.monetary_cents < s.monetary_cents for b in buyers),
            ]
            scores = pop.scores(s)
            assert scores is not None
            assert (scores.r, scores.f, scores.m) == tuple(quintile_score(x, total) for x in below)
        for share in SHARES:
            limit = max(1.0, share * total)
            core = [s for s in buyers if sum(b.monetary_cents >= s.monetary_cents for b in buyers) <= limit]
            assert pop.core_count(share) == len(core), share
            assert all(pop.is_core(s, share) == (s in core) for s in buyers)
        grid: dict[tuple[int, int], int] = {}
        for s in buyers:
            sc = pop.scores(s)
            assert sc is not None
            grid[(sc.r, sc.f)] = grid.get((sc.r, sc.f), 0) + 1
        assert pop.rf_grid() == grid
