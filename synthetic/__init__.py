"""Deterministic synthetic input data for demos, tests and benchmarks (``patronage generate``).

Its own package, apart from the rule modules in ``streams/``: it may use the wall-clock-free
calendar helpers of ``datetime`` and knows nothing of how state is computed. Labels state
what is true by construction, so triggers can be scored against them.
"""

from synthetic.generator import (
    CATEGORIES,
    CHANNELS,
    DEFAULT_END_MS,
    STORES,
    SyntheticData,
    generate,
    iter_purchases_fast,
)

__all__ = [
    "CATEGORIES",
    "CHANNELS",
    "DEFAULT_END_MS",
    "STORES",
    "SyntheticData",
    "generate",
    "iter_purchases_fast",
]
