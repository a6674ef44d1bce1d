"""Printing and plotting a plan: the step/token/sample arithmetic, the per-phase table, the PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _fmt_tokens(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def plan_tables(plan: dict):
    """Rich renderables: segments (arithmetic), phases x sources (tokens, share, epochs), streams."""
    from rich.table import Table

    seg_t = Table(title="segments: one job per sequence length (global sample index ranges)")
    for c in ("segment", "seq", "global batch", "anchor/batch", "anchor share nominal -> effective",
              "tokens/step", "steps", "samples [start, end)", "tokens"):
        seg_t.add_column(c, justify="right" if c not in ("segment",) else "left")
    for s in plan["segments"]:
        seg_t.add_row(s["name"], f"{s['seq_length']:,}", f"{s['global_batch']:,}", str(s["anchor_per_batch"]),
                      f"{s['anchor_share_nominal']:.4f} -> {s['anchor_share_effective']:.4f}",
                      f"{s['tokens_per_step']:,}", f"{s['start_step']:,} .. {s['start_step'] + s['batches']:,}",
                      f"[{s['start_sample']:,}, {s['start_sample'] + s['num_samples']:,})", _fmt_tokens(s["tokens"]))

    reading = plan["curriculum"].get("reading")
    ph_t = Table(title=f"phases in training order (curriculum.order={plan['curriculum']['order']}"
                       + (f": {reading})" if reading else ")"))
    for c in ("phase", "segment", "steps", "source", "role", "tokens", "share of batch", "epochs (stream)"):
        ph_t.add_column(c, justify="left" if c in ("phase", "segment", "source", "role") else "right")
    streams = plan["streams"]
    for p in plan["phases"]:
        seg = plan["segments"][p["segment"]]
        first = True
        rows = [(streams[int(s)], n, "curriculum") for s, n in p["counts"].items()]
        for sid, c in seg["anchor_pattern"].items():
            share = c / seg["anchor_period"]
            rows.append((streams[int(sid)], share * p["anchor_samples"], "anchor"))
        for st, n, role in rows:
            ph_t.add_row(p["name"] if first else "", seg["name"] if first else "",
                         f"{p['start_step']:,}..{p['end_step']:,}" if first else "", st["key"], role,
                         _fmt_tokens(n * seg["seq_length"]), f"{n / (p['batches'] * seg['global_batch']):.3f}",
                         f"{st['epochs']:.2f}")
            first = False
        ph_t.add_section()
    return seg_t, ph_t


def print_plan(plan: dict, console=None) -> None:
    from rich.console import Console

    console = console or Console()
    if not console.is_terminal:
        console = Console(width=200)
    for t in plan_tables(plan):
        console.print(t)
    tot = plan["totals"]
    console.print(f"total: {_fmt_tokens(tot['tokens'])} tokens ({_fmt_tokens(tot['curriculum_tokens'])} curriculum + "
                  f"{_fmt_tokens(tot['anchor_tokens'])} anchor) in {tot['steps']:,} steps, {tot['samples']:,} samples")
    console.print(f"compute: {tot['gpu_hours']:,.1f} GPU-hours at {tot['tokens_per_second_per_gpu']:,.0f} tokens/s/GPU "
                  f"= {tot['wall_hours']:,.1f} h on {tot['gpus']} GPUs (compute.tokens_per_second_per_gpu)")
    for w in plan["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")


def realized_shares(plan: dict, windows: int = 200, max_batches_per_window: int = 64):
    """Per window of training: (tokens at window start, {source: share}) from the actual index arrays."""
    from hebatron_nemo.curriculum.mixture import SegmentIndex

    out = []
    tokens_before = 0
    total_samples = sum(s["num_samples"] for s in plan["segments"])
    for seg in plan["segments"]:
        idx = SegmentIndex(plan, seg["index"])
        n_win = max(1, round(windows * seg["num_samples"] / total_samples))
        edges = np.linspace(0, seg["batches"], n_win + 1).astype(np.int64)
        for a, b in zip(edges[:-1], edges[1:]):
            if b <= a:
                continue
            batches = np.linspace(a, b - 1, min(b - a, max_batches_per_window)).astype(np.int64)
            g = (seg["start_sample"] + batches[:, None] * seg["global_batch"] + np.arange(seg["global_batch"])).ravel()
            sid, _, _, _ = idx.locate_batch(g)
            counts = np.bincount(sid, minlength=len(plan["streams"]))
            shares: dict[str, float] = {}
            for s, c in enumerate(counts):
                if c:
                    src = plan["streams"][s]["source"]
                    shares[src] = shares.get(src, 0.0) + c / len(g)
            out.append((tokens_before + a * seg["tokens_per_step"], shares))
        tokens_before += seg["tokens"]
    return out


def plot_plan(plan: dict, path: str | Path) -> None:
    """PNG: each source's share of the global batch over training tokens, with phase (dashed) and
    segment (solid) boundaries. Written to a temp name, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = realized_shares(plan)
    sources = sorted({s for _, sh in data for s in sh})
    x = np.array([t for t, _ in data] + [plan["totals"]["tokens"]], dtype=np.float64)
    y = np.array([[sh.get(s, 0.0) for s in sources] for _, sh in data])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    bottom = np.zeros(len(data))
    cmap = plt.get_cmap("tab20")
    anchor_sources = {st["source"] for st in plan["streams"] if st["role"] == "anchor"}
    for i, s in enumerate(sources):
        ax.bar(x[:-1], y[:, i], width=np.diff(x), bottom=bottom, align="edge", color=cmap(i % 20),
               label=s + (" (anchor)" if s in anchor_sources else ""), linewidth=0)
        bottom += y[:, i]
    for p in plan["phases"]:
        seg = plan["segments"][p["segment"]]
        t = sum(s["tokens"] for s in plan["segments"][: p["segment"]]) + \
            (p["start_step"] - seg["start_step"]) * seg["tokens_per_step"]
        ax.axvline(t, color="black", linestyle="--", linewidth=0.8)
        ax.text(t, 1.01, p["name"], fontsize=8, rotation=0, va="bottom")
    for s in plan["segments"][1:]:
        t = sum(x["tokens"] for x in plan["segments"][: s["index"]])
        ax.axvline(t, color="black", linewidth=2)
    ax.set_xlim(0, x[-1])
    ax.set_ylim(0, 1)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("share of global batch")
    ax.set_title(f"{plan['curriculum']['name']} (order={plan['curriculum']['order']}, "
                 f"anchor share={plan['anchor']['share']})", pad=18)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
