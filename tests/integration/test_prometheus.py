"""The dashboard and the alert rules against a real Prometheus scraping a real worker.

No Grafana server runs here, so the dashboard is checked the way Grafana would use it: a
real Prometheus (Debian's ``/usr/bin/prometheus``, scrape interval 1 s, the real alert rules
loaded) scrapes a real worker while generated data (store visits, churn, stock, a few bad
records) is replayed through the broker; then EVERY panel query of
``deploy/grafana/dashboards/patronage.json`` (Grafana variables replaced by concrete values)
and EVERY alert expression of ``deploy/prometheus/alerts.yml`` goes through Prometheus' HTTP
API and must return at least one series. The lists are read from the files, so a new panel
or rule is checked without touching this test.

Alert expressions are evaluated as Prometheus evaluates them, except that their threshold
comparisons get the ``bool`` modifier (``x > 100000`` becomes ``x > bool 100000``, 0 or 1 per
series) and ``absent(x)`` is evaluated as ``x``: a healthy worker does not fire them, so the
expression itself would return nothing - what is checked is that every metric, label and
join in it matches real series (a typo in a metric or label name returns nothing either way).

The store funnel (``GET /store-funnel``) is compared with an independent computation of the
README's definition from the replayed files, and the store gauges with its rows.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.localstack import free_port
from schemas.timestamps import HOUR_MS, parse_ts_ms
from tests.integration.conftest import Cluster
from tests.oracle import cents, ts_ms
from tests.unit.test_deploy_files import DASHBOARD, PROMETHEUS, alert_rules, concrete
from tests.unit.test_store_funnel import as_rows, funnel_truth

pytestmark = pytest.mark.integration

PROMETHEUS_BIN = "/usr/bin/prometheus"
RATE_INTERVAL = "30s"  # Grafana's $__rate_interval for a 1 s scrape interval (>= 4 scrapes)
STORE_HOURS = 72  # the store gauges over the whole funnel retention (the data's last 3 days)
BAD_PURCHASES = [  # valid JSON with a key: the worker dead-letters them with a reason code
    {"event_id": "bad1", "customer_id": "c-bad", "ts": "2026-10-01T10:00:00Z", "amount": 5, "currency": "USD",
     "items": []},
    {"event_id": "bad2", "customer_id": "c-bad", "ts": "2026-10-01T10:00:00Z", "amount": -5, "currency": "EUR",
     "items": []},
    {"event_id": "bad3", "customer_id": "c-bad", "ts": "2026-10-01T10:00:00", "amount": 5, "currency": "EUR",
     "items": []},
]  # fmt: skip


class Prometheus:
    """A real Prometheus process on a free loopback port with its own config and data dir."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.dir = tmp / "prometheus"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(PROMETHEUS / "alerts.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "patronage",
                            "metrics_path": "/metrics/",
                            "static_configs": [{"targets": [target]}],
                        }
                    ],
                }
            )
        )
        self.log = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS_BIN,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=30) as resp:
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])


@pytest.fixture
def prometheus(cluster: Cluster) -> Iterator[Prometheus]:
    assert Path(PROMETHEUS_BIN).exists(), "install Debian's prometheus package (make setup does)"
    cluster.env["PATRONAGE_METRICS_STORE_HOURS"] = str(STORE_HOURS)
    # control groups, so the uplift panels have both groups to compare
    cluster.env["PATRONAGE_CHURN_HOLDOUT"] = "0.3"
    cluster.env["PATRONAGE_GATE_HOLDOUT"] = "new_stock_for_interest=0.3"
    cluster.start_worker()
    prom = Prometheus(cluster.tmp, cluster.url().removeprefix("http://"))
    try:
        prom.start()
        yield prom
    finally:
        prom.stop()


_MATCHERS = re.compile(r"\{[^}]*\}")
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")


def as_series_query(expr: str) -> str:
    """An alert expression that returns its series whether or not the alert would fire:
    comparisons get ``bool``, ``absent(x)`` becomes ``x`` (see the module docstring)."""
    masked: list[str] = []

    def mask(m: re.Match[str]) -> str:
        masked.append(m.group(0))
        return f"\0{len(masked) - 1}\0"

    out = _MATCHERS.sub(mask, expr)  # label matchers (stage!="none") keep their operators
    out = _COMPARISON.sub(lambda m: f"{m.group(1)} bool", out)
    out = re.sub(r"\babsent\s*\(", "(", out)
    return re.sub("\0(\\d+)\0", lambda m: masked[int(m.group(1))], out)


def test_as_series_query() -> None:
    assert as_series_query('absent(up{job="patronage"} == 1)') == '(up{job="patronage"} == bool 1)'
    assert (
        as_series_query('sum by (stage) (x{stage!="none"}) > 0 and on (topic) y == 0')
        == 'sum by (stage) (x{stage!="none"}) > bool 0 and on (topic) y == bool 0'
    )


def panel_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def funnel_oracle(data: Path, since_ms: int) -> list[dict[str, Any]]:
    labels = json.loads((data / "labels.json").read_text())
    anon_to_customer = labels["anonymous_identified"]
    visits: dict[str, tuple[str, str, int]] = {}
    for line in (data / "touchpoints.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t["type"] == "visit" and t.get("store_id"):
            who = t.get("customer_id") or anon_to_customer.get(t["anonymous_id"], t["anonymous_id"])
            visits[t["event_id"]] = (who, t["store_id"], ts_ms(t["ts"]))
    bought: dict[str, tuple[str, str, int, int]] = {}
    for line in (data / "purchases.jsonl").read_text().splitlines():
        p = json.loads(line)
        if p.get("store_id"):
            bought[p["event_id"]] = (p["customer_id"], p["store_id"], ts_ms(p["ts"]), cents(p["amount"]))
    return as_rows(funnel_truth(list(visits.values()), list(bought.values()), 120 * 60_000), since_ms)


def test_every_panel_and_alert_returns_series_from_a_real_worker(
    cluster: Cluster, prometheus: Prometheus
) -> None:
    data = cluster.tmp / "data"
    cluster.run("generate", "--customers", "500", "--seed", "5", "--out", str(data))
    cluster.run("replay", str(data), "--quiet")
    cluster.replay(cluster.write("bad.jsonl", BAD_PURCHASES), "purchases")
    cluster.wait(timeout=300, settle_s=2)

    # Prometheus has scraped the finished state (the counters it holds equal the worker's)
    status, summary = cluster.get("/summary/")
    assert status == 200
    deadline = time.monotonic() + 30
    applied: float | None = None
    while time.monotonic() < deadline:
        result = prometheus.query('sum(patronage_events_total{outcome="applied"})')
        if result and applied == float(result[0]["value"][1]) > 0:
            break
        applied = float(result[0]["value"][1]) if result else None
        time.sleep(2)
    assert applied, "Prometheus never scraped the worker's counters"
    time.sleep(2)

    # the real alert rules are loaded and evaluate without errors
    groups = prometheus.api("rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    for rule in alert_rules():
        assert rule["alert"] in loaded, rule["alert"]
        assert loaded[rule["alert"]]["health"] in ("ok", "unknown"), loaded[rule["alert"]]
    firing = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert not firing & {"PatronageWorkerDown", "PatronageNoWorkers"}, firing

    empty: list[str] = []
    checked = 0
    for where, expr in panel_targets():
        query = concrete(expr, RATE_INTERVAL)
        checked += 1
        if not prometheus.query(query):
            empty.append(f"{where}: {query}")
    for rule in alert_rules():
        query = as_series_query(rule["expr"])
        checked += 1
        if not prometheus.query(query):
            empty.append(f"alert {rule['alert']}: {query}")
    print(f"{checked} panel and alert queries checked through Prometheus")
    assert not empty, "queries without series:\n" + "\n".join(empty)
    assert checked >= 40

    # no per-customer label anywhere, no _created series
    names = set(prometheus.api("label/__name__/values"))
    assert not [n for n in names if n.endswith("_created")]
    for label in ("customer_id", "customer", "anonymous_id", "event_id"):
        assert label not in set(prometheus.api("labels")), label

    # the store funnel: the definition, with and without the trailing slash; the gauges agree
    status, doc = cluster.get(f"/store-funnel/?hours={STORE_HOURS}")
    assert status == 200
    status2, doc2 = cluster.get(f"/store-funnel?hours={STORE_HOURS}")
    assert status2 == 200 and doc2 == doc
    rows = doc["rows"]
    since_ms, now_ms = parse_ts_ms(doc["since"]), parse_ts_ms(doc["as_of"])
    assert since_ms == now_ms - now_ms % HOUR_MS - (STORE_HOURS - 1) * HOUR_MS
    truth = funnel_oracle(data, since_ms)
    missing = [r for r in truth if r not in rows]
    extra = [r for r in rows if r not in truth]
    assert rows == truth, (doc["since"], doc["as_of"], summary["as_of"], missing[:5], extra[:5])
    totals = {k: sum(r[k] for r in rows) for k in ("visits", "visitors", "buyers", "orders")}
    print(f"store funnel over {STORE_HOURS} h: {len(rows)} store-hours, {totals}")
    assert totals["visits"] > 10 and totals["buyers"] > 0, rows[:5]
    hours = [parse_ts_ms(r["hour"]) for r in rows]
    assert hours == sorted(hours, reverse=True)  # newest hour first
    for measure in ("visits", "visitors", "buyers", "orders"):
        [gauge] = prometheus.query(f"sum(patronage_store_{measure})")
        assert float(gauge["value"][1]) == sum(r[measure] for r in rows), measure
    status, bad = cluster.get("/store-funnel/?hours=x")
    assert status == 400 and "hours" in bad["error"]


def test_promtool_checks_the_config_used_here_and_the_deploy_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "install Debian's prometheus package (make setup does)"
    prom = Prometheus(tmp_path, "127.0.0.1:1")
    for args in (
        ["check", "config", str(prom.config)],
        ["check", "rules", str(PROMETHEUS / "alerts.yml")],
        ["test", "rules", str(PROMETHEUS / "alerts_test.yml")],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
