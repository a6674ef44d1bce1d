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
# Slurm's preemption warning (launchers/slurm: --signal=B:USR1@<s>): MB checkpoints and exits cleanly,
# the batch script requeues, the next job loads the checkpoint (CPT and SFT alike)
PREEMPTION = {"exit_signal_handler": True, "exit_signal": int(signal.SIGUSR1)}
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
         # MB's training log then writes megatron-core's aux-loss tracker per layer, beside the load
         # entropy of the health callback (megatron_bridge/health.py)
         "moe_per_layer_logging": True,
         **DISPATCH[str(par.moe_dispatcher)]}
    return m


# MB's own named mixed-precision recipes (megatron.bridge.training.mixed_precision), resolved with
# `get_mixed_precision_config` into a MixedPrecisionConfig object: MB's runtime_config_update calls
# `.finalize()`/`.setup()` on whatever `mixed_precision` holds, so a plain dict there crashes it
MIXED_PRECISION = {"bf16": "bf16_mixed",
                   # fp8 with current (tensorwise) scaling, MB's Nemotron-H variant: the first and last two
                   # layers stay bf16 and the parameters are gathered in fp8
                   "fp8": "nemotron_h_bf16_with_fp8_current_scaling_mixed"}


def mixed_precision_recipe(precision: str) -> str:
    """The name of MB's mixed-precision recipe for `megatron_bridge.precision`."""
    if precision not in MIXED_PRECISION:
        raise ConfigError(f"megatron_bridge.precision={precision!r} is not one of {sorted(MIXED_PRECISION)}")
    return MIXED_PRECISION[precision]


def _set_mixed_precision(container, precision: str) -> None:
    """Puts MB's named recipe (a MixedPrecisionConfig object) into the container. The pretrain recipe
    holds an object it tuned (`grad_reduce_in_fp32=False`): that choice is kept; the SFT recipe holds
    the bare name "bf16_mixed" and gets the named recipe's own values."""
    from megatron.bridge.training.mixed_precision import MixedPrecisionConfig, get_mixed_precision_config

    recipe = container.mixed_precision
    mp = get_mixed_precision_config(mixed_precision_recipe(precision))
    if isinstance(recipe, MixedPrecisionConfig):
        mp.grad_reduce_in_fp32 = recipe.grad_reduce_in_fp32
    container.mixed_precision = mp


def _logger_fields(cfg, save_dir: Path, tag: str) -> dict:
    mb = cfg.megatron_bridge
    return {"log_interval": int(mb.log_interval),
            "tensorboard_dir": str(mb.tensorboard_dir or save_dir.parent / "tensorboard"),
            "wandb_project": mb.wandb_project, "wandb_exp_name": mb.wandb_exp_name or f"{Path(str(cfg.run_dir)).name}-{tag}",
            "wandb_save_dir": str(save_dir.parent / "wandb") if mb.wandb_project else None,
            "save_config_filepath": str(save_dir.parent / f"config_{tag}.yaml")}


def checkpoint_layout(par) -> dict:
    """What a distributed-optimizer checkpoint's shard layout depends on: TP, PP, EP, ETP and the size
    of the data-parallel x context-parallel group the optimizer state is sharded over (megatron-core
    shards it over DP x CP). Two jobs with equal values read each other's `dp_reshardable` optimizer
    state; any difference needs the `fully_reshardable` format."""
    from hebatron_nemo.backends.megatron_bridge.checks import layout

    lay = layout(par)
    return {"tp": lay["tp"], "pp": lay["pp"], "ep": lay["ep"], "etp": lay["etp"],
            "dp_x_cp": lay["world"] // max(lay["tp"] * lay["pp"], 1)}


def load_preset(name: str):
    """conf/parallelism/<name>.yaml, checked against the preset schema (ParallelismConfig)."""
    from hebatron_nemo.config import ParallelismConfig

    path = Path(__file__).resolve().parents[3] / "conf" / "parallelism" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"megatron_bridge.segment_parallelism names {name!r}, but {path} does not exist")
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(ParallelismConfig), raw)


def optimizer_state_fully_reshardable(cfg, plan: dict, segment: int) -> bool:
    """True when the job before or after this segment lays the checkpoint out differently
    (`checkpoint_layout` of the presets named in `megatron_bridge.segment_parallelism`); also True when
    that list is empty (the neighbours are unknown: the format every layout can read)."""
    names = list(cfg.megatron_bridge.segment_parallelism)
    if not names:
        return True
    n = len(plan["segments"])
    if len(names) != n:
        raise ConfigError(f"megatron_bridge.segment_parallelism={names} names {len(names)} presets, the plan has {n} "
                          f"segments. Fix: one conf/parallelism preset name per segment, in order")
    if names[segment] != str(cfg.parallelism.name):
        raise ConfigError(f"megatron_bridge.segment_parallelism[{segment}]={names[segment]!r}, but this job runs "
                          f"parallelism={cfg.parallelism.name!r}. Fix: make them the same preset")
    mine = checkpoint_layout(cfg.parallelism)
    neighbours = [names[k] for k in (segment - 1, segment + 1) if 0 <= k < n]
    return any(checkpoint_layout(load_preset(name)) != mine for name in neighbours)


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
                  "micro_batch_size": int(seg["micro_batch"]), "exit_interval": None, **PREEMPTION},
        "validation": {"eval_interval": int(mb.eval_interval), "eval_iters": int(mb.eval_iters)},
        "optimizer": sched["optimizer"],
        "scheduler": sched["scheduler"],
        "checkpoint": {"save": str(save), "save_interval": int(mb.save_interval),
                       # segment 0: a restarted job resumes from its own latest checkpoint when there is one,
                       # else MB loads the HF weights (step reset to 0); later segments continue a checkpoint
                       "load": str(mb.load_dir or save),
                       "pretrained_checkpoint": str(mb.hf_model_dir) if first and mb.hf_model_dir else None,
                       "finetune": False,
                       # the fully reshardable optimizer format gathers the full fp32 optimizer state on
                       # every rank at every save: only when a neighbouring segment lays the model out
                       # differently; the RNG state (per-rank, tied to the old layout; Nano has no
                       # dropout) is not loaded into a new segment
                       "dist_ckpt_optim_fully_reshardable": optimizer_state_fully_reshardable(cfg, plan, segment),
                       "load_rng": first},
        "tokenizer": {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(cfg.tokenizer.path)},
        "logger": _logger_fields(cfg, save, f"seg{segment}-{seg['name']}"),
        "rng": {"seed": int(cfg.seed)},
        "env_vars": preset_env(cfg),
    }


def preset_env(cfg) -> dict[str, str]:
    """The parallelism preset's environment variables (`parallelism.env`): the one source of their
    values for a Megatron-Bridge job."""
    return {str(k): str(v) for k, v in dict(cfg.parallelism.env).items()}


def apply_preset_env(cfg, container, log=print) -> dict[str, str]:
    """Makes the preset's environment variables hold in this process, then applies the container's
    `env_vars` with MB's own `apply_environment_variables`. MB applies env vars with `setdefault`
    (an inherited value wins), so a cluster profile or shell exporting e.g.
    CUDA_DEVICE_MAX_CONNECTIONS=1 would silently undo the preset's 32; the preset's keys are set
    here first (and every replaced value is logged). The recipe's other env vars keep MB's rule.
    Call it before `pretrain()`/`finetune()` (before CUDA is initialized). Returns {key: replaced value}."""
    import os

    from megatron.bridge.training.config import apply_environment_variables

    replaced = {}
    for key, value in preset_env(cfg).items():
        old = os.environ.get(key)
        if old is not None and old != value:
            replaced[key] = old
            log(f"environment: {key}={old} (inherited) replaced by parallelism.env ({cfg.parallelism.name}): {value}")
        os.environ[key] = value
        container.env_vars[key] = value
    apply_environment_variables(container)
    return replaced


def dataset_fields(cfg, segment: int, plan: dict | None = None) -> dict:
    """Our dataset provider's fields (the object itself is made in `build_cpt_container`)."""
    period = 0
    if plan is not None:  # one evaluation = eval_iters global batches: the validation set's period
        period = int(cfg.megatron_bridge.eval_iters) * int(plan["segments"][segment]["global_batch"])
    return {"plan_path": str(Path(str(cfg.run_dir)) / "plan.json"), "segment": int(segment),
            "cache_dir": str(cfg.cache_dir), "data_root": str(cfg.data.output_dir), "dataloader_type": "single",
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


def _set_cuda_graph_modules(container, cfg) -> None:
    """The preset's per-layer CUDA graph modules (`parallelism.cuda_graph_modules`) through MB's own
    setter; None keeps the recipe's."""
    mods = cfg.parallelism.cuda_graph_modules
    if mods is None:
        return
    from megatron.bridge.utils.cuda_graph import set_cuda_graph_modules

    set_cuda_graph_modules(container.model, [str(m) for m in mods])


def build_cpt_container(cfg, plan: dict, segment: int):
    """The MB ConfigContainer for one CPT segment job (MB imported here)."""
    from hebatron_nemo.backends.megatron_bridge.dataset_provider import provider_class

    container = _recipe(RECIPE_PRETRAIN)()
    _set_mixed_precision(container, str(cfg.megatron_bridge.precision))
    # env_vars merge: the recipe's (NVTE, allocator, NCCL) stay, the preset's win where both set one
    _apply(container, cpt_overrides(cfg, plan, segment), list(cfg.megatron_bridge.overrides))
    _set_cuda_graph_modules(container, cfg)
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
                  "global_batch_size": int(s.global_batch), "micro_batch_size": int(s.micro_batch),
                  **PREEMPTION},
        "validation": {"eval_interval": int(mb.eval_interval), "eval_iters": int(mb.eval_iters)},
        "optimizer": {"lr": float(s.lr), "min_lr": float(s.min_lr), "weight_decay": float(cfg.optim.weight_decay),
                      "adam_beta1": float(cfg.optim.beta1), "adam_beta2": float(cfg.optim.beta2),
                      "adam_eps": float(cfg.optim.eps), "clip_grad": float(cfg.optim.clip_grad)},
        "scheduler": {"lr_decay_style": "cosine", "lr_warmup_fraction": float(s.warmup_fraction), "lr_warmup_iters": 0,
                      "lr_warmup_samples": 0, "lr_decay_iters": steps, "lr_decay_samples": None, "lr_warmup_init": 0.0,
                      "start_weight_decay": float(cfg.optim.weight_decay),
                      "end_weight_decay": float(cfg.optim.weight_decay), "weight_decay_incr_style": "constant"},
        # MB's own resume rule (checkpointing.load_checkpoint): when `load` holds a checkpoint it is loaded
        # whole (step, optimizer, scheduler, data position); only when it holds none are the weights taken
        # from `pretrained_checkpoint`, and MB sets `finetune` itself for that load. `finetune: True` here
        # would make every requeued job restart at step 0 without optimizer state.
        "checkpoint": {"save": str(save), "save_interval": int(mb.save_interval), "load": str(mb.load_dir or save),
                       "pretrained_checkpoint": str(s.init_from), "finetune": False},
        "tokenizer": {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(cfg.tokenizer.path)},
        "ddp": {"average_in_collective": False},  # per-token loss with packing (and CP): sum, then divide
        "logger": _logger_fields(cfg, save, "sft"),
        "rng": {"seed": int(cfg.seed)},
        "env_vars": preset_env(cfg),
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
    _set_mixed_precision(container, str(cfg.megatron_bridge.precision))
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
