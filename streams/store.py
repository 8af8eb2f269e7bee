"""Customer states held densely: a few hot objects, every other customer as its changelog bytes.

A :class:`CustomerState` object with its dicts, lists and id-memory arrays takes ~10 KB of
worker memory; the same customer's changelog value is ~0.9 KB. :class:`StateStore` keeps
each customer either *hot* (the object, as before) or *cold* (the exact bytes of its
changelog value, ``CustomerState.to_json()``):

- after a restart every recovered customer is cold: the changelog bytes go into the store
  as they are, without decoding (the indexes are built by decoding each once, then the
  object is dropped, see ``CustomerPipeline.rebuild``);
- reading a customer for a change (``store[s]``, ``store.get(s)``) decodes a cold one and
  keeps the object hot: the pipeline changes states in place;
- ``trim()`` turns the oldest hot customers beyond ``max_hot`` cold again (encoded, the
  same bytes the changelog got). The pipeline calls it only where no state object is held
  by anyone for a later change: at the start of a batch and of a tick (between records,
  never inside one). Every change to a state happens within one record (or one tick, or
  one synchronous step of the I/O shell that reads the state from the store again), so an
  object trimmed while an older reference to it is still around (a batch's ``changed``,
  about to be encoded) is never changed through that reference afterwards;
- readers that only look (the Redis projection, the HTTP views, summaries) use
  :meth:`peek`, :meth:`reader` or :meth:`items`/:meth:`values`: a cold customer is
  decoded for them and not kept.

So hot customers are at most ``max_hot`` plus those one batch touches; the rest cost their
changelog bytes. Results are exactly the same as with a plain dict (the unit tests run
the pipeline with ``max_hot=0`` too: every batch starts with every customer cold).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import ItemsView, Iterator, Mapping, MutableMapping, ValuesView
from typing import Any

from schemas.state import CustomerState

_MISSING: Any = object()
# every encoded state with a non-empty outbox has this key (CustomerState.to_dict writes it
# only then); other bytes may contain it too (a category named "out"), never the reverse
OUTBOX_MARK = b'"out":'


class StateStore(MutableMapping[str, CustomerState]):
    """subject -> CustomerState, hot (object) or cold (changelog bytes); see the module doc."""

    __slots__ = ("_data", "_hot", "max_hot")

    def __init__(self, max_hot: int) -> None:
        if max_hot < 0:
            raise ValueError("max_hot must be >= 0")
        self.max_hot = max_hot
        self._data: dict[str, CustomerState | bytes] = {}
        # hot subjects, oldest first (by when they became hot)
        self._hot: OrderedDict[str, None] = OrderedDict()

    # --- the mapping: reading for a change keeps the object hot ---------------------------------
    def __getitem__(self, subject: str) -> CustomerState:
        value = self._data[subject]
        if value.__class__ is bytes:
            value = CustomerState.from_json(value)
            self._data[subject] = value
            self._hot[subject] = None
        return value  # type: ignore[return-value]

    def get(self, subject: str, default: Any = None) -> Any:
        value = self._data.get(subject, _MISSING)
        if value is _MISSING:
            return default
        if value.__class__ is bytes:
            value = CustomerState.from_json(value)
            self._data[subject] = value
            self._hot[subject] = None
        return value

    def __setitem__(self, subject: str, state: CustomerState) -> None:
        self._data[subject] = state
        self._hot[subject] = None

    def __delitem__(self, subject: str) -> None:
        del self._data[subject]
        self._hot.pop(subject, None)

    def pop(self, subject: str, default: Any = _MISSING) -> Any:
        value = self._data.pop(subject, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(subject)
            return default
        self._hot.pop(subject, None)
        return CustomerState.from_json(value) if value.__class__ is bytes else value

    def clear(self) -> None:
        self._data.clear()
        self._hot.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, subject: object) -> bool:
        return subject in self._data

    # --- looking without keeping ------------------------------------------------------------
    def peek(self, subject: str) -> CustomerState | None:
        """The state (a cold one decoded, not kept hot), or None. For readers only: a change
        to a cold customer's decoded copy is lost."""
        value = self._data.get(subject)
        if value is None or value.__class__ is not bytes:
            return value  # type: ignore[return-value]
        return CustomerState.from_json(value)

    def items(self) -> ItemsView[str, CustomerState]:
        """(subject, state) of every customer, cold ones decoded and not kept hot: for readers."""
        return _Items(self)

    def values(self) -> ValuesView[CustomerState]:
        """Every state, cold ones decoded and not kept hot: for readers."""
        return _Values(self)

    def reader(self) -> Mapping[str, CustomerState]:
        """A read-only view whose ``get``/``[]`` peek (for the projection and the views)."""
        return StateReader(self)

    # --- hot and cold -------------------------------------------------------------------------
    def put_encoded(self, subject: str, raw: bytes) -> None:
        """Hold ``subject`` cold as ``raw`` (a changelog value, e.g. at recovery)."""
        self._data[subject] = raw
        self._hot.pop(subject, None)

    def encoded(self, subject: str) -> bytes:
        """``subject``'s changelog value (a cold one's bytes as they are)."""
        value = self._data[subject]
        return value if isinstance(value, bytes) else value.to_json()

    def encoded_items(self) -> Iterator[tuple[str, bytes | CustomerState]]:
        """(subject, bytes of a cold one or the object of a hot one), nothing decoded."""
        return iter(self._data.items())

    def hot_count(self) -> int:
        return len(self._hot)

    def trim(self) -> int:
        """Turn the oldest hot customers beyond ``max_hot`` cold (encoded); returns how many.
        Only where nobody holds a state for a later change (see the module doc)."""
        hot = self._hot
        extra = len(hot) - self.max_hot
        if extra <= 0:
            return 0
        data = self._data
        popitem = hot.popitem
        for _ in range(extra):
            subject, _ = popitem(last=False)
            value = data.get(subject)
            if value is not None and value.__class__ is not bytes:
                data[subject] = compact(value.to_json())  # type: ignore[union-attr]
        return extra


def compact(raw: bytes) -> bytes:
    """``raw`` in a bytes object of its own size. orjson's output keeps the buffer it grew
    into: held for long, a ~0.9 KB changelog value took ~8 KB of memory (measured: RSS per
    100,000 values); a copy (~0.1 us) takes ~0.95 KB."""
    return bytes(memoryview(raw))


class _Items(ItemsView[str, CustomerState]):
    _mapping: StateStore

    def __iter__(self) -> Iterator[tuple[str, CustomerState]]:
        decode = CustomerState.from_json
        for subject, value in self._mapping._data.items():
            yield subject, (decode(value) if isinstance(value, bytes) else value)


class _Values(ValuesView[CustomerState]):
    _mapping: StateStore

    def __iter__(self) -> Iterator[CustomerState]:
        decode = CustomerState.from_json
        for value in self._mapping._data.values():
            yield decode(value) if isinstance(value, bytes) else value


class StateReader(Mapping[str, CustomerState]):
    """Read-only view of a :class:`StateStore`: every read peeks (nothing becomes hot)."""

    __slots__ = ("_store",)

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __getitem__(self, subject: str) -> CustomerState:
        state = self._store.peek(subject)
        if state is None:
            raise KeyError(subject)
        return state

    def get(self, subject: str, default: Any = None) -> Any:
        state = self._store.peek(subject)
        return default if state is None else state

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, subject: object) -> bool:
        return subject in self._store

    def items(self) -> ItemsView[str, CustomerState]:
        return self._store.items()

    def values(self) -> ValuesView[CustomerState]:
        return self._store.values()


def states_with(store: Mapping[str, CustomerState], mark: bytes) -> Iterator[tuple[str, CustomerState]]:
    """(subject, state) of every hot customer and of every cold one whose bytes contain
    ``mark`` (decoded, not kept hot): a superset of those with the key ``mark`` names, found
    without decoding the others. A plain dict: every item."""
    if not isinstance(store, StateStore):
        yield from store.items()
        return
    decode = CustomerState.from_json
    for subject, value in list(store._data.items()):
        if value.__class__ is not bytes:
            yield subject, value  # type: ignore[misc]
        elif mark in value:
            yield subject, decode(value)
