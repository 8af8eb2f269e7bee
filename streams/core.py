"""Shared vocabulary of the pure core: what a step returns and what it may read.

- :class:`Emit` - a record to send (logical topic, key, JSON-able value);
- :class:`Outcome` - what happened to an input record (a bounded metric label);
- :class:`Step` - a step's result: the state to store, the outcome, emits and triggers;
- :class:`Context` - what a step may read besides the state and the event: the policy, the
  configured clock's ``now`` (injected), the population index, the churn model.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from schemas.outputs import deterministic_id
from schemas.state import CustomerState
from schemas.timestamps import iso_utc
from schemas.topics import Topic
from streams.policy import Policy

if TYPE_CHECKING:
    from streams.bgnbd import BgNbdParams
    from streams.population import Population


class Emit(NamedTuple):
    """A record to send: logical topic, key, JSON-able value (None: a tombstone, the key's
    record deleted on a compacted topic: see :func:`tombstone`)."""

    topic: Topic
    key: str
    value: dict[str, Any] | None


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REDIRECTED = "redirected"  # an event for a merged anonymous id, forwarded to its customer
    REROUTED = "rerouted"  # keyed to the wrong partition, sent to the right one
    IGNORED_ERASED = "ignored_erased"
    ERASED = "erased"
    LINKED = "linked"
    MERGED = "merged"
    DEAD_LETTER = "dead_letter"


@dataclass(slots=True)
class Step:
    state: CustomerState | None
    outcome: Outcome
    emits: list[Emit] = field(default_factory=list)
    beyond_horizon: bool = False


@dataclass(frozen=True, slots=True)
class ChurnModel:
    """BG/NBD parameters and the time unit they were fitted in (``days`` or ``weeks``)."""

    params: BgNbdParams
    unit: str = "days"
    fitted_at: str | None = None
    customers: int | None = None


@dataclass(slots=True)
class Context:
    """Read-only inputs of a step besides (state, event)."""

    policy: Policy
    now_ms: int  # the configured clock's now for this partition
    population: Population
    model: ChurnModel | None = None
    prior_days: float = 30.0  # churn prior: usual interval for customers with little history


def in_control(share: float, *parts: object) -> bool:
    """Deterministic control-group draw: a hash of ``parts`` (experiment, type, customer ...)
    below ``share`` - the same parts, the same answer, in any process and after a replay."""
    if share <= 0:
        return False
    return int(deterministic_id("holdout", *parts)[:8], 16) / 2**32 < share


def describe_exception(exc: BaseException) -> str:
    """An exception for a log line above debug: its type and where it was raised (the last
    frames' file, line and code), never its message or arguments - those may hold a
    customer id or a piece of an event (README: Security)."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.line or ''}".strip() for f in frames)
    return f"{type(exc).__name__} at {where or '?'}"


def log_failure(logger: logging.Logger, exc: BaseException, what: str, *args: object, then: str = "") -> None:
    """ "<what> failed: <type> at <where><then>" at ERROR (:func:`describe_exception`), and the
    message with its traceback - which may quote a record or a customer id - at DEBUG only.
    ``what`` is a %-format over ``args``."""
    logger.error(f"{what} failed: %s{then}", *args, describe_exception(exc))
    logger.debug(f"{what} failed", *args, exc_info=exc)


def tombstone(subject: str) -> Emit:
    """The erasure of ``subject`` on ``lifecycle-changes``: key = the customer id, no value.
    On a compacted copy of the topic (or a table keyed by customer downstream) it deletes the
    customer's earlier records; consumers that keep a row per customer drop theirs."""
    return Emit(Topic.LIFECYCLE_CHANGES, subject, None)


def lifecycle_change(
    subject: str,
    anonymous: bool,
    before: str,
    after: str,
    *,
    event_id: str,
    topic: str,
    cause_type: str,
    rule: str,
    ts_ms: int,
) -> Emit:
    """The ``lifecycle-changes`` record; its id is derived from the transition and its cause."""
    return Emit(
        Topic.LIFECYCLE_CHANGES,
        subject,
        {
            "change_id": deterministic_id("lifecycle", subject, before, after, event_id),
            "customer_id": subject,
            "anonymous": anonymous,
            "from_stage": before,
            "to_stage": after,
            "ts": iso_utc(ts_ms),
            "cause": {"event_id": event_id, "topic": topic, "type": cause_type, "rule": rule},
        },
    )
