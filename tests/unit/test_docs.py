"""The README documents every setting and starts with the two commands."""

from __future__ import annotations

from pathlib import Path

from agents.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        f"PATRONAGE_{name.upper()}"
        for name in Settings.model_fields
        if f"PATRONAGE_{name.upper()}" not in README
    ]
    assert not missing, f"add to README's configuration table: {missing}"


def test_readme_starts_with_make_demo_and_make_test() -> None:
    head = README[:400]
    assert "make demo" in head and "make test" in head
