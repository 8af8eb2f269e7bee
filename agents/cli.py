"""The ``patronage`` command line. Every command has ``--help``; settings come from
``PATRONAGE_*`` environment variables (``patronage settings`` lists them)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.settings import Settings, local_port


def _no_type_for_flags() -> None:
    """Typer 0.29's help labels every flag ``<bool>`` (``--json <bool>``, even ``--help``),
    which reads as if a value were expected; a flag takes none, so none is shown."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_patronage", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._patronage = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_no_type_for_flags()

app = typer.Typer(
    help="patronage: real-time customer relationship state (RFM, lifecycle, churn risk) on Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
local_app = typer.Typer(help="The embedded local stack (broker, Redis, worker) for demos and tests.")
topics_app = typer.Typer(
    help="Create patronage's topics (inputs, outputs, internal), compacted where needed."
)
model_app = typer.Typer(help="The BG/NBD churn model behind P(alive): fit it, hand it to the workers.")
app.add_typer(local_app, name="local")
app.add_typer(topics_app, name="topics")
app.add_typer(model_app, name="churn-model")

# Piped or captured output is never wrapped or truncated at 80 columns (records stay one
# line each, tables show whole reasons); a terminal gets its own width.
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 1000)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 1000)


class InputTopic(StrEnum):
    purchases = "purchases"
    touchpoints = "touchpoints"
    stock_arrivals = "stock-arrivals"
    customer_updates = "customer-updates"


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"])
            where = f"PATRONAGE_{field.upper()}" if field else "settings"
            msg = err["msg"].removeprefix("Value error, ").removeprefix(f"{field}: ")
            for name in Settings.model_fields:  # name the variables a user sets, not fields
                if "_" in name:
                    msg = re.sub(rf"\b{name}\b", f"PATRONAGE_{name.upper()}", msg)
            value = err.get("input")
            shown = "" if isinstance(value, dict) or "(got " in msg else f" (got {value!r})"
            lines.append(f"  {where}: {msg}{shown}")
        console.print("[red]invalid configuration:[/red]\n" + "\n".join(lines), soft_wrap=True)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def all_topics(settings: Settings) -> tuple[list[str], list[str], list[str]]:
    """(every topic the worker needs, the co-partitioned ones, the compacted ones)."""
    from schemas.topics import CO_PARTITIONED, COMPACTED, Topic

    topics = settings.topics
    return (
        [topics.real(t) for t in Topic],
        [topics.real(t) for t in CO_PARTITIONED],
        [topics.real(t) for t in COMPACTED],
    )


def ensure_all_topics(settings: Settings) -> dict[str, int]:
    """Create missing topics (changelog and model compacted), check co-partitioning; exit 2."""
    from agents.admin import AdminError, ensure_topics

    every, co, compacted = all_topics(settings)
    try:
        return ensure_topics(settings, every, co_partitioned=co, compacted=compacted)
    except AdminError as exc:
        fail(str(exc), 2)
        raise AssertionError from None


# --- worker -------------------------------------------------------------------------------
@app.command()
def worker() -> None:
    """Run a worker: consume the inputs, keep customer state, emit lifecycle changes and triggers.

    Triggers: churn risk, won back, stalled prospects (to staff) and new stock for your
    interest (to customers, through the notification gate); bad records go to dead-letters.

    Configure with PATRONAGE_* variables (see `patronage settings`). Start several workers
    with the same PATRONAGE_APP_ID (and distinct PATRONAGE_WEB_PORT) to share partitions.
    Creates missing topics with PATRONAGE_PARTITIONS partitions and refuses to start when
    co-partitioned inputs disagree. Stops cleanly on SIGTERM/Ctrl-C.
    """
    from faust import Worker

    from agents.app import create_app
    from agents.brokerwatch import exit_fast

    settings = load_settings()
    ensure_all_topics(settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    faust_app = create_app(settings)
    level = {"warn": "warning"}.get(settings.log_level, settings.log_level)
    logging.basicConfig(level=level.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    w = Worker(faust_app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    # Faust's terminal spinner: at log level warn and above it turns the root logger to DEBUG
    # so that it spins on every record - every debug call of Faust and aiokafka (one per
    # changelog record in recovery: ~10 % of a restart's main thread, py-spy) became a
    # LogRecord written to our log file as cursor codes. A service has no terminal.
    w.spinner = None
    try:
        w.execute_from_commandline()
    except SystemExit as done:
        # Stopped: offsets committed, changelog and triggers flushed, the loop closed. What
        # is left is the interpreter freeing every customer state one object at a time:
        # 2.4-7 s after the last log line with ~10,000 customers (py-spy: no Python frames;
        # a fresh-eyes run timed SIGTERM stops of 3-13.5 s). Nothing of it needs doing.
        code = done.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
        exit_fast(0 if code is None else int(code))


# --- replay -------------------------------------------------------------------------------
@app.command()
def replay(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            readable=True,
            help="a JSONL or CSV file, or a directory of `<topic>.jsonl` / `<topic>.csv` files",
        ),
    ],
    topic: Annotated[
        InputTopic | None,
        typer.Option("--topic", "-t", help="input topic to send a file to (a directory: from the names)"),
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", min=1, help="events per second (default: as fast as possible)")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl or csv (default: from the file extension)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Send events to the input topics, keyed by customer (or category for stock).

    A directory (e.g. the output of `patronage generate`) is replayed as one stream merged
    by event time - purchases, touchpoints, updates and stock advancing together, as they
    happened - which is what the event clock needs for churn deadlines to fire as if live.
    JSONL: one JSON object per line. CSV: a header row naming the fields; cells holding
    JSON arrays/objects (e.g. items) are parsed. Lines that cannot be read, or lack the key
    field, go to the dead-letters topic with the reason and are counted in the summary.
    """
    from agents.replay import count_records, detect_format, sources_in
    from agents.replay import replay as do_replay
    from schemas.topics import Topic

    settings = load_settings()
    if path.is_dir():
        if topic is not None:
            fail("--topic is for a single file; a directory's files are named <topic>.jsonl", 2)
        sources = sources_in(path)
        if not sources:
            fail(f"{path} holds no <topic>.jsonl or <topic>.csv file (topics: {', '.join(InputTopic)})", 2)
    else:
        if topic is None:
            fail("which topic? add --topic (purchases, touchpoints, customer-updates, stock-arrivals)", 2)
            raise AssertionError
        sources = [(path, Topic(topic.value))]
    partitions = ensure_all_topics(settings)
    total = sum(count_records(p, detect_format(p, fmt)) for p, _ in sources)
    label = path.name if len(sources) == 1 else f"{path.name}/ ({', '.join(t.value for _, t in sources)})"
    with Progress(
        TextColumn(f"replay {label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        task = bar.add_task("replay", total=total)
        result = asyncio.run(
            do_replay(
                settings,
                sources,
                fmt=fmt,
                rate=rate,
                partitions=partitions,
                progress=lambda n: bar.update(task, completed=n),
            )
        )
        # done is done: the bar ends at its total even if a file changed since it was counted
        done = result.sent + result.dead_letters
        bar.update(task, total=done, completed=done)
    rate_s = result.sent / result.seconds if result.seconds else 0.0
    where = ", ".join(f"{n} → {settings.topic(t)}" for t, n in result.by_topic.items()) or "nothing sent"
    msg = f"sent {result.sent} events ({where}) in {result.seconds:.2f}s ({rate_s:,.0f}/s)"
    if result.dead_letters:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(result.reasons.items()))
        msg += f"; {result.dead_letters} unreadable lines → {settings.topic('dead-letters')} ({detail})"
    console.print(msg, soft_wrap=True)


# --- wait ---------------------------------------------------------------------------------
AHEAD_GRACE_S = 5.0


@app.command()
def wait(
    timeout: Annotated[float, typer.Option("--timeout", help="seconds before giving up (exit 1)")] = 120.0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print nothing; the exit code says (0 caught up)")
    ] = False,
) -> None:
    """Block until the worker group has processed everything now in the input topics.

    Compares the group's committed offsets with the end offsets of every input topic and
    the internal identity topic (which the workers feed themselves) until they meet.
    """
    from agents.admin import AdminError, group_progress
    from schemas.topics import INPUTS, Topic

    settings = load_settings()
    topics = [settings.topic(t) for t in (*INPUTS, Topic.IDENTITY)]
    deadline = time.monotonic() + timeout
    last_remaining = None
    # Commits past a log's end: the broker lost records the group had read (a worker follows
    # the log back within seconds, committing lower offsets). Not caught up while that lasts;
    # a state unchanged for AHEAD_GRACE_S is taken as a broker reporting low end offsets
    # (Tansu points them into the last batch, BROKERS.md), not as a regression.
    last_ahead: dict = {}
    ahead_since = 0.0
    stable = 0
    while True:
        try:
            progress = group_progress(settings, topics)
        except AdminError as exc:
            fail(str(exc), 2)
        remaining = progress.remaining
        ahead = progress.ahead
        if ahead != last_ahead:
            ahead_since = time.monotonic()
            if ahead and not quiet:
                detail = ", ".join(
                    f"{tp.topic}[{tp.partition}] {c} > {e}" for tp, (c, e) in sorted(ahead.items())
                )
                console.print(
                    f"committed offsets past the log end ({detail}): the broker lost records the "
                    "group had read; waiting for the workers to follow the log back"
                )
        last_ahead = ahead
        following = bool(ahead) and time.monotonic() - ahead_since < AHEAD_GRACE_S
        if remaining == 0 and progress.end and not following:
            stable += 1
            if stable >= 2:  # twice in a row: no internal records still in flight
                if not quiet:
                    console.print(f"caught up: {sum(progress.end.values())} records processed")
                return
        else:
            stable = 0
        if remaining != last_remaining and not quiet:
            console.print(f"waiting: {remaining} records not yet committed by group {settings.app_id!r}")
            last_remaining = remaining
        if time.monotonic() > deadline:
            fail(
                f"timed out after {timeout:.0f}s with {remaining} records unprocessed; "
                f"is a worker running with PATRONAGE_APP_ID={settings.app_id}?"
            )
        time.sleep(0.5)


# --- profile / summary --------------------------------------------------------------------
def _get(settings: Settings, path: str, url: str | None) -> tuple[int, Any]:
    base = url or os.environ.get("PATRONAGE_WORKER_URL") or f"http://{settings.web_host}:{settings.web_port}"
    request = urllib.request.Request(base.rstrip("/") + path)
    if settings.web_token is not None:  # PATRONAGE_WEB_TOKEN: the workers require it
        request.add_header("Authorization", f"Bearer {settings.web_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        if exc.code == 401:
            given = "a wrong PATRONAGE_WEB_TOKEN" if settings.web_token is not None else "no token"
            fail(f"the worker at {base} requires its access token (sent {given}): set PATRONAGE_WEB_TOKEN", 2)
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"error": body.decode(errors="replace")}
    except OSError as exc:
        fail(f"cannot reach a worker at {base} ({exc}); is it running? (make up)", 2)
        raise AssertionError from None


@app.command()
def profile(
    customer_id: Annotated[str, typer.Argument(help="customer id (or anonymous id)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the profile as JSON")] = False,
    url: Annotated[str | None, typer.Option("--url", help="worker URL (default from settings)")] = None,
) -> None:
    """Show a customer's current state: RFM, windows, scores, lifecycle stage.

    Asks a worker over HTTP; the worker forwards to the one holding that customer.
    Exit code 1 when the customer is unknown.
    """
    settings = load_settings()
    status, doc = _get(settings, "/profile/" + urllib.parse.quote(customer_id, safe="") + "/", url)
    if status == 404:
        fail(f"unknown customer {customer_id!r}", 1)
    if status != 200:
        fail(f"worker answered {status}: {doc}", 2)
    if as_json:
        out.print_json(data=doc)
        return
    rows = profile_rows(doc)
    if not out.is_terminal:  # piped: one "name: value" line each, no padding to the console width
        for key, value in rows:
            sys.stdout.write(f"{key}: {value}\n")
        return
    table = Table(title=f"customer {customer_id}", show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


def profile_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """A profile for people: nested parts one row per field (``churn.p_alive``), interests
    as one line of ``category score`` (``*``: meets the interest definition)."""

    def shown(value: Any) -> str:
        return json.dumps(value) if isinstance(value, dict | list) else str(value)

    rows: list[tuple[str, str]] = []
    for key, value in doc.items():
        if key == "interests":
            rows.append(
                (
                    key,
                    ", ".join(
                        f"{i['category']} {i['score']:.2f}{'*' if i.get('interested') else ''}" for i in value
                    )
                    + ("  (* = interested)" if any(i.get("interested") for i in value) else "")
                    if value
                    else "none",
                )
            )
        elif isinstance(value, dict) and value and key not in ("touchpoints", "stores", "facts"):
            rows.extend((f"{key}.{sub}", shown(v)) for sub, v in value.items())
        else:
            rows.append((key, shown(value)))
    return rows


@app.command()
def why(
    customer_id: Annotated[str, typer.Argument(help="customer id")],
    category: Annotated[str, typer.Argument(help="stock category, e.g. imported_fresh_food")],
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
    url: Annotated[str | None, typer.Option("--url", help="worker URL (default from settings)")] = None,
) -> None:
    """Why did (or didn't) a customer hear about new stock in a category?

    Checks the interest definition as of the clock's now (orders in the window, share of
    spend), the gate's standing rules (consent, cooldown, just bought, where they shop) and
    lists every gate decision remembered for that category, newest first.
    Exit code 1 when the customer is unknown.
    """
    settings = load_settings()
    path = (
        "/why/"
        + urllib.parse.quote(customer_id, safe="")
        + "/?category="
        + urllib.parse.quote(category, safe="")
    )
    status, doc = _get(settings, path, url)
    if status != 200:
        fail(f"worker answered {status}: {doc}", 2)
    if as_json:
        out.print_json(data=doc)
        if doc.get("known") is False:
            raise typer.Exit(1)
        return
    if doc.get("known") is False:
        fail(f"unknown customer {customer_id!r}", 1)
    verdict = "interested" if doc.get("interested") else "not interested"
    out.print(f"[bold]{customer_id}[/bold] and {category!r} as of {doc.get('as_of')}: {verdict}")
    for line in doc.get("reasons", []):
        out.print("  " + line, markup=False)
    for p in doc.get("pending", []):
        out.print(f"  pending: {p['type']} due {p['due']} ({len(p['items'])} item(s))", markup=False)
    decisions = doc.get("decisions", [])
    if not decisions:
        out.print(
            "  no gate decision remembered for this category (no arrival in it was offered to this "
            "customer: none came, it was for another store or region, or they were not interested at its time)"
        )
    for d in decisions:
        out.print(f"  {d['at']}  {d['decision']:<22} {d['sku']}  (arrival {d['arrival']})", markup=False)


@app.command()
def summary(
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
    url: Annotated[str | None, typer.Option("--url", help="worker URL (default from settings)")] = None,
) -> None:
    """Customers per lifecycle stage and per RFM segment (for the worker's partitions)."""
    settings = load_settings()
    status, doc = _get(settings, "/summary/", url)
    if status != 200:
        fail(f"worker answered {status}: {doc}", 2)
    if as_json:
        out.print_json(data=doc)
        return
    print_summary(doc)


def print_summary(doc: dict[str, Any]) -> None:
    held, total = doc.get("partitions"), doc.get("partitions_total")
    if held is not None and total and len(held) < total:
        out.print(
            f"[yellow]this worker holds partitions {', '.join(map(str, held)) or 'none'} of {total}: "
            "the counts below are theirs only (ask the other workers with --url)[/yellow]"
        )
    out.print(
        f"customers: {doc['customers']}  buyers: {doc['buyers']}  anonymous visitors: "
        f"{doc['anonymous_visitors']}  merged anonymous ids: {doc['merged_anonymous_ids']}"
    )
    stages = Table(title="lifecycle stages")
    stages.add_column("stage")
    stages.add_column("count", justify="right")
    for stage, n in doc["stages"].items():
        stages.add_row(stage, str(n))
    segments = Table(title="RFM segments")
    segments.add_column("segment")
    segments.add_column("count", justify="right")
    for seg, n in doc["segments"].items():
        segments.add_row(seg, str(n))
    out.print(stages)
    out.print(segments)
    risk = doc.get("at_risk") or {}
    if risk:
        table = Table(
            title="churn risk now (every buyer in a risk stage, valued or not; '(alerted)': an "
            "alert is open - alerts go to valued customers only; 'none (alerted)': not silent too "
            "long, but an alert is open, e.g. after a complaint)"
        )
        table.add_column("risk stage")
        table.add_column("count", justify="right")
        for key, n in risk.items():
            table.add_row(key, str(n))
        out.print(table)
        listed = doc.get("at_risk_listed")
        if listed is not None:
            out.print(
                f"on the page's and Redis' at-risk lists (valued and in a risk stage, or alerted): {listed}"
            )
    notes = doc.get("notifications")
    if notes is not None:
        out.print(f"notifications pending: {notes['pending']}  overdue: {notes['overdue']}")
    if doc.get("as_of"):
        out.print(f"as of {doc['as_of']} (the clock)")


# --- uplift -------------------------------------------------------------------------------
@app.command()
def uplift(
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="worker URL, or several separated by commas (each answers for its own partitions; "
            "their counts are added up). Default from settings",
        ),
    ] = None,
) -> None:
    """Do the triggers work? Treated vs held-out conversion per trigger type x RFM segment x tier.

    Each churn-risk alert and new-stock notification is an exposure: treated when delivered,
    control when held out by the control group (PATRONAGE_CHURN_HOLDOUT,
    PATRONAGE_GATE_HOLDOUT=new_stock_for_interest=...). It converts when the customer buys
    (new stock: an item of the notification's category; churn risk: anything) after the
    trigger and within PATRONAGE_UPLIFT_WINDOW_DAYS, on event time. Only exposures whose
    window has ended count ("open": still running). Segment and tier are the customer's at
    the trigger.

    rate = converted / exposures; uplift = treated rate - control rate (percentage points);
    the 95 % interval is Newcombe's hybrid score interval for a difference of proportions.
    An interval that contains 0 means no effect is shown yet; small groups give wide intervals.
    """
    from streams.uplift import counts_from_rows, rows

    settings = load_settings()
    urls = [u.strip() for u in url.split(",") if u.strip()] if url else [None]
    found: list[dict[str, Any]] = []
    window = None
    for one in urls:
        status, doc = _get(settings, "/uplift/", one)
        if status != 200:
            fail(f"worker answered {status}: {doc}", 2)
        found.extend(doc["rows"])
        window = doc.get("window_days", window)
    result = {"rows": rows(counts_from_rows(found)) if len(urls) > 1 else found, "window_days": window}
    if as_json:
        out.print_json(data=result)
        return
    print_uplift(result)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def print_uplift(doc: dict[str, Any]) -> None:
    table = Table(
        title=f"uplift: purchase within {doc['window_days']:g} days of the trigger (event time), "
        "treated (delivered) vs control (held out); closed windows only"
    )
    for name, justify in (
        ("type", "left"),
        ("segment", "left"),
        ("tier", "left"),
        ("treated conv/n", "right"),
        ("control conv/n", "right"),
        ("treated rate", "right"),
        ("control rate", "right"),
        ("uplift [95 % CI]", "right"),
        ("open", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in doc["rows"]:
        uplift_ = r["uplift"]
        if uplift_ is None:
            shown = "-"
        else:
            ci = "" if r["ci_low"] is None else f" [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
            shown = f"{100 * uplift_:+.1f} pp{ci}"
        table.add_row(
            r["type"],
            r["segment"],
            r["tier"],
            f"{r['treated_converted']}/{r['treated']}",
            f"{r['control_converted']}/{r['control']}",
            _pct(r["treated_rate"]),
            _pct(r["control_rate"]),
            shown,
            str(r["open"]),
        )
    out.print(table)
    if not doc["rows"]:
        out.print(
            "no measured triggers yet (a control group needs PATRONAGE_CHURN_HOLDOUT or "
            "PATRONAGE_GATE_HOLDOUT=new_stock_for_interest=<share>)"
        )


# --- tail ---------------------------------------------------------------------------------
@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="topic, e.g. lifecycle-changes, dead-letters, triggers")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="records to print (the newest)")] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON record per line on stdout (a cut is noted on stderr)")
    ] = False,
    every: Annotated[bool, typer.Option("--all", help="print every record (overrides --limit)")] = False,
) -> None:
    """Read a topic from the beginning to its current end; print the newest records and counts.

    For lifecycle-changes the counts are per target stage; for dead-letters per stage and
    reason. Handy for demos and checks; for production use a real consumer.
    """
    import orjson
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from schemas.topics import Topic

    settings = load_settings()
    known = {t.value for t in Topic}
    name = settings.topic(topic) if topic in known else topic  # a logical name, or a real one
    from agents.admin import AdminError, check_reachable, end_offsets, unreachable
    from agents.kafkaauth import kafka_python_options

    try:
        check_reachable(settings)
    except AdminError as exc:
        fail(str(exc), 2)
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            request_timeout_ms=10_000,
            **kafka_python_options(settings),
        )
    except KafkaError as exc:
        fail(unreachable(settings, str(exc)), 2)
        raise AssertionError from None
    try:
        parts = consumer.partitions_for_topic(name)
        if not parts:
            fail(f"topic {name!r} does not exist", 1)
        tps = [TopicPartition(name, p) for p in sorted(parts)]
        end = end_offsets(consumer, tps)  # confirmed by a fetch (Tansu lists them low)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        counts: dict[str, int] = {}
        done = {tp for tp in tps if end[tp] == 0}
        idle_deadline = time.monotonic() + 10
        while len(done) < len(tps) and time.monotonic() < idle_deadline:
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            for tp, msgs in batch.items():
                idle_deadline = time.monotonic() + 10
                for m in msgs:
                    try:
                        value = orjson.loads(m.value) if m.value is not None else None
                    except orjson.JSONDecodeError:
                        value = {"raw": m.value.decode(errors="replace")}
                    records.append((m.timestamp, tp.partition, m.offset, value))
                    label = _tail_label(topic, value)
                    counts[label] = counts.get(label, 0) + 1
                    if m.offset + 1 >= end[tp]:
                        done.add(tp)
    finally:
        consumer.close()
    # newest by the records' own time (``ts``: event or clock time) where they have one, not
    # by when they were written: partitions are written in turns, each at its own event time
    records.sort(key=lambda r: (_record_ms(r[3], r[0]), r[0], r[1], r[2]))
    shown = records if every else records[-limit:] if limit else []
    if as_json:
        for _, _, _, value in shown:
            sys.stdout.write(orjson.dumps(value).decode() + "\n")
        if len(shown) < len(records):  # saved for a comparison, a silent cut misleads
            sys.stderr.write(f"(the newest {len(shown)} of {len(records)} records; --all prints every one)\n")
        return
    out.print(f"{name}: {len(records)} records")
    for label, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        out.print(f"  {n:>8}  {label}")
    for _, partition, offset, value in shown:
        out.print(_tail_record(topic, partition, offset, value))


def _record_ms(value: Any, written_ms: int) -> int:
    """A record's own time: its ``ts`` (ISO-8601 or epoch ms), else when it was written."""
    from schemas.timestamps import parse_ts_ms

    ts = value.get("ts") if isinstance(value, dict) else None
    if ts is None:
        return written_ms
    try:
        return parse_ts_ms(ts)
    except (TypeError, ValueError):
        return written_ms


def _tail_label(topic: str, value: Any) -> str:
    if value is None:
        return "(tombstone: a key erased)"
    if not isinstance(value, dict):
        return "(not an object)"
    if topic.endswith("lifecycle-changes"):
        return f"-> {value.get('to_stage')}"
    if topic.endswith("dead-letters"):
        return f"{value.get('stage')}: {value.get('reason') or str(value.get('error', ''))[:60]}"
    if topic.endswith("triggers"):
        return f"{value.get('type')}: {value.get('reason')}"
    return str(value.get("type", "record"))


def _readable_id(event_id: Any) -> str:
    """Clock-made cause ids carry epoch ms ("silence-since:1785062846000"): show the time."""
    text = str(event_id)
    name, sep, ms = text.rpartition(":")
    if sep and ms.isdigit() and len(ms) >= 12:
        from schemas.timestamps import iso_utc

        return (
            f"{name[:-6]} since {iso_utc(int(ms))}"
            if name.endswith("-since")
            else f"{name}:{iso_utc(int(ms))}"
        )
    return text


def _position(partition: Any, offset: Any) -> str:
    """Where a record is in its topic: ``p2@1234`` (partition 2, offset 1234)."""
    return f"p{partition}@{offset}"


def _tail_record(topic: str, partition: int, offset: int, value: Any) -> str:
    """One record of ``patronage tail``: its partition and offset, then what it says."""
    return f"  {_position(partition, offset)}  {_tail_line(topic, value)}"


def _tail_line(topic: str, value: Any) -> str:
    if value is None:
        return "(tombstone: this key's earlier records are erased)"
    if isinstance(value, dict) and topic.endswith("lifecycle-changes"):
        cause = value.get("cause", {})
        return (
            f"{value.get('ts')}  {value.get('customer_id')}: {value.get('from_stage')} -> "
            f"{value.get('to_stage')}  ({cause.get('rule')}; {cause.get('type')} "
            f"{_readable_id(cause.get('event_id'))})"
        )
    if isinstance(value, dict) and topic.endswith("triggers"):
        return _trigger_line(value)
    if isinstance(value, dict) and topic.endswith("dead-letters"):
        return f"{value.get('reason')}: {str(value.get('error'))[:300]}  ({_dead_letter_origin(value)})"
    return json.dumps(value)[:200]


def _dead_letter_origin(value: dict[str, Any]) -> str:
    """The input record a dead letter is about (``purchases p0@17``), and the identity hop it
    failed on when it was re-routed (``via patronage-identity p1@4``)."""
    if value.get("offset") is None:
        return f"{value.get('topic')}, rejected before sending"
    where = f"{value.get('topic')} {_position(value.get('partition'), value.get('offset'))}"
    via = value.get("via")
    if isinstance(via, dict):
        where += f" via {via.get('topic')} {_position(via.get('partition'), via.get('offset'))}"
    return where


HELD_OUT = " HELD OUT (control group: not delivered)"


def _trigger_line(value: dict[str, Any]) -> str:
    """One trigger for people, with the fields that matter for its type: a churn alert's
    reason, risk stage, tier and P(alive); a come-back's purchase and the alert it answers;
    a withdrawn alert's late purchase; a stalled prospect's asks. A trigger in a control group says it is held out."""
    kind = value.get("type")
    details = value.get("details") or {}
    held = HELD_OUT if value.get("holdout") else ""
    to = f"→ {value.get('recipient_kind')} {value.get('recipient_id')}"
    if kind == "new_stock_for_interest":
        items = ", ".join(str(it.get("sku")) for it in value.get("items") or [])
        basis = value.get("interest") or {}
        return (
            f"{value.get('ts')}  new stock {to} via {value.get('channel')}{held}: {items}  "
            f"({value.get('reason')} in {basis.get('category')}, {basis.get('spend_share') or 0:.0%} of spend, "
            f"{basis.get('occasions_in_window')} orders)"
        )
    head = f"{value.get('ts')}  {kind} {value.get('customer_id')} {to}{held}"
    if kind == "churn_risk":
        why = _churn_reason(value.get("reason"), details)
        p_alive, n = details.get("p_alive"), details.get("purchases")
        facts = [
            details.get("risk_stage"),
            _when(details.get("tier"), "tier {}"),
            details.get("milestone"),
            _when(n, "{} purchase" + ("" if n == 1 else "s")),
            _when(details.get("lifetime_value"), "{:.2f} " + str(details.get("currency") or "")),
            f"P(alive) {'n/a (no churn model)' if p_alive is None else p_alive}",
        ]
        return f"{head}  ({why}; {', '.join(f.strip() for f in facts if f)})"
    if kind == "won_back":
        purchase = details.get("purchase_event_id")
        silent = details.get("days_silent")
        back = (
            "came back: "
            + (f"purchase {purchase}" if purchase else "a purchase")
            + (f" after {silent} d silent" if silent is not None else "")
        )
        answers = f"answers the {details.get('alert_reason')} alert of {details.get('alerted_at')}"
        return f"{head}  ({back}; {answers})"
    if kind == "churn_risk_withdrawn":
        purchase = details.get("purchase_event_id")
        early = details.get("days_before_alert")
        return (
            f"{head}  (premature: "
            + (f"purchase {purchase}" if purchase else "a purchase")
            + f" of {details.get('purchase_at')}"
            + (f", {early} d before the alert," if early is not None else "")
            + f" arrived late; withdraws the {details.get('alert_reason')} alert of {details.get('alerted_at')})"
        )
    if kind == "stalled_prospect":
        asks = details.get("asks") or {}
        each = ", ".join(f"{t} {n}" for t, n in asks.items())
        return (
            f"{head}  (stalled: {sum(asks.values())} asks ({each}), no purchase; first "
            f"{details.get('first_ask_at')}, last {details.get('last_ask_at')})"
        )
    return f"{head}  ({value.get('reason')})"


def _churn_reason(reason: Any, details: dict[str, Any]) -> str:
    if reason == "lapse":
        return f"lapse: silent {details.get('days_silent')} d, usual {details.get('usual_interval_days')} d"
    if reason == "complaint":
        c = details.get("complaint") or {}
        rated = "" if c.get("type") in ("complaint", None) else f": {c.get('type')} rated {c.get('rating')}"
        return f"complaint{rated}" + _when(c.get("channel"), " via {}", "")
    if reason == "experience":
        e = details.get("experience") or {}
        return (
            f"experience: score {e.get('score')} (was {e.get('previous_score')}, best {e.get('peak_score')})"
        )
    return str(reason)


def _when(value: Any, template: str, otherwise: Any = None) -> Any:
    """``template`` filled with ``value``, or ``otherwise`` when there is no value."""
    return otherwise if value is None else template.format(value)


# --- generate -----------------------------------------------------------------------------
@app.command()
def generate(
    customers: Annotated[int, typer.Option("--customers", "-n", min=1, help="number of customers")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same data)")] = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path("demo-data"),
) -> None:
    """Write deterministic synthetic data: one JSONL file per input topic plus labels.json.

    Customers have their own purchase rhythm, favourite categories and stores; touchpoints
    come before purchases; some loyal customers lapse; anonymous visitors later identify;
    a few complain. labels.json records the truth (lapsing loyalists, favourite categories).
    """
    import orjson

    from synthetic import generate as synth

    data = synth(customers, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "purchases.jsonl": data.purchases,
        "touchpoints.jsonl": data.touchpoints,
        "customer-updates.jsonl": data.customer_updates,
        "stock-arrivals.jsonl": data.stock_arrivals,
    }
    for name, rows in files.items():
        with (out_dir / name).open("wb") as fh:
            for row in rows:
                fh.write(orjson.dumps(row) + b"\n")
    (out_dir / "labels.json").write_bytes(orjson.dumps(data.labels, option=orjson.OPT_INDENT_2))
    console.print(
        f"wrote {out_dir}/: "
        + ", ".join(f"{name} ({len(rows)})" for name, rows in files.items())
        + ", labels.json"
    )


# --- churn model ----------------------------------------------------------------------------
def _until_ms(text: str) -> int:
    """--until: a date (the whole day counts) or an ISO-8601 timestamp with offset, or epoch ms."""
    from schemas.timestamps import parse_until_ms

    try:
        return parse_until_ms(text)
    except ValueError as exc:
        fail(f"--until: {exc}", 2)
        raise AssertionError from None


def _events_from_file(path: Path, fmt: str | None, until_ms: int) -> tuple[list[tuple[str, int]], int]:
    """(customer_id, ts_ms) of every readable purchase (each event id once), and how many
    lines were skipped as unreadable."""
    from agents.replay import detect_format, read_lines
    from schemas.timestamps import parse_ts_ms

    seen: set[str] = set()
    events: list[tuple[str, int]] = []
    skipped = 0
    for _, _, obj, error in read_lines(path, detect_format(path, fmt)):
        if obj is None or error is not None:
            skipped += 1
            continue
        try:
            customer = obj["customer_id"]
            ts = parse_ts_ms(obj["ts"])
        except (KeyError, ValueError):
            skipped += 1
            continue
        event_id = obj.get("event_id")
        if event_id is not None:
            if str(event_id) in seen:
                continue
            seen.add(str(event_id))
        events.append((str(customer), ts))
    return events, skipped


@model_app.command("fit")
def churn_model_fit(
    events: Annotated[
        Path | None,
        typer.Option("--events", exists=True, dir_okay=False, help="purchases file (JSONL or CSV)"),
    ] = None,
    from_workers: Annotated[
        str | None,
        typer.Option(
            "--from-workers",
            help="fit from the live tables instead: comma-separated worker URLs (each sends its partitions)",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="end of the calibration period: a date (whole day) or timestamp"),
    ] = None,
    unit: Annotated[str, typer.Option("--unit", help="time unit of the parameters: days or weeks")] = "days",
    fmt: Annotated[str | None, typer.Option("--format", help="jsonl or csv (default: extension)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print only the JSON result")] = False,
    publish: Annotated[
        bool, typer.Option("--publish", help="write the parameters to the churn-model topic for the workers")
    ] = False,
) -> None:
    """Fit BG/NBD (r, alpha, a, b) by maximum likelihood and print them.

    Follows Fader, Hardie & Lee (2005): purchases on the same calendar day (UTC) are one
    occasion; x = repeat occasions, t_x = first to last purchase, T = first purchase to
    --until, in --unit. From a purchases file (--events, needs --until) or from the live
    tables of running workers (--from-workers; --until defaults to their clock's now).
    --publish hands the result to every worker (P(alive) in profiles and triggers).
    """
    import numpy as np

    from streams import bgnbd

    if unit not in bgnbd.UNIT_DAYS:
        fail(f"--unit must be one of {', '.join(bgnbd.UNIT_DAYS)}", 2)
    if (events is None) == (from_workers is None):
        fail("give exactly one of --events FILE or --from-workers URL[,URL...]", 2)
    until_ms: int | None = None if until is None else _until_ms(until)
    skipped = 0
    if events is not None:
        if until_ms is None:
            fail("--events needs --until (the end of the calibration period)", 2)
            raise AssertionError
        rows, skipped = _events_from_file(events, fmt, until_ms)
        x, t_x, big_t = bgnbd.summarize_customers(rows, until_ms, unit)
    else:
        assert from_workers is not None
        query = f"?unit={unit}" + (f"&until={until_ms}" if until_ms is not None else "")
        xs: list[float] = []
        txs: list[float] = []
        ts: list[float] = []
        for url in [u.strip() for u in from_workers.split(",") if u.strip()]:
            status, doc = _get(load_settings(), "/churn-model/summary/" + query, url)
            if status != 200:
                fail(f"worker {url} answered {status}: {doc}", 2)
            until_ms = doc["until"] if until_ms is None else until_ms
            for row_x, row_tx, row_t, n in doc["rows"]:
                xs.extend([row_x] * n)
                txs.extend([row_tx] * n)
                ts.extend([row_t] * n)
        x, t_x, big_t = np.array(xs, dtype=float), np.array(txs, dtype=float), np.array(ts, dtype=float)
    try:
        result = bgnbd.fit(x, t_x, big_t)
    except ValueError as exc:
        fail(f"cannot fit: {exc}", 1)
        raise AssertionError from None
    doc = result.to_dict()
    if publish:
        _publish_model(doc, unit, until_ms)
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    p = result.params
    out.print(
        f"BG/NBD ({unit}): r={p.r:.4f} alpha={p.alpha:.4f} a={p.a:.4f} b={p.b:.4f}  "
        f"log-likelihood {result.log_likelihood:.2f}  over {result.customers} customers"
        + (f"  ({skipped} unreadable lines skipped)" if skipped else "")
    )
    if publish:
        out.print(f"published to {load_settings().topic('churn-model')}: workers pick it up within seconds")


def _publish_model(doc: dict[str, Any], unit: str, until_ms: int | None) -> None:
    from kafka import KafkaProducer

    from agents.model import MODEL_KEY
    from schemas.outputs import ChurnModelRecord
    from schemas.timestamps import iso_utc

    settings = load_settings()
    ensure_all_topics(settings)
    record = ChurnModelRecord(
        r=doc["r"],
        alpha=doc["alpha"],
        a=doc["a"],
        b=doc["b"],
        unit=unit,  # type: ignore[arg-type]
        log_likelihood=doc.get("log_likelihood"),
        customers=doc.get("customers"),
        until=iso_utc(until_ms),
        fitted_at=iso_utc(int(time.time() * 1000)),
    )
    from agents.kafkaauth import kafka_python_options

    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", **kafka_python_options(settings)
    )
    try:
        producer.send(settings.topic("churn-model"), key=MODEL_KEY, value=record.model_dump_json().encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


# --- topics -------------------------------------------------------------------------------
@topics_app.command("create")
def topics_create() -> None:
    """Create every topic patronage uses (inputs, outputs, internal) if missing."""
    settings = load_settings()
    counts = ensure_all_topics(settings)
    for name, n in counts.items():
        out.print(f"{name}: {n} partitions")


# --- settings -----------------------------------------------------------------------------
@app.command("settings")
def show_settings() -> None:
    """List every setting: environment variable, current value, meaning."""
    settings = load_settings()

    def shown(value: Any) -> str:
        if isinstance(value, str) and "://" in value:  # a password in a URL is shown masked too
            return re.sub(r"://([^/@:]*):[^/@]*@", r"://\1:**********@", value)
        if isinstance(value, frozenset | set | list | tuple):
            return ",".join(sorted(str(v) for v in value))
        if isinstance(value, bool):
            return str(value).lower()
        return "" if value is None else str(value)

    rows = [
        (f"PATRONAGE_{name.upper()}", shown(getattr(settings, name)), info.description or "")
        for name, info in Settings.model_fields.items()
    ]
    rows += [  # the local stack's own (make up, patronage local up)
        ("KAFKA_PORT", str(local_port("KAFKA_PORT")), "local stack: broker port (and the default broker)"),
        ("REDIS_PORT", str(local_port("REDIS_PORT")), "local stack: Redis port (and the default Redis)"),
        (
            "PATRONAGE_TEST_BROKER",
            os.environ.get("PATRONAGE_TEST_BROKER") or "noida",
            "local stack and integration tests: the broker started, noida or tansu",
        ),
        (
            "PATRONAGE_RUN_DIR",
            os.environ.get("PATRONAGE_RUN_DIR", ".run"),
            "local stack: pid files, logs, data",
        ),
    ]
    if not out.is_terminal:  # piped: one line each, nothing cut
        for env, value, meaning in rows:
            sys.stdout.write(f"{env}={value}  # {meaning}\n")
        return
    table = Table(title="patronage settings")
    table.add_column("environment variable", no_wrap=True)
    table.add_column("value")
    table.add_column("meaning")
    for row in rows:
        table.add_row(*row)
    out.print(table)


# --- local stack --------------------------------------------------------------------------
def _stack(broker: str | None = None) -> Any:
    from agents.localstack import LocalStack, StackError

    try:
        return LocalStack(
            Path(os.environ.get("PATRONAGE_RUN_DIR", ".run")),
            kafka_port=local_port("KAFKA_PORT"),
            redis_port=local_port("REDIS_PORT"),
            web_port=local_port("PATRONAGE_WEB_PORT"),
            broker=broker,
        )
    except StackError as exc:
        fail(str(exc), 2)


@local_app.command("up")
def local_up(
    workers: Annotated[int, typer.Option("--workers", min=0, help="workers to start")] = 1,
    broker: Annotated[
        str | None,
        typer.Option("--broker", help="noida or tansu (default: PATRONAGE_TEST_BROKER, else noida)"),
    ] = None,
) -> None:
    """Start broker (noida-db or Tansu), Redis and worker(s) in the background; return when ready.

    Idempotent: what is already running is left alone. Ports: KAFKA_PORT (9092),
    REDIS_PORT (6379), PATRONAGE_WEB_PORT (6066, +1 per extra worker). State in .run/.
    """
    from agents.localstack import StackError

    stack = _stack(broker)
    try:
        stack.start_broker()
        stack.start_redis()
        for i in range(workers):
            stack.start_worker(i)
    except StackError as exc:
        fail(str(exc), 2)
    out.print(f"broker   {stack.broker_url}   {stack.broker}   (logs {stack.run_dir}/broker.log)")
    out.print(f"redis    {stack.redis_url}   (logs {stack.run_dir}/redis.log)")
    for i in range(workers):
        out.print(f"worker{i}  http://127.0.0.1:{stack.web_port + i}/  (logs {stack.run_dir}/worker{i}.log)")


@local_app.command("down")
def local_down() -> None:
    """Stop everything `patronage local up` started (workers first, then Redis, broker)."""
    stopped = _stack().down(say=lambda msg: out.print(f"[dim]{msg}[/dim]"))
    out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
