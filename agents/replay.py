"""Replay JSONL or CSV files into topics, keyed the way the worker expects.

Keys: purchases and customer-updates by ``customer_id``; touchpoints by ``customer_id``,
else ``anonymous_id``; stock-arrivals by ``category``. Partitions are chosen with the Java
client's murmur2 partitioner, so co-partitioned topics line up. A line that cannot be read
or has no key goes to ``dead-letters`` with the reason (stage ``replay``) and is counted.

Several files (a directory of ``<topic>.jsonl``) are merged by event time, so the topics
advance together - what the event clock needs for history to replay as it happened live.
"""

from __future__ import annotations

import asyncio
import csv
import heapq
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaProducer

from agents.kafkaauth import aiokafka_options
from agents.settings import Settings
from schemas.errors import Reason, Stage
from schemas.outputs import dead_letter_record
from schemas.timestamps import iso_utc, parse_ts_ms
from schemas.topics import INPUTS, KEY_FIELDS, Topic
from streams.partitioning import KeyPartitioner


@dataclass
class ReplayResult:
    sent: int = 0
    dead_letters: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    by_topic: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _key_of(obj: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    for name in fields:
        value = obj.get(name)
        if value is not None and value != "":
            return str(value)
    return None


def _no_key(obj: dict[str, Any], fields: tuple[str, ...]) -> str:
    """Why a line has no key, in words: the key field is missing, or there but empty."""
    empty = [name for name in fields if obj.get(name) == ""]
    if empty:
        return (
            f'no key: {" and ".join(empty)} {"is" if len(empty) == 1 else "are"} empty (""): '
            f"{' or '.join(fields)} must be a non-empty string"
        )
    return f"no key: needs {' or '.join(fields)}"


# CSV has no types: cells of these fields are read as the JSON type the contract wants
# when they spell one (ids and decimal amounts stay strings, which the contract accepts).
_CSV_INTEGERS = frozenset({"ts", "qty", "rating"})
_CSV_NUMBERS = frozenset({"price", "duration_s"})
_CSV_BOOLEANS = frozenset({"loyalty_member", "erase"})


def _csv_cell(value: str, name: str = "") -> Any:
    text = value.strip()
    if text[:1] in ("[", "{"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return value
    if name in _CSV_INTEGERS and text.lstrip("-").isdigit() and text.isascii():
        return int(text)
    if name in _CSV_NUMBERS:
        try:
            number = float(text)
        except ValueError:
            return value
        return number if number == number and abs(number) != float("inf") else value
    if name in _CSV_BOOLEANS and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


LineError = tuple[Reason, str]


def read_lines(path: Path, fmt: str) -> Iterator[tuple[int, bytes, dict[str, Any] | None, LineError | None]]:
    """Yield (line number, original bytes, parsed object or None, (reason, detail) or None)."""
    if fmt == "jsonl":
        with path.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                raw = line.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    yield n, raw, None, (Reason.INVALID_JSON, f"line {n}: invalid JSON: {exc}")
                    continue
                if not isinstance(obj, dict):
                    yield (
                        n,
                        raw,
                        None,
                        (
                            Reason.NOT_AN_OBJECT,
                            f"line {n}: expected a JSON object, got {type(obj).__name__}",
                        ),
                    )
                    continue
                yield n, raw, obj, None
    elif fmt == "csv":
        with _open_csv(path) as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                return
            for row in reader:
                n = reader.line_num
                buf = io.StringIO()
                csv.writer(buf).writerow([row.get(k) or "" for k in reader.fieldnames])
                original = buf.getvalue().rstrip("\r\n").encode("utf-8", "surrogateescape")
                if None in row:
                    yield (
                        n,
                        original,
                        None,
                        (Reason.INVALID_FIELD, f"line {n}: more cells than header columns"),
                    )
                    continue
                obj = {k: _csv_cell(v, k) for k, v in row.items() if k and v is not None and v.strip() != ""}
                yield n, orjson.dumps(obj), obj, None
    else:
        raise ValueError(f"unknown format {fmt!r} (jsonl or csv)")


def _open_csv(path: Path) -> TextIO:
    return path.open("r", newline="", encoding="utf-8", errors="surrogateescape")


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def sources_in(directory: Path) -> list[tuple[Path, Topic]]:
    """``<topic>.jsonl`` / ``<topic>.csv`` files of a directory, for every input topic."""
    found = []
    for topic in INPUTS:
        for suffix in (".jsonl", ".csv"):
            path = directory / f"{topic.value}{suffix}"
            if path.is_file():
                found.append((path, topic))
    return found


_Line = tuple[int, int, int, Topic, bytes, dict[str, Any] | None, LineError | None, str]


def _timed(path: Path, topic: Topic, order: int, fmt: str | None) -> Iterator[_Line]:
    """(event time or -inf, file order, line order, topic, raw, obj, error, file name)."""
    for n, raw, obj, error in read_lines(path, detect_format(path, fmt)):
        ts = -(2**63)
        if obj is not None:
            try:
                ts = parse_ts_ms(obj.get("ts"))
            except ValueError:
                pass
        yield ts, order, n, topic, raw, obj, error, path.name


async def replay(
    settings: Settings,
    sources: list[tuple[Path, Topic]],
    *,
    fmt: str | None = None,
    rate: float | None = None,
    partitions: dict[str, int],
    progress: Callable[[int], None] | None = None,
    batch_size: int = 2000,
) -> ReplayResult:
    """Send every line of every ``(path, topic)`` source; returns counts. Several sources are
    merged by event time. ``partitions`` maps real topic names to their partition counts."""
    dl_topic = settings.topic(Topic.DEAD_LETTERS)
    partitioner = KeyPartitioner(partitions, kind=settings.key_partitioner)
    result = ReplayResult()
    producer = AIOKafkaProducer(
        bootstrap_servers=",".join(settings.bootstrap_servers),
        **aiokafka_options(settings),
        linger_ms=5,
        max_batch_size=512 * 1024,
        acks="all",
        enable_idempotence=False,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending: dict[tuple[str, int], Any] = {}
        futures: list[asyncio.Future] = []
        in_batch = 0

        async def flush_all() -> None:
            nonlocal in_batch
            for (t, p), batch in pending.items():
                futures.append(await producer.send_batch(batch, t, partition=p))
            pending.clear()
            in_batch = 0
            if futures:
                await asyncio.gather(*futures)
                futures.clear()

        async def add(t: str, p: int, key: bytes | None, value: bytes) -> None:
            nonlocal in_batch
            batch = pending.get((t, p))
            if batch is None:
                batch = pending[(t, p)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, t, partition=p))
                batch = pending[(t, p)] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            in_batch += 1

        streams = [_timed(path, topic, i, fmt) for i, (path, topic) in enumerate(sources)]
        lines = heapq.merge(*streams) if len(streams) > 1 else streams[0]
        for _ts, _order, n, topic, raw, obj, error, name in lines:
            fields = KEY_FIELDS[topic]
            real_topic = settings.topic(topic)
            key = None if obj is None else _key_of(obj, fields)
            if obj is not None and key is None:
                error = (Reason.NO_KEY, f"line {n}: {_no_key(obj, fields)}")
            if error is not None:
                code, detail = error
                result.reasons[code.value] = result.reasons.get(code.value, 0) + 1
                record = dead_letter_record(
                    topic=real_topic,
                    partition=None,
                    offset=None,
                    key=None,
                    value=raw,
                    reason=code,
                    error=f"{name} {detail}",
                    stage=Stage.REPLAY,
                    at=iso_utc(int(time.time() * 1000)) or "",
                    max_bytes=settings.dead_letter_max_bytes,
                )
                await add(dl_topic, 0, None, orjson.dumps(record))
                result.dead_letters += 1
            else:
                assert key is not None
                value = raw if isinstance(raw, bytes) else orjson.dumps(obj)
                await add(real_topic, partitioner(real_topic, key), key.encode(), value)
                result.sent += 1
                result.by_topic[topic.value] = result.by_topic.get(topic.value, 0) + 1
            if in_batch >= batch_size:
                await flush_all()
                if progress is not None:
                    progress(result.sent + result.dead_letters)
                if rate:
                    ahead = (result.sent + result.dead_letters) / rate - (time.perf_counter() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            elif rate and in_batch >= max(1, int(rate / 50)):
                await flush_all()
                if progress is not None:
                    progress(result.sent + result.dead_letters)
                ahead = (result.sent + result.dead_letters) / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await flush_all()
        if progress is not None:
            progress(result.sent + result.dead_letters)
    finally:
        await producer.stop()
    result.seconds = time.perf_counter() - started
    return result


def count_records(path: Path, fmt: str) -> int:
    """How many records :func:`read_lines` yields for the file (the progress bar's total):
    JSONL its non-blank lines; CSV its rows, read as ``read_lines`` reads them (not the
    header; a quoted cell may span lines; blank lines are skipped)."""
    if fmt == "csv":
        with _open_csv(path) as fh:
            return sum(1 for _ in csv.DictReader(fh))
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())
