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


# ---- the knob table --------------------------------------------------------------------------------
# One row per config knob that reaches a ConfigContainer field: (our dotted key, the field it sets, cast).
# The seam builds those fields from these rows (`knob_fields`); tests/test_knobs.py composes every
# experiment and fails when two keys set one field, and tests/mb_tier/test_mb_knobs.py checks every
# field against Megatron-Bridge's own dataclasses. Keys under `curriculum.segments.` are the job's
# segment's values (read from the plan, which copies them from curriculum.segments[<segment>]).


def _strs(value) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(value).items()}


def _opt_str(value):
    return None if value is None else str(value)


def _path(value) -> str:
    return str(Path(str(value)))


COMMON_KNOBS = (
    ("parallelism.tensor_model_parallel_size", "model.tensor_model_parallel_size", int),
    ("parallelism.pipeline_model_parallel_size", "model.pipeline_model_parallel_size", int),
    ("parallelism.context_parallel_size", "model.context_parallel_size", int),
    ("parallelism.expert_model_parallel_size", "model.expert_model_parallel_size", int),
    ("parallelism.expert_tensor_parallel_size", "model.expert_tensor_parallel_size", int),
    ("parallelism.sequence_parallel", "model.sequence_parallel", bool),
    ("parallelism.cp_comm_type", "model.cp_comm_type", str),  # None when CP = 1 (see knob_fields)
    ("parallelism.recompute_modules", "model.recompute_modules", list),
    ("parallelism.env", "env_vars", _strs),
    # the local backend's router keys, same meaning (megatron-core's formulas)
    ("router.bias_update_rate", "model.moe_router_bias_update_rate", float),
    ("router.seq_aux_loss_coeff", "model.moe_aux_loss_coeff", float),
    ("optim.weight_decay", "optimizer.weight_decay", float),
    ("optim.adam_beta1", "optimizer.adam_beta1", float),
    ("optim.adam_beta2", "optimizer.adam_beta2", float),
    ("optim.adam_eps", "optimizer.adam_eps", float),
    ("optim.clip_grad", "optimizer.clip_grad", float),
    ("checkpoint.save_interval", "checkpoint.save_interval", int),
    ("megatron_bridge.save_dir", "checkpoint.save", _path),
    ("megatron_bridge.eval_iters", "validation.eval_iters", int),
    ("logging.log_interval", "logger.log_interval", int),
    ("logging.wandb_project", "logger.wandb_project", _opt_str),  # None unless logging.wandb (see knob_fields)
    ("tokenizer.path", "tokenizer.tokenizer_model", str),
    ("seed", "rng.seed", int),
)
CPT_KNOBS = COMMON_KNOBS + (
    ("curriculum.segments.seq_length", "model.seq_length", int),
    ("curriculum.segments.global_batch_size", "train.global_batch_size", int),
    ("curriculum.segments.micro_batch_size", "train.micro_batch_size", int),
    ("optim.lr", "optimizer.lr", float),
    ("optim.min_lr", "optimizer.min_lr", float),
    ("eval.eval_interval", "validation.eval_interval", int),
)
SFT_KNOBS = COMMON_KNOBS + (
    ("sft_data.max_length", "model.seq_length", int),  # also the dataset's seq_length and packed length
    ("sft.global_batch_size", "train.global_batch_size", int),
    ("sft.micro_batch_size", "train.micro_batch_size", int),
    ("sft.lr", "optimizer.lr", float),
    ("sft.min_lr", "optimizer.min_lr", float),
    ("sft.warmup_fraction", "scheduler.lr_warmup_fraction", float),
    ("sft.eval_interval", "validation.eval_interval", int),
    ("sft.init_from", "checkpoint.pretrained_checkpoint", str),
)
# fields the seam computes from knobs (not one knob's value): field -> what it follows from
DERIVED = {
    "model.moe_router_enable_expert_bias": "router.bias_update_rate > 0",
    "model.moe_token_dispatcher_type": "parallelism.moe_dispatcher",
    "model.moe_flex_dispatcher_backend": "parallelism.moe_dispatcher",
    "model.moe_shared_expert_overlap": "parallelism.moe_dispatcher",
    "model.calculate_per_token_loss": "SFT (assistant-only loss over packed sequences)",
    "train.train_samples": "the plan: the segment's end sample (mb_train_samples)",
    "train.train_iters": "megatron_bridge.sft_train_iters (SFT); None for CPT (train_samples)",
    "train.num_epochs": "sft.epochs, when megatron_bridge.sft_train_iters is unset",
    "checkpoint.load": "megatron_bridge.load_dir, else megatron_bridge.save_dir",
    "checkpoint.pretrained_checkpoint": "megatron_bridge.hf_model_dir (CPT segment 0)",
    "checkpoint.dist_ckpt_optim_fully_reshardable": "megatron_bridge.segment_parallelism",
    "checkpoint.load_rng": "the first segment only",
    "logger.tensorboard_dir": "megatron_bridge.tensorboard_dir, else <save_dir>/../tensorboard",
    "logger.wandb_exp_name": "megatron_bridge.wandb_exp_name, else <run>-<job>",
    "logger.wandb_save_dir": "logging.wandb and logging.wandb_project",
    "logger.save_config_filepath": "megatron_bridge.save_dir",
    "scheduler.*": "optim.* and the plan (schedule.scheduler_fields) for CPT; optim.weight_decay for SFT",
}
# fields the seam sets to one value in every job (our choices, no knob)
FIXED = ("model.recompute_granularity", "model.moe_router_load_balancing_type", "model.moe_per_layer_logging",
         "train.exit_interval",
         "train.exit_signal_handler", "train.exit_signal", "checkpoint.finetune", "tokenizer.tokenizer_type",
         "ddp.average_in_collective")


def knob_value(cfg, key: str, seg: dict | None = None):
    """Our value of one knob: `curriculum.segments.<x>` from the job's plan segment, else the config's."""
    if key.startswith("curriculum.segments."):
        name = key.rsplit(".", 1)[1]
        return seg[PLAN_SEGMENT_KEYS.get(name, name)]
    return OmegaConf.select(cfg, key, throw_on_missing=True)


PLAN_SEGMENT_KEYS = {"global_batch_size": "global_batch", "micro_batch_size": "micro_batch"}  # plan.json's names


def knob_fields(cfg, knobs, seg: dict | None = None) -> dict:
    """The ConfigContainer fields of `knobs` (a table above), nested ({"model": {...}, ...})."""
    out: dict = {}
    for key, path, cast in knobs:
        value = knob_value(cfg, key, seg)
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = None if value is None else cast(value)
    if int(cfg.parallelism.context_parallel_size) == 1:  # megatron-core reads cp_comm_type only with CP > 1
        out["model"]["cp_comm_type"] = None
    if not cfg.logging.wandb:  # MB logs to W&B whenever it has a project
        out["logger"]["wandb_project"] = None
    return out


def _merge(*dicts: dict) -> dict:
    """Nested dicts merged; a field set twice is an error (one knob per field)."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = _merge(out[k], v)
            elif k in out:
                raise ConfigError(f"the seam sets ConfigContainer field {k!r} twice")
            else:
                out[k] = v
    return out


def model_fields(cfg) -> dict:
    """The model fields the seam derives (not one knob's value)."""
    return {"recompute_granularity": "selective",
            "moe_router_enable_expert_bias": float(cfg.router.bias_update_rate) > 0,
            "moe_router_load_balancing_type": "seq_aux_loss",
            # MB's training log then writes megatron-core's aux-loss tracker per layer, beside the load
            # entropy of the health callback (megatron_bridge/health.py)
            "moe_per_layer_logging": True,
            **DISPATCH[str(cfg.parallelism.moe_dispatcher)]}


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
    wandb = bool(cfg.logging.wandb and cfg.logging.wandb_project)
    return {"tensorboard_dir": str(mb.tensorboard_dir or save_dir.parent / "tensorboard"),
            "wandb_exp_name": mb.wandb_exp_name or f"{Path(str(cfg.run_dir)).name}-{tag}",
            "wandb_save_dir": str(save_dir.parent / "wandb") if wandb else None,
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
    return _merge(knob_fields(cfg, CPT_KNOBS, seg), {
        "model": model_fields(cfg),
        "train": {"train_iters": None, "train_samples": mb_train_samples(plan, segment), "exit_interval": None,
                  **PREEMPTION},
        "scheduler": sched["scheduler"],  # its "optimizer" lr / min_lr are optim.lr / optim.min_lr (the table's)
        # segment 0: a restarted job resumes from its own latest checkpoint when there is one, else MB loads
        # the HF weights (step reset to 0); later segments continue a checkpoint
        "checkpoint": {"load": str(mb.load_dir or save),
                       "pretrained_checkpoint": str(mb.hf_model_dir) if first and mb.hf_model_dir else None,
                       "finetune": False,
                       # the fully reshardable optimizer format gathers the full fp32 optimizer state on
                       # every rank at every save: only when a neighbouring segment lays the model out
                       # differently; the RNG state (per-rank, tied to the old layout; Nano has no
                       # dropout) is not loaded into a new segment
                       "dist_ckpt_optim_fully_reshardable": optimizer_state_fully_reshardable(cfg, plan, segment),
                       "load_rng": first},
        "tokenizer": {"tokenizer_type": "HuggingFaceTokenizer"},
        "logger": _logger_fields(cfg, save, f"seg{segment}-{seg['name']}"),
    })


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
    cp = int(cfg.parallelism.context_parallel_size)
    pad = 2 * cp if cp > 1 else 1
    seq = int(cfg.sft_data.max_length)  # conversations are at most this long, so the packs are too
    if seq % pad:
        raise ConfigError(f"sft_data.max_length={seq} (the packed length on Megatron-Bridge) is not divisible by "
                          f"2 x CP = {pad}. Fix: a multiple of {pad}")
    return {"seq_length": seq, "pad_seq_to_mult": pad}


def sft_overrides(cfg, data_dir: Path) -> dict:
    """Our ConfigContainer fields for SFT (everything but the dataset config and model provider)."""
    mb, s = cfg.megatron_bridge, cfg.sft
    sft_layout(cfg)  # refuses a packed length that CP cannot split
    save = Path(str(mb.save_dir))
    iters = mb.sft_train_iters
    steps = int(iters) if iters is not None else None
    return _merge(knob_fields(cfg, SFT_KNOBS), {
        "model": {**model_fields(cfg), "calculate_per_token_loss": True},
        # no fixed step count: sft.epochs over the packed data; MB's _resolve_num_epochs sets train_iters =
        # ceil(epochs x ceil(packed rows / global batch)) once the packed dataset exists (and lr_decay_iters
        # to match), so the steps follow from the prepared data, not from a number in the experiment
        "train": {"train_iters": steps, "num_epochs": None if steps else int(s.epochs), "train_samples": None,
                  **PREEMPTION},
        "scheduler": {"lr_decay_style": "cosine", "lr_warmup_iters": 0,
                      "lr_warmup_samples": 0, "lr_decay_iters": steps, "lr_decay_samples": None, "lr_warmup_init": 0.0,
                      "start_weight_decay": float(cfg.optim.weight_decay),
                      "end_weight_decay": float(cfg.optim.weight_decay), "weight_decay_incr_style": "constant"},
        # MB's own resume rule (checkpointing.load_checkpoint): when `load` holds a checkpoint it is loaded
        # whole (step, optimizer, scheduler, data position); only when it holds none are the weights taken
        # from `pretrained_checkpoint`, and MB sets `finetune` itself for that load. `finetune: True` here
        # would make every requeued job restart at step 0 without optimizer state.
        "checkpoint": {"load": str(mb.load_dir or save), "finetune": False},
        "tokenizer": {"tokenizer_type": "HuggingFaceTokenizer"},
        "ddp": {"average_in_collective": False},  # per-token loss with packing (and CP): sum, then divide
        "logger": _logger_fields(cfg, save, "sft"),
    })


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
