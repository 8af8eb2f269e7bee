"""The pure core reads no clock: every time rule gets ``now`` from its caller.

(The import contract in pyproject.toml - run by ``make lint`` - keeps faust, aiokafka,
redis, prometheus and ``time`` out of streams/; this catches the calls an import check
cannot see, such as ``datetime.now()``.)"""

from __future__ import annotations

import ast
from pathlib import Path

STREAMS = Path(__file__).resolve().parents[2] / "streams"
CLOCK_READS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns"}


def test_no_clock_is_read_in_streams() -> None:
    found = []
    for path in sorted(STREAMS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                base = node.func.value
                name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
                if node.func.attr in CLOCK_READS and name in {"datetime", "date", "time"}:
                    found.append(f"{path.name}:{node.lineno} {name}.{node.func.attr}()")
    assert not found, found


def test_the_synthetic_generator_is_not_part_of_the_rules() -> None:
    for path in sorted(STREAMS.glob("*.py")):
        assert "synthetic" not in {
            (n.module or "").split(".")[0]
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom)
        }, path
