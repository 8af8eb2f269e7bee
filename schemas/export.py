"""Write ``schemas/json/<topic>.schema.json`` from the pydantic models.

    python -m schemas.export          # (re)write the files
    python -m schemas.export --check  # exit 1 if the files are out of date (tests run this)

Producers in any language validate against these files; the models are the source of truth.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from schemas.events import TOPIC_MODELS
from schemas.outputs import OUTPUT_MODELS

OUT = Path(__file__).parent / "json"


def documents() -> dict[str, dict[str, Any]]:
    docs = {}
    for topic, model in {**TOPIC_MODELS, **OUTPUT_MODELS}.items():
        schema = model.model_json_schema(by_alias=True, mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://patronage.dev/schemas/{topic}.schema.json"
        schema.setdefault("description", (model.__doc__ or "").strip().splitlines()[0])
        docs[f"{topic}.schema.json"] = schema
    return docs


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, doc in documents().items():
        path = OUT / name
        text = render(doc)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python -m schemas.export): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
