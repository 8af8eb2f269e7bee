"""How long a BG/NBD fit takes on 25,000 customers.

Draws 25,000 customers from the BG/NBD (fixed seed) with purchase histories in days, as
``streams.bgnbd.summarize`` would give them: each customer observed for a whole number of days
(first purchases spread over two years), ``t_x`` rounded up to a whole day. Then times
``streams.bgnbd.fit`` on them, best of three, wall clock.

Usage::

    python -m bench.bgnbd_fit

Prints one JSON line::

    {"customers": 25000, "fit_seconds": ..., "params": {"r": ..., "alpha": ..., "a": ..., "b": ...}}
"""

from __future__ import annotations

import json
import time

import numpy as np

from streams.bgnbd import BgNbdParams, fit, simulate

CUSTOMERS = 25_000
SEED = 20250101
REPEATS = 3
# A plausible online shop in days: mean rate r/alpha = 1 purchase per 50 days; mean dropout
# a/(a+b) = 0.15 after each repeat purchase.
TRUE = BgNbdParams(r=0.8, alpha=40.0, a=0.6, b=3.4)


def run() -> dict[str, object]:
    """The fit timing as a dict (``make bench`` reports it)."""
    rng = np.random.default_rng(SEED)
    T = np.floor(rng.uniform(30.0, 730.0, size=CUSTOMERS))
    x, t_x, T = simulate(TRUE, CUSTOMERS, T, seed=SEED)
    t_x = np.minimum(np.ceil(t_x), T)
    best = float("inf")
    result = None
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = fit(x, t_x, T)
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return {"customers": CUSTOMERS, "fit_seconds": round(best, 4), "params": result.params.to_dict()}


def main() -> int:
    print(json.dumps(run()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
