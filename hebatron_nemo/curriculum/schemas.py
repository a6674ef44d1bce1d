"""The JSON Schemas of plan.json, ledger.json and metrics.jsonl lines (`hebatron_nemo/schemas/`)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from hebatron_nemo.errors import HebatronError

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


@lru_cache(maxsize=None)
def schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def validate(obj, name: str) -> None:
    """Raises HebatronError naming the first violation of schema `name` (plan, ledger, metrics)."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(json.dumps(obj, default=str)), schema(name))
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise HebatronError(f"{name}.json does not match its schema at {where}: {e.message}") from None
