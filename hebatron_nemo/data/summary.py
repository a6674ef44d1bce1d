"""The summary printed after `prepare`: one row per source, and what each filter removed."""

from __future__ import annotations

from pathlib import Path

from hebatron_nemo.data.filters import REASONS
from hebatron_nemo.utils.io import write_json_atomic


def print_prepare_summary(cfg, manifests: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prepared: data={cfg.data.name} -> {cfg.data.output_dir}")
    for col in ("source", "role", "seen", "kept", "train docs", "train tokens", "valid", "test", "tok/word",
                "removed by filter"):
        table.add_column(col, justify="left" if col in ("source", "role", "removed by filter") else "right")
    for name, m in manifests.items():
        if m.get("kind") != "source":
            table.add_row(name, m["role"], f"{m['documents']:,}", "-", "-", "-", "-", "-", "-", "validated")
            continue
        r, sp = m["report"], m["splits"]
        removed = ", ".join(f"{k} {r['removed_docs'][k]}" for k in REASONS if r["removed_docs"].get(k))
        table.add_row(name, m["registry"]["role"], f"{r['seen_docs']:,}", f"{r['kept_docs']:,}",
                      f"{sp['train']['documents']:,}", f"{sp['train']['tokens']:,}",
                      f"{sp['valid']['documents']:,}", f"{sp['test']['documents']:,}",
                      f"{sp['train']['tokens_per_word']:.2f}", removed or "-")
    console = Console()
    if not console.is_terminal:  # logs and CI: do not squeeze the table into 80 columns
        console = Console(width=180)
    console.print(table)
    write_json_atomic(Path(str(cfg.data.output_dir)) / "prepare_summary.json",
                      {n: {k: v for k, v in m.items() if k != "identity"} for n, m in manifests.items()})
