"""HOW customer state changes: pure, synchronous functions of (state, event, now).

No Faust, Kafka, Redis, Prometheus or wall-clock access in this package: every time rule
receives its ``now`` from the caller, so it is tested without an event loop.
"""
