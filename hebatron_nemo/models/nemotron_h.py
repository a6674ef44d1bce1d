"""Nemotron-H (hybrid Mamba-2 / attention / MoE) configs and models through transformers'
`NemotronHForCausalLM`, from `conf/model/<name>.yaml`.

The layer pattern uses NVIDIA's letters: `M` Mamba-2, `E` MoE, `*` attention, `-` MLP. transformers
accepts it as `hybrid_override_pattern` in both 5.12.1 (the container's) and 5.24 (the CPU env's).
"""

from __future__ import annotations

from omegaconf import OmegaConf

from hebatron_nemo.errors import ConfigError

PATTERN_LETTERS = set("ME*-")


def hf_config(model_cfg, vocab_size: int | None = None):
    """A `NemotronHConfig` from a model config node (`conf/model/*.yaml`)."""
    from transformers import NemotronHConfig

    m = OmegaConf.to_container(model_cfg, resolve=True) if not isinstance(model_cfg, dict) else dict(model_cfg)
    pattern = m.pop("pattern")
    m.pop("name", None)
    m.pop("description", None)
    if not pattern or set(pattern) - PATTERN_LETTERS:
        raise ConfigError(f"model.pattern {pattern!r} may only use the letters M, E, * and -")
    if "*" not in pattern:
        # transformers' training forward needs an attention layer unless use_cache=False everywhere
        raise ConfigError("model.pattern needs at least one attention layer '*'")
    if vocab_size is not None:
        m["vocab_size"] = vocab_size
    extra = m.pop("extra", {}) or {}
    return NemotronHConfig(hybrid_override_pattern=pattern, num_hidden_layers=len(pattern), **m, **extra)


def build_model(model_cfg, vocab_size: int | None = None, seed: int = 0):
    """A randomly initialized `NemotronHForCausalLM` (fp32, CPU), deterministic for a seed."""
    import torch
    from transformers import NemotronHForCausalLM

    config = hf_config(model_cfg, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NemotronHForCausalLM(config)
    return model


def count_parameters(model) -> dict:
    """Total and active-per-token parameters (routed experts count top-k of n)."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = total - experts + experts * cfg.num_experts_per_tok / max(1, cfg.n_routed_experts)
    return {"total": int(total), "active": int(active)}


def load_model_config(name: str, conf_dir: str | None = None):
    """`conf/model/<name>.yaml` as a validated ModelConfig node, outside Hydra (tests, benchmarks)."""
    from pathlib import Path

    from hebatron_nemo.config import ModelConfig

    conf = Path(conf_dir) if conf_dir else Path(__file__).resolve().parents[2] / "conf"
    raw = OmegaConf.load(conf / "model" / f"{name}.yaml")
    raw.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), raw)
