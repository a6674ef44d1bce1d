"""A config folder that makes the real recipes (recipes/cpt.py, ...) run a tiny CPT on synthetic data:
what launcher and sweep tests submit, exactly as a user adds their own config groups
(`hydra.searchpath=[file://<dir>] +stage=tiny` on any recipe's command line)."""

from __future__ import annotations

from pathlib import Path

import yaml

from corpus import synthetic_prepared

# named like the demo registry's sources, so conf/cpt.yaml's stage-0 mixture and conf/anchor/demo.yaml apply as they are
SOURCES = {"he_tanakh": 120, "he_mishnah": 100, "en_kjv": 150, "en_jps": 120}


def write_stage_conf(root: Path, steps_per_phase: int = 6, seq_length: int = 32, global_batch: int = 8) -> Path:
    """Synthetic prepared sources under <root>/data and config groups under <root>/conf; returns the conf dir.

    One segment of two phases (formal, colloquial) over he_tanakh/he_mishnah, the demo's English anchor at 25%, the
    micro Nemotron-H, a 3,000-token stage 0. `steps_per_phase` sizes each phase in optimizer steps."""
    root = Path(root)
    if not (root / "data" / "en_jps" / "manifest.json").exists():
        synthetic_prepared(root / "data", SOURCES, vocab=512, mean_len=60)
    conf = root / "conf"
    curriculum_per_step = (global_batch - round(0.25 * global_batch)) * seq_length
    files = {
        "data/synth.yaml": {"defaults": ["data_schema"], "name": "synth", "raw_dir": str(root / "raw"),
                            "output_dir": str(root / "data"),
                            "sources": {s: {"language": "en" if s.startswith("en") else "he", "register": "test",
                                            "role": "anchor" if s.startswith("en") else "pretrain",
                                            "path": f"{s}.jsonl", "licence": "test"} for s in SOURCES}},
        "curriculum/synth.yaml": {
            "defaults": ["curriculum_schema"], "name": "synth",
            "segments": [{"name": "s1", "seq_length": seq_length, "global_batch": global_batch, "micro_batch": 2,
                          "data_parallel_size": 2}],
            "phases": [{"name": "formal", "segment": "s1", "tokens": steps_per_phase * curriculum_per_step,
                        "sources": {"he_tanakh": 0.7, "he_mishnah": 0.3}},
                       {"name": "colloquial", "segment": "s1", "tokens": steps_per_phase * curriculum_per_step,
                        "sources": {"he_mishnah": 1.0}}]},
        "stage/tiny.yaml": {
            "defaults": [{"override /data": "synth"}, {"override /curriculum": "synth"},
                         {"override /model": "micro"}, "_self_"],
            "base": {"tokens": 3000, "seq_length": 32, "global_batch": 8, "micro_batch": 4},
            "logging": {"wandb": False, "progress": False},
            "eval": {"every_steps": 4, "samples_per_set": 4, "mc_questions": 6, "seq_length": 32,
                     "mc_context_tokens": 16, "mc_continuation_tokens": 8},
            "checkpoint": {"every_steps": 1000},
            "threads": 1},
    }
    for rel, body in files.items():
        path = conf / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        head = "# @package _global_\n" if rel.startswith("stage/") else ""
        path.write_text(head + yaml.safe_dump(body, sort_keys=False))
    return conf


def stage_args(conf: Path, work: Path) -> list[str]:
    """The recipe overrides that select this folder's tiny stage."""
    return [f"hydra.searchpath=[file://{conf}]", "+stage=tiny", f"paths.work={work}"]
