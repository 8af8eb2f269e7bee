"""`make chaos`: the full-size fault scenarios (the integration suite runs a fast subset).
They use the integration fixtures: the session's local stack, and their own stacks for
scenarios that kill the broker."""

from tests.integration.conftest import cluster, stack
from tests.integration.test_faults import fcluster, own_stack

__all__ = ["cluster", "fcluster", "own_stack", "stack"]
