"""A config folder that makes the real recipes (recipes/cpt.py, ...) run a tiny CPT on synthetic data:
what launcher and sweep tests submit, exactly as a user adds their own config groups
(`hydra.searchpath=[file://<dir>] +stage=tiny` on any recipe's command line)."""

from __future__ import annotations

from pathlib import Path

import json

import yaml

from corpus import synthetic_prepared

# named like the demo registry's sources, so conf/cpt.yaml's stage-0 mixture and conf/anchor/demo.yaml apply as they are
SOURCES = {"he_tanakh": 120, "he_mishnah": 100, "en_kjv": 150, "en_jps": 120}


def _word_tokenizer(out: Path, vocab: int) -> None:
    """A word-level tokenizer with ids 0..vocab-1 (t<i>; id 2 is the EOD `</s>`), for the synthetic ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"t{i}": i for i in range(vocab)}
    words["</s>"] = 2
    del words["t2"]
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"}))


def write_stage_conf(root: Path, steps_per_phase: int = 6, seq_length: int = 32, global_batch: int = 8,
                     long_steps: int = 0) -> Path:
    """Synthetic prepared sources under <root>/data and config groups under <root>/conf; returns the conf dir.

    One segment of two phases (formal, colloquial) over he_tanakh/he_mishnah, the demo's English anchor at 25%, the
    micro Nemotron-H, a 3,000-token stage 0. `steps_per_phase` sizes each phase in optimizer steps;
    `long_steps` > 0 adds a second segment `s2` (sequence length 64, global batch 4) with a `long` phase."""
    root = Path(root)
    if not (root / "data" / "en_jps" / "manifest.json").exists():
        synthetic_prepared(root / "data", SOURCES, vocab=512, mean_len=60)
        _word_tokenizer(root / "tok", 512)
        for src in SOURCES:  # so exported models carry a real tokenizer of the data's vocabulary
            manifest = root / "data" / src / "manifest.json"
            body = json.loads(manifest.read_text())
            body["tokenizer"]["path"] = str(root / "tok")
            manifest.write_text(json.dumps(body))
    conf = root / "conf"
    curriculum_per_step = (global_batch - round(0.25 * global_batch)) * seq_length
    s2 = [{"name": "s2", "seq_length": 64, "global_batch_size": 4, "micro_batch_size": 1, "data_parallel_size": 2}] if long_steps else []
    long = [{"name": "long", "segment": "s2", "tokens": long_steps * 3 * 64, "sources": {"he_tanakh": 1.0}}] if long_steps else []
    files = {
        "data/synth.yaml": {"defaults": ["data_schema"], "name": "synth", "raw_dir": str(root / "raw"),
                            "output_dir": str(root / "data"),
                            "sources": {s: {"language": "en" if s.startswith("en") else "he", "register": "test",
                                            "role": "anchor" if s.startswith("en") else "pretrain",
                                            "path": f"{s}.jsonl", "licence": "test"} for s in SOURCES}},
        "curriculum/synth.yaml": {
            "defaults": ["curriculum_schema"], "name": "synth",
            "segments": [{"name": "s1", "seq_length": seq_length, "global_batch_size": global_batch, "micro_batch_size": 2,
                          "data_parallel_size": 2}] + s2,
            "phases": [{"name": "formal", "segment": "s1", "tokens": steps_per_phase * curriculum_per_step,
                        "sources": {"he_tanakh": 0.7, "he_mishnah": 0.3}},
                       {"name": "colloquial", "segment": "s1", "tokens": steps_per_phase * curriculum_per_step,
                        "sources": {"he_mishnah": 1.0}}] + long},
        "stage/tiny.yaml": {
            "defaults": [{"override /data": "synth"}, {"override /curriculum": "synth"},
                         {"override /model": "micro"}, "_self_"],
            "base": {"tokens": 3000, "seq_length": 32, "global_batch_size": 8, "micro_batch_size": 4},
            "logging": {"wandb": False, "progress": False},
            "eval": {"eval_interval": 4, "samples_per_set": 4, "mc_questions": 6, "seq_length": 32,
                     "mc_context_tokens": 16, "mc_continuation_tokens": 8},
            "checkpoint": {"save_interval": 1000},
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


def flat_stage_args(conf: Path, work: Path) -> list[str]:
    """The same stage as plain overrides, for commands shared by several recipes (a chain gives each
    recipe the ones its config has)."""
    body = yaml.safe_load((conf / "stage" / "tiny.yaml").read_text().split("\n", 1)[1])
    out = [f"hydra.searchpath=[file://{conf}]", "data=synth", "curriculum=synth", "model=micro", f"paths.work={work}"]

    def walk(prefix, node):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out.append(f"{prefix}{k}={str(v).lower() if isinstance(v, bool) else v}")

    walk("", {k: v for k, v in body.items() if k != "defaults"})
    return out
