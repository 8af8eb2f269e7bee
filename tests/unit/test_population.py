"""The population index against a brute-force count over the buyers it holds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.state import CustomerState
from schemas.timestamps import DAY_MS
from streams.population import PartitionedPopulation, Population
from streams.rfm import quintile_score, segment

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
            expected = [quintile_score(x, total) for x in below]
            day = s.last_purchase_ms // DAY_MS
            if not any(b.last_purchase_ms // DAY_MS > day for b in buyers):
                expected[0] = 5  # the newest last-purchase day anyone has: R5, however many share it
            else:  # the midpoint of the day's group
                same = sum(b.last_purchase_ms // DAY_MS == day for b in buyers)
                expected[0] = 1 + int(5 * (below[0] + same / 2) / total)
            assert (scores.r, scores.f, scores.m) == tuple(expected)
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


def test_todays_buyers_score_r5_however_many_bought_today() -> None:
    """Found by an outside run: 16 of 20 buyers bought today, 4 two hundred days ago; ties
    took the lowest score of their group, so today's buyers scored R2, "hibernating"."""
    pop = Population()
    states = [buyer(f"old{i}", 18_000, 1, 500) for i in range(4)]
    states += [buyer(f"new{i}", 18_200, 1, 500) for i in range(16)]
    for s in states:
        pop.update(0, s.subject, s)
    new, old = pop.scores(states[-1]), pop.scores(states[0])
    assert new is not None and old is not None
    assert (new.r, new.f) == (5, 1) and segment(new.r, new.f) == "new"
    assert old.r == 1 and segment(old.r, old.f) == "hibernating"
    assert pop.rf_grid() == {(5, 1): 16, (1, 1): 4}
    # a buyer not indexed yet who buys on a newer day is alone on it: R5; the rest drop
    fresh = buyer("fresh", 18_201, 2, 900)
    scores = pop.scores(fresh)
    assert scores is not None and scores.r == 5
    assert pop.scores(states[-1]) == new  # unchanged until the newcomer is indexed
    pop.update(0, "fresh", fresh)
    later = pop.scores(states[-1])
    # yesterday's 16 of 21 (4 older): the middle of their group, 12 of 21, is R3 (was R1)
    assert later is not None and later.r == 3
    assert pop.scores(states[0]).r == 1  # type: ignore[union-attr]


@settings(max_examples=100, deadline=None)
@given(updates, st.lists(st.integers(0, 20), min_size=1, max_size=40))
def test_a_customer_ranks_against_its_own_partition_only(steps: list, gaps: list) -> None:
    """Scores and tiers depend on the customer's partition alone (however far the others
    got), and the worker-wide views add the partitions up; the churn prior is one median."""
    parts = PartitionedPopulation()
    alone: dict[int, Population] = {0: Population(), 1: Population(), 2: Population()}
    everyone = Population()
    held: dict[str, tuple[int, CustomerState]] = {}
    for who, values in steps:
        subject, partition = f"c{who}", who % 3
        state = None if values is None else buyer(subject, *values)
        parts.update(partition, subject, state)
        alone[partition].update(partition, subject, state)
        everyone.update(partition, subject, state)
        if state is None:
            held.pop(subject, None)
        else:
            held[subject] = (partition, state)
    for partition, state in held.values():
        assert parts.of(partition).scores(state) == alone[partition].scores(state) == parts.scores(state)
        assert parts.of(partition).is_core(state, 0.2) == alone[partition].is_core(state, 0.2)
    assert len(parts) == len(held) == len(everyone)
    assert parts.core_count(0.2) == sum(p.core_count(0.2) for p in alone.values())
    grid: dict[tuple[int, int], int] = {}
    for p in alone.values():
        for cell, n in p.rf_grid().items():
            grid[cell] = grid.get(cell, 0) + n
    assert parts.rf_grid() == grid
    # the churn prior: the median of the customers' own intervals over every partition
    for n, gap in enumerate(gaps):
        s = buyer(f"g{n}", 18_000, 4, 100)
        s.days = {d: [1, 25] for d in (18_000 - 3 * gap, 18_000 - 2 * gap, 18_000 - gap, 18_000)}
        parts.update(n % 3, s.subject, s)
        everyone.update(n % 3, s.subject, s)
        assert parts.median_interval_days(1) == everyone.median_interval_days(1)
    parts.clear(1)
    assert all(c[4] != 1 for part in parts._parts.values() for c in part._by_subject.values())
