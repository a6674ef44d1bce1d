"""Megatron-Bridge's real config path on our seam: the Nemotron-3 Nano recipe, our fields applied with
MB's own OmegaConf override utilities, MB's own validation, and no recipe default left where the
experiment must decide."""

from __future__ import annotations

import copy
import signal

import pytest
import torch
from omegaconf import OmegaConf

from mb_fixtures import (tiny_hf_folder, CPT_EXPERIMENTS, SFT_EXPERIMENTS, cluster_overrides, compose_experiment,
                         prepare_cluster_sources)

from hebatron_nemo.backends.megatron_bridge.checks import segment_index
from hebatron_nemo.backends.megatron_bridge.seam import (build_cpt_container, build_sft_container, container_yaml,
                                                        cpt_overrides, sft_overrides)
from hebatron_nemo.curriculum.runplan import make_plan
from hebatron_nemo.errors import ConfigError




@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    data = prepare_cluster_sources(tmp)
    hf = tiny_hf_folder(tmp / "hf")
    out = {}
    for name in CPT_EXPERIMENTS:
        # the base-model folder must exist for MB's checkpoint validation: the tiny HF folder stands in
        cfg = compose_experiment(name, [*cluster_overrides(tmp, data), f"megatron_bridge.hf_model_dir={hf}"])
        out[name] = (cfg, make_plan(cfg, log=lambda *a, **k: None))
    for name in SFT_EXPERIMENTS:
        out[name] = (compose_experiment(name, [*cluster_overrides(tmp, data), f"sft.init_from={hf}"], recipe="sft"), None)
    return tmp, out


def _recipe():
    from megatron.bridge.recipes.nemotronh import nemotron_3_nano_pretrain_config

    return nemotron_3_nano_pretrain_config()


def _leaves(d: dict, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _get(container, path):
    obj = container
    for p in path:
        obj = obj[p] if isinstance(obj, dict) else getattr(obj, p)
    return obj


@pytest.mark.parametrize("name", CPT_EXPERIMENTS)
def test_recipe_plus_our_overrides_through_mb_utilities(cluster, name):
    _, exps = cluster
    cfg, plan = exps[name]
    k = segment_index(cfg, plan["segments"])
    c = build_cpt_container(cfg, plan, k)
    ours = cpt_overrides(cfg, plan, k)
    for path, value in _leaves(ours):
        got = _get(c, path)
        assert got == value, (path, got, value)
    recipe_env = _recipe().env_vars
    assert set(c.env_vars) == set(recipe_env) | set(ours["env_vars"])  # the recipe's stay, the preset's win
    assert c.env_vars["PYTORCH_CUDA_ALLOC_CONF"] == recipe_env["PYTORCH_CUDA_ALLOC_CONF"]
    # the recipe's own architecture is untouched
    assert c.model.hybrid_layer_pattern == cfg.model.pattern and c.model.num_moe_experts == 128
    assert c.model.moe_router_topk == 6 and c.model.moe_router_score_function == "sigmoid"
    # our dataset provider, the sampler that keeps the curriculum order
    assert type(c.dataset).__name__ == "HebatronCurriculumDatasetProvider" and c.dataset.dataloader_type == "single"
    assert "train_samples:" in container_yaml(c)


@pytest.mark.parametrize("name", CPT_EXPERIMENTS)
def test_mb_validate_accepts_the_container(cluster, name, monkeypatch):
    """MB's own ConfigContainer.validate() at the experiment's world size (WORLD_SIZE), its one GPU query
    (the flex dispatcher's device check) disabled: parallel sizes, sequence/CP rules, sample-based
    scheduler arithmetic."""
    import megatron.bridge.training.config as mbc

    _, exps = cluster
    cfg, plan = exps[name]
    k = segment_index(cfg, plan["segments"])
    c = build_cpt_container(cfg, plan, k)
    monkeypatch.setenv("WORLD_SIZE", str(cfg.parallelism.nodes * cfg.parallelism.gpus_per_node))
    monkeypatch.setattr(mbc, "validate_flex_dispatcher_backend", lambda model: None)
    c.validate()
    seg = plan["segments"][k]
    assert c.data_parallel_size == {0: 64, 1: 8}[k]
    assert c.scheduler.lr_decay_steps == c.scheduler.lr_decay_samples
    assert c.scheduler.wsd_decay_steps == c.scheduler.lr_wsd_decay_samples
    # MB's own finalize turns our train_samples into the step the segment must stop at: a segment-1 job
    # resumes at step start_step (the checkpoint's) and runs exactly the plan's batches
    assert c.train.train_iters == seg["start_step"] + seg["batches"]


# what every CPT/SFT experiment must set itself; DIFFER: must also differ from the from-scratch recipe's value
MUST_SET = [("optimizer", "lr"), ("optimizer", "min_lr"), ("train", "global_batch_size"), ("model", "seq_length"),
            ("scheduler", "start_weight_decay"), ("scheduler", "end_weight_decay"), ("checkpoint", "save"),
            ("checkpoint", "load"), ("tokenizer", "tokenizer_model")]
DIFFER = {("optimizer", "lr"), ("optimizer", "min_lr"), ("train", "global_batch_size"),
          ("scheduler", "start_weight_decay"), ("scheduler", "end_weight_decay"), ("checkpoint", "save"),
          ("checkpoint", "load"), ("tokenizer", "tokenizer_model")}


@pytest.mark.parametrize("name", CPT_EXPERIMENTS + SFT_EXPERIMENTS)
def test_no_leaked_defaults(cluster, name, tmp_path):
    _, exps = cluster
    cfg, plan = exps[name]
    default = _recipe()
    if plan is not None:
        k = segment_index(cfg, plan["segments"])
        c, ours = build_cpt_container(cfg, plan, k), cpt_overrides(cfg, plan, k)
        must = MUST_SET + [("train", "train_samples"), ("scheduler", "lr_warmup_samples"),
                           ("scheduler", "lr_decay_samples")]
        differ = DIFFER | {("train", "train_samples")}
        if k == 0:
            differ = differ | {("scheduler", "lr_warmup_samples")}
        assert type(c.dataset) is not type(default.dataset) and c.dataset.dataloader_type == "single"
    else:
        c, ours = build_sft_container(cfg, tmp_path / "data"), sft_overrides(cfg, tmp_path / "data")
        # steps from the data: sft.epochs over the packed rows (MB sets train_iters and lr_decay_iters from them)
        must = MUST_SET + [("train", "num_epochs"), ("scheduler", "lr_warmup_fraction")]
        differ = DIFFER | {("train", "num_epochs"), ("scheduler", "lr_warmup_fraction")}
        assert c.train.train_iters is None and c.scheduler.lr_decay_iters is None
        assert type(c.dataset).__name__ == "GPTSFTDatasetConfig"
    for path in must:
        assert _get(ours, path) is not None, path
        assert _get(c, path) == _get(ours, path), path
        if path in differ:
            assert _get(c, path) != _get(default, path), f"{name}: {'.'.join(path)} left at the recipe's default"
    assert "nvidia/" not in str(c.tokenizer.tokenizer_model)


def test_sft_container_from_a_local_hf_folder(cluster, tmp_path):
    _, exps = cluster
    cfg, _ = exps["hebatron_sft_h100x16"]
    c = build_sft_container(cfg, tmp_path / "data")
    # the model provider came from the local folder through AutoBridge (a hub id would fail offline)
    assert c.model.num_layers == 4 and c.model.num_moe_experts == 8 and c.model.hybrid_layer_pattern == "M*EM"
    assert c.model.calculate_per_token_loss is True and c.ddp.average_in_collective is False
    d = c.dataset
    assert d.preprocessing.loss_mode == "assistant" and d.enable_offline_packing
    assert d.offline_packing_specs.packed_sequence_size == d.seq_length == cfg.sft_data.max_length
    assert d.offline_packing_specs.pad_seq_to_mult == 1  # CP 1; 2 x CP otherwise
    assert d.dataset_root == str(tmp_path / "data") and c.checkpoint.pretrained_checkpoint == cfg.sft.init_from
    import megatron.bridge.recipes.nemotronh.h100.nemotron_3_nano as recipe_mod

    assert recipe_mod._NEMOTRON_3_NANO_MODEL_ID.startswith("nvidia/")  # restored after the call
    # no step count: epochs over the packed data, which MB's validate accepts only with the "batch" sampler
    ep = copy.deepcopy(cfg)
    ep.megatron_bridge.sft_train_iters = None
    c_ep = build_sft_container(ep, tmp_path / "data")
    assert c_ep.train.train_iters is None and c_ep.train.num_epochs == cfg.sft.epochs
    assert c_ep.dataset.dataloader_type == "batch"
    cp = copy.deepcopy(cfg)
    OmegaConf.update(cp, "parallelism.context_parallel_size", 2)
    OmegaConf.update(cp, "parallelism.cp_comm_type", "p2p")
    assert build_sft_container(cp, tmp_path / "data").dataset.offline_packing_specs.pad_seq_to_mult == 4


def test_mb_scheduler_wiring_follows_the_plan(cluster):
    """The emitted fields through MB's own `_calculate_scheduler_steps` and `_get_scheduler` (the code that
    builds megatron-core's scheduler in training), segment 1 then segment 2 after a state save/load."""
    from megatron.bridge.training.optim import _get_scheduler

    from hebatron_nemo.backends.megatron_bridge.schedule import plan_schedule

    _, exps = cluster
    cfg, plan = exps["hebatron_cpt_8k_h100x64"]
    curve = plan_schedule(plan, cfg.optim)
    state, tokens, worst = None, 0, 0.0
    for k, seg in enumerate(plan["segments"]):
        # each segment's job composes its own experiment (its preset is the one segment_parallelism names)
        job_cfg = exps["hebatron_cpt_64k_h100x64"][0] if k == 1 else cfg
        c = build_cpt_container(job_cfg, plan, k)
        c._calculate_scheduler_steps()
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=c.optimizer.lr)
        sched = _get_scheduler(c.optimizer, c.scheduler, opt)
        if state is None:
            sched.step(0)
        else:
            sched.load_state_dict(copy.deepcopy(state))
        # check a spread of steps (the 64-GPU plan has ~10^4): first, last, around warmup and decay
        steps = seg["batches"]
        check = sorted({0, 1, 2, steps - 1, steps // 2, *range(0, steps, max(1, steps // 200))})
        done = 0
        for i in check:
            sched.step(seg["global_batch"] * (i - done))
            done = i
            t = tokens + i * seg["global_batch"] * seg["seq_length"]
            worst = max(worst, abs(opt.param_groups[0]["lr"] - curve(t)))
            assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1)
        sched.step(seg["global_batch"] * (steps - done))
        tokens += seg["tokens"]
        state = sched.state_dict()
    assert worst <= 1e-9, worst


@pytest.mark.parametrize("name", CPT_EXPERIMENTS)
def test_dry_run_prints_the_resolved_container(cluster, name, capsys):
    from hebatron_nemo.backends.megatron_bridge.run import run_cpt_mb

    _, exps = cluster
    cfg, _ = exps[name]
    cfg = copy.deepcopy(cfg)
    cfg.megatron_bridge.dry_run = True
    run_cpt_mb(cfg)
    out = capsys.readouterr().out
    assert "# resolved ConfigContainer" in out and "data parallel DP = 64 / " in out
    assert "hybrid_layer_pattern: MEMEM*EMEMEM*" in out and "HebatronCurriculumDatasetProvider" not in out.split("#")[0]
    assert "dataloader_type: single" in out and f"context_parallel_size: {cfg.parallelism.context_parallel_size}" in out


def test_sft_dry_run_prints_the_resolved_container(cluster, capsys):
    from hebatron_nemo.backends.megatron_bridge.run import run_sft_mb

    _, exps = cluster
    cfg = copy.deepcopy(exps["hebatron_sft_h100x16"][0])
    cfg.megatron_bridge.dry_run = True
    run_sft_mb(cfg)
    out = capsys.readouterr().out
    assert "# resolved ConfigContainer" in out and "loss_mode: assistant" in out and "data parallel DP = 16 / 1 = 16" in out


def test_precision_and_dispatcher_choices(cluster):
    _, exps = cluster
    cfg, plan = exps["hebatron_cpt_8k_h100x64"]
    cfg = copy.deepcopy(cfg)
    cfg.megatron_bridge.precision = "fp8"
    cfg.parallelism.moe_dispatcher = "deepep"
    c = build_cpt_container(cfg, plan, 0)
    assert c.mixed_precision.fp8 == "hybrid" and c.mixed_precision.fp8_recipe == "tensorwise"
    assert c.mixed_precision.first_last_layers_bf16 and c.mixed_precision.bf16
    assert c.model.moe_token_dispatcher_type == "flex" and c.model.moe_flex_dispatcher_backend == "deepep"
    cfg.parallelism.moe_dispatcher = "alltoall"
    a2a = build_cpt_container(cfg, plan, 0).model
    assert a2a.moe_token_dispatcher_type == "alltoall" and a2a.moe_flex_dispatcher_backend is None
    assert a2a.moe_shared_expert_overlap is True


# ------------------------------------------------------------------ MB's runtime path on every container


def _sft(cfg, precision):
    cfg = copy.deepcopy(cfg)
    cfg.megatron_bridge.precision = precision
    return cfg


def _world(cfg) -> str:
    return str(cfg.parallelism.nodes * cfg.parallelism.gpus_per_node)


@pytest.fixture
def mb_runtime(monkeypatch):
    """MB's `runtime_config_update` as `pretrain()`/`finetune()` run it first, at the job's world size;
    its one GPU query (the flex dispatcher's device check) disabled. It writes the container's env vars
    into os.environ: restored after the test."""
    import os

    import megatron.bridge.training.config as mbc

    saved = dict(os.environ)
    monkeypatch.setattr(mbc, "validate_flex_dispatcher_backend", lambda model: None)

    def run(container, cfg):
        monkeypatch.setenv("WORLD_SIZE", _world(cfg))
        mbc.runtime_config_update(container)
        return container

    yield run
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
@pytest.mark.parametrize("name", CPT_EXPERIMENTS)
def test_runtime_config_update_on_every_cpt_container(cluster, name, precision, mb_runtime):
    """MB's runtime_config_update (env vars, mixed-precision finalize + setup onto model/optimizer/DDP,
    data-parallel size, comm overlap, validate) on both segments' containers, bf16 and fp8."""
    from megatron.bridge.training.mixed_precision import MixedPrecisionConfig

    _, exps = cluster
    cfg, plan = exps[name]
    cfg = _sft(cfg, precision)
    k = segment_index(cfg, plan["segments"])
    c = mb_runtime(build_cpt_container(cfg, plan, k), cfg)
    mp = c.mixed_precision
    assert isinstance(mp, MixedPrecisionConfig) and mp.bf16 and c.model.bf16 and c.optimizer.bf16
    assert mp.grad_reduce_in_fp32 is False  # the pretrain recipe's own tuning kept
    if precision == "fp8":
        assert (c.model.fp8, c.model.fp8_recipe, c.model.first_last_layers_bf16) == ("hybrid", "tensorwise", True)
        assert c.model.num_layers_at_start_in_bf16 == c.model.num_layers_at_end_in_bf16 == 2
    else:
        assert c.model.fp8 is None
    assert c.data_parallel_size == {0: 64, 1: 8}[k]


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_runtime_config_update_on_the_sft_container(cluster, precision, mb_runtime, tmp_path):
    """The SFT recipe holds mixed_precision as the name "bf16_mixed"; our container must still be
    something MB's runtime_config_update can finalize (a dict there raised AttributeError)."""
    from megatron.bridge.training.mixed_precision import MixedPrecisionConfig

    _, exps = cluster
    cfg = _sft(exps["hebatron_sft_h100x16"][0], precision)
    c = mb_runtime(build_sft_container(cfg, tmp_path / "data"), cfg)
    assert isinstance(c.mixed_precision, MixedPrecisionConfig) and c.model.bf16
    assert c.model.fp8 == ("hybrid" if precision == "fp8" else None)
    assert c.data_parallel_size == 16 and c.model.calculate_per_token_loss


def test_sft_resumes_its_own_checkpoint_with_optimizer_state(cluster, tmp_path, monkeypatch):
    """MB's own `load_checkpoint` decides what an SFT job loads (its model/optimizer loading, which needs
    GPUs, replaced by a recorder): the first job takes the HF weights from `pretrained_checkpoint`
    (MB turns `finetune` on for that load: step 0, no optimizer state); a requeued job whose save dir
    holds a checkpoint loads that one whole (`finetune` off: step, optimizer, scheduler)."""
    import megatron.bridge.training.checkpointing as ckpt
    from megatron.bridge.training.state import GlobalState

    _, exps = cluster
    cfg = copy.deepcopy(exps["hebatron_sft_h100x16"][0])
    cfg.megatron_bridge.save_dir = str(tmp_path / "megatron")
    c = build_sft_container(cfg, tmp_path / "data")
    assert c.train.exit_signal_handler and c.train.exit_signal == signal.SIGUSR1  # the launcher's USR1
    loads = []
    def record(load_dir, state, *a, **k):  # MB's loading of model/optimizer tensors: GPU only
        loads.append((load_dir, state.cfg.checkpoint.finetune))
        return 0, 0

    monkeypatch.setattr(ckpt, "_load_checkpoint_from_path", record)

    def job():
        state = GlobalState()
        state.cfg = copy.deepcopy(c)
        ckpt.load_checkpoint(state, [], optimizer=None, opt_param_scheduler=None)
        return loads[-1]

    assert job() == (cfg.sft.init_from, True)  # fresh: the HF folder, as a fine-tuning start
    save = tmp_path / "megatron"
    (save / "iter_0000040").mkdir(parents=True)
    (save / "latest_checkpointed_iteration.txt").write_text("40")  # what MB's save writes
    assert job() == (str(save), False)  # requeued: its own checkpoint, fully


def test_preset_env_wins_over_the_inherited_environment(cluster, monkeypatch):
    """MB applies `env_vars` with setdefault: an exported CUDA_DEVICE_MAX_CONNECTIONS=1 (a cluster
    profile's) would beat the preset's 32. `apply_preset_env` (run before pretrain/finetune) makes the
    preset's value hold through MB's own `apply_environment_variables`."""
    import os

    from megatron.bridge.training.config import apply_environment_variables

    from hebatron_nemo.backends.megatron_bridge.seam import apply_preset_env

    _, exps = cluster
    cfg, plan = exps["hebatron_cpt_8k_h100x64"]
    saved = dict(os.environ)
    try:
        monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1")
        c = build_cpt_container(cfg, plan, 0)
        apply_environment_variables(c)
        assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"  # MB alone: the inherited value stays
        notes = []
        replaced = apply_preset_env(cfg, c, notes.append)
        assert replaced == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"} and "CUDA_DEVICE_MAX_CONNECTIONS=1" in notes[0]
        apply_environment_variables(c)  # what runtime_config_update does first
        assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "32" == cfg.parallelism.env.CUDA_DEVICE_MAX_CONNECTIONS
        assert c.env_vars["CUDA_DEVICE_MAX_CONNECTIONS"] == "32"
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_64k_preset_captures_cuda_graphs_on_mamba_only(cluster):
    from megatron.bridge.utils.cuda_graph import cuda_graph_module_names

    _, exps = cluster
    cfg, plan = exps["hebatron_cpt_64k_h100x64"]
    c = build_cpt_container(cfg, plan, 1)
    assert "core_attn" in c.model.recompute_modules and c.model.context_parallel_size == 8
    assert cuda_graph_module_names(c.model) == ["mamba"]
    c8, p8 = exps["hebatron_cpt_8k_h100x64"]
    assert cuda_graph_module_names(build_cpt_container(c8, p8, 0).model) == ["attn", "mamba"]  # the recipe's


@pytest.mark.parametrize("presets,expect", [(["h100_64gpu", "h100_64gpu_64k_cp8"], False),
                                            (["h100_16gpu", "h100_64gpu_64k_cp8"], True),
                                            ([], True)])
def test_fully_reshardable_optimizer_state_only_across_a_layout_change(cluster, presets, expect):
    """dp_reshardable suffices between segments with equal TP/PP/EP/ETP and DP x CP (8K: DP 64 x CP 1,
    64K: DP 8 x CP 8); a neighbour with another layout (or an unknown one) needs fully_reshardable. The
    flag reaches MB's own checkpoint metadata builder."""
    from megatron.bridge.training.checkpointing import _build_sharded_state_dict_metadata

    _, exps = cluster
    for name in CPT_EXPERIMENTS:
        cfg, plan = exps[name]
        k = segment_index(cfg, plan["segments"])
        cfg = copy.deepcopy(cfg)
        cfg.megatron_bridge.segment_parallelism = presets
        if presets and presets[k] != cfg.parallelism.name:
            with pytest.raises(ConfigError, match=r"segment_parallelism\[0\]"):
                cpt_overrides(cfg, plan, k)
            continue
        c = build_cpt_container(cfg, plan, k)
        assert c.checkpoint.dist_ckpt_optim_fully_reshardable is expect, (name, presets)
        meta = _build_sharded_state_dict_metadata(True, c.checkpoint)
        assert meta["distrib_optim_sharding_type"] == ("fully_reshardable" if expect else "dp_reshardable")
    cfg, plan = exps["hebatron_cpt_64k_h100x64"]
    cfg = copy.deepcopy(cfg)
    cfg.megatron_bridge.segment_parallelism = ["h100_64gpu"]
    with pytest.raises(ConfigError, match="names 1 presets, the plan has 2"):
        cpt_overrides(cfg, plan, 1)
