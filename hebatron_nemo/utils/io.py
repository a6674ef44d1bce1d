"""Reading JSON and writing JSON/JSONL atomically: a file is written under a temporary name in the same
folder and renamed into place, so a reader (or a rerun after a kill) never sees half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


def _tmp_name(path: Path) -> Path:
    # the pid keeps two processes writing the same file from sharing a temporary
    return path.with_name(path.name + f".tmp-{os.getpid()}")


def write_json_atomic(path: str | Path, obj) -> None:
    """Writes `obj` as indented JSON with sorted keys (UTF-8, Hebrew kept readable), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> int:
    """Writes one JSON object per line, atomically; returns the number of rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return n


def read_json(path: str | Path):
    """The parsed JSON at `path`, or None when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
