"""The one seam: the composed Hydra config (plus the plan) -> a Megatron-Bridge `ConfigContainer`.

`cpt_overrides` / `sft_overrides` are MB-free: nested dicts of ConfigContainer fields (the values we
own, so a CPU test can check every cluster experiment without MB). `build_cpt_container` /
`build_sft_container` import MB lazily, start from the Nemotron-3 Nano recipe function, apply the
dict with MB's own OmegaConf utilities (`create_omegaconf_dict_config` -> merge ->
`parse_hydra_overrides` for `megatron_bridge.overrides` -> `apply_overrides`), then put in the objects
a dict cannot carry (our dataset provider, the SFT dataset config, the model provider of a local HF
folder).
"""

from __future__ import annotations

import signal
from pathlib import Path

from omegaconf import OmegaConf

from hebatron_nemo.backends.megatron_bridge.schedule import scheduler_fields
from hebatron_nemo.errors import ConfigError

# the recipe's own two branches (flex + a backend, or plain all-to-all with the shared-expert overlap)
DISPATCH = {"hybridep": {"moe_token_dispatcher_type": "flex", "moe_flex_dispatcher_backend": "hybridep",
                         "moe_shared_expert_overlap": False},
            "deepep": {"moe_token_dispatcher_type": "flex", "moe_flex_dispatcher_backend": "deepep",
                       "moe_shared_expert_overlap": False},
            "alltoall": {"moe_token_dispatcher_type": "alltoall", "moe_flex_dispatcher_backend": None,
                         "moe_shared_expert_overlap": True}}
RECIPE_PRETRAIN = "megatron.bridge.recipes.nemotronh.nemotron_3_nano_pretrain_config"
RECIPE_SFT = "megatron.bridge.recipes.nemotronh.nemotron_3_nano_sft_config"


def model_fields(cfg, seq_length: int) -> dict:
    par = cfg.parallelism
    m = {"tensor_model_parallel_size": int(par.tensor), "pipeline_model_parallel_size": int(par.pipeline),
         "context_parallel_size": int(par.context), "expert_model_parallel_size": int(par.expert),
         "expert_tensor_parallel_size": int(par.expert_tensor), "sequence_parallel": bool(par.sequence_parallel),
         "cp_comm_type": str(par.cp_comm_type) if int(par.context) > 1 else None,
         "recompute_granularity": "selective", "recompute_modules": list(par.recompute_modules),
         "seq_length": int(seq_length),
         # the local backend's router keys, same meaning (megatron-core's formulas)
         "moe_router_enable_expert_bias": float(cfg.router.bias_update_rate) > 0,
         "moe_router_bias_update_rate": float(cfg.router.bias_update_rate),
         "moe_aux_loss_coeff": float(cfg.router.seq_aux_loss_coeff),
         "moe_router_load_balancing_type": "seq_aux_loss",
         **DISPATCH[str(par.moe_dispatcher)]}
    return m


def precision_fields(precision: str) -> dict:
    if precision == "bf16":
        return {"bf16": True, "fp8": None}
    # fp8 with current (tensorwise) scaling; the first and last layers stay bf16, as the recipe's model does
    return {"bf16": True, "fp8": "hybrid", "fp8_recipe": "tensorwise", "first_last_layers_bf16": True,
            "num_layers_at_start_in_bf16": 1, "num_layers_at_end_in_bf16": 1}


def _logger_fields(cfg, save_dir: Path, tag: str) -> dict:
    mb = cfg.megatron_bridge
    return {"log_interval": int(mb.log_interval),
            "tensorboard_dir": str(mb.tensorboard_dir or save_dir.parent / "tensorboard"),
            "wandb_project": mb.wandb_project, "wandb_exp_name": mb.wandb_exp_name or f"{Path(str(cfg.run_dir)).name}-{tag}",
            "wandb_save_dir": str(save_dir.parent / "wandb") if mb.wandb_project else None,
            "save_config_filepath": str(save_dir.parent / f"config_{tag}.yaml")}


def mb_train_samples(plan: dict, segment: int) -> int:
    """`train.train_samples` for one segment job. MB turns it into `train_iters = train_samples //
    global_batch` and trains while `step < train_iters`, with `step` continued from the checkpoint:
    a count in *this* segment's global batches of every step since the run began. For segment 0 that is
    its sample count; for a later segment with another global batch it is not the global sample index
    (the sampler walks that from the checkpoint's consumed samples up to the dataset's length)."""
    seg = plan["segments"][segment]
    return int((seg["start_step"] + seg["batches"]) * seg["global_batch"])


def cpt_overrides(cfg, plan: dict, segment: int) -> dict:
    """Our ConfigContainer fields for one CPT segment (everything but the dataset provider object)."""
    mb = cfg.megatron_bridge
    seg = plan["segments"][segment]
    save = Path(str(mb.save_dir))
    first = segment == 0
    sched = scheduler_fields(plan, cfg.optim, segment)
    return {
        "model": model_fields(cfg, seg["seq_length"]),
        "train": {"train_iters": None, "train_samples": mb_train_samples(plan, segment),
                  "global_batch_size": int(seg["global_batch"]),
                  "micro_batch_size": int(seg["micro_batch"]), "exit_interval": None,
                  # Slurm's preemption warning (launchers/slurm: --signal=B:USR1@<s>): MB checkpoints and
                  # exits cleanly, the batch script requeues, the next job loads the checkpoint
                  "exit_signal_handler": True, "exit_signal": int(signal.SIGUSR1)},
        "validation": {"eval_interval": int(mb.eval_interval), "eval_iters": int(mb.eval_iters)},
        "optimizer": sched["optimizer"],
        "scheduler": sched["scheduler"],
        "checkpoint": {"save": str(save), "save_interval": int(mb.save_interval),
                       # segment 0: a restarted job resumes from its own latest checkpoint when there is one,
                       # else MB loads the HF weights (step reset to 0); later segments continue a checkpoint
                       "load": str(mb.load_dir or save),
                       "pretrained_checkpoint": str(mb.hf_model_dir) if first and mb.hf_model_dir else None,
                       "finetune": False,
                       # segments change the layout (the 64K job has CP 8, DP 8): optimizer state saved
                       # reshardable over TP/PP/EP/DP, and the RNG state (per-rank, tied to the old layout;
                       # Nano has no dropout) not loaded into a new one
                       "dist_ckpt_optim_fully_reshardable": True,
                       "load_rng": first},
        "tokenizer": {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(cfg.tokenizer.path)},
        "mixed_precision": precision_fields(str(mb.precision)),
        "logger": _logger_fields(cfg, save, f"seg{segment}-{seg['name']}"),
        "rng": {"seed": int(cfg.seed)},
        "env_vars": {k: str(v) for k, v in dict(cfg.parallelism.env).items()},
    }


def dataset_fields(cfg, segment: int, plan: dict | None = None) -> dict:
    """Our dataset provider's fields (the object itself is made in `build_cpt_container`)."""
    period = 0
    if plan is not None:  # one evaluation = eval_iters global batches: the validation set's period
        period = int(cfg.megatron_bridge.eval_iters) * int(plan["segments"][segment]["global_batch"])
    return {"plan_path": str(Path(str(cfg.run_dir)) / "plan.json"), "segment": int(segment),
            "cache_dir": str(cfg.cache_dir), "dataloader_type": "single",
            "num_workers": int(cfg.megatron_bridge.num_workers), "valid_period": period}


def _apply(container, overrides: dict, cli: list[str]):
    """MB's own override path: container -> OmegaConf, merge ours, Hydra-syntax extras, write back."""
    from megatron.bridge.training.utils.omegaconf_utils import (apply_overrides, create_omegaconf_dict_config,
                                                                 parse_hydra_overrides)

    base, excluded = create_omegaconf_dict_config(container)
    merged = OmegaConf.merge(base, OmegaConf.create(overrides))
    if cli:
        merged = parse_hydra_overrides(merged, list(cli))
    apply_overrides(container, OmegaConf.to_container(merged, resolve=True), excluded)
    return container


def _recipe(path: str):
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def build_cpt_container(cfg, plan: dict, segment: int):
    """The MB ConfigContainer for one CPT segment job (MB imported here)."""
    from hebatron_nemo.backends.megatron_bridge.dataset_provider import provider_class

    container = _recipe(RECIPE_PRETRAIN)()
    # env_vars merge: the recipe's (NVTE, allocator, NCCL) stay, the preset's win where both set one
    _apply(container, cpt_overrides(cfg, plan, segment), list(cfg.megatron_bridge.overrides))
    container.dataset = provider_class()(**dataset_fields(cfg, segment, plan))
    return container


# ------------------------------------------------------------------------------------------------ SFT


def sft_layout(cfg) -> dict:
    """The SFT job's batch and sequence arithmetic (MB-free)."""
    mb = cfg.megatron_bridge
    cp = int(cfg.parallelism.context)
    pad = 2 * cp if cp > 1 else 1
    seq = int(mb.sft_seq_length)
    if seq % pad:
        raise ConfigError(f"megatron_bridge.sft_seq_length={seq} is not divisible by 2 x CP = {pad}. Fix: a multiple "
                          f"of {pad}")
    return {"seq_length": seq, "pad_seq_to_mult": pad}


def sft_overrides(cfg, data_dir: Path) -> dict:
    """Our ConfigContainer fields for SFT (everything but the dataset config and model provider)."""
    mb, s = cfg.megatron_bridge, cfg.sft
    lay = sft_layout(cfg)
    save = Path(str(mb.save_dir))
    iters = mb.sft_train_iters
    steps = int(iters) if iters is not None else None
    return {
        "model": {**model_fields(cfg, lay["seq_length"]), "calculate_per_token_loss": True},
        # no fixed step count: sft.epochs over the packed data; MB's _resolve_num_epochs sets train_iters =
        # ceil(epochs x ceil(packed rows / global batch)) once the packed dataset exists (and lr_decay_iters
        # to match), so the steps follow from the prepared data, not from a number in the experiment
        "train": {"train_iters": steps, "num_epochs": None if steps else int(s.epochs), "train_samples": None,
                  "global_batch_size": int(s.global_batch), "micro_batch_size": int(s.micro_batch)},
        "validation": {"eval_interval": int(mb.eval_interval), "eval_iters": int(mb.eval_iters)},
        "optimizer": {"lr": float(s.lr), "min_lr": float(s.min_lr), "weight_decay": float(cfg.optim.weight_decay),
                      "adam_beta1": float(cfg.optim.beta1), "adam_beta2": float(cfg.optim.beta2),
                      "adam_eps": float(cfg.optim.eps), "clip_grad": float(cfg.optim.clip_grad)},
        "scheduler": {"lr_decay_style": "cosine", "lr_warmup_fraction": float(s.warmup_fraction), "lr_warmup_iters": 0,
                      "lr_warmup_samples": 0, "lr_decay_iters": steps, "lr_decay_samples": None, "lr_warmup_init": 0.0,
                      "start_weight_decay": float(cfg.optim.weight_decay),
                      "end_weight_decay": float(cfg.optim.weight_decay), "weight_decay_incr_style": "constant"},
        "checkpoint": {"save": str(save), "save_interval": int(mb.save_interval), "load": str(mb.load_dir or save),
                       "pretrained_checkpoint": str(s.init_from), "finetune": True},
        "tokenizer": {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(cfg.tokenizer.path)},
        "mixed_precision": precision_fields(str(mb.precision)),
        "ddp": {"average_in_collective": False},  # per-token loss with packing (and CP): sum, then divide
        "logger": _logger_fields(cfg, save, "sft"),
        "rng": {"seed": int(cfg.seed)},
        "env_vars": {k: str(v) for k, v in dict(cfg.parallelism.env).items()},
    }


def sft_dataset_config(cfg, data_dir: Path):
    """MB's `GPTSFTDatasetConfig` over the prepared SFT dataset as linked into the run's data folder
    (`data_dir`, see sft_data.py: `training.jsonl`, `validation.jsonl` with `messages`), the tokenizer's
    chat template, assistant-only loss, MB's offline packing to Parquet under `data_dir/packed/`.
    `tokenizer_model_name` is one safe path component: MB joins it under `packed/`, and the tokenizer's
    absolute path would put the packs at `/<path>_pad...` (outside the run, shared across runs)."""
    from megatron.bridge.data.builders import ChatSFTPreprocessingConfig, GPTSFTDatasetConfig
    from megatron.bridge.data.packing.config import PackedSequenceSpecs

    from hebatron_nemo.backends.megatron_bridge.sft_data import pack_tokenizer_name

    lay = sft_layout(cfg)
    return GPTSFTDatasetConfig(
        dataset_root=str(data_dir), seq_length=lay["seq_length"], seed=int(cfg.seed), dataloader_type="batch",
        num_workers=int(cfg.megatron_bridge.num_workers),
        preprocessing=ChatSFTPreprocessingConfig(loss_mode="assistant"),
        do_test=False,  # the prepared dataset has training and validation splits only
        enable_offline_packing=True,
        offline_packing_specs=PackedSequenceSpecs(packed_sequence_size=lay["seq_length"],
                                                  tokenizer_model_name=pack_tokenizer_name(cfg),
                                                  pad_seq_to_mult=lay["pad_seq_to_mult"]))


def build_sft_container(cfg, data_dir: Path):
    """The MB ConfigContainer for SFT: the Nano SFT recipe's values, our fields, the local model."""
    container = _sft_recipe_from_local_folder(str(cfg.sft.init_from))
    _apply(container, sft_overrides(cfg, data_dir), list(cfg.megatron_bridge.overrides))
    container.dataset = sft_dataset_config(cfg, data_dir)
    return container


def _sft_recipe_from_local_folder(hf_dir: str):
    """MB's Nano SFT recipe reads the model config from the hub id in its module constant
    `_NEMOTRON_3_NANO_MODEL_ID` at call time (AutoBridge.from_hf_pretrained); an air-gapped cluster
    has no hub. We call the recipe with that constant pointed at the local HF folder, so the recipe
    keeps its own model settings and its provider comes from `AutoBridge.from_hf_pretrained(hf_dir)`."""
    import megatron.bridge.recipes.nemotronh.h100.nemotron_3_nano as recipe_mod

    if not hasattr(recipe_mod, "_NEMOTRON_3_NANO_MODEL_ID"):
        raise ConfigError("this Megatron-Bridge version has no _NEMOTRON_3_NANO_MODEL_ID in "
                          "recipes/nemotronh/h100/nemotron_3_nano.py; pin megatron-bridge (versions.yaml)")
    hub_id = recipe_mod._NEMOTRON_3_NANO_MODEL_ID
    recipe_mod._NEMOTRON_3_NANO_MODEL_ID = hf_dir
    try:
        return _recipe(RECIPE_SFT)()
    finally:
        recipe_mod._NEMOTRON_3_NANO_MODEL_ID = hub_id


def container_yaml(container) -> str:
    """The resolved ConfigContainer as YAML (MB's own conversion)."""
    from megatron.bridge.training.utils.omegaconf_utils import create_omegaconf_dict_config

    conf, _ = create_omegaconf_dict_config(container)
    return OmegaConf.to_yaml(conf)
