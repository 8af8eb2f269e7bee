"""schemas/json/*.schema.json are generated from the models, current, and usable by any
producer: generated events validate, and typical mistakes are rejected."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from schemas import export
from synthetic import generate

DIR = Path(export.__file__).parent / "json"


def schema(topic: str) -> dict:
    return json.loads((DIR / f"{topic}.schema.json").read_text())


def test_files_are_up_to_date_with_the_models() -> None:
    assert export.main(["--check"]) == 0, "run: python -m schemas.export"


def test_every_topic_has_a_schema() -> None:
    names = {p.name.removesuffix(".schema.json") for p in DIR.glob("*.schema.json")}
    assert {
        "purchases",
        "touchpoints",
        "stock-arrivals",
        "customer-updates",
        "lifecycle-changes",
        "dead-letters",
    } <= names


def test_generated_events_validate_against_the_published_schemas() -> None:
    data = generate(40, seed=2)
    for topic, rows in (
        ("purchases", data.purchases),
        ("touchpoints", data.touchpoints),
        ("customer-updates", data.customer_updates),
        ("stock-arrivals", data.stock_arrivals),
    ):
        validator = jsonschema.Draft202012Validator(schema(topic))
        for row in rows[:300]:
            errors = list(validator.iter_errors(row))
            assert not errors, (topic, row, errors[0].message)


@pytest.mark.parametrize(
    "bad",
    [
        {"customer_id": "c1", "ts": 1793523600000, "amount": 1, "currency": "EUR"},  # no event_id
        {"event_id": "e", "customer_id": "c1", "ts": 1793523600000, "amount": -1, "currency": "EUR"},
        {"event_id": "e", "customer_id": "c1", "ts": 1793523600000, "amount": 1, "currency": "eur"},
        {
            "event_id": "e",
            "customer_id": "c1",
            "ts": 1793523600000,
            "amount": 1,
            "currency": "EUR",
            "items": [{"sku": "s"}],
        },
    ],
)
def test_schema_rejects_typical_mistakes(bad: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema("purchases"))
