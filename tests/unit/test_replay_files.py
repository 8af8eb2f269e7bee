"""Reading replay files (no broker): JSONL and CSV, and what counts as unreadable."""

from __future__ import annotations

from pathlib import Path

from agents.replay import KEY_FIELDS, _key_of, _no_key, count_records, detect_format, read_lines
from schemas.errors import Reason


def test_jsonl_lines_parse_and_bad_lines_say_why(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"event_id":"p1","customer_id":"c1"}\n\n[1,2]\n{oops\n')
    rows = list(read_lines(f, "jsonl"))
    assert [(n, obj is not None) for n, _, obj, _ in rows] == [(1, True), (3, False), (4, False)]
    assert rows[1][3] is not None and rows[1][3][0] is Reason.NOT_AN_OBJECT
    assert "expected a JSON object, got list" in rows[1][3][1]
    assert rows[2][3] is not None and rows[2][3][0] is Reason.INVALID_JSON
    assert rows[2][3][1].startswith("line 4: invalid JSON")
    assert rows[2][1] == b"{oops"  # the original bytes travel to the dead letter


def test_csv_rows_become_events_with_json_cells(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text(
        "event_id,customer_id,ts,amount,currency,items,store_id\n"
        'p1,c1,2026-11-01T10:00:00Z,12.50,EUR,"[{""sku"":""a"",""category"":""beer"",""qty"":1,""price"":12.5}]",\n'
        "p2,c2,1793523600000,3,EUR,,s1,extra\n"
    )
    rows = list(read_lines(f, detect_format(f, None)))
    first = rows[0][2]
    assert first == {
        "event_id": "p1",
        "customer_id": "c1",
        "ts": "2026-11-01T10:00:00Z",
        "amount": "12.50",
        "currency": "EUR",
        "items": [{"sku": "a", "category": "beer", "qty": 1, "price": 12.5}],
    }
    assert rows[1][2] is None and rows[1][3] is not None
    assert "more cells than header columns" in rows[1][3][1]


CSV_WITH_HEADER_BLANK_AND_MULTILINE = (
    "event_id,customer_id,ts,amount,currency,items\n"
    'p1,c1,2026-11-01T10:00:00Z,5,EUR,"[{""sku"":""a"",\n""category"":""b"",""qty"":1,""price"":5}]"\n'
    "\n"
    "p2,c1,1793523600000,3,EUR,\n"
    "p3,,1793523600000,3,EUR,\n"
    "p4,c2,1793523600000,3,EUR,,too-many\n"
)


def test_the_progress_total_counts_what_is_read_not_the_lines(tmp_path: Path) -> None:
    """`patronage replay` of a CSV ended at 4/5: the header counted as a record. The total is
    what read_lines yields (each becomes an event or a dead letter), in both formats."""
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(CSV_WITH_HEADER_BLANK_AND_MULTILINE)
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(b'{"event_id":"p1","customer_id":"c1"}\n\n  \r\n[1]\n{oops\r\n{"event_id":"p2"}')
    for path, expected in ((csv_file, 4), (jsonl, 4)):
        fmt = detect_format(path, None)
        assert count_records(path, fmt) == len(list(read_lines(path, fmt))) == expected, path.name
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("event_id,customer_id\n")
    assert count_records(tmp_path / "empty.csv", "csv") == count_records(tmp_path / "header.csv", "csv") == 0


def test_keys_follow_the_contract() -> None:
    assert _key_of({"customer_id": "c1", "anonymous_id": "a"}, KEY_FIELDS["touchpoints"]) == "c1"
    assert _key_of({"anonymous_id": "a"}, KEY_FIELDS["touchpoints"]) == "a"
    assert _key_of({"category": "beer"}, KEY_FIELDS["stock-arrivals"]) == "beer"
    assert _key_of({"customer_id": 42}, KEY_FIELDS["purchases"]) == "42"
    assert _key_of({}, KEY_FIELDS["purchases"]) is None


def test_an_empty_key_field_is_named_as_empty_not_as_missing() -> None:
    touch = KEY_FIELDS["touchpoints"]
    assert _key_of({"customer_id": ""}, touch) is None
    assert _no_key({"customer_id": ""}, touch) == (
        'no key: customer_id is empty (""): customer_id or anonymous_id must be a non-empty string'
    )
    assert _no_key({}, KEY_FIELDS["purchases"]) == "no key: needs customer_id"
