"""BG/NBD: how many purchases a customer will make, and whether they are still around.

The beta-geometric / negative binomial distribution model of Fader, Hardie & Lee (2005),
"'Counting Your Customers' the Easy Way: An Alternative to the Pareto/NBD Model",
Marketing Science 24(2), 275-284. Its story, per customer:

- while alive, repeat purchases arrive as a Poisson process with rate ``lambda``;
  ``lambda ~ Gamma(shape=r, rate=alpha)`` across customers;
- right after each repeat purchase the customer drops out ("dies") with probability ``p``;
  ``p ~ Beta(a, b)`` across customers.

A customer is summarised by ``(x, t_x, T)``: ``x`` repeat purchases, the last at time ``t_x``
after the first purchase, observed for ``T`` time units since the first purchase
(see :func:`summarize`). ``alpha`` is in the same time unit as ``t_x`` and ``T``.

Pure: numpy and scipy only, no clock, no I/O. Callers pass the observation end ``until_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import integrate, optimize, special

DAY_MS = 86_400_000
UNIT_DAYS: dict[str, int] = {"days": 1, "weeks": 7}

MIN_CUSTOMERS = 10
# Bounds on the log-parameters while fitting: exp(+-20) is 2e-9 .. 5e8.
_LOG_BOUND = 20.0
# A fitted parameter outside this range is a boundary solution of the likelihood (no sign of
# dropout: a -> 0 and b -> inf; no heterogeneity in rates: r, alpha -> inf together), not an
# estimate: such fits are reported as not converged.
_PARAM_RANGE = (1e-6, 1e6)
# A mean dropout chance per purchase, a/(a+b), below this is "nobody drops out": the edge too.
_DROPOUT_FLOOR = 1e-6
# Below this distance from a = 1 the closed form of expected_purchases is 0/0 (see there).
_A_NEAR_ONE = 1e-4
# Largest gradient (of the mean log-likelihood in log-parameters) taken as stationary.
_GRAD_TOL = 1e-6

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class BgNbdParams:
    """Population parameters: purchase rate ``Gamma(r, alpha)``, dropout ``Beta(a, b)``."""

    r: float
    alpha: float
    a: float
    b: float

    def to_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BgNbdParams:
        """Build from a mapping with keys r, alpha, a, b; each must be a finite number > 0."""
        values: dict[str, float] = {}
        for name in ("r", "alpha", "a", "b"):
            if name not in d:
                raise ValueError(f"BG/NBD parameter {name!r} is missing")
            raw = d[name]
            if isinstance(raw, bool) or not isinstance(raw, int | float | np.integer | np.floating):
                raise ValueError(f"BG/NBD parameter {name!r} must be a number, got {raw!r}")
            value = float(raw)
            if not math.isfinite(value) or value <= 0.0:
                raise ValueError(f"BG/NBD parameter {name!r} must be finite and > 0, got {raw!r}")
            values[name] = value
        return cls(**values)

    def _as_tuple(self) -> tuple[float, float, float, float]:
        return self.r, self.alpha, self.a, self.b


@dataclass(frozen=True)
class FitResult:
    params: BgNbdParams
    log_likelihood: float
    customers: int
    converged: bool
    iterations: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.params.to_dict(),
            "log_likelihood": self.log_likelihood,
            "customers": self.customers,
            "converged": self.converged,
            "iterations": self.iterations,
        }


# --------------------------------------------------------------------------- summaries


def _unit_days(unit: str) -> int:
    try:
        return UNIT_DAYS[unit]
    except KeyError:
        raise ValueError(f"unit must be one of {sorted(UNIT_DAYS)}, got {unit!r}") from None


def _summarize_days(days: set[int], until_day: int, per: int) -> tuple[int, float, float]:
    first, last = min(days), max(days)
    return len(days) - 1, (last - first) / per, (until_day - first) / per


def summarize(
    purchase_ts_ms: Iterable[int], until_ms: int, unit: str = "days"
) -> tuple[int, float, float] | None:
    """One customer's ``(x, t_x, T)`` as of ``until_ms``, or None if nothing was bought by then.

    Convention (the literature's, and that of ``lifetimes``'
    ``summary_data_from_transaction_data(..., freq="D")``):

    - time is counted in whole UTC calendar days, ``day = ts_ms // 86_400_000``;
    - all purchases on the same UTC day are ONE purchase occasion;
    - purchases after ``until_ms`` are ignored (one at exactly ``until_ms`` counts);
    - ``x`` = number of distinct purchase days - 1 (repeat occasions; the first one is the
      customer's "birth", not a repeat purchase);
    - ``t_x`` = last purchase day - first purchase day (0 when ``x == 0``);
    - ``T`` = day of ``until_ms`` - first purchase day.

    ``t_x`` and ``T`` are in ``unit``: ``"days"`` (whole numbers) or ``"weeks"`` (days / 7,
    fractional, as in Fader & Hardie's CDNOW summary and ``lifetimes`` with ``freq="D",
    freq_multiplier=7``; not calendar weeks).
    """
    per = _unit_days(unit)
    until_day = until_ms // DAY_MS
    days = {ts // DAY_MS for ts in purchase_ts_ms if ts <= until_ms}
    if not days:
        return None
    return _summarize_days(days, until_day, per)


def summarize_customers(
    events: Iterable[tuple[str, int]], until_ms: int, unit: str = "days"
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Arrays ``x, t_x, T`` for every customer with a purchase on or before ``until_ms``.

    ``events`` are ``(customer_id, purchase_ts_ms)`` pairs in any order; each customer is
    summarised as in :func:`summarize`. Rows are in order of each customer's first
    appearance in ``events``; customers with no purchase by ``until_ms`` are skipped.
    """
    per = _unit_days(unit)
    until_day = until_ms // DAY_MS
    by_customer: dict[str, set[int]] = {}
    for customer_id, ts in events:
        days = by_customer.setdefault(customer_id, set())
        if ts <= until_ms:
            days.add(ts // DAY_MS)
    rows = [_summarize_days(days, until_day, per) for days in by_customer.values() if days]
    n = len(rows)
    x = np.fromiter((row[0] for row in rows), dtype=np.int64, count=n)
    t_x = np.fromiter((row[1] for row in rows), dtype=np.float64, count=n)
    T = np.fromiter((row[2] for row in rows), dtype=np.float64, count=n)
    return x, t_x, T


# --------------------------------------------------------------------------- likelihood


def _validated(
    x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    xa = np.asarray(x, dtype=np.float64)
    ta = np.asarray(t_x, dtype=np.float64)
    Ta = np.asarray(T, dtype=np.float64)
    if xa.ndim != 1 or ta.shape != xa.shape or Ta.shape != xa.shape:
        raise ValueError(
            f"x, t_x and T must be 1-D arrays of one length, got shapes {xa.shape}, {ta.shape}, {Ta.shape}"
        )
    if not (np.isfinite(xa).all() and np.isfinite(ta).all() and np.isfinite(Ta).all()):
        raise ValueError("x, t_x and T must be finite")
    if (xa < 0).any() or (xa != np.floor(xa)).any():
        raise ValueError("x (repeat purchases) must be whole numbers >= 0")
    if (ta < 0).any() or (ta > Ta).any():
        raise ValueError("need 0 <= t_x <= T for every customer")
    # t_x means nothing without a repeat purchase; the likelihood ignores it, so do we.
    ta = np.where(xa > 0, ta, 0.0)
    return xa, ta, Ta


def _ll_and_grad(
    theta: tuple[float, float, float, float], x: FloatArray, t_x: FloatArray, T: FloatArray, with_grad: bool
) -> tuple[FloatArray, FloatArray | None]:
    """Per-customer log-likelihood and (optionally) its gradient in (r, alpha, a, b).

    L = B(a, b+x)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+T)^(r+x))
        + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+t_x)^(r+x))

    written as ``log L = base + log(1 + [x > 0] e^d)`` with
    ``d = log a - log(b+x-1) + (r+x) log((alpha+T)/(alpha+t_x))``; ``1/(1+e^d)`` is P(alive).
    Everything stays in log space, so there is no overflow of ``(alpha+t_x)^(r+x)`` (the
    "#NUM!" problem of the spreadsheet implementations).
    """
    r, alpha, a, b = theta
    rx = r + x
    has = x > 0
    log_aT = np.log(alpha + T)
    log_atx = np.log(alpha + t_x)
    base = (
        special.gammaln(rx)
        - special.gammaln(r)
        + r * math.log(alpha)
        + special.gammaln(a + b)
        + special.gammaln(b + x)
        - special.gammaln(b)
        - special.gammaln(a + b + x)
        - rx * log_aT
    )
    bx1 = np.where(has, b + x - 1.0, 1.0)
    d = np.where(has, math.log(a) - np.log(bx1) + rx * (log_aT - log_atx), -np.inf)
    ll = base + np.logaddexp(0.0, d)
    if not with_grad:
        return ll, None
    s = special.expit(d)  # P(dead | data); 0 where x == 0
    psi_ab = special.digamma(a + b)
    psi_abx = special.digamma(a + b + x)
    g_r = special.digamma(rx) - special.digamma(r) + math.log(alpha) - log_aT + s * (log_aT - log_atx)
    g_alpha = r / alpha - rx / (alpha + T) + s * rx * (1.0 / (alpha + T) - 1.0 / (alpha + t_x))
    g_a = psi_ab - psi_abx + s / a
    g_b = psi_ab + special.digamma(b + x) - special.digamma(b) - psi_abx - s / bx1
    return ll, np.stack([g_r, g_alpha, g_a, g_b])


def log_likelihood(params: BgNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> float:
    """Summed BG/NBD log-likelihood of customers ``(x, t_x, T)`` (FHL 2005, eq. 6)."""
    xa, ta, Ta = _validated(x, t_x, T)
    ll, _ = _ll_and_grad(params._as_tuple(), xa, ta, Ta, with_grad=False)
    return float(ll.sum())


# --------------------------------------------------------------------------- fitting


def _aggregate(
    x: FloatArray, t_x: FloatArray, T: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Identical ``(x, t_x, T)`` rows once each, with their counts as weights."""
    rows, counts = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_counts=True)
    return rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy(), counts.astype(np.float64)


def _starts(x: FloatArray, T: FloatArray, w: FloatArray) -> list[FloatArray]:
    """Heuristic starting points (log-parameters) scaled to the data's time unit."""
    rate = float((w * x).sum() / max(float((w * T).sum()), 1e-12))
    rate = max(rate, 1e-12)
    return [
        np.log([1.0, 1.0 / rate, 1.0, 3.0]),
        np.log([0.3, 0.3 / rate, 0.5, 1.5]),
    ]


def fit(
    x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike, *, initial: BgNbdParams | None = None
) -> FitResult:
    """Maximum-likelihood BG/NBD parameters for customers ``(x, t_x, T)``.

    Minimises the mean negative log-likelihood over log-parameters (so every parameter stays
    positive) with L-BFGS-B and the analytic gradient, on the distinct ``(x, t_x, T)`` rows
    weighted by their counts. Starts from ``initial`` if given, else from two data-scaled
    guesses, and keeps the best.

    ``converged`` is False if the optimiser did not reach a stationary point, or if a
    parameter ended outside [1e-6, 1e6], or the mean dropout chance a/(a+b) is below 1e-6: the
    likelihood's maximum is then on the edge of the parameter space (the data show no sign of
    dropout, ``a -> 0`` and ``b -> inf``; or no
    heterogeneity in purchase rates, ``r`` and ``alpha -> inf`` with ``r/alpha`` fixed), and
    the numbers returned are where the optimiser stopped on a flat ridge, not estimates.

    Raises ValueError for malformed input, fewer than 10 customers, or no repeat purchase.
    """
    xa, ta, Ta = _validated(x, t_x, T)
    n = int(xa.size)
    if n < MIN_CUSTOMERS:
        raise ValueError(f"need at least {MIN_CUSTOMERS} customers to fit BG/NBD, got {n}")
    if not (xa > 0).any():
        raise ValueError(
            "no customer made a repeat purchase (all x == 0): BG/NBD parameters are not identified"
        )
    ux, ut, uT, w = _aggregate(xa, ta, Ta)
    total = float(w.sum())

    def objective(log_theta: FloatArray) -> tuple[float, FloatArray]:
        theta = np.exp(log_theta)
        ll, grad = _ll_and_grad((theta[0], theta[1], theta[2], theta[3]), ux, ut, uT, with_grad=True)
        assert grad is not None
        value = -float(w @ ll) / total
        g = -(grad @ w) * theta / total
        if not math.isfinite(value) or not np.isfinite(g).all():
            return 1e100, np.zeros(4)
        return value, g

    starts = _starts(ux, uT, w)
    if initial is not None:
        starts.insert(0, np.log(np.array(initial._as_tuple())))
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * 4
    best: optimize.OptimizeResult | None = None
    for start in starts:
        res = optimize.minimize(
            objective,
            np.clip(start, -_LOG_BOUND + 1, _LOG_BOUND - 1),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 2000, "ftol": 1e-14, "gtol": 1e-9},
        )
        if math.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None or best.fun >= 1e99:
        raise ValueError("BG/NBD fit failed: the likelihood was not finite at any start")
    theta = np.exp(best.x)
    params = BgNbdParams(float(theta[0]), float(theta[1]), float(theta[2]), float(theta[3]))
    lo, hi = _PARAM_RANGE
    # The mean dropout chance after a purchase, a/(a+b), is the quantity the data pin down when
    # there is no dropout: it goes to 0 while a and b themselves may stop anywhere along the ridge
    # (where depends on the optimiser's version), so it is checked on its own.
    no_dropout = params.a / (params.a + params.b) < _DROPOUT_FLOOR
    on_edge = bool(((theta < lo) | (theta > hi)).any()) or no_dropout
    # L-BFGS-B's line search can give up ("ABNORMAL") at the optimum when the mean
    # log-likelihood no longer changes in double precision; a vanishing gradient still counts.
    stationary = bool(best.success) or float(np.abs(best.jac).max()) < _GRAD_TOL
    return FitResult(
        params=params,
        log_likelihood=-float(best.fun) * total,
        customers=n,
        converged=stationary and not on_edge,
        iterations=int(best.nit),
    )


# --------------------------------------------------------------------------- per-customer


def _log_dead_odds(params: BgNbdParams, x: float, t_x: float, T: float) -> float:
    r, alpha, a, b = params._as_tuple()
    return math.log(a / (b + x - 1.0)) + (r + x) * (math.log(alpha + T) - math.log(alpha + t_x))


def _check_customer(x: float, t_x: float, T: float) -> None:
    if not (math.isfinite(x) and math.isfinite(t_x) and math.isfinite(T)):
        raise ValueError("x, t_x and T must be finite")
    if x < 0 or x != math.floor(x):
        raise ValueError(f"x must be a whole number >= 0, got {x}")
    if x > 0 and not 0 <= t_x <= T:
        raise ValueError(f"need 0 <= t_x <= T, got t_x={t_x}, T={T}")
    if T < 0:
        raise ValueError(f"T must be >= 0, got {T}")


def p_alive(params: BgNbdParams, x: float, t_x: float, T: float) -> float:
    """P(customer still alive at T | x, t_x, T) (FHL 2005, eq. 13).

    ``1 / (1 + [x > 0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))``; exactly 1.0 when
    ``x == 0``: in the BG/NBD a customer can only drop out right after a repeat purchase.
    """
    _check_customer(x, t_x, T)
    if x == 0:
        return 1.0
    d = _log_dead_odds(params, x, t_x, T)
    if d > 0:
        e = math.exp(-d)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(d))


def _expected_alive_closed(r: float, alpha: float, a: float, b: float, t: float, x: float, T: float) -> float:
    """E[purchases in (T, T+t] | alive at T] via 2F1, after Euler's transformation.

    FHL (2005) eq. 10 numerator: ``(a+b+x-1)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x)
    2F1(r+x, b+x; a+b+x-1; z)]`` with ``z = t/(alpha+T+t)``. Euler's transformation
    ``2F1(A, B; C; z) = (1-z)^(C-A-B) 2F1(C-A, C-B; C; z)`` turns the bracket into
    ``1 - (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z)``, which cannot overflow for large x.
    """
    z = t / (alpha + T + t)
    log_1mz = math.log(alpha + T) - math.log(alpha + T + t)
    c = a + b + x - 1.0
    try:
        h = float(special.hyp2f1(a + b - 1.0 - r, a - 1.0, c, z))
        if h > 0:
            bracket = -math.expm1((a - 1.0) * log_1mz + math.log(h))
        else:
            bracket = 1.0 - math.exp((a - 1.0) * log_1mz) * h
        return c / (a - 1.0) * bracket
    except (OverflowError, ValueError, ZeroDivisionError):
        return math.nan


def _expected_alive_quad(r: float, alpha: float, a: float, b: float, t: float, x: float, T: float) -> float:
    """The same expectation by one-dimensional quadrature over the dropout probability p.

    Given alive at T with (lambda, p), purchases in (T, T+t] have mean (1 - e^(-lambda p t))/p.
    The posterior of lambda integrates out in closed form, leaving
    ``E[(1 - ((alpha+T)/(alpha+T+pt))^(r+x)) / p]`` under the posterior of p given alive,
    ``Beta(a, b+x)``. The density's endpoint singularities go to QUADPACK's algebraic weight
    (``weight="alg"``), so this holds for every a > 0, including a == 1. For large x the
    posterior sits near p = 0 on the scale s = 1/(a+b+x); the integral is then taken over
    v = p/s up to where the remaining mass is below e^-40.
    """
    rx = r + x
    k = t / (alpha + T)

    def mean_given_p(p: float) -> float:
        if p <= 0.0:
            return rx * k
        return -math.expm1(-rx * math.log1p(p * k)) / p

    def quad(f: Any, hi: float, wvar: tuple[float, float]) -> float:
        out = integrate.quad(
            f,
            0.0,
            hi,
            weight="alg",
            wvar=wvar,
            limit=500,
            epsabs=0.0,
            epsrel=1e-10,
            full_output=1,  # return, rather than warn about, "roundoff error" at this tolerance
        )
        return float(out[0])

    log_norm = special.betaln(a, b + x)
    s = 1.0 / (a + b + x)
    v_max = a + 10.0 * math.sqrt(a) + 40.0
    if v_max * s >= 1.0:
        return quad(mean_given_p, 1.0, (a - 1.0, b + x - 1.0)) / math.exp(log_norm)
    power = b + x - 1.0

    def scaled(v: float) -> float:
        return math.exp(power * math.log1p(-s * v)) * mean_given_p(s * v)

    return quad(scaled, v_max, (a - 1.0, 0.0)) * math.exp(a * math.log(s) - log_norm)


def expected_purchases(params: BgNbdParams, t: float, x: float, t_x: float, T: float) -> float:
    """E[number of purchases in (T, T+t] | x, t_x, T] (FHL 2005, eq. 10).

    ``P(alive) * E[purchases in (T, T+t] | alive]``; the second factor uses the Gaussian
    hypergeometric function (``scipy.special.hyp2f1``). At ``a == 1`` that closed form is
    0/0: within 1e-4 of it the value is interpolated linearly between ``a = 1 - 1e-4`` and
    ``a = 1 + 1e-4`` (the expectation is smooth in ``a``; relative error below 1e-7).
    Where the closed form is not usable (``a+b+x-1`` at a pole of 2F1, or ``hyp2f1`` failing
    for large ``x`` and long horizons), a quadrature over the dropout probability is used.
    With ``x = t_x = T = 0`` this is E[X(t)], the expected repeat purchases of a new customer.
    """
    _check_customer(x, t_x, T)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"t must be finite and >= 0, got {t}")
    if t == 0:
        return 0.0
    r, alpha, a, b = params._as_tuple()
    if abs(a - 1.0) < _A_NEAR_ONE:
        lo = _expected_alive_closed(r, alpha, 1.0 - _A_NEAR_ONE, b, t, x, T)
        hi = _expected_alive_closed(r, alpha, 1.0 + _A_NEAR_ONE, b, t, x, T)
        alive_mean = lo + (hi - lo) * (a - (1.0 - _A_NEAR_ONE)) / (2.0 * _A_NEAR_ONE)
    else:
        alive_mean = _expected_alive_closed(r, alpha, a, b, t, x, T)
    # Never more than with no dropout at all: rate (r+x)/(alpha+T) for t units.
    ceiling = (r + x) / (alpha + T) * t
    if not (math.isfinite(alive_mean) and 0.0 <= alive_mean <= ceiling * (1.0 + 1e-9)):
        alive_mean = _expected_alive_quad(r, alpha, a, b, t, x, T)
    return p_alive(params, x, t_x, T) * alive_mean


def expected_repeat_purchases(params: BgNbdParams, t: float) -> float:
    """E[X(t)]: expected repeat purchases in the first t units of a new customer (FHL eq. 9)."""
    return expected_purchases(params, t, 0, 0.0, 0.0)


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class SimulatedCustomers:
    """Customers drawn from the BG/NBD, with what a model cannot see."""

    x: IntArray
    t_x: FloatArray
    T: FloatArray
    alive: npt.NDArray[np.bool_]  # still alive at T
    future: IntArray  # purchases in (T, T + horizon]


def simulate_with_future(
    params: BgNbdParams, n: int, T: float | npt.ArrayLike, seed: int, horizon: float = 0.0
) -> SimulatedCustomers:
    """Draw ``n`` customers from the BG/NBD generative process, observed for ``T`` each.

    Per customer: ``lambda ~ Gamma(r, rate alpha)``, ``p ~ Beta(a, b)``; repeat purchases
    arrive as Poisson(lambda) from time 0 (the first purchase); after each repeat purchase
    the customer drops out with probability ``p``. Vectorised: without dropout ``N`` purchases
    fall in (0, T], the customer's last purchase is number ``K ~ Geometric(p)``, so
    ``x = min(N, K)`` and ``t_x`` is the x-th order statistic of N uniform times on (0, T].
    ``future`` counts purchases in ``(T, T + horizon]``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    Ta = np.broadcast_to(np.asarray(T, dtype=np.float64), (n,)).copy()
    if not np.isfinite(Ta).all() or (Ta < 0).any():
        raise ValueError("T must be finite and >= 0")
    if not (math.isfinite(horizon) and horizon >= 0):
        raise ValueError(f"horizon must be finite and >= 0, got {horizon}")
    r, alpha, a, b = params._as_tuple()
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1.0 / alpha, size=n)
    p = np.clip(rng.beta(a, b, size=n), 1e-15, 1.0)
    last = rng.geometric(p)  # K: the repeat purchase after which the customer drops out
    N = rng.poisson(lam * Ta)
    x = np.minimum(N, last)
    has = x > 0
    u = rng.beta(np.where(has, x, 1), np.where(has, N - x + 1, 1))
    t_x = np.where(has, Ta * u, 0.0)
    alive = last > N
    more = rng.poisson(lam * horizon)
    future = np.where(alive, np.minimum(more, last - N), 0)
    return SimulatedCustomers(
        x=x.astype(np.int64), t_x=t_x, T=Ta, alive=alive, future=future.astype(np.int64)
    )


def simulate(
    params: BgNbdParams, n: int, T: float | npt.ArrayLike, seed: int
) -> tuple[IntArray, FloatArray, FloatArray]:
    """``x, t_x, T`` of ``n`` customers drawn from the BG/NBD (see :func:`simulate_with_future`)."""
    sim = simulate_with_future(params, n, T, seed)
    return sim.x, sim.t_x, sim.T
