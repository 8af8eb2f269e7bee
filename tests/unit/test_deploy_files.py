"""deploy/: compose, Kubernetes, Prometheus and Grafana files, checked without a container engine.

No Docker engine runs where these tests run, so the files are verified by parsing them, by
cross-checking them against ``agents.settings.Settings``, by running the topic-creation script
against a stub ``kafka-topics.sh``, by running the image's health check against a local HTTP
server, and with ``promtool`` (required: ``make test`` installs Debian's ``prometheus`` package).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.cli import all_topics
from agents.metrics import Metrics
from agents.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "patronage.json"
TOPICS_SCRIPT = K8S / "create-topics.sh"
APP_SOURCES = sorted((ROOT / "agents").glob("*.py"))

# the brief's topic list; the worker's own list (agents.app) must agree with it
EXPECTED_INPUTS = ("purchases", "touchpoints", "stock-arrivals", "customer-updates")
EXPECTED_OUTPUTS = ("triggers", "lifecycle-changes", "dead-letters")

README = (ROOT / "README.md").read_text()
# Labels every Prometheus series has, or that histogram_quantile needs.
TARGET_LABELS = {"instance", "job", "le"}
# Unbounded (per-customer or per-event) labels must never appear in metrics or queries.
UNBOUNDED_LABEL = re.compile(
    r"\b(customer_id|customer|anon|anonymous_id|event_id|purchase_id|touch_id|change_id|email|key)\b"
)

PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "absent", "and", "or",
    "unless", "on", "ignoring", "max", "min", "avg", "count", "deriv", "le", "topic", "stage",
    "to_stage", "instance", "job", "bool", "offset", "outcome", "kind", "topk", "type", "reason",
    "decision", "alerted", "segment", "tier", "store", "r", "f",
}  # fmt: skip


def app_pages() -> set[str]:
    """Paths the worker registers with ``@app.page(...)`` (aiohttp matches them exactly)."""
    pages = set()
    for source in APP_SOURCES:
        pages |= set(re.findall(r"""\.page\(\s*["']([^"']+)["']""", source.read_text()))
    return pages


def app_page(name: str) -> str:
    """The worker's path for ``name`` (``healthz``, ``metrics``), trailing slash included (the
    form deploy files use; the worker also answers without it)."""
    matches = {p for p in app_pages() if p.strip("/") == name}
    assert f"/{name}/" in matches, f"expected @app.page('/{name}/') in agents/, found {matches}"
    assert matches <= {f"/{name}/", f"/{name}"}, matches
    return f"/{name}/"


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names of everything the worker's /metrics can export."""
    registry = Metrics().registry
    out = {
        name: set(getattr(collector, "_labelnames", ()))
        for name, collector in registry._names_to_collectors.items()
    }
    for family in registry.collect():  # collectors without describe() (process, platform)
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(set(sample.labels) - {"le"})
    return out


def check_query(expr: str, where: str) -> None:
    """Known metrics only; aggregation labels exist on them; no unbounded label."""
    assert not UNBOUNDED_LABEL.search(expr), f"{where}: unbounded label in {expr}"
    series = exported_series()
    names = metric_names(expr)
    assert names <= set(series) | {"up"}, f"{where}: metric the worker does not export in {expr}"
    for name in names - {"up"}:
        assert documented(name), f"{where}: {name} is not in README's Metrics table"
    labels = set(TARGET_LABELS)
    for name in names - {"up"}:
        assert name in series, f"{where}: {name} is not exported by agents.metrics.Metrics"
        labels |= series[name]
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        used = {label.strip() for label in group.split(",") if label.strip()}
        assert used <= labels, f"{where}: labels {sorted(used - labels)} not on the metrics of {expr}"


def documented(name: str) -> bool:
    """``name`` (a sample name) is in the README's Metrics section (histograms by their
    base name, the process collector as ``process_*``)."""
    section = README.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return (
        f"`{base}`" in section
        or f"`{name}`" in section
        or (name.startswith("process_") and "`process_*`" in section)
    )


def settings_env_names() -> set[str]:
    return {"PATRONAGE_" + name.upper() for name in Settings.model_fields}


# secrets come from a Kubernetes Secret (deployment env), never from the ConfigMap
SECRET_ENV = {"PATRONAGE_REDIS_PASSWORD", "PATRONAGE_KAFKA_SASL_PASSWORD", "PATRONAGE_WEB_TOKEN"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as a worker started with ``env`` (and nothing else) would build them."""
    for name in list(os.environ):
        if name.upper().startswith("PATRONAGE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install it (Debian: apt-get install -y prometheus; "
            "`make test` does this) so deploy/prometheus and the dashboard queries are checked"
        )
    return path


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are not functions, keywords or label names."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_matchers)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {n for n in names if n not in PROMQL_WORDS}


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def worker_env(services: dict[str, Any]) -> dict[str, str]:
    return services["worker"]["environment"]


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    assert {"kafka", "topics", "redis", "worker", "prometheus", "grafana"} <= set(services)


def test_compose_kafka_is_single_kraft_broker_reachable_as_kafka_9092(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    protocol_map = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listeners <= set(protocol_map)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"  # single broker
    assert "zookeeper" not in json.dumps(kafka).lower()
    assert "healthcheck" in kafka


def test_compose_start_order_and_healthchecks(services: dict[str, Any]) -> None:
    for name in ("kafka", "redis", "worker", "prometheus", "grafana"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "topics": {"condition": "service_completed_successfully"},
    }
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["redis"]["image"].startswith("redis:7")


def test_compose_worker_is_built_from_deploy_dockerfile_with_two_replicas(services: dict[str, Any]) -> None:
    worker = services["worker"]
    context = (DEPLOY / worker["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / worker["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert worker["deploy"]["replicas"] >= 2
    assert "container_name" not in worker  # replicas need generated names
    assert worker.get("command", ["worker"]) == ["worker"]


def test_compose_worker_env_is_exactly_the_settings_fields(worker_env: dict[str, str]) -> None:
    names = set(worker_env)
    assert all(name.startswith("PATRONAGE_") for name in names), names
    unknown = names - settings_env_names()
    assert not unknown, f"not fields of agents.settings.Settings: {sorted(unknown)}"
    missing = settings_env_names() - names
    assert not missing, f"set these explicitly in deploy/compose.yaml (x-patronage-env): {sorted(missing)}"
    assert all(isinstance(value, str) for value in worker_env.values()), "quote every env value"


def test_compose_worker_env_is_valid_and_wired_to_the_services(
    worker_env: dict[str, str], services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(worker_env, monkeypatch)
    assert settings.bootstrap_servers == ["kafka:9092"]
    assert settings.redis_url.startswith("redis://redis:")
    assert settings.web_host == "0.0.0.0"  # reachable by Prometheus and the health check
    assert settings.replication_factor == 1  # single broker
    assert f"{settings.web_port}" in [str(p).split(":")[-1] for p in services["worker"]["ports"]]


def test_compose_topics_service_shares_the_worker_env_and_mounts_the_script(
    services: dict[str, Any], worker_env: dict[str, str]
) -> None:
    topics = services["topics"]
    assert topics["image"] == services["kafka"]["image"]  # kafka-topics.sh of the same version
    assert topics["environment"] == worker_env
    mounts = {m.split(":")[1]: m.split(":")[0] for m in topics["volumes"]}
    script_in_container = next(arg for arg in topics["entrypoint"] if arg.endswith(".sh"))
    assert (DEPLOY / mounts[script_in_container]).resolve() == TOPICS_SCRIPT
    assert topics.get("restart") == "no"


def test_compose_bind_mounts_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


# --------------------------------------------------------------------------- topic creation


STUB = """#!/bin/sh
# stand-in for kafka-topics.sh: logs its arguments; --describe reports STUB_PARTITIONS, or
# STUB_MISMATCH_PARTITIONS for the topic named in STUB_MISMATCH
printf '%s\\n' "$*" >> "$STUB_LOG"
topic=; prev=
for arg in "$@"; do [ "$prev" = --topic ] && topic=$arg; prev=$arg; done
case " $* " in
  *" --describe "*)
    parts=$STUB_PARTITIONS
    [ "$topic" = "${STUB_MISMATCH:-}" ] && parts=$STUB_MISMATCH_PARTITIONS
    printf 'Topic: %s\\tTopicId: x\\tPartitionCount: %s\\tReplicationFactor: 1\\tConfigs: \\n' "$topic" "$parts" ;;
esac
"""


def run_topics_script(
    tmp_path: Path, env: dict[str, str], *, mismatch: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    full_env = {
        "PATH": os.environ["PATH"],
        **env,
        "KAFKA_TOPICS": str(stub),
        "KAFKA_WAIT_S": "5",
        "STUB_LOG": str(log),
        "STUB_PARTITIONS": env["PATRONAGE_PARTITIONS"],
        "STUB_MISMATCH": mismatch,
        "STUB_MISMATCH_PARTITIONS": str(int(env["PATRONAGE_PARTITIONS"]) + 3),
    }
    result = run(["sh", str(TOPICS_SCRIPT)], env=full_env)
    return result, [shlex.split(line) for line in log.read_text().splitlines()]


def created_topics(calls: list[list[str]]) -> dict[str, dict[str, str]]:
    """``kafka-topics.sh --create`` calls by topic: option -> value ("" for a flag)."""
    created = {}
    for call in calls:
        if "--create" in call:
            opts = {}
            for i, token in enumerate(call):
                if token.startswith("--"):
                    value = call[i + 1] if i + 1 < len(call) else ""
                    opts[token] = "" if value.startswith("--") else value
            created[opts["--topic"]] = opts
    return created


def app_topics(settings: Settings) -> tuple[set[str], set[str]]:
    """(every topic the worker needs, the co-partitioned ones), as the worker computes them."""
    every, co, _ = all_topics(settings)
    assert {settings.topic(t) for t in EXPECTED_INPUTS + EXPECTED_OUTPUTS} <= set(every)
    assert settings.topic("identity") in every
    return set(every), set(co)


def test_topics_script_creates_every_topic_the_worker_needs(
    tmp_path: Path, services: dict[str, Any], worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(worker_env, monkeypatch)
    every, _ = app_topics(settings)
    result, calls = run_topics_script(tmp_path, services["topics"]["environment"])
    assert result.returncode == 0, result.stderr
    created = created_topics(calls)
    assert set(created) == every
    for topic, opts in created.items():
        assert opts["--partitions"] == str(settings.partitions) == worker_env["PATRONAGE_PARTITIONS"], topic
        assert opts["--replication-factor"] == str(settings.replication_factor), topic
        assert opts["--bootstrap-server"] == "kafka:9092"
        assert "--if-not-exists" in opts, topic  # idempotent: compose re-runs it on every `up`
    compacted = set(all_topics(settings)[2])
    assert compacted == {settings.topic(t) for t in ("customers-changelog", "churn-model", "store-regions")}
    for topic in compacted:
        assert created[topic]["--config"] == "cleanup.policy=compact"
    assert all("--config" not in opts for topic, opts in created.items() if topic not in compacted)


def test_topics_script_honours_prefix_app_id_and_several_brokers(
    tmp_path: Path, worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        **worker_env,
        "PATRONAGE_TOPIC_PREFIX": "acme.",
        "PATRONAGE_APP_ID": "crm",
        "PATRONAGE_PARTITIONS": "12",
        "PATRONAGE_BROKER": "kafka://b1:9092;kafka://b2:9092",
    }
    settings = settings_from(env, monkeypatch)
    result, calls = run_topics_script(tmp_path, env)
    assert result.returncode == 0, result.stderr
    created = created_topics(calls)
    assert set(created) == app_topics(settings)[0]
    assert "acme.crm-identity" in created
    assert {opts["--partitions"] for opts in created.values()} == {"12"}
    assert {opts["--bootstrap-server"] for opts in created.values()} == {"b1:9092,b2:9092"}


def test_topics_script_fails_only_when_a_co_partitioned_topic_has_another_count(
    tmp_path: Path, worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    every, co = app_topics(settings_from(worker_env, monkeypatch))
    assert co < every
    for topic in sorted(every):
        result, _ = run_topics_script(tmp_path, worker_env, mismatch=topic)
        if topic in co:
            assert result.returncode != 0, topic
            assert f"error: topic {topic} has" in result.stderr
        else:
            assert result.returncode == 0, (topic, result.stderr)
            assert f"warning: topic {topic} has" in result.stderr


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, rest in instructions:
        by_keyword.setdefault(keyword, []).append(rest)
    assert by_keyword["FROM"] == ["python:3.11-slim"]
    assert any("pip install --no-cache-dir ." in r for r in by_keyword["RUN"])
    user = by_keyword["USER"][-1].split(":")[0]
    assert user not in {"root", "0"}
    assert json.loads(by_keyword["ENTRYPOINT"][-1]) == ["patronage"]
    assert json.loads(by_keyword["CMD"][-1]) == ["worker"]
    assert by_keyword["EXPOSE"] == ["6066"]
    assert f"%s{app_page('healthz')}'" in by_keyword["HEALTHCHECK"][-1]
    # USER comes after the install, so pip ran as root and the worker does not
    keywords = [k for k, _ in instructions]
    assert keywords.index("USER") > max(i for i, (k, r) in enumerate(instructions) if "pip install" in r)


def dockerfile_healthcheck_cmd() -> list[str]:
    healthcheck = next(rest for keyword, rest in dockerfile_instructions() if keyword == "HEALTHCHECK")
    return json.loads(healthcheck.split(" CMD ", 1)[1])


class _Health(BaseHTTPRequestHandler):
    status = 200
    path_served = "/healthz/"

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == self.path_served else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_image_healthcheck_probes_healthz(
    health_server: HTTPServer, monkeypatch: pytest.MonkeyPatch, status: int, healthy: bool
) -> None:
    monkeypatch.setattr(_Health, "status", status)
    monkeypatch.setattr(_Health, "path_served", app_page("healthz"))
    cmd = dockerfile_healthcheck_cmd()
    assert cmd[0] == "python"
    env = {**os.environ, "PATRONAGE_WEB_PORT": str(health_server.server_address[1])}
    result = run([sys.executable, *cmd[1:]], env=env)
    assert (result.returncode == 0) is healthy, result.stderr


def test_compose_worker_healthcheck_is_the_image_healthcheck(services: dict[str, Any]) -> None:
    assert services["worker"]["healthcheck"]["test"] == ["CMD", *dockerfile_healthcheck_cmd()]


def test_build_context_allow_list_covers_the_packages() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    allowed = {
        line[1:]
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert "pyproject.toml" in allowed
    for pattern in includes:
        assert pattern.rstrip("*") in allowed, f"deploy/Dockerfile.dockerignore must allow {pattern}"


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_every_worker(services: dict[str, Any], worker_env: dict[str, str]) -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "patronage")
    assert job["metrics_path"] == app_page("metrics")
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    assert str(sd["port"]) == worker_env["PATRONAGE_WEB_PORT"]
    mounts = dict(m.split(":")[:2] for m in services["prometheus"]["volumes"] if m.startswith("."))
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    rules_dir = Path(mounts["./prometheus/prometheus.yml"]).parent
    for rule_file in config["rule_files"]:
        assert mounts[f"./prometheus/{rule_file}"] == str(rules_dir / rule_file)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def test_alerts_cover_down_lag_and_dead_letters_with_bounded_labels() -> None:
    rules = alert_rules()
    exprs = " ".join(rule["expr"] for rule in rules)
    for metric in ("up", "patronage_consumer_lag", "patronage_dead_letters_total"):
        assert re.search(rf"\b{metric}\b", exprs), metric
    for rule in rules:
        check_query(rule["expr"], rule["alert"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_promtool_check_config() -> None:
    result = run([promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = run([promtool(), "check", "rules", str(PROMETHEUS / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    result = run([promtool(), "test", "rules", str(PROMETHEUS / "alerts_test.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    firing = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= firing, f"alerts without a unit test that makes them fire: {sorted(names - firing)}"
    for required in ("PatronageWorkerDown", "PatronageConsumerLagHigh", "PatronageDeadLetterRateHigh",
                     "PatronageValuedCustomersLapsingSpike"):  # fmt: skip
        assert required in names


# --------------------------------------------------------------------------- Grafana


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


# Grafana's variables in panel queries, and the concrete values the checks use for them
GRAFANA_VARIABLES = ("$__rate_interval", "$__interval", "$interval", "$job")


def concrete(expr: str, rate_interval: str = "1m", job: str = "patronage") -> str:
    """A panel query as Grafana sends it: its variables replaced by concrete values."""
    out = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    out = out.replace("$interval", rate_interval).replace("$job", job)
    assert "$" not in out, f"unknown Grafana variable in {expr}"
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [concrete(target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_panels_have_promql_with_bounded_labels(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target.get("expr", "")
            assert expr.strip(), f"panel {panel['title']!r} has an empty query"
            check_query(expr, panel["title"])
    text = DASHBOARD.read_text().lower()
    for placeholder in ("todo", "fixme", "changeme", "placeholder", "${ds_"):
        assert placeholder not in text


def test_dashboard_covers_the_required_views(dashboard: dict[str, Any]) -> None:
    exprs = dashboard_exprs(dashboard)
    required = [
        "sum by (topic) (rate(patronage_events_total[1m]))",
        "sum by (stage) (rate(patronage_dead_letters_total[1m]))",
        "sum by (topic) (patronage_consumer_lag)",
        "histogram_quantile(0.99, sum by (le) (rate(patronage_batch_seconds_bucket[1m])))",
        "sum by (to_stage) (rate(patronage_lifecycle_changes_total[1m]))",
        "sum(patronage_customers)",
    ]
    for expr in required:
        assert expr in exprs, expr
    # the operator's views: each metric appears in some panel
    used = set().union(*(metric_names(e) for e in exprs))
    for metric in (
        "patronage_event_lag_seconds_bucket",  # latency percentiles
        "patronage_trigger_latency_seconds_bucket",
        "patronage_customers_by_stage",  # lifecycle funnel
        "patronage_rfm_customers",  # RFM grid
        "patronage_segment_customers",
        "patronage_tier_customers",
        "patronage_customers_at_risk",  # churn: valued at risk
        "patronage_triggers_total",  # trigger rates, churn alerts
        "patronage_triggers_suppressed_total",
        "patronage_dead_letters_total",
        "patronage_store_visits",  # store funnel
        "patronage_store_visitors",
        "patronage_store_buyers",
        "patronage_store_orders",
        "patronage_store_revenue",
        "patronage_tick_seconds_bucket",
        "patronage_deadlines_due_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert metric in used, metric
    assert any("histogram_quantile(0.99" in e and "patronage_event_lag_seconds_bucket" in e for e in exprs)


def test_dashboard_queries_parse_with_promtool(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(dashboard_exprs(dashboard))
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_matches_compose_and_dashboard(
    services: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    [datasource] = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    uids = {target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel["targets"]} | {
        panel["datasource"]["uid"] for panel in dashboard["panels"]
    }
    assert uids == {datasource["uid"]}
    [provider] = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    mounts = dict(m.split(":")[:2] for m in services["grafana"]["volumes"] if m.startswith("."))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# --------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    docs: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in load_yaml_docs(K8S / resource):
            docs[doc["kind"]] = doc
    return docs


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    for generator in kustomization.get("configMapGenerator", []):
        for file in generator["files"]:
            assert (K8S / file.split("=")[-1]).is_file()


def test_k8s_manifests_kinds_and_no_namespace(k8s: dict[str, dict[str, Any]]) -> None:
    assert set(k8s) == {"ConfigMap", "Deployment", "Service", "Job"}
    for doc in k8s.values():
        assert doc["apiVersion"] and doc["metadata"]["name"]
        assert "namespace" not in doc["metadata"]


def test_k8s_configmap_is_exactly_the_settings_fields(
    k8s: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = k8s["ConfigMap"]["data"]
    assert set(data) == settings_env_names() - SECRET_ENV
    env = {e["name"]: e for e in k8s["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in SECRET_ENV:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "patronage-secrets" and ref["optional"] is True
    assert all(isinstance(value, str) for value in data.values())
    settings = settings_from(data, monkeypatch)
    assert settings.web_host == "0.0.0.0"
    assert settings.web_port == 6066


def test_k8s_deployment(k8s: dict[str, dict[str, Any]]) -> None:
    deployment = k8s["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "6066"
    assert annotations["prometheus.io/path"] == app_page("metrics")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    [container] = pod["spec"]["containers"]
    assert container["args"] == ["worker"]
    assert container["envFrom"] == [{"configMapRef": {"name": k8s["ConfigMap"]["metadata"]["name"]}}]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 6066}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == app_page("healthz"), probe
        assert get["port"] in ("http", 6066), probe
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert k8s["ConfigMap"]["data"]["PATRONAGE_DATA_DIR"] in mounts  # writable with a read-only root


def test_k8s_service(k8s: dict[str, dict[str, Any]]) -> None:
    service = k8s["Service"]
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["port"] == 6066
    assert port["targetPort"] in ("http", 6066)


def test_k8s_topics_job(k8s: dict[str, dict[str, Any]]) -> None:
    job = k8s["Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    [container] = pod["containers"]
    assert container["image"].startswith("apache/kafka:")
    assert container["envFrom"] == [{"configMapRef": {"name": k8s["ConfigMap"]["metadata"]["name"]}}]
    script = next(arg for arg in container["command"] if arg.endswith(".sh"))
    [mount] = container["volumeMounts"]
    assert script == f"{mount['mountPath']}/{TOPICS_SCRIPT.name}"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    generators = load_yaml(K8S / "kustomization.yaml")["configMapGenerator"]
    generator = next(g for g in generators if g["name"] == volume["configMap"]["name"])
    assert TOPICS_SCRIPT.name in generator["files"]


def test_k8s_topics_job_env_creates_every_topic(
    tmp_path: Path, k8s: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = k8s["ConfigMap"]["data"]
    settings = settings_from(data, monkeypatch)
    result, calls = run_topics_script(tmp_path, data)
    assert result.returncode == 0, result.stderr
    created = created_topics(calls)
    assert set(created) == app_topics(settings)[0]
    assert {opts["--partitions"] for opts in created.values()} == {data["PATRONAGE_PARTITIONS"]}


def test_kustomize_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: `kubectl kustomize deploy/k8s` not run (manifests parsed above)")
    result = run([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "Job", "Service"]
