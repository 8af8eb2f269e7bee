"""The page through the real broker, as a person sees it: a worker fed with generated data,
the page loaded in headless Chromium (Debian's ``chromium``), the rendered DOM read back
and compared with the worker's JSON API and the triggers topic. Screenshots go to a temporary
directory, or to docs/screenshots/ (the README shows them) with PATRONAGE_UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from schemas.timestamps import DAY_MS, iso_utc, parse_ts_ms
from tests.integration.conftest import ROOT, Cluster

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium")
# the README's screenshots are rewritten only on request (a test run leaves the clone clean)
SHOTS = (
    ROOT / "docs" / "screenshots"
    if os.environ.get("PATRONAGE_UPDATE_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "patronage-screenshots"
)
EVIL_ID = "<script>alert('x')</script>&c"
EVIL_STORE = '<i>s"&amp;</i>'
ROWS = 15


def chromium(*args: str) -> str:
    """Run headless Chromium (own throw-away profile) and return what it prints."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Dom(HTMLParser):
    """Tables by id as rows of cell texts, links inside them, and every element name."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: dict[str, list[list[str]]] = {}
        self.tags: set[str] = set()
        self.ids: dict[str, str] = {}  # element id -> its text
        self.options: list[tuple[str, bool, str]] = []  # store filter: (value, selected, label)
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._open_ids: list[tuple[str, str, list[str]]] = []
        self._option: tuple[str, bool] | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if a.get("id"):
            self._open_ids.append((tag, a["id"] or "", []))
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
            self.links[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
            self.links[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "a" and self._table is not None and self.links[self._table]:
            self.links[self._table][-1].append(a.get("href") or "")
        elif tag == "option":
            self._option = (a.get("value") or "", "selected" in a)
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "option" and self._option is not None:
            self.options.append((*self._option, "".join(self._text).strip()))
            self._option = None
        if self._open_ids and self._open_ids[-1][0] == tag:
            _, ident, text = self._open_ids.pop()
            self.ids[ident] = "".join(text).strip()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._option is not None:
            self._text.append(data)
        for _, _, text in self._open_ids:
            text.append(data)

    def rows(self, table: str) -> list[dict[str, str]]:
        head, *body = self.tables[table]
        return [dict(zip(head, row, strict=True)) for row in body]


def see(cluster: Cluster, path: str, shot: str | None = None, height: int = 2000) -> Dom:
    """What a person sees at ``path``: the DOM after Chromium rendered it (and a screenshot
    of the top ``height`` pixels)."""
    url = cluster.url() + path
    if shot is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        chromium(f"--screenshot={SHOTS / shot}", f"--window-size=1280,{height}", url)
        assert (SHOTS / shot).stat().st_size > 10_000
    return Dom(chromium("--dump-dom", url))


def optional_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def number(text: str) -> float | None:
    return None if text == "—" else float(text)


def evil_customer(cluster: Cluster, end_ms: int) -> Path:
    """A valued customer whose id and store are markup: weekly purchases, then 200 days silent."""
    first = end_ms - 260 * DAY_MS
    rows = [
        {
            "event_id": f"evil-{i}",
            "customer_id": EVIL_ID,
            "ts": iso_utc(first + i * 7 * DAY_MS),
            "amount": 80,
            "currency": "EUR",
            "store_id": EVIL_STORE,
        }
        for i in range(8)
    ]
    return cluster.write("evil.jsonl", rows)


def test_the_page_shows_what_the_worker_knows(cluster: Cluster) -> None:
    data = cluster.tmp / "data"
    cluster.run("generate", "--customers", "800", "--seed", "21", "--out", str(data))
    labels = json.loads((data / "labels.json").read_text())
    cluster.env["PATRONAGE_PAGE_ROWS"] = str(ROWS)
    cluster.start_worker()
    cluster.replay(evil_customer(cluster, labels["end_ms"]), "purchases")
    cluster.run("replay", str(data), "--quiet")
    cluster.wait(timeout=300, settle_s=3)

    # served as HTML at /, /page and /page/, UTF-8
    for path in ("/", "/page", "/page/"):
        with urllib.request.urlopen(cluster.url() + path, timeout=30) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    status, summary = cluster.get("/summary")
    assert status == 200
    dom = see(cluster, "/page", "page.png")

    # escaping: the markup in the id and store is text on the page, never an element
    assert not {"script", "i"} & dom.tags
    assert "holds partitions 0, 1, 2, 3 of 4" in dom.ids["scope"]

    # the funnel: the summary's numbers (anonymous ids included), risk stages with their alerts
    funnel = dom.rows("funnel")
    assert [r["stage"] for r in funnel] == [
        "stranger",
        "visitor",
        "prospect",
        "customer",
        "member",
        "advocate",
    ]
    stages = summary["stages"]
    for r in funnel:
        s = r["stage"]
        assert int(r["now"]) == stages.get(s, 0) + stages.get(f"{s} (anonymous)", 0), r
        assert int(r["of which anonymous"]) == stages.get(f"{s} (anonymous)", 0)
    assert int(funnel[0]["reached"]) == sum(stages.values())
    # customers at risk have bought: they have reached "customer" (or further)
    risk_total = sum(stages.get(s, 0) for s in ("at_risk", "lapsed", "lost"))
    assert int(funnel[3]["reached"]) == sum(int(r["now"]) for r in funnel[3:]) + risk_total
    assert int(funnel[3]["reached"]) >= summary["buyers"]  # and loyalty members who never bought
    for before, after in itertools.pairwise(funnel):
        shown = after["conversion from the stage before"]
        assert shown == f"{int(after['reached']) / int(before['reached']):.1%}"
    risk = {r["risk stage"]: r for r in dom.rows("risk-stages")}
    assert {s: int(r["customers"]) for s, r in risk.items()} == {
        s: stages.get(s, 0) for s in ("at_risk", "lapsed", "lost")
    }
    assert sum(int(r["customers"]) for r in risk.values()) > 10
    assert {s: int(r["with an open alert"]) for s, r in risk.items()} == {
        s: summary["at_risk"].get(f"{s} (alerted)", 0) for s in ("at_risk", "lapsed", "lost")
    }

    # the RFM grid and segments: the summary's segments
    segments = {r["segment"]: int(r["buyers"]) for r in dom.rows("segments")}
    assert segments == summary["segments"]
    grid = dom.tables["rfm"]
    assert grid[0] == ["", "F 1", "F 2", "F 3", "F 4", "F 5"] and [r[0] for r in grid[1:]] == [
        f"R {r}" for r in range(5, 0, -1)
    ]
    cells = sum(int(c.split()[0]) for row in grid[1:] for c in row[1:] if c)
    assert cells == summary["buyers"]

    # valued customers at risk: newest first, bounded, each row the customer's profile
    at_risk = dom.rows("at-risk")
    links = dom.links["at-risk"][1:]
    count = dom.ids["at-risk-count"]
    matched = int(count.split()[0])
    assert len(at_risk) == ROWS < matched and f"showing {ROWS} (at most {ROWS}" in count
    # the summary says how many the lists hold (found by an outside run: its risk rows, every
    # buyer in a risk stage, were read as "valued customers" and did not match the page)
    assert summary["at_risk_listed"] == matched
    times = [parse_ts_ms(r["alerted at"]) for r in at_risk if r["alerted at"] != "—"]
    assert times == sorted(times, reverse=True)
    for row, href in zip(at_risk, links, strict=True):
        cid = row["customer"]
        assert href == ["/profile/" + urllib.parse.quote(cid, safe="")]
        profile = cluster.profile(cid)
        assert profile is not None
        churn = profile["churn"]
        assert row["risk stage"] == (churn["risk_stage"] or "—")
        assert row["reason"] == ((churn["alert"] or {}).get("reason") or "—")
        assert row["alerted at"] == ((churn["alert"] or {}).get("at") or "—")
        assert number(row["days silent"]) == churn["days_silent"]
        assert number(row["usual interval (days)"]) == churn["usual_interval_days"]
        assert int(row["purchases"]) == profile["frequency"]
        home = min(profile["stores"].items(), key=lambda kv: (-kv[1], kv[0]))[0] if profile["stores"] else "—"
        assert row["home store"] == home

    # the store filter: only that store's customers; its option says how many there are
    options = {value: label for value, _, label in dom.options if value}
    assert EVIL_STORE in options
    busiest = max(
        (v for v in options if v != EVIL_STORE), key=lambda v: int(options[v].rsplit("(", 1)[1][:-1])
    )
    expected = int(options[busiest].rsplit("(", 1)[1][:-1])
    filtered = see(
        cluster, "/page?" + urllib.parse.urlencode({"store": busiest}), "page-store-filter.png", 3600
    )
    rows = filtered.rows("at-risk")
    assert rows and {r["home store"] for r in rows} == {busiest}
    assert len(rows) == min(ROWS, expected) and int(filtered.ids["at-risk-count"].split()[0]) == expected
    assert [value for value, selected, _ in filtered.options if selected] == [busiest]

    # the customer whose id and store are markup: a row with the text, a working profile link
    evil = see(cluster, "/page?" + urllib.parse.urlencode({"store": EVIL_STORE}))
    assert not {"script", "i"} & evil.tags
    (row,) = evil.rows("at-risk")
    assert (row["customer"], row["home store"], row["risk stage"]) == (EVIL_ID, EVIL_STORE, "lost")
    (href,) = evil.links["at-risk"][1]
    with urllib.request.urlopen(cluster.url() + href, timeout=30) as resp:
        assert json.loads(resp.read())["customer_id"] == EVIL_ID

    # recent triggers: the triggers topic's newest records (by trigger time, then id)
    topic = {t["trigger_id"]: t for t in cluster.read_topic("triggers")}
    newest = sorted(topic.values(), key=lambda t: (parse_ts_ms(t["ts"]), t["trigger_id"]), reverse=True)
    shown = dom.rows("triggers")
    assert len(shown) == min(50, len(newest)) > 0
    for row, t in zip(shown, newest, strict=False):
        assert (row["trigger id"], row["type"], row["customer"], row["reason"]) == (
            t["trigger_id"],
            t["type"],
            t["customer_id"],
            t["reason"],
        )
        assert parse_ts_ms(row["at"]) == parse_ts_ms(t["ts"])
    # suppressions: each one is in that customer's remembered gate decisions
    for row in dom.rows("suppressions")[:10]:
        decisions = cluster.profile(row["customer"])["notifications"]["recent"]  # type: ignore[index]
        assert any(
            (d["at"], d["decision"], d["sku"]) == (row["at"], row["why not"], row["sku"]) for d in decisions
        ), (row, decisions)

    # store funnel and uplift: the worker's JSON when this build has them, else a note
    for section, path in (("store-funnel", "/store-funnel"), ("uplift", "/uplift")):
        status, doc = optional_json(cluster.url() + path)
        if status == 404:
            assert "not available" in dom.ids[f"{section}-missing"]
        else:
            assert status == 200
            assert len(dom.tables.get(section, [[]])) - 1 == len(doc["rows"]), section


def test_with_two_workers_each_page_shows_its_own_partitions(cluster: Cluster) -> None:
    data = cluster.tmp / "data"
    cluster.run("generate", "--customers", "300", "--seed", "4", "--out", str(data))
    cluster.start_worker(0)
    cluster.start_worker(1)
    cluster.run("replay", str(data), "--quiet")
    cluster.wait(timeout=300, settle_s=3)
    held: list[set[int]] = []
    everyone = 0
    for index in (0, 1):
        status, summary = cluster.get("/summary", index)
        assert status == 200
        url = cluster.url(index) + "/"
        dom = Dom(chromium("--dump-dom", url))
        scope = dom.ids["scope"]
        partitions = scope.split("holds partitions ", 1)[1].split(" of 4", 1)[0]
        held.append({int(p) for p in partitions.split(", ")})
        funnel = dom.rows("funnel")
        risk = dom.rows("risk-stages")
        shown = sum(int(r["now"]) for r in funnel) + sum(int(r["customers"]) for r in risk)
        assert shown == sum(summary["stages"].values()) > 0, index
        assert {r["segment"]: int(r["buyers"]) for r in dom.rows("segments")} == summary["segments"]
        everyone += shown
    assert held[0] and held[1] and not held[0] & held[1] and held[0] | held[1] == {0, 1, 2, 3}
    expected = json.loads((data / "labels.json").read_text())["customers"]
    assert everyone >= expected  # every customer on one of the two pages (plus anonymous ids)


def test_chromium_is_installed_by_make_system_deps() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("system-deps:", 1)[1].split("\n\n", 1)[0]
    assert "chromium" in target
    assert CHROMIUM is not None, "chromium missing: make system-deps"
