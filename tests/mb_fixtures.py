"""Shared by the Megatron-Bridge seam tests: every cluster experiment composed with Hydra exactly as
`recipes/*.py` composes it, with one substitution: the data registry's sources are synthetic prepared
corpora under the same names (the cluster corpora are not here), and `curriculum.max_epochs` is raised
so the paper's 100B-token budgets plan over them. Everything the seam reads (segments, batches,
sequence lengths, parallelism, optimizer, paths) is the experiment's own."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from corpus import synthetic_prepared

REPO = Path(__file__).resolve().parents[1]
CPT_EXPERIMENTS = ["hebatron_cpt_8k_h100x64", "hebatron_cpt_64k_h100x64"]
SFT_EXPERIMENTS = ["hebatron_sft_h100x16"]


def prepare_cluster_sources(tmp: Path) -> Path:
    data = tmp / "data"
    synthetic_prepared(data, {"he_formal": 200, "he_colloquial": 120}, mean_len=120)
    synthetic_prepared(data, {"he_long": 60, "en_anchor": 160}, seed=1, mean_len=6000)
    return data


def cluster_overrides(tmp: Path, data: Path) -> list[str]:
    # no evaluation task folders on this machine: the cluster registries' task decontamination is opted out
    return [f"paths.work={tmp}", f"data.output_dir={data}", "curriculum.max_epochs=1000000000", "build_caches=false",
            "data.decontamination.eval_tasks=[]", "sft_data.decontamination.eval_tasks=[]"]


def compose_experiment(name: str, overrides: list[str], recipe: str = "cpt"):
    from hebatron_nemo.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=recipe, overrides=[f"experiment={name}", *overrides])


def tiny_hf_folder(path):
    """A tiny Nemotron-H saved by the container's transformers (5.12.1, from the compat layer)."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    cfg = NemotronHConfig(vocab_size=256, hidden_size=64, num_hidden_layers=4, hybrid_override_pattern="M*EM",
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, mamba_num_heads=4,
                          mamba_head_dim=16, ssm_state_size=16, n_groups=1, n_routed_experts=8,
                          num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=64,
                          intermediate_size=64)
    NemotronHForCausalLM(cfg).save_pretrained(str(path))
    return path
