"""`make bench`: one run, one broker, one set of events, one table.

Measures, on the same >= 300k purchase events (>= 50k customers) in the same noida-db broker:
  1. producer load      confluent-kafka (murmur2 partitioner), the input side
  2. pure core          CustomerProcessor.process on one core: decode, validate, apply,
                        lifecycle, encode outputs and changelog values (no I/O)
  3. raw consume        aiokafka getmany + orjson decode, no state (the limit)
  4. patronage worker   one worker process, end to end, state checked exactly afterwards
                        (and again with the Redis projection off: what the projection costs)
  5. Quix Streams       the same RFM update in Quix's per-key state store
plus memory per customer (worker RSS growth / customers, and changelog bytes / customer),
the churn costs (bench/churn.py) and the new-stock costs (bench/stock.py: fan-out to 100,000
interested customers through the broker, index upkeep, affinity).
Results go to stdout as a table and to .bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from agents.localstack import LocalStack, Service, free_port, wait_worker_ready
from agents.settings import Settings
from schemas.topics import Topic
from synthetic import iter_purchases_fast

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
console = Console()


_PARTIAL: dict[str, Any] = {}


def log(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}")
    if _PARTIAL:  # what is measured so far survives a part that fails or hangs
        path = ROOT / ".bench" / "results.json"
        if path.parent.exists():
            path.write_text(json.dumps(_PARTIAL, indent=2, default=str))


def make_events(customers: int, purchases: int, seed: int) -> tuple[list[bytes], list[bytes], dict[str, int]]:
    keys, values = [], []
    freq = 0
    cents = 0
    seen: set[str] = set()
    for ev in iter_purchases_fast(customers, purchases, seed):
        keys.append(ev["customer_id"].encode())
        values.append(orjson.dumps(ev))
        freq += 1
        cents += round(ev["amount"] * 100)
        seen.add(ev["customer_id"])
    return keys, values, {"purchases": freq, "monetary_cents": cents, "customers": len(seen)}


def load(bootstrap: str, topic: str, partitions: int, keys: list[bytes], values: list[bytes]) -> float:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result()
    time.sleep(0.5)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",  # same as the Java client, aiokafka and patronage
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "none",
        }
    )
    started = time.perf_counter()
    for k, v in zip(keys, values, strict=True):
        while True:
            try:
                producer.produce(topic, v, key=k)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush()
    return len(values) / (time.perf_counter() - started)


def pure_core(
    keys: list[bytes], values: list[bytes], partitions: int, batch: int = 5000, keep: dict | None = None
) -> dict[str, Any]:
    """The worker's CPU work without Kafka: CustomerProcessor.process over the events.
    ``keep``: filled with the final table (customer id -> state)."""
    from agents.app import tune_gc

    tune_gc()
    from agents.clock import system_ms
    from agents.settings import Settings
    from schemas.topics import Topic
    from streams.clock import EventClock
    from streams.partitioning import KeyPartitioner
    from streams.pipeline import CustomerPipeline

    settings = Settings(partitions=partitions, topic_prefix="core-")
    topics = settings.topics
    partitioner = KeyPartitioner({n: partitions for n in topics.all()})
    identity = topics.real(Topic.IDENTITY)
    store: dict = {}
    pipeline = CustomerPipeline(
        policy=settings.policy(),
        store=store,
        clock=EventClock(system_ms),
        topics=topics,
        partition_of=lambda subject: partitioner(identity, subject),
    )

    class Rec:
        __slots__ = ("key", "offset", "partition", "topic", "value")

        def __init__(self, topic: str, partition: int, offset: int, key: bytes, value: bytes) -> None:
            self.topic, self.partition, self.offset, self.key, self.value = (
                topic,
                partition,
                offset,
                key,
                value,
            )

    by_part: dict[int, list[Rec]] = {}
    topic = topics.real(Topic.PURCHASES)
    for k, v in zip(keys, values, strict=True):
        p = partitioner(topic, k.decode())
        part = by_part.setdefault(p, [])
        part.append(Rec(topic, p, len(part), k, v))
    started = time.process_time()
    wall = time.perf_counter()
    for p, recs in by_part.items():
        for i in range(0, len(recs), batch):
            done = pipeline.apply(p, recs[i : i + batch])
            for st in done.changed.values():
                if st is not None:
                    st.to_json()
            if done.triggers:  # as the processor: sent, outboxes emptied and written again
                for emit in done.triggers:
                    orjson.dumps(emit.value)
                pipeline.confirm_sent(done)
                for key in {e.key for e in done.triggers}:
                    store[key].to_json()
    cpu = time.process_time() - started
    elapsed = time.perf_counter() - wall
    changelog_bytes = sum(len(s.to_json()) for s in store.values())
    if keep is not None:
        keep.update(store)
    return {
        "events_per_s": len(values) / cpu,
        "wall_s": elapsed,
        "changelog_bytes_per_customer": changelog_bytes / len(store),
        "sum_frequency": sum(s.frequency for s in store.values()),
    }


def run_json(argv: list[str], timeout: float = 900) -> dict[str, Any]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_text(port: int) -> str:
    """One scrape of a worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics/", timeout=60) as resp:
        return resp.read().decode()


def metric_total(port: int, name: str) -> float:
    text = metrics_text(port)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def worker_env(
    stack: LocalStack, run_dir: Path, prefix: str, partitions: int, port: int, name: str
) -> dict[str, str]:
    return {
        "PATRONAGE_BROKER": stack.broker_url,
        "PATRONAGE_REDIS_URL": stack.redis_url,  # the projection is on, as by default
        "PATRONAGE_APP_ID": f"{prefix}app",
        "PATRONAGE_TOPIC_PREFIX": prefix,
        "PATRONAGE_PARTITIONS": str(partitions),
        "PATRONAGE_WEB_PORT": str(port),
        "PATRONAGE_DATA_DIR": str(run_dir / f"{name}-data"),
        "PATRONAGE_INSTANCE_ID": name,
        "PATRONAGE_LOG_LEVEL": os.environ.get("BENCH_WORKER_LOG_LEVEL", "warn"),
        "PATRONAGE_EMPTY_FETCH_BACKOFF_MS": os.environ.get("PATRONAGE_EMPTY_FETCH_BACKOFF_MS", "5"),
    }


def py_spy(pid: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(BIN / "py-spy"),
            "record",
            "-p",
            str(pid),
            "-o",
            str(out),
            "-f",
            "raw",
            "-r",
            "100",
            "--threads",
            *(["--idle"] if os.environ.get("PYSPY_IDLE") else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(out.with_suffix(".log"), "wb"),  # the child owns it
    )


def changelog_records(bootstrap: str, topic: str) -> int:
    """Records in the changelog topic (noida-db never compacts: every write is still there)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-watermarks", "enable.auto.commit": False}
    )
    try:
        meta = c.list_topics(topic, timeout=10)
        total = 0
        for p in meta.topics[topic].partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        c.close()


def recover(
    stack: LocalStack, run_dir: Path, prefix: str, partitions: int, name: str, profile: bool
) -> dict[str, Any]:
    """Start a worker on an existing changelog and time process start -> /healthz 200 (tables
    recovered, indexes rebuilt)."""
    port = free_port()
    svc = Service(f"{name}-recovery", run_dir / f"{name}-recovery.pid", run_dir / f"{name}-recovery.log")
    started = time.perf_counter()
    proc = svc.start(
        [str(BIN / "patronage"), "worker"], env=worker_env(stack, run_dir, prefix, partitions, port, name)
    )
    spy = None
    if profile:
        time.sleep(0.5)  # py-spy cannot attach before the interpreter is up
        spy = py_spy(proc.pid, run_dir / f"{name}-recovery-profile.txt")
    try:
        wait_worker_ready(port, 900, proc, svc.log_file)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid)  # on a shared machine the wall time is partly waiting for a core
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/", timeout=30) as resp:
            subjects = json.loads(resp.read())["subjects"]
        rss = rss_kb(proc.pid)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        return {"seconds": seconds, "cpu_seconds": cpu, "subjects": subjects, "rss_mb": rss / 1024}
    finally:
        svc.stop()


def worker_e2e(
    stack: LocalStack,
    run_dir: Path,
    prefix: str,
    partitions: int,
    n: int,
    expected: dict[str, int],
    profile: bool,
    workers: int = 1,
    name: str = "bench-worker",
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``workers`` worker processes on the loaded topic, end to end; state checked exactly
    (summed over the workers' /summary). RSS growth is the first worker's. ``extra_env``:
    settings on top (another ``PATRONAGE_APP_ID`` reads the topic again from the start)."""
    ports = [free_port() for _ in range(workers)]
    stem = name.removeprefix("bench-")  # worker0.log, noproj0.log
    svcs = [
        Service(f"{name}{i}", run_dir / f"{stem}{i}.pid", run_dir / f"{stem}{i}.log") for i in range(workers)
    ]
    procs = [
        svc.start(
            [str(BIN / "patronage"), "worker"],
            env={**worker_env(stack, run_dir, prefix, partitions, port, f"{name}{i}"), **(extra_env or {})},
        )
        for i, (svc, port) in enumerate(zip(svcs, ports, strict=True))
    ]
    try:
        for svc, proc, p in zip(svcs, procs, ports, strict=True):
            wait_worker_ready(p, 120, proc, svc.log_file)
        pid = procs[0].pid
        rss_before = rss_kb(pid)
        spy = py_spy(pid, run_dir / "worker-profile.txt") if profile else None
        # the events are already in the topic: the workers start on them as soon as they are ready
        first = last = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            done = sum(metric_total(p, "patronage_events_total") for p in ports)
            now = time.perf_counter()
            if done > 0 and first is None:
                first = now
            if done >= n:
                last = now
                break
            # a scrape costs the worker's event loop ~1-4 ms (Prometheus scrapes every 15 s): at
            # 50 scrapes/s it took ~10 % of the worker's main thread (py-spy), so poll at 4/s
            time.sleep(0.25)
        if first is None or last is None:
            raise RuntimeError(f"worker did not finish ({svcs[0].log_file})")
        rss_after = rss_kb(pid)
        # the Redis projection runs beside processing: how long until it has everything
        caught_up = None
        while time.monotonic() < deadline:
            if all(
                metric_total(p, "patronage_projection_pending") == 0
                and metric_total(p, "patronage_projection_lag_seconds") == 0
                for p in ports
            ):
                caught_up = time.perf_counter()
                break
            time.sleep(0.05)
        writes = sum(metric_total(p, "patronage_projection_writes_total") for p in ports)
        due = sum(metric_total(p, "patronage_deadlines_due_total") for p in ports)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        purchases = cents = buyers = 0
        for p in ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{p}/summary/", timeout=30) as resp:
                summary = json.loads(resp.read())
            purchases += summary["totals"]["purchases"]
            cents += summary["totals"]["monetary_cents"]
            buyers += summary["buyers"]
        exact = (
            purchases == expected["purchases"]
            and cents == expected["monetary_cents"]
            and buyers == expected["customers"]
        )
        customers_first = expected["customers"] / workers
        return {
            "workers": workers,
            "events_per_s": n / (last - first),
            "seconds": last - first,
            "exact": exact,
            "summary_totals": {"purchases": purchases, "monetary_cents": cents},
            "buyers": buyers,
            "rss_growth_bytes_per_customer": (rss_after - rss_before) * 1024 / customers_first,
            "rss_mb": rss_after / 1024,
            "projection_writes": writes,
            "deadlines_due": due,
            "projection_caught_up_after_s": None if caught_up is None else caught_up - last,
        }
    finally:
        for svc in svcs:
            svc.stop()


def histogram_buckets(text: str, name: str, having: str = "") -> dict[float, float]:
    """A Prometheus histogram's cumulative buckets in a scrape (``metrics_text``), summed over
    its labels (only series whose labels contain ``having``, e.g. ``stage="apply"``, when
    given)."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{") and having in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def quantiles(buckets: dict[float, float], qs: tuple[float, ...]) -> list[float | None]:
    """Quantiles of cumulative buckets, interpolated linearly inside the bucket (as
    Prometheus' histogram_quantile)."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    out: list[float | None] = []
    for q in qs:
        if not total:
            out.append(None)
            continue
        rank = q * total
        prev_b, prev_c = 0.0, 0.0
        for b in bounds:
            c = buckets[b]
            if c >= rank:
                if b == float("inf"):
                    out.append(prev_b)
                else:
                    out.append(prev_b + (b - prev_b) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0))
                break
            prev_b, prev_c = b, c
    return out


STAGES = "patronage_batch_stage_seconds"
BATCH_STAGES = ("apply", "settle", "outputs", "changelog", "triggers")
_PROBE_EVERY_S = 5.0  # the feed's "behind" samples (a /metrics scrape each)


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far (0.0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def broker_floor(bootstrap: str, topic: str, rate: int, seconds: float) -> dict[str, Any]:
    """What the broker alone adds: a steady ``rate`` of 300-byte records produced (paced as
    the live feed is, linger 1 ms) and read back by a plain consumer on a topic of their own;
    produce -> consume latency per record. Any worker's latency on this broker, in its
    current state, includes at least this."""
    import threading

    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result()
    lat: list[float] = []
    done = threading.Event()

    def read() -> None:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-floor", "fetch.wait.max.ms": 5})
        c.assign([TopicPartition(topic, 0, 0)])
        try:
            while not done.is_set():
                for m in c.consume(500, timeout=0.002):
                    if not m.error():
                        lat.append(time.time() * 1000 - float(m.value()[:16]))
        finally:
            c.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    pad = b" " * 284
    step = max(1, rate // 100)
    n = int(rate * seconds)
    started = time.perf_counter()
    for i in range(0, n, step):
        pause = started + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        for _ in range(step):
            producer.produce(topic, b"%16.3f" % (time.time() * 1000) + pad)
        producer.poll(0)
    producer.flush()
    deadline = time.monotonic() + 10
    while len(lat) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    done.set()
    reader.join(timeout=10)
    lat.sort()

    def q(x: float) -> float | None:
        return None if not lat else lat[min(len(lat) - 1, int(x * len(lat)))]

    return {"records": len(lat), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)}


def latency(
    stack: LocalStack,
    run_dir: Path,
    prefix: str,
    partitions: int,
    keys: list[bytes],
    values: list[bytes],
    rate: int,
    seconds: float,
    warmup_s: float = 3.0,
    profile: bool = False,
    run: int = 0,
) -> dict[str, Any]:
    """Live load on a warm worker: the end-to-end run's worker (its 50k customers' two years
    of history, recovered) gets a steady ``rate`` of purchases stamped now (the event clock
    then moves in real time, as in production; the history ends five weeks before, so lapsed
    customers come back: won-back triggers). Paced every 10 ms, linger 1 ms. A warm-up
    (``warmup_s``) first takes the clock over the five weeks (every deadline in between
    fires) and is not measured. Event -> lifecycle change: each change's Kafka timestamp (the
    worker's send) minus its causing purchase's (the producer's); event -> trigger: the
    worker's histogram (causing record's Kafka timestamp -> trigger acknowledged)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    bootstrap = f"127.0.0.1:{stack.kafka_port}"
    topic = f"{prefix}purchases"
    port = free_port()
    name = "bench-worker0"
    svc = Service("bench-latency", run_dir / "latency.pid", run_dir / "latency.log")
    proc = svc.start(
        [str(BIN / "patronage"), "worker"], env=worker_env(stack, run_dir, prefix, partitions, port, name)
    )
    n = int(rate * seconds)
    warm = int(rate * warmup_s)
    out_topic = Settings(topic_prefix=prefix, app_id=f"{prefix}app").topics.real(Topic.LIFECYCLE_CHANGES)
    sent_ms: dict[str, int] = {}
    hist = "patronage_trigger_latency_seconds"
    try:
        wait_worker_ready(port, 600, proc, svc.log_file)
        spy = py_spy(proc.pid, run_dir / f"latency{run}-profile.txt") if profile else None
        base = metric_total(port, "patronage_events_total")
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "partitioner": "murmur2_random",
                "linger.ms": 1,
                "compression.type": "none",
            }
        )
        step = max(1, rate // 100)

        def feed(first: int, count: int, record: bool) -> tuple[float, list[float]]:
            started = time.perf_counter()
            behind: list[float] = []  # fed - processed, sampled every second
            next_probe = started + _PROBE_EVERY_S
            for i in range(0, count, step):
                now = time.perf_counter()
                if now >= next_probe:
                    behind.append(first + i - (metric_total(port, "patronage_events_total") - base))
                    next_probe += _PROBE_EVERY_S
                pause = started + i / rate - now
                if pause > 0:
                    time.sleep(pause)
                for j in range(first + i, first + min(i + step, count)):
                    ev = orjson.loads(values[j % len(values)])
                    ts = int(time.time() * 1000)
                    ev["event_id"] = f"live{run}-{j}"
                    ev["ts"] = ts
                    producer.produce(topic, orjson.dumps(ev), key=keys[j % len(keys)], timestamp=ts)
                    if record:
                        sent_ms[ev["event_id"]] = ts
                producer.poll(0)
            producer.flush()
            return count / (time.perf_counter() - started), behind

        def wait_processed(total: int) -> None:
            deadline = time.monotonic() + 300
            while metric_total(port, "patronage_events_total") - base < total and time.monotonic() < deadline:
                time.sleep(1)  # each scrape computes the population gauges: not too often

        feed(0, warm, False)
        wait_processed(warm)
        # after the restart the projection writes every customer to Redis again (a partition
        # recovered is projected whole): measured apart, the feed starts once it is done
        # and the warm-up moved the clock five weeks on: once it is steady again (the projection
        # checks every 5 s) every partition is re-projected whole (PATRONAGE_PROJECTION_CLOCK_STEP_S)
        # (it checks the clocks only between whole-partition projections: a partition projected
        # from before the warm-up is due again right after the last one - so the projection
        # must stay caught up for longer than a check interval, not just once)
        resync_started = time.perf_counter()
        deadline = time.monotonic() + 600
        time.sleep(11)
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            busy = (
                metric_total(port, "patronage_projection_pending") > 0
                or metric_total(port, "patronage_projection_lag_seconds") > 0
            )
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 7:
                break
            time.sleep(0.5)
        resync_s = time.perf_counter() - resync_started
        time.sleep(1)
        scrape = metrics_text(port)  # one scrape before and one after: the same moments for all
        before = histogram_buckets(scrape, hist)
        stages_before = {s: histogram_buckets(scrape, STAGES, f'stage="{s}"') for s in BATCH_STAGES}
        # where the lifecycle changes of the measured feed will start (the topic holds the
        # history's and other runs' changes: reading all of it made noida-db answer fetches
        # above librdkafka's 100 MB receive limit)
        starts = _end_offsets(bootstrap, out_topic)
        broker_pid = stack.service("broker").pid()
        broker_data = stack.run_dir / "broker-data"
        floor = broker_floor(bootstrap, f"{prefix}floor{run}", rate, min(seconds, 10.0))
        feed_from = time.time()
        broker_cpu = _cpu_s(broker_pid)
        fed, behind = feed(warm, n, True)
        wait_processed(warm + n)
        feed_until = time.time()
        broker_share = (_cpu_s(broker_pid) - broker_cpu) / (feed_until - feed_from)
        time.sleep(1)
        scrape = metrics_text(port)
        after = histogram_buckets(scrape, hist)
        stages: dict[str, dict[str, float | None]] = {}
        for s, b in stages_before.items():
            a = histogram_buckets(scrape, STAGES, f'stage="{s}"')
            p50, p99 = quantiles({k: a.get(k, 0.0) - b.get(k, 0.0) for k in a}, (0.5, 0.99))
            stages[s] = {
                "p50_ms": None if p50 is None else p50 * 1000,
                "p99_ms": None if p99 is None else p99 * 1000,
            }
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        diff = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}
        t50, t99 = quantiles(diff, (0.5, 0.99))
        count = int(diff.get(float("inf"), 0.0))
    finally:
        svc.stop()
    # lifecycle changes: exact per record
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-latency-read", "enable.auto.commit": False}
    )
    lat: list[float] = []
    try:
        ends = _end_offsets(bootstrap, out_topic)
        tps = [TopicPartition(out_topic, p, starts.get(p, 0)) for p in ends]
        c.assign(tps)
        left = {p for p, e in ends.items() if e > starts.get(p, 0)}
        stop = time.monotonic() + 120
        while left and time.monotonic() < stop:
            for msg in c.consume(10000, timeout=1):
                if msg.error():
                    continue
                rec = orjson.loads(msg.value())
                cause = rec.get("cause") or {}
                sent = sent_ms.get(cause.get("event_id", ""))
                if sent is not None:
                    lat.append(msg.timestamp()[1] - sent)
                if msg.offset() + 1 >= ends[msg.partition()]:
                    left.discard(msg.partition())
    finally:
        c.close()
    lat.sort()

    def q(x: float) -> float | None:
        return None if not lat else float(lat[min(len(lat) - 1, int(x * len(lat)))])

    return {
        "rate": rate,
        "events": n,
        "warmup_events": warm,
        "projection_resync_after_warmup_s": resync_s,
        # wall clock of the measured feed (to find it in the worker's log)
        "feed_utc": [
            time.strftime("%H:%M:%S", time.gmtime(feed_from)),
            time.strftime("%H:%M:%S", time.gmtime(feed_until)),
        ],
        "fed_events_per_s": fed,
        "behind": behind,
        # the broker alone at the same rate just before (see broker_floor), its CPU share
        # during the measured feed (1.0 = a whole core) and what it stores (noida-db rewrites
        # all of it every ~10 s: README "Performance")
        "broker_floor": floor,
        "broker_cpu_share": broker_share,
        "broker_stored_mb": _dir_bytes(broker_data) / 1e6 if broker_data.exists() else None,
        "lifecycle": {"count": len(lat), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)},
        "batch_stages": stages,
        "trigger": {
            "count": count,
            "p50_ms": None if t50 is None else t50 * 1000,
            "p99_ms": None if t99 is None else t99 * 1000,
        },
    }


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> end offset of ``topic`` now (0 for a topic not there yet)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-latency-ends"})
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
    finally:
        c.close()


def recovery_templates(path: Path, states: dict[str, Any]) -> dict[str, Any]:
    """The core part's states written to ``path`` (one changelog value a line), or, with no
    core part run, read back from it: the recovery part alone needs no 45 s pure core."""
    from schemas.state import CustomerState

    if states:
        path.write_bytes(b"".join(s.to_json() + b"\n" for s in states.values()))
        return states
    if not path.exists():
        return states
    loaded = (CustomerState.from_json(line) for line in path.read_bytes().splitlines() if line)
    return {s.subject: s for s in loaded}


def fresh_latency_stack(stack: LocalStack, run_dir: Path, prefix: str) -> LocalStack:
    """A broker and Redis of their own holding only the worker's compacted changelog (the last
    value of each key, copied from ``stack``'s, same partitions), for the latency part.

    noida-db rewrites its whole state every ~10 s (README "Two brokers"): the shared bench
    broker holds >1 GB by the latency part, and its own produce -> consume p99 at 1,000
    records/s was then ~90 ms. A Kafka broker has no such cost; a small broker is nearer to
    it, and the part still reports what that broker alone adds (``broker_floor``)."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = Settings(topic_prefix=prefix, app_id=f"{prefix}app").topics.real(Topic.CHANGELOG)
    src = f"127.0.0.1:{stack.kafka_port}"
    ends = _end_offsets(src, topic)
    last: dict[tuple[int, bytes], bytes | None] = {}
    c = Consumer(
        {
            "bootstrap.servers": src,
            "group.id": "bench-copy",
            "enable.auto.commit": False,
            # noida-db answers a fetch with everything it has (138 MB seen): above librdkafka's
            # default 100 MB response limit
            "receive.message.max.bytes": 1_000_000_000,
            "fetch.max.bytes": 50_000_000,
        }
    )
    try:
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        left = {p for p, e in ends.items() if e > 0}
        deadline = time.monotonic() + 300
        while left and time.monotonic() < deadline:
            for msg in c.consume(10000, timeout=1):
                if msg.error():
                    continue
                last[(msg.partition(), msg.key())] = msg.value()
                if msg.offset() + 1 >= ends[msg.partition()]:
                    left.discard(msg.partition())
    finally:
        c.close()
    fresh = LocalStack(run_dir / "stack", kafka_port=free_port(), redis_port=free_port())
    fresh.start_broker()
    fresh.start_redis()
    dst = f"127.0.0.1:{fresh.kafka_port}"
    admin = AdminClient({"bootstrap.servers": dst})
    new = NewTopic(topic, len(ends), 1, config={"cleanup.policy": "compact"})
    for fut in admin.create_topics([new]).values():
        fut.result()
    producer = Producer(
        {"bootstrap.servers": dst, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000}
    )
    for (partition, key), value in last.items():
        if value is None:
            continue
        while True:
            try:
                producer.produce(topic, value, key=key, partition=partition)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush()
    return fresh


def synthetic_recovery(
    stack: LocalStack,
    run_dir: Path,
    partitions: int,
    states: dict[str, Any],
    customers: int,
    profile: bool = False,
) -> dict[str, Any]:
    """A compacted changelog of ``customers`` states (the pure core's real states, renamed,
    cycled) written straight to a fresh app's changelog; then a worker recovers it."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from agents.settings import Settings
    from schemas.topics import Topic
    from streams.partitioning import KeyPartitioner

    prefix = "rec-"
    settings = Settings(topic_prefix=prefix, app_id=f"{prefix}app", partitions=partitions)
    topic = settings.topics.real(Topic.CHANGELOG)
    bootstrap = f"127.0.0.1:{stack.kafka_port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics(
        [NewTopic(topic, partitions, 1, config={"cleanup.policy": "compact"})]
    ).values():
        fut.result()
    part = KeyPartitioner({topic: partitions})
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    templates = [s.to_dict() for s in states.values()]
    total_bytes = 0
    for i in range(customers):
        d = dict(templates[i % len(templates)])
        subject = f"r{i:08d}"
        d["s"] = subject
        value = orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS)
        total_bytes += len(value)
        while True:
            try:
                producer.produce(topic, value, key=subject.encode(), partition=part(topic, subject))
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush()
    result = recover(stack, run_dir, prefix, partitions, "bench-recovery", profile)
    result.update(customers=customers, changelog_bytes_per_customer=total_bytes / customers)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--purchases", type=int, default=300_000)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the worker (writes .bench/worker-profile.txt, collapsed stacks)",
    )
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="parts to skip: core raw worker restart latency noproj recovery scale quix churn stock",
    )
    ap.add_argument("--churn-customers", type=int, default=1_000_000, help="customers in state for the tick")
    ap.add_argument(
        "--latency-rate",
        type=int,
        nargs="+",
        default=[1000, 2000, 5000],
        help="steady feeds for the latency part (events/s), one run each on the same warm worker",
    )
    ap.add_argument("--latency-seconds", type=float, default=20)
    ap.add_argument(
        "--latency-broker",
        choices=("shared", "fresh"),
        default="shared",
        help="shared: the latency part runs on the bench's broker; fresh: on a broker of its own holding "
        "only the worker's compacted changelog (noida-db's CPU and pauses grow with what it stores; "
        "first measured 2026-12-07: the worker's own latency was worse there, not yet explained)",
    )
    ap.add_argument(
        "--recovery-customers",
        type=int,
        default=200_000,
        help="customers in the synthetic compacted changelog",
    )
    ap.add_argument(
        "--recovery-templates",
        type=str,
        help="JSON lines of customer states the recovery part's changelog is made of: read when the "
        "file exists (then the core part may be skipped), else written from the core part's states",
    )
    ap.add_argument("--scale-partitions", type=int, default=8, help="partitions for the 1 vs 2 workers part")
    args = ap.parse_args()

    run_dir = ROOT / ".bench"
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    run_dir.mkdir()
    stack = LocalStack(run_dir / "stack", kafka_port=free_port(), redis_port=free_port())
    results: dict[str, Any] = _PARTIAL
    results["config"] = vars(args)
    try:
        log("starting noida-db")
        stack.start_broker()
        stack.start_redis()
        bootstrap = f"127.0.0.1:{stack.kafka_port}"
        log(f"generating {args.purchases:,} purchases over {args.customers:,} customers")
        keys, values, expected = make_events(args.customers, args.purchases, args.seed)
        results["expected"] = expected
        prefix = "bench-"
        topic = f"{prefix}purchases"
        log("loading the topic with confluent-kafka")
        results["producer_events_per_s"] = load(bootstrap, topic, args.partitions, keys, values)
        n = len(values)
        states: dict[str, Any] = {}
        if "core" not in args.skip:
            log("pure core (one core, no I/O)")
            results["core"] = pure_core(keys, values, args.partitions, keep=states)
        if args.recovery_templates is not None:
            states = recovery_templates(Path(args.recovery_templates), states)
        if "raw" not in args.skip:
            log("raw aiokafka consume + decode")
            results["raw"] = run_json(
                [
                    str(BIN / "python"),
                    "-m",
                    "bench.raw_consume",
                    "--bootstrap",
                    bootstrap,
                    "--topic",
                    topic,
                    "--expected",
                    str(n),
                ]
            )
        # Quix before the heavier parts: with the recovery changelog and the scale-out topics in
        # it, noida-db slowed down enough that Quix once sat idle in its poll
        if "quix" not in args.skip:
            log("Quix Streams, same RFM update in its state store")
            results["quix"] = run_json(
                [
                    str(BIN / "python"), "-m", "bench.quix_rfm", "--bootstrap", bootstrap, "--topic", topic,
                    "--expected", str(n), "--state-dir", str(run_dir / "quix-state"),
                ]
            )  # fmt: skip
            q = results["quix"]
            q["exact"] = (
                q.get("sum_frequency") == expected["purchases"]
                and q.get("sum_monetary_cents") == expected["monetary_cents"]
            )
        if "worker" not in args.skip:
            log("patronage worker end to end")
            results["worker"] = worker_e2e(stack, run_dir, prefix, args.partitions, n, expected, args.profile)
            if "noproj" not in args.skip:
                # before the restart and latency parts: they add live events to the topic
                log("patronage worker end to end, Redis projection off")
                results["worker_noproj"] = worker_e2e(
                    stack,
                    run_dir,
                    prefix,
                    args.partitions,
                    n,
                    expected,
                    False,
                    name="bench-noproj",
                    extra_env={
                        "PATRONAGE_PROJECTION_ENABLED": "false",
                        "PATRONAGE_APP_ID": f"{prefix}noproj",
                    },
                )
            if "restart" not in args.skip:
                log("restart: the same worker recovers its (uncompacted) changelog")
                changelog = Settings(topic_prefix=prefix, app_id=f"{prefix}app").topics.real(Topic.CHANGELOG)
                results["restart"] = recover(
                    stack, run_dir, prefix, args.partitions, "bench-worker0", args.profile
                )
                results["restart"]["changelog_records"] = changelog_records(bootstrap, changelog)
        if "latency" not in args.skip and "worker" in results:
            results["latency"] = []
            lat_stack, lat_dir = stack, run_dir
            if args.latency_broker == "fresh":
                log("latency: the worker's compacted changelog copied to a broker of its own")
                lat_dir = run_dir / "latency"
                lat_dir.mkdir()
                lat_stack = fresh_latency_stack(stack, lat_dir, prefix)
            try:
                for rate in args.latency_rate:
                    log(f"latency: a steady {rate:,} events/s for {args.latency_seconds:g} s, one worker")
                    results["latency"].append(
                        latency(
                            lat_stack,
                            lat_dir,
                            prefix,
                            args.partitions,
                            keys,
                            values,
                            rate,
                            args.latency_seconds,
                            profile=args.profile,
                            run=len(results["latency"]),
                        )
                    )
                    results["latency"][-1]["broker"] = args.latency_broker
            finally:
                if lat_stack is not stack:
                    lat_stack.down()
        if "scale" not in args.skip:
            sp = args.scale_partitions
            log(f"scale-out: the same load on 1 and 2 workers over {sp} partitions")
            scale: dict[str, Any] = {}
            for workers in (1, 2):
                sprefix = f"s{workers}-"
                load(bootstrap, f"{sprefix}purchases", sp, keys, values)
                scale[str(workers)] = worker_e2e(
                    stack, run_dir, sprefix, sp, n, expected, False, workers=workers
                )
            results["scale"] = scale
        if "recovery" not in args.skip and states:
            log(f"recovery: a compacted changelog of {args.recovery_customers:,} customers")
            results["recovery"] = synthetic_recovery(
                stack, run_dir, args.partitions, states, args.recovery_customers, args.profile
            )
    finally:
        stack.down()
    if "churn" not in args.skip:
        log(f"churn: tick with {args.churn_customers:,} customers in state, memory, BG/NBD fit")
        results["churn"] = run_json(
            [str(BIN / "python"), "-m", "bench.churn", "--customers", str(args.churn_customers)], timeout=1800
        )
    if "stock" not in args.skip:
        log("new stock: fan-out to 100,000 interested customers, index upkeep, affinity")
        results["stock"] = run_json([str(BIN / "python"), "-m", "bench.stock"], timeout=1800)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(r: dict[str, Any]) -> None:
    e = r["expected"]
    t = Table(
        title=f"patronage bench: {e['purchases']:,} purchases, {e['customers']:,} customers, noida-db, one run"
    )
    t.add_column("measurement")
    t.add_column("events/s", justify="right")
    t.add_column("vs Quix", justify="right")
    t.add_column("vs raw", justify="right")
    t.add_column("state exact")
    t.add_column("notes")
    quix = r.get("quix", {}).get("events_per_s")
    raw = r.get("raw", {}).get("events_per_s")

    def ratio(x: float | None) -> str:
        return f"{x / quix:.1f}x" if x and quix else "-"

    def of_raw(x: float | None) -> str:
        return f"{x / raw:.1%}" if x and raw else "-"

    def worker_row(label: str, w: dict[str, Any], extra: str = "") -> None:
        t.add_row(
            label,
            f"{w['events_per_s']:,.0f}",
            ratio(w["events_per_s"]),
            of_raw(w["events_per_s"]),
            "yes" if w["exact"] else "NO",
            f"{w['seconds']:.1f}s{extra}; "
            + (
                "Redis projection off"
                if not w["projection_writes"]
                else f"Redis projection: {w['projection_writes']:,.0f} customer writes, caught up "
                + (
                    "never"
                    if w["projection_caught_up_after_s"] is None
                    else f"{w['projection_caught_up_after_s']:.2f}s after the last event"
                )
            ),
        )

    t.add_row(
        "confluent-kafka producer (load)", f"{r['producer_events_per_s']:,.0f}", "", "", "", "input side"
    )
    if "core" in r:
        c = r["core"]
        t.add_row(
            "pure core, one core",
            f"{c['events_per_s']:,.0f}",
            ratio(c["events_per_s"]),
            of_raw(c["events_per_s"]),
            "",
            "decode+validate+apply+encode, CPU time",
        )
    if "raw" in r:
        t.add_row(
            "raw aiokafka consume + decode", f"{raw:,.0f}", ratio(raw), "100%", "", "the limit: no state"
        )
    if "worker" in r:
        worker_row("patronage worker, end to end", r["worker"], ", changelog durable before ack")
    if "worker_noproj" in r:
        worker_row("patronage worker, end to end, no Redis projection", r["worker_noproj"])
    for workers, w in sorted(r.get("scale", {}).items()):
        worker_row(f"{workers} worker(s), {r['config']['scale_partitions']} partitions", w)
    if "quix" in r:
        q = r["quix"]
        t.add_row(
            "Quix Streams RFM (state store)",
            f"{q['events_per_s']:,.0f}",
            "1.0x",
            of_raw(q["events_per_s"]),
            "yes" if q.get("exact") else "NO",
            "",
        )
    console.print(t)
    if r.get("latency"):
        runs = r["latency"] if isinstance(r["latency"], list) else [r["latency"]]
        lt = Table(
            title="latency: live purchases at a steady rate on the warm worker (ms; trigger target p99 < 50 at 5k/s)"
        )
        for col in (
            "events/s fed",
            "lifecycle p50",
            "lifecycle p99",
            "trigger p50",
            "trigger p99",
            "behind",
            "broker alone p50 / p99",
            "broker CPU, stored",
        ):
            lt.add_column(col, justify="right")
        lt.add_column("batch steps p50 / p99: apply, settle, outputs, changelog, triggers")

        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x:,.1f}"

        for lat in runs:
            lc, tr = lat["lifecycle"], lat["trigger"]
            steps = lat.get("batch_stages", {})
            lt.add_row(
                f"{lat['fed_events_per_s']:,.0f}",
                ms(lc["p50_ms"]),
                ms(lc["p99_ms"]),
                ms(tr["p50_ms"]),
                ms(tr["p99_ms"]),
                ", ".join(f"{b:,.0f}" for b in lat.get("behind", [])) or "0",
                f"{ms(floor.get('p50_ms'))} / {ms(floor.get('p99_ms'))}"
                if (floor := lat.get("broker_floor"))
                else "-",
                f"{lat['broker_cpu_share']:.0%} of a core, {lat['broker_stored_mb']:,.0f} MB"
                if lat.get("broker_stored_mb") is not None
                else "-",
                "; ".join(f"{ms(v['p50_ms'])}/{ms(v['p99_ms'])}" for v in steps.values()),
            )
        console.print(lt)
    if "restart" in r or "recovery" in r:
        rt = Table(title="restart recovery (process start -> /healthz 200)")
        rt.add_column("changelog")
        rt.add_column("customers", justify="right")
        rt.add_column("seconds", justify="right")
        rt.add_column("notes")
        if "restart" in r:
            x = r["restart"]
            rt.add_row(
                f"the worker's own, {x['changelog_records']:,} records (uncompacted)",
                f"{x['subjects']:,}",
                f"{x['seconds']:.1f}",
                f"RSS {x['rss_mb']:,.0f} MB",
            )
        if "recovery" in r:
            x = r["recovery"]
            per_m = x["seconds"] / x["customers"] * 1_000_000
            rt.add_row(
                f"compacted, {x['customers']:,} records of {x['changelog_bytes_per_customer']:,.0f} B",
                f"{x['subjects']:,}",
                f"{x['seconds']:.1f}",
                f"RSS {x['rss_mb']:,.0f} MB; worker CPU {x.get('cpu_seconds', 0):.1f} s; "
                f"1,000,000 customers at this rate: {per_m:,.0f} s (target < 60 s)",
            )
        console.print(rt)
    if "worker" in r or "core" in r:
        mem = Table(title="memory per customer")
        mem.add_column("measure")
        mem.add_column("bytes", justify="right")
        if "worker" in r:
            mem.add_row(
                "worker RSS growth / customers", f"{r['worker']['rss_growth_bytes_per_customer']:,.0f}"
            )
        if "recovery" in r:
            x = r["recovery"]
            mem.add_row(
                "worker RSS after recovery / customers", f"{x['rss_mb'] * 2**20 / x['customers']:,.0f}"
            )
        if "core" in r:
            mem.add_row(
                "changelog value / customer (JSON)", f"{r['core']['changelog_bytes_per_customer']:,.0f}"
            )
        console.print(mem)
    if "churn" in r:
        c = r["churn"]
        t2 = Table(title="churn (no Kafka)")
        t2.add_column("measurement")
        t2.add_column("value", justify="right")
        t2.add_column("notes")
        tick = c["tick"]
        t2.add_row(
            f"tick, {tick['customers']:,} customers in state, {tick['due']:,} due",
            f"{tick['tick_ms']:.1f} ms",
            f"target < 50 ms; {tick['tick_us_per_due']:.0f} us per due customer, {tick['triggers']} triggers",
        )
        m = c["memory"]
        t2.add_row(
            "state in memory / customer",
            f"{m['state_bytes_per_customer']:,.0f} B",
            "tracemalloc, 8 purchases",
        )
        t2.add_row("indexes / customer", f"{m['indexes_bytes_per_customer']:,.0f} B", "rank, deadline, risk")
        t2.add_row("changelog value / customer", f"{m['changelog_bytes_per_customer']:,.0f} B", "JSON")
        f = c["bgnbd"]
        t2.add_row(f"BG/NBD fit, {f['customers']:,} customers", f"{f['fit_seconds']:.2f} s", "best of 3")
        console.print(t2)
    if "stock" in r:
        st = r["stock"]
        t3 = Table(title="new stock for your interest")
        t3.add_column("measurement")
        t3.add_column("value", justify="right")
        t3.add_column("notes")
        b = st.get("broker_fanout")
        if b:
            t3.add_row(
                f"arrival -> last trigger, {b['customers']:,} interested, one worker",
                f"{b['last_trigger_s']:.2f} s",
                f"target < 2 s; first trigger after {b['first_trigger_s']:.2f} s; gate opened",
            )
        pf = st.get("pure_fanout")
        if pf:
            t3.add_row(
                f"same fan-out in the pure pipeline ({pf['customers']:,})",
                f"{pf['match_gate_s'] + pf['encode_s']:.2f} s",
                f"{pf['us_per_customer']:.1f} us per customer: match, gate, trigger, encode",
            )
        u = st.get("upkeep")
        if u:
            t3.add_row("interest profile upkeep / purchase", f"{u['profile_us_per_purchase']:.1f} us", "")
            t3.add_row(
                "interest (+ affinity) index upkeep / purchase",
                f"{u['indexes_us_per_purchase']:.1f} us",
                f"profile JSON {u['profile_changelog_bytes_per_customer']} B / customer",
            )
        a = st.get("affinity")
        if a:
            t3.add_row(
                "affinity: extra customers reached",
                f"{a['extra_reached_by_affinity']:,}",
                f"vs {a['reached_by_interest']:,} by interest; bought within 30 d: affinity "
                f"{a['bought_within_30d_affinity']:.1%}, interest {a['bought_within_30d_interest']:.1%}, "
                f"others {a['bought_within_30d_others']:.1%}",
            )
        console.print(t3)


if __name__ == "__main__":
    main()
