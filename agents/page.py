"""The page for the people who act: one server-rendered HTML page (``GET /``, ``/page``),
no JavaScript, a little inline CSS. The view model comes from streams/page.py; every value
is escaped here (customer ids and store names are user input)."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from schemas.timestamps import iso_utc
from streams import page
from streams.core import log_failure
from streams.rfm import segment

if TYPE_CHECKING:
    from agents.app import Runtime

log = logging.getLogger(__name__)

Cell = Callable[[dict[str, Any]], str]


def view(runtime: Runtime, partitions: Sequence[int], store: str | None) -> dict[str, Any]:
    """Everything the page shows, for this worker's partitions (no table walk, see
    streams/page.py)."""
    pipeline, settings = runtime.pipeline, runtime.settings
    indexes = runtime.page
    context_of = runtime.contexts()
    risk = pipeline.risk_counts()
    return {
        "as_of": iso_utc(runtime.clock.now_ms()),
        "clock": runtime.clock.name,
        "partitions": list(partitions),
        "partition_count": settings.partitions,
        "funnel": page.funnel(pipeline.stages.counts()),
        "alerted": {stage: risk.get((stage, True), 0) for stage in ("at_risk", "lapsed", "lost", "none")},
        "rfm": page.rf_grid(pipeline.population.rf_grid()),
        "at_risk": page.at_risk(
            pipeline.risk.members(), runtime.store, context_of, store=store, limit=settings.page_rows
        ),
        "triggers": indexes.recent.triggers.newest(),
        "suppressions": indexes.recent.suppressions.newest(),
        "store_funnel": _section("store_funnel", runtime.store_funnel, settings.page_store_funnel_hours),
        "uplift": _section("uplift", runtime.uplift),
        "store_funnel_hours": settings.page_store_funnel_hours,
        "ready": runtime.ready,
    }


def _section(
    name: str, method: Callable[..., Iterable[dict[str, Any]]], *args: Any
) -> list[dict[str, Any]] | str:
    """Rows from ``method(*args)``, or why there are none (a note for the page)."""
    try:
        rows = method(*args)
    except Exception as exc:  # a section failing never takes the page down
        log_failure(log, exc, "page: %s", name)
        return f"not available: {type(exc).__name__}"
    return list(rows)


# --- HTML -----------------------------------------------------------------------------------
def _e(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return escape(f"{value:g}")
    return escape(str(value))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _customer(cid: str) -> str:
    href = "/profile/" + urllib.parse.quote(cid, safe="")
    return f'<a href="{escape(href)}">{escape(cid)}</a>'


def _table(
    table_id: str, columns: Sequence[tuple[str, Cell]], rows: Sequence[dict[str, Any]], empty: str
) -> str:
    if not rows:
        return f'<p class="empty" id="{table_id}-empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(title)}</th>" for title, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row)}</td>" for _, cell in columns) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _field(key: str) -> Cell:
    return lambda row: _e(row.get(key))


def _percent(key: str) -> Cell:
    """A share (0.2397) as a percentage (24.0%), as the CLI shows it; a missing one a dash."""

    def cell(row: dict[str, Any]) -> str:
        value = row.get(key)
        return escape(_pct(value)) if value is None or isinstance(value, int | float) else _e(value)

    return cell


def _keyed(
    table_id: str,
    rows: list[dict[str, Any]] | str,
    keys: Sequence[str],
    empty: str,
    percent: frozenset[str] = frozenset(),
) -> str:
    """A contract's rows (``/store-funnel``, ``/uplift``) as a table of ``keys``, or its note;
    the ``percent`` keys are shares, shown as percentages."""
    if isinstance(rows, str):
        return f'<p class="empty" id="{table_id}-missing">{escape(rows)}</p>'
    return _table(
        table_id,
        [(k.replace("_", " "), _percent(k) if k in percent else _field(k)) for k in keys],
        rows,
        empty,
    )


_WHEN_WHAT_WHO: tuple[tuple[str, Cell], ...] = (
    ("at", _field("at")),
    ("type", _field("type")),
    ("customer", lambda r: _customer(r["customer_id"])),
)

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:78rem}
h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5rem 0} th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;white-space:nowrap}
th{background:#f3f3f3} td.n{text-align:right} .empty,.note{color:#666}
#rfm td{text-align:center;min-width:6rem} #rfm small{display:block;color:#666}
.risk{background:#fff3e0}
"""


def render(doc: dict[str, Any], store: str | None) -> str:
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>patronage - customers who need you</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>patronage</h1>",
        f'<p class="note" id="scope">As of <b>{_e(doc["as_of"])}</b> ({_e(doc["clock"])} clock). This worker '
        f"holds partitions <b>{_e(', '.join(map(str, doc['partitions'])) or 'none yet')}</b> of "
        f"{_e(doc['partition_count'])}: with several workers every page shows only its own "
        "partitions' customers; open each worker's page (or its <a href=\"/summary\">/summary</a>).</p>",
        ""
        if doc.get("ready", True)
        else '<p class="note" id="recovering"><b>This worker is still recovering its state: the numbers '
        "below are incomplete.</b></p>",
        _funnel(doc["funnel"], doc["alerted"]),
        _rfm(doc["rfm"]),
        _at_risk(doc["at_risk"], store),
        "<h2>Recent triggers</h2>",
        '<p class="note">Newest first by trigger time; churn alerts go to the store or account owner, '
        "new-stock offers to the customer (held-out ones are not delivered).</p>",
        _table(
            "triggers",
            [
                *_WHEN_WHAT_WHO,
                ("reason", _field("reason")),
                ("to", _field("recipient")),
                ("delivered", lambda r: {True: "yes", False: "held out"}.get(r["deliver"], "—")),
                ("trigger id", _field("trigger_id")),
            ],
            doc["triggers"],
            "no triggers yet",
        ),
        "<h2>Recent suppressions</h2>",
        '<p class="note">Offers the notification gate did not send, and why (newest first).</p>',
        _table(
            "suppressions",
            [
                *_WHEN_WHAT_WHO,
                ("why not", _field("decision")),
                ("category", _field("category")),
                ("sku", _field("sku")),
            ],
            doc["suppressions"],
            "no suppressions yet",
        ),
        f"<h2>Store funnels (last {_e(doc['store_funnel_hours'])} h)</h2>",
        _keyed(
            "store-funnel",
            doc["store_funnel"],
            (
                "store",
                "hour",
                "visits",
                "visitors",
                "buyers",
                "conversion",
                "orders",
                "revenue",
                "avg_basket",
            ),
            "no store traffic in this window",
        ),
        "<h2>Do the triggers work? Uplift</h2>",
        _keyed(
            "uplift",
            doc["uplift"],
            (
                "type",
                "segment",
                "tier",
                "treated",
                "treated_converted",
                "control",
                "control_converted",
                "treated_rate",
                "control_rate",
                "uplift",
                "ci_low",
                "ci_high",
                "open",
            ),
            "no closed exposures yet",
            percent=frozenset({"treated_rate", "control_rate", "uplift", "ci_low", "ci_high"}),
        ),
        "</body></html>",
    ]
    return "".join(parts)


def _funnel(f: dict[str, Any], alerted: dict[str, int]) -> str:
    table = _table(
        "funnel",
        [
            ("stage", _field("stage")),
            ("now", lambda r: f'<span class="n">{r["now"]}</span>'),
            ("of which anonymous", _field("anonymous")),
            ("reached", _field("reached")),
            ("conversion from the stage before", lambda r: _pct(r["conversion"])),
        ],
        f["stages"],
        "no customers yet",
    )
    risk = _table(
        "risk-stages",
        [
            ("risk stage", _field("stage")),
            ("customers", _field("n")),
            ("with an open alert", _field("alerted")),
        ],
        [{"stage": s, "n": n, "alerted": alerted.get(s, 0)} for s, n in f["risk"].items()],
        "",
    )
    return (
        "<h2>Lifecycle funnel</h2>"
        '<p class="note">stranger → visitor → prospect → customer → member → advocate. "now": at the '
        'stage now (customers in a risk stage are counted below instead); "reached": at this stage or '
        "further (by the stage a customer at risk had reached); conversion: reached over reached of the "
        f"stage before.</p>{table}<p>Customers whose rhythm broke:</p>{risk}"
    )


def _rfm(rfm: dict[str, Any]) -> str:
    rows = []
    for r in range(5, 0, -1):
        cells = "".join(
            f"<td>{rfm['grid'][r - 1][f - 1]} <small>{escape(segment(r, f))}</small></td>"
            for f in range(1, 6)
        )
        rows.append(f"<tr><th>R {r}</th>{cells}</tr>")
    head = "<tr><th></th>" + "".join(f"<th>F {f}</th>" for f in range(1, 6)) + "</tr>"
    segments = _table(
        "segments",
        [("segment", _field("segment")), ("buyers", _field("n"))],
        [{"segment": s, "n": n} for s, n in rfm["segments"].items()],
        "no buyers yet",
    )
    return (
        "<h2>RFM segments</h2>"
        f'<p class="note">{rfm["buyers"]} buyers by recency score (R, 5 = most recent) and frequency score '
        "(F, 5 = most frequent), ranked against this worker's buyers.</p>"
        f'<table id="rfm"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>{segments}'
    )


def _at_risk(doc: dict[str, Any], store: str | None) -> str:
    options = ['<option value="">all stores</option>']
    stores = dict(doc["stores"])
    if store is not None and store not in stores:
        stores[store] = 0
    for name, n in sorted(stores.items()):
        selected = " selected" if name == store else ""
        options.append(f'<option value="{escape(name)}"{selected}>{escape(name)} ({n})</option>')
    form = (
        '<form method="get" action="/page" id="store-filter"><label>Home store '
        f'<select name="store">{"".join(options)}</select></label> <button type="submit">Show</button></form>'
    )
    shown = len(doc["rows"])
    where = "" if store is None else f" whose home store is <b>{escape(store)}</b>"
    table = _table(
        "at-risk",
        [
            ("customer", lambda r: _customer(r["customer_id"])),
            ("home store", _field("home_store")),
            ("risk stage", _field("risk_stage")),
            ("reason", _field("reason")),
            ("alerted at", _field("alert_at")),
            ("days silent", _field("days_silent")),
            ("usual interval (days)", _field("usual_interval_days")),
            ("tier", _field("tier")),
            ("purchases", _field("purchases")),
            ("P(alive)", _field("p_alive")),
        ],
        doc["rows"],
        "nobody at risk" + ("" if store is None else " at this store"),
    )
    return (
        "<h2>Valued customers at risk now</h2>"
        f'<p class="note" id="at-risk-count">{doc["matched"]} customer(s){where}; newest first (by the '
        f"alert's time, else since when at risk); showing {shown} (at most {doc['limit']}, "
        "PATRONAGE_PAGE_ROWS). Home store: where they visit and buy most.</p>"
        f"{form}{table}"
    )
