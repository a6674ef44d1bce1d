"""`report.md` for a run (and a sweep summary across runs), with PNG plots, from the files the run
wrote: metrics.jsonl, ledger.json, plan.json, eval/series.json."""

from __future__ import annotations

import json
from pathlib import Path

from hebatron_nemo.utils.io import read_json


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    _plt().close(fig)
    tmp.replace(path)


def _phase_lines(ax, recs: list[dict]) -> None:
    last = None
    for r in recs:
        if r["kind"] == "train" and r["phase"] != last:
            ax.axvline(r["tokens"], color="grey", linestyle="--", linewidth=0.7)
            ax.text(r["tokens"], ax.get_ylim()[1], r["phase"], fontsize=7, va="top")
            last = r["phase"]


def _eval_records(run_dir: Path) -> list[dict]:
    return [r for r in _records(run_dir) if r["kind"] == "eval"]


def sibling_arms(run_dir: Path) -> list[Path]:
    """Other runs beside `run_dir` of the same curriculum and order with another anchor share (the
    anchor sweep's arms), ordered by share."""
    run_dir = Path(run_dir)
    mine = read_json(run_dir / "plan.json") if (run_dir / "plan.json").exists() else None
    if not mine or not run_dir.parent.is_dir():
        return []
    key = (mine["curriculum"].get("name"), mine["curriculum"].get("order"))
    arms = []
    for d in sorted(run_dir.parent.iterdir()):
        if d == run_dir or not (d / "plan.json").is_file() or not (d / "metrics.jsonl").is_file():
            continue
        plan = read_json(d / "plan.json") or {}
        if (plan.get("curriculum", {}).get("name"), plan.get("curriculum", {}).get("order")) != key:
            continue
        if plan.get("anchor", {}).get("share") != mine["anchor"].get("share"):
            arms.append((plan["anchor"]["share"], d))
    return [d for _, d in sorted(arms)]


def _arm_row(run_dir: Path) -> dict | None:
    evals = _eval_records(run_dir)
    if not evals:
        return None
    base, last = evals[0]["values"], evals[-1]["values"]
    plan = read_json(run_dir / "plan.json") or {}
    return {"run": run_dir.name, "anchor_share": plan.get("anchor", {}).get("share"),
            "order": plan.get("curriculum", {}).get("order"),
            "tokens": plan.get("totals", {}).get("tokens", evals[-1]["tokens"]),
            "anchor_loss": last.get("eval/anchor_loss"),
            "anchor_loss_change": last.get("eval/anchor_loss", 0) - base.get("eval/anchor_loss", 0),
            "he_loss": last.get("eval/he_loss"),
            "he_loss_change": last.get("eval/he_loss", 0) - base.get("eval/he_loss", 0),
            "mc_acc_he": last.get("eval/mc_acc/he"), "mc_acc_en": last.get("eval/mc_acc/en"),
            "benchmark_avg": _benchmark_average(run_dir)}


def eval_change(run_dir: str | Path) -> dict:
    """Validation losses of the base (the first eval, before any CPT step) and of the last eval, and
    the sibling anchor arms' rows: {"he_loss": {start, end}, "anchor_loss": {...}, "arms": [...]}."""
    run_dir = Path(run_dir)
    evals = _eval_records(run_dir)
    out: dict = {}
    if evals:
        base, last = evals[0]["values"], evals[-1]["values"]
        for key in ("he_loss", "anchor_loss"):
            if f"eval/{key}" in base and f"eval/{key}" in last:
                out[key] = {"start": base[f"eval/{key}"], "end": last[f"eval/{key}"],
                            "start_tokens": evals[0]["tokens"], "end_tokens": evals[-1]["tokens"]}
    out["arms"] = [row for row in map(_arm_row, sibling_arms(run_dir)) if row]
    return out


def write_report(run_dir: str | Path) -> Path:
    """Writes <run_dir>/report.md and report_*.png; returns the report's path."""
    run_dir = Path(run_dir)
    plt = _plt()
    recs = _records(run_dir)
    train = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    routers = [r for r in recs if r["kind"] == "router"]
    plan = read_json(run_dir / "plan.json") or {}
    lines = [f"# Run report: {run_dir.name}", ""]
    if plan:
        t = plan["totals"]
        lines += [f"Plan `{plan['fingerprint']}`: {t['tokens']:,} tokens ({t['curriculum_tokens']:,} curriculum + "
                  f"{t['anchor_tokens']:,} anchor), {t['steps']:,} steps; order `{plan['curriculum']['order']}`, "
                  f"anchor share {plan['anchor']['share']}.", ""]

    if train:
        fig, ax = plt.subplots(figsize=(10, 4))
        sources = sorted({s for r in train for s in r["loss_by_source"]})
        for s in sources:
            pts = [(r["tokens"], r["loss_by_source"][s]) for r in train if s in r["loss_by_source"]]
            ax.plot(*zip(*pts), label=s, linewidth=0.8)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("training loss")
        ax.set_title("loss per source (phases dashed)")
        _phase_lines(ax, train)
        ax.legend(fontsize=7)
        _save(fig, run_dir / "report_loss_by_source.png")
        lines += ["## Loss per source and phase", "", "![](report_loss_by_source.png)", ""]

        fig, ax = plt.subplots(figsize=(10, 3.5))
        totals: dict[str, list] = {s: [] for s in sources}
        for r in train:
            n = sum(r["loss_tokens_by_source"].values()) or 1
            for s in sources:
                totals[s].append(r["loss_tokens_by_source"].get(s, 0) / n)
        ax.stackplot([r["tokens"] for r in train], [totals[s] for s in sources], labels=sources)
        ax.set_ylim(0, 1)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("share of loss tokens")
        ax.set_title("realized blend (tokens the loss saw)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        _save(fig, run_dir / "report_blend.png")
        lines += ["## Realized blend", "", "![](report_blend.png)", ""]

    if evals:
        base = evals[0]["values"]
        last = evals[-1]["values"]
        fig, ax = plt.subplots(figsize=(10, 4))
        for key in sorted(k for k in base if k.startswith("eval/anchor_loss") or k.startswith("eval/he_loss")):
            pts = [(r["tokens"], r["values"][key]) for r in evals if key in r["values"]]
            ax.plot(*zip(*pts), marker=".", label=key)
        ax.axhline(base.get("eval/anchor_loss", 0), color="black", linestyle=":", linewidth=1, label="anchor loss of the base")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("validation loss")
        ax.set_title("English anchor loss against the base, Hebrew losses per phase")
        ax.legend(fontsize=7)
        _save(fig, run_dir / "report_eval.png")
        lines += ["## Validation against the starting model", "", "![](report_eval.png)", "",
                  "| value | start | end | change |", "|---|---|---|---|"]
        for key in sorted(base):
            if key in last:
                lines.append(f"| {key} | {base[key]:.4f} | {last[key]:.4f} | {last[key] - base[key]:+.4f} |")
        lines.append("")

    lines += _router_health_section(run_dir, routers)

    mine = _arm_row(run_dir)
    arms = [row for row in map(_arm_row, sibling_arms(run_dir)) if row]
    if mine and arms:
        rows = sorted([mine] + arms, key=lambda r: r["anchor_share"] or 0)
        lines += ["## Anchor arms (the anchor sweep)", "",
                  "Same curriculum and order, other anchor shares. Changes are against each arm's own base.", "",
                  "| run | anchor share | English anchor loss (change) | Hebrew loss (change) |", "|---|---|---|---|"]
        for r in rows:
            me = " (this run)" if r["run"] == mine["run"] else ""
            lines.append(f"| {r['run']}{me} | {r['anchor_share']} | {r['anchor_loss']:.4f} ({r['anchor_loss_change']:+.4f}) "
                         f"| {r['he_loss']:.4f} ({r['he_loss_change']:+.4f}) |")
        none = [r for r in arms if not r["anchor_share"]]
        if none and mine["anchor_share"]:
            n = none[0]
            lines += ["", f"Against the no-anchor arm: English anchor loss at the end {mine['anchor_loss']:.4f} here vs "
                          f"{n['anchor_loss']:.4f} without the anchor ({mine['anchor_loss'] - n['anchor_loss']:+.4f}); "
                          f"Hebrew loss {mine['he_loss']:.4f} vs {n['he_loss']:.4f} "
                          f"({mine['he_loss'] - n['he_loss']:+.4f})."]
        lines.append("")

    ledger = read_json(run_dir / "ledger.json")
    if ledger:
        lines += ["## Ledger: planned vs realized samples", "", "| phase | source | planned | realized | loss tokens |",
                  "|---|---|---|---|---|"]
        for phase, row in ledger["phases"].items():
            for src in sorted(set(row["planned_samples"]) | set(row["samples"])):
                lines.append(f"| {phase} | {src} | {row['planned_samples'].get(src, 0):,} | {row['samples'].get(src, 0):,} "
                             f"| {row['loss_tokens'].get(src, 0):,} |")
        lines.append("")

    series = read_json(run_dir / "eval" / "series.json")
    if series:
        tasks = sorted({t for m in series["models"] for t in m["scores"]})
        lines += ["## Benchmarks against the starting model", "", "![](eval/series.png)", "",
                  "| model | tokens | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 2) + "|"]
        for m in series["models"]:
            lines.append(f"| {m['name']} | {m['tokens']:,} | " + " | ".join(
                f"{m['scores'][t]:.1f}" if t in m["scores"] else "-" for t in tasks) + " |")
        lines.append("")
        lengths = sorted({int(n) for m in series["models"] for n in m.get("long_context", {})})
        if lengths:
            lines += ["### Long-context retrieval (hebrew_needle)", "",
                      "A fact planted at several depths in Hebrew documents of each length (tokens); "
                      "exact match on it, 0-100.", "",
                      "| model | " + " | ".join(f"{n:,} tokens" for n in lengths) + " |",
                      "|---" * (len(lengths) + 1) + "|"]
            for m in series["models"]:
                lc = m.get("long_context", {})
                lines.append(f"| {m['name']} | " + " | ".join(
                    f"{lc[str(n)]:.1f}" if str(n) in lc else "-" for n in lengths) + " |")
            lines.append("")
    out = run_dir / "report.md"
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(out)
    return out


def _router_records(run_dir: Path, local: list[dict]) -> tuple[list[dict], str]:
    """Router-health records of the run and which backend wrote them: the local backend's (kind
    "router" in metrics.jsonl) or, when there are none, the Megatron-Bridge callback's
    (mb_router.jsonl, same record shape). A resumed MB job logs the steps after its checkpoint again:
    the last record of a step wins."""
    if local:
        return local, "local backend"
    path = run_dir / "mb_router.jsonl"
    if not path.exists():
        return [], ""
    by_step = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("kind") == "router":
            by_step[r["step"]] = r
    return [by_step[k] for k in sorted(by_step)], "Megatron-Bridge"


def _router_health_section(run_dir: Path, local: list[dict]) -> list[str]:
    """Per-layer routing entropy over training (report_router.png) and the layers lowest at the end;
    [] when the run logged no router health."""
    routers, backend = _router_records(run_dir, local)
    if not routers:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    layers = sorted({k for r in routers for k in r["values"] if k.endswith("/entropy")},
                    key=lambda k: (len(k), k))  # layer2 before layer10
    for k in layers:
        pts = [(r["tokens"], r["values"][k]) for r in routers if k in r["values"]]
        ax.plot(*zip(*pts), label=k.split("/")[1], linewidth=0.8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("load entropy / ln(E)")
    ax.set_title(f"router health per MoE layer (1 = even load; {backend})")
    ax.legend(fontsize=6, ncol=max(1, len(layers) // 12), loc="lower left")
    _save(fig, run_dir / "report_router.png")
    last = routers[-1]["values"]
    lowest = sorted((last[k], k.split("/")[1]) for k in layers if k in last)[:3]
    warned = [r["step"] for r in routers if r["values"].get("router/layers_below_min_entropy", 0) > 0]
    out = ["## Router health", "", "![](report_router.png)", "",
           f"Lowest routing entropy at step {routers[-1]['step']:,}: " + ", ".join(f"{n} {v:.3f}" for v, n in lowest)
           + "."]
    if warned:
        out.append(f"Layers were below router.min_entropy at {len(warned)} of {len(routers)} logged steps "
                   f"(first at step {warned[0]:,}).")
    return out + [""]


def _benchmark_average(run_dir: Path) -> float | None:
    """Mean task score of the last model of the run's evaluated series (recipes/evaluate.py), if any."""
    series = read_json(run_dir / "eval" / "series.json")
    if not series or not series.get("models"):
        return None
    scores = series["models"][-1]["scores"]
    return sum(scores.values()) / len(scores) if scores else None


def sweep_summary(run_dirs: list[str | Path], out: str | Path) -> Path:
    """A table and plot comparing arms: final English anchor loss and Hebrew loss against each arm's
    base, the in-loop multiple-choice accuracies, the training tokens (budget-identical arms show the
    same number), and the final benchmark average when the arm was evaluated (eval/series.json)."""
    rows = [row for row in (_arm_row(Path(d)) for d in run_dirs) if row]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Sweep summary", "", "| run | anchor share | order | English anchor loss (change vs base) | "
             "Hebrew loss (change vs base) | MC acc he / en | tokens | benchmark avg |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mc = " / ".join("-" if r[k] is None else f"{r[k]:.3f}" for k in ("mc_acc_he", "mc_acc_en"))
        bench = "-" if r["benchmark_avg"] is None else f"{r['benchmark_avg']:.1f}"
        lines.append(f"| {r['run']} | {r['anchor_share']} | {r['order']} | {r['anchor_loss']:.4f} "
                     f"({r['anchor_loss_change']:+.4f}) | {r['he_loss']:.4f} ({r['he_loss_change']:+.4f}) | {mc} "
                     f"| {r['tokens'] if r['tokens'] is not None else '-'} | {bench} |")
    if rows:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar([r["run"] for r in rows], [r["anchor_loss_change"] for r in rows], label="English anchor loss change")
        ax.bar([r["run"] for r in rows], [r["he_loss_change"] for r in rows], alpha=0.5, label="Hebrew loss change")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("end minus base")
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
        ax.legend(fontsize=8)
        _save(fig, out / "sweep.png")
        lines += ["", "![](sweep.png)"]
    path = out / "sweep.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    return path
