"""The CLI's own behaviour without a broker: one clear line and a fast non-zero exit when
the broker is down, settings errors that name the variable to fix, readable tail lines."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.cli import _readable_id, _tail_line, _tail_record
from agents.localstack import free_port

BIN = Path(sys.executable).parent / "patronage"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("PATRONAGE_") and k != "KAFKA_PORT"}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60, env={**clean, **env})


@pytest.mark.parametrize("args", [("wait", "--timeout", "30"), ("tail", "triggers"), ("topics", "create")])
def test_a_down_broker_is_one_line_and_a_fast_exit_2(args: tuple[str, ...]) -> None:
    port = str(free_port())  # nothing listens there
    started = time.monotonic()
    proc = run(*args, KAFKA_PORT=port)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in proc.stderr
    assert took < 20, f"{args} took {took:.1f}s to say the broker is down"


def test_kafka_and_redis_ports_move_every_commands_default() -> None:
    proc = run("settings", KAFKA_PORT="19123", REDIS_PORT="16123")
    assert "PATRONAGE_BROKER=kafka://127.0.0.1:19123" in proc.stdout
    assert "PATRONAGE_REDIS_URL=redis://127.0.0.1:16123/0" in proc.stdout
    assert "KAFKA_PORT=19123" in proc.stdout  # the local stack's variables are listed too
    explicit = run("settings", KAFKA_PORT="19123", PATRONAGE_BROKER="kafka://10.0.0.1:9092")
    assert "PATRONAGE_BROKER=kafka://10.0.0.1:9092" in explicit.stdout


def test_invalid_settings_name_the_environment_variable() -> None:
    proc = run("settings", PATRONAGE_GATE_HOLDOUT="x", PATRONAGE_PARTITIONS="many")
    assert proc.returncode == 2
    assert "PATRONAGE_GATE_HOLDOUT: expected name=value pairs" in proc.stderr
    assert "PATRONAGE_PARTITIONS:" in proc.stderr
    assert "gate_holdout" not in proc.stderr


def test_piped_output_is_never_wrapped() -> None:
    proc = run("settings")
    assert all(
        line.startswith(("PATRONAGE_", "KAFKA_PORT", "REDIS_PORT")) for line in proc.stdout.splitlines()
    )


def test_tail_lines_show_times_not_epochs() -> None:
    assert _readable_id("silence-since:1785062846000") == "silence since 2026-07-26T10:47:26.000Z"
    assert _readable_id("p-17") == "p-17"
    line = _tail_line(
        "triggers",
        {"type": "churn_risk", "reason": "lapse", "customer_id": "c", "recipient_kind": "store",
         "recipient_id": "s1", "ts": "2026-01-01T00:00:00.000Z", "details": {"p_alive": None}},
    )  # fmt: skip
    assert "P(alive) n/a" in line
    dead = _tail_line(
        "dead-letters", {"reason": "ts_no_offset", "error": "x", "topic": "purchases", "offset": None}
    )
    assert "None" not in dead


@pytest.mark.parametrize("command", ["profile", "summary", "wait", "replay", "tail", "why"])
def test_help_does_not_ask_flags_for_a_value(command: str) -> None:
    proc = run(command, "--help", COLUMNS="120")
    assert proc.returncode == 0 and "--help" in proc.stdout, proc.stderr
    assert "<bool>" not in proc.stdout, proc.stdout


def test_profile_rows_show_p_alive_and_interests_for_people() -> None:
    from agents.cli import profile_rows

    doc = {
        "customer_id": "c1",
        "churn": {"risk_stage": "lapsed", "p_alive": 0.3198},
        "interests": [
            {"category": "frozen", "score": 0.7259, "interested": True},
            {"category": "toys", "score": 0.0837, "interested": False},
        ],
        "stores": {"s11": 2},
        "rfm": None,
    }
    rows = dict(profile_rows(doc))
    assert rows["churn.p_alive"] == "0.3198"
    assert rows["churn.risk_stage"] == "lapsed"
    assert rows["interests"] == "frozen 0.73*, toys 0.08  (* = interested)"
    assert rows["stores"] == '{"s11": 2}'
    assert rows["rfm"] == "None"
    assert dict(profile_rows({"interests": []}))["interests"] == "none"


@pytest.mark.parametrize("name", ["purchases.csv", "purchases.jsonl"])
def test_replay_progress_reaches_its_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The bar of `patronage replay` ends at N/N (a CSV's header once made it 4/5)."""
    import re

    from typer.testing import CliRunner

    import agents.cli as cli
    import agents.replay as replay_mod

    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text(
            "event_id,customer_id,ts,amount,currency\n"
            + "".join(f"p{i},c{i},1793523600000,5,EUR\n" for i in range(4))
            + "p9,,1793523600000,5,EUR\n"  # no key: a dead letter, counted too
        )
    else:
        path.write_text(
            "".join(f'{{"event_id":"p{i}","customer_id":"c{i}","ts":1793523600000}}\n' for i in range(4))
            + "\n{oops\n"
        )

    async def replay_without_a_broker(
        settings: object, sources: list, *, fmt: str | None, progress: Callable[[int], None], **_: object
    ) -> replay_mod.ReplayResult:
        result = replay_mod.ReplayResult()
        for source, _topic in sources:
            for _n, _raw, obj, error in replay_mod.read_lines(source, replay_mod.detect_format(source, fmt)):
                if obj is None or error is not None or not obj.get("customer_id"):
                    result.dead_letters += 1
                else:
                    result.sent += 1
                progress(result.sent + result.dead_letters)
        return result

    monkeypatch.setattr(replay_mod, "replay", replay_without_a_broker)
    monkeypatch.setattr(cli, "ensure_all_topics", lambda settings: {})
    proc = CliRunner().invoke(cli.app, ["replay", str(path), "--topic", "purchases"])
    assert proc.exit_code == 0, proc.output
    assert re.search(r"replay \S+ .* 5/5 ", proc.output), proc.output
    assert "4/5" not in proc.output and "5/6" not in proc.output


CHURN = {
    "type": "churn_risk", "customer_id": "c000152", "recipient_id": "crm", "recipient_kind": "team",
    "ts": "2025-02-06T13:39:58.000Z", "reason": "lapse", "episode": 0,
    "details": {"days_silent": 90.0, "usual_interval_days": 30.0, "purchases": 1, "lifetime_value": 146.94,
                "currency": "EUR", "tier": "core", "milestone": None, "risk_stage": "at_risk",
                "p_alive": 0.31, "experiment": "default", "segment": "hibernating"},
    "deliver": False, "holdout": True,
}  # fmt: skip
WON_BACK = {
    "type": "won_back", "customer_id": "c000024", "recipient_id": "s11", "recipient_kind": "store",
    "ts": "2025-05-26T14:53:04.000Z", "reason": "came_back", "episode": 0,
    "details": {"purchase_event_id": "p-1463", "purchase_at": "2025-05-26T14:53:04.000Z",
                "alerted_at": "2025-03-31T16:04:58.000Z", "alert_reason": "lapse",
                "alert_trigger_id": "9ff26d38eb6204383efbc9e30dd5907c", "days_silent": 146.0},
    "deliver": True, "holdout": False,
}  # fmt: skip
STALLED = {
    "type": "stalled_prospect", "customer_id": "c000172", "recipient_id": "s09", "recipient_kind": "store",
    "ts": "2025-06-06T13:57:02.000Z", "reason": "stalled", "episode": 0,
    "details": {"asks": {"cart": 1, "inquiry": 2}, "first_ask_at": "2025-05-08T12:12:25.000Z",
                "last_ask_at": "2025-06-06T13:57:02.000Z", "touchpoints": [], "touchpoints_total": 6},
}  # fmt: skip
NEW_STOCK = {
    "type": "new_stock_for_interest", "customer_id": "c000209", "recipient_id": "c000209",
    "recipient_kind": "customer", "ts": "2024-12-27T07:26:26.000Z", "reason": "interest", "channel": "email",
    "deliver": False, "holdout": True,
    "items": [{"sku": "BAKE-0007", "category": "bakery", "qty": 36}],
    "interest": {"category": "bakery", "score": 0.8, "spend_share": 0.8036, "occasions_in_window": 4},
    "details": {"arrivals": 1},
}  # fmt: skip


def test_each_trigger_type_shows_its_own_fields_and_no_none() -> None:
    held = _tail_line("triggers", CHURN)
    assert "churn_risk c000152 → team crm HELD OUT (control group: not delivered)" in held
    assert (
        "lapse: silent 90.0 d, usual 30.0 d; at_risk, tier core, 1 purchase, 146.94 EUR, P(alive) 0.31"
        in held
    )
    delivered = _tail_line("triggers", {**CHURN, "deliver": True, "holdout": False})
    assert "HELD OUT" not in delivered and "tier core" in delivered

    won = _tail_line("triggers", WON_BACK)
    assert "won_back c000024 → store s11  (came back: purchase p-1463 after 146.0 d silent; " in won
    assert "answers the lapse alert of 2025-03-31T16:04:58.000Z" in won
    assert "HELD OUT" in _tail_line("triggers", {**WON_BACK, "deliver": False, "holdout": True})

    stalled = _tail_line("triggers", STALLED)
    assert "stalled: 3 asks (cart 1, inquiry 2), no purchase; first 2025-05-08T12:12:25.000Z" in stalled

    details = {**WON_BACK["details"], "days_before_alert": 2.5}  # type: ignore[dict-item]
    del details["days_silent"]
    withdrawn = _tail_line(
        "triggers", {**WON_BACK, "type": "churn_risk_withdrawn", "reason": "premature", "details": details}
    )
    assert "churn_risk_withdrawn c000024 → store s11  (premature: purchase p-1463 of " in withdrawn
    assert "2.5 d before the alert, arrived late; withdraws the lapse alert of 2025-03-31" in withdrawn
    assert "None" not in withdrawn

    for line in (won, stalled):
        assert "tier" not in line and "P(alive)" not in line and "purchases" not in line, line
    for line in (held, delivered, won, stalled):
        assert "None" not in line, line

    stock = _tail_line("triggers", NEW_STOCK)
    assert (
        "new stock → customer c000209 via email HELD OUT (control group: not delivered): BAKE-0007" in stock
    )


def test_a_churn_alerts_line_says_what_the_complaint_or_experience_was() -> None:
    complaint = {"type": "review", "rating": 2, "channel": "app"}
    line = _tail_line("triggers", {**CHURN, "reason": "complaint", "details": {"complaint": complaint}})
    assert "(complaint: review rated 2 via app; P(alive) n/a (no churn model))" in line
    spoken = {"type": "complaint", "rating": None, "channel": "email"}
    assert "(complaint via email;" in _tail_line(
        "triggers", {**CHURN, "reason": "complaint", "details": {"complaint": spoken}}
    )
    drop = {"score": 3.1, "previous_score": 3.9, "peak_score": 4.5}
    line = _tail_line("triggers", {**CHURN, "reason": "experience", "details": {"experience": drop}})
    assert "(experience: score 3.1 (was 3.9, best 4.5);" in line


@pytest.mark.parametrize(
    ("topic", "value"),
    [
        ("triggers", WON_BACK),
        ("lifecycle-changes", {"ts": "2026-01-01T00:00:00.000Z", "customer_id": "c1", "from_stage": "visitor",
                               "to_stage": "customer", "cause": {"rule": "first purchase", "type": "purchase",
                                                                 "event_id": "p1"}}),
        ("dead-letters", {"reason": "invalid_json", "error": "x", "topic": "purchases", "partition": 0, "offset": 3}),
        ("purchases", {"event_id": "p1", "customer_id": "c1"}),
        ("lifecycle-changes", None),
    ],
)  # fmt: skip
def test_every_tailed_record_shows_its_partition_and_offset(topic: str, value: object) -> None:
    line = _tail_record(topic, 2, 1234, value)
    assert line.startswith("  p2@1234  "), line
    assert line == f"  p2@1234  {_tail_line(topic, value)}"


def test_a_dead_letter_names_the_record_it_is_about_with_its_partition() -> None:
    dead = {"reason": "currency_mismatch", "error": "currency: USD", "topic": "purchases", "partition": 0,
            "offset": 17}  # fmt: skip
    assert _tail_record("dead-letters", 1, 4, dead).endswith("(purchases p0@17)")
    hop = {"topic": "patronage-identity", "partition": 1, "offset": 4}
    line = _tail_record("dead-letters", 1, 5, {**dead, "via": hop})
    assert line.startswith("  p1@5  currency_mismatch: ")
    assert line.endswith("(purchases p0@17 via patronage-identity p1@4)")
    replayed = {**dead, "partition": None, "offset": None}
    assert _tail_line("dead-letters", replayed).endswith("(purchases, rejected before sending)")


def test_tail_orders_records_by_their_own_time_then_when_written() -> None:
    """Found by an outside run: the newest records came out grouped by partition (written in
    turns, each partition at its own event time), not in time order."""
    from agents.cli import _record_ms

    written = 1_800_000_000_000
    assert _record_ms({"ts": "2026-10-29T00:00:00.000Z"}, written) == 1_793_232_000_000
    assert _record_ms({"ts": 1_700_000_000_000}, written) == 1_700_000_000_000
    assert _record_ms({"no": "ts"}, written) == written
    assert _record_ms({"ts": "garbage"}, written) == written
    assert _record_ms(None, written) == written
