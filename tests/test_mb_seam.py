"""The Megatron-Bridge seam without Megatron-Bridge: what it emits for every cluster experiment, the
checks before GPU time, the dry run, and the per-source loss reduction over data parallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from mb_fixtures import CPT_EXPERIMENTS, REPO, compose_experiment, prepare_cluster_sources, cluster_overrides

from hebatron_nemo.backends.megatron_bridge import checks
from hebatron_nemo.backends.megatron_bridge.forward import SourceStats, per_source_sums
from hebatron_nemo.backends.megatron_bridge.seam import cpt_overrides, dataset_fields
from hebatron_nemo.curriculum.runplan import make_plan
from hebatron_nemo.errors import ConfigError


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    data = prepare_cluster_sources(tmp)
    out = {}
    for name in CPT_EXPERIMENTS:
        cfg = compose_experiment(name, cluster_overrides(tmp, data))
        out[name] = (cfg, make_plan(cfg, log=lambda *a, **k: None))
    return tmp, data, out


EXPECT = {  # experiment -> (segment, seq, global batch, TP, CP, EP, DP)
    "hebatron_cpt_8k_h100x64": (0, 8192, 1280, 1, 1, 8, 64),
    "hebatron_cpt_64k_h100x64": (1, 65536, 160, 1, 8, 8, 8),
}


@pytest.mark.parametrize("name", CPT_EXPERIMENTS)
def test_every_cluster_experiment_emits_our_fields(cluster, name):
    _, _, exps = cluster
    cfg, plan = exps[name]
    k, seq, gbs, tp, cp, ep, dp = EXPECT[name]
    assert cfg.backend == "megatron_bridge" and checks.segment_index(cfg, plan["segments"]) == k
    checks.preflight(cfg, plan, k, check_paths=False)
    seg = plan["segments"][k]
    o = cpt_overrides(cfg, plan, k)
    assert o["model"]["seq_length"] == seq == seg["seq_length"]
    assert (o["model"]["tensor_model_parallel_size"], o["model"]["context_parallel_size"],
            o["model"]["expert_model_parallel_size"]) == (tp, cp, ep)
    assert o["model"]["cp_comm_type"] == ("p2p" if cp > 1 else None)
    assert o["model"]["moe_flex_dispatcher_backend"] == "hybridep"
    assert o["model"]["moe_aux_loss_coeff"] == cfg.router.seq_aux_loss_coeff
    assert o["model"]["moe_router_bias_update_rate"] == cfg.router.bias_update_rate
    assert o["model"]["moe_per_layer_logging"] is True  # per-layer aux loss from megatron-core's tracker
    assert checks.layout(cfg.parallelism)["dp"] == dp
    # MB trains train_samples // global_batch steps, counting from step 0 of the run: the plan's end step
    assert o["train"] == {"train_iters": None, "train_samples": (seg["start_step"] + seg["batches"]) * gbs,
                          "global_batch_size": gbs, "micro_batch_size": 1, "exit_interval": None,
                          "exit_signal_handler": True, "exit_signal": 10}
    assert o["train"]["train_samples"] // gbs - seg["start_step"] == seg["batches"]
    assert gbs * seq == 10_485_760  # the ~10.5M-token global batch in both segments
    assert o["optimizer"]["lr"] == 2e-4 and o["optimizer"]["min_lr"] == 2e-5
    s = o["scheduler"]
    assert s["start_weight_decay"] == s["end_weight_decay"] == 0.1 and s["lr_decay_style"] == "WSD"
    # the decay ends at the plan's last token. Inside segment k a sample count n is the token count
    # tokens_before + (n - start_sample) x seq (a line extended past the segment's end), so the end sample is
    # where that line reaches the plan's total; segment 0 starts at sample 0 and token 0
    tokens_before = sum(x["tokens"] for x in plan["segments"][:k])
    end = seg["start_sample"] + (plan["totals"]["tokens"] - tokens_before) / seq
    assert s["lr_decay_samples"] == pytest.approx(end, rel=1e-12)
    assert s["lr_wsd_decay_samples"] == pytest.approx(cfg.optim.decay_fraction * plan["totals"]["tokens"] / seq, rel=1e-12)
    if k == 0:
        assert s["lr_warmup_samples"] > 0 and o["checkpoint"]["pretrained_checkpoint"] == cfg.megatron_bridge.hf_model_dir
        assert s["lr_decay_samples"] == pytest.approx(plan["totals"]["tokens"] / seq, rel=1e-12)
        assert s["lr_decay_samples"] > seg["num_samples"]  # the decay lies beyond the 8K segment
    else:  # the 64K job continues the 8K job's checkpoint, never the HF weights
        assert s["lr_warmup_samples"] == 0 and o["checkpoint"]["pretrained_checkpoint"] is None
        assert s["lr_decay_samples"] == plan["totals"]["samples"]  # the decay ends at the plan's last sample
    assert o["checkpoint"]["save"] == o["checkpoint"]["load"] == cfg.megatron_bridge.save_dir
    assert o["tokenizer"]["tokenizer_model"] == str(cfg.tokenizer.path) and "nvidia/" not in o["tokenizer"]["tokenizer_model"]
    assert o["env_vars"]["NUM_OF_HYBRID_EP_RANKS_PER_NVLINK_DOMAIN"] == "8"
    d = dataset_fields(cfg, k)
    assert d["dataloader_type"] == "single" and d["segment"] == k and d["plan_path"].endswith("plan.json")


def test_both_segments_share_one_plan_and_one_lr_curve(cluster):
    _, _, exps = cluster
    (c8, p8), (c64, p64) = exps["hebatron_cpt_8k_h100x64"], exps["hebatron_cpt_64k_h100x64"]
    assert p8["fingerprint"] == p64["fingerprint"] and c8.run_dir == c64.run_dir
    assert [p["name"] for p in p8["phases"]] == ["formal", "colloquial", "long_context"]
    s8, s64 = cpt_overrides(c8, p8, 0)["scheduler"], cpt_overrides(c64, p64, 1)["scheduler"]
    # both place the decay at the same token count: (lr_decay - wsd) samples x seq + the segment's token offset
    seg0, seg1 = p8["segments"]
    d0 = (s8["lr_decay_samples"] - s8["lr_wsd_decay_samples"]) * seg0["seq_length"]
    d1 = seg0["tokens"] + (s64["lr_decay_samples"] - s64["lr_wsd_decay_samples"] - seg1["start_sample"]) * seg1["seq_length"]
    assert d0 == pytest.approx(d1, rel=1e-12)
    assert seg0["tokens"] < d1  # the decay lies inside the 64K segment


def _par(**kw):
    base = {"name": "t", "nodes": 8, "gpus_per_node": 8, "tensor_model_parallel_size": 1,
            "pipeline_model_parallel_size": 1, "context_parallel_size": 1, "expert_model_parallel_size": 8,
            "expert_tensor_parallel_size": 1, "sequence_parallel": False, "cp_comm_type": "p2p", "moe_dispatcher": "hybridep",
            "recompute_modules": [], "env": {}}
    short = {"tensor": "tensor_model_parallel_size", "pipeline": "pipeline_model_parallel_size",
             "context": "context_parallel_size", "expert": "expert_model_parallel_size"}
    return OmegaConf.create({**base, **{short.get(k, k): v for k, v in kw.items()}})


SEG = {"name": "seq8k", "seq_length": 8192, "global_batch": 1280, "micro_batch": 1, "data_parallel_size": 64}


@pytest.mark.parametrize("par, seg, needle", [
    (dict(nodes=3, tensor=2, context=8), SEG, r"24 GPUs .* do not divide by TP x PP x CP = 2 x 1 x 8 = 16"),
    (dict(expert=48), SEG, r"parallelism.expert_model_parallel_size=48 does not divide the model's 128 experts"),
    (dict(nodes=1, gpus_per_node=8, context=8, expert=16), {**SEG, "data_parallel_size": 1},
     r"parallelism.expert_model_parallel_size=16 does not divide the DP x CP group \(1 x 8 = 8\)"),
    (dict(context=8), {**SEG, "seq_length": 8200, "data_parallel_size": 8},
     r"seq_length=8200 is not divisible by 2 x CP = 16"),
    (dict(), {**SEG, "global_batch": 1000}, r"global_batch_size=1000 is not divisible by DP x micro_batch_size = 64 x 1"),
    (dict(context=8), SEG, r"data_parallel_size=64 but parallelism=t gives DP 8"),
    (dict(moe_dispatcher="deepep", expert=16), SEG, r"deepep with EP 16 > 8 GPUs per node.*Fix: moe_dispatcher=hybridep"),
    (dict(context=8, cp_comm_type="a2a"), {**SEG, "data_parallel_size": 8}, r"caps all-to-all CP.*Fix: cp_comm_type=p2p"),
    (dict(sequence_parallel=True), SEG, r"sequence_parallel=true needs parallelism.tensor_model_parallel_size > 1"),
    (dict(pipeline=2), {**SEG, "data_parallel_size": 32}, r"parallelism.pipeline_model_parallel_size=2"),
])
def test_world_size_errors_name_field_and_fix(par, seg, needle):
    problems = checks.parallelism_problems(_par(**par), 128, [seg])
    assert any(__import__("re").search(needle, p) for p in problems), problems
    with pytest.raises(ConfigError, match="before any GPU time"):
        checks.raise_if(problems, "x")


def test_preflight_paths_and_segment(cluster, tmp_path):
    _, _, exps = cluster
    cfg, plan = exps["hebatron_cpt_64k_h100x64"]
    cfg = cfg.copy()
    cfg.megatron_bridge.save_dir = str(tmp_path / "nothing")
    with pytest.raises(ConfigError) as e:
        checks.preflight(cfg, plan, 1, check_paths=True)
    assert "megatron_bridge.load_dir=" in str(e.value) and "run segment 0 first" in str(e.value)
    assert "tokenizer.path=" in str(e.value)
    with pytest.raises(ConfigError, match=r"segment='seq9k' is not a segment of the plan: \['seq8k', 'seq64k'\]"):
        checks.segment_index(OmegaConf.merge(cfg, {"segment": "seq9k"}), plan["segments"])
    local = cfg.copy()
    local.model.n_routed_experts = 8
    with pytest.raises(ConfigError, match="Fix: model=nemotron3_nano_30b_a3b"):
        checks.preflight(local, plan, 1, check_paths=False)


def test_sft_refuses_to_resume_a_cpt_checkpoint(cluster, tmp_path):
    """SFT loads whatever checkpoint its save dir holds, whole (MB's resume rule, finetune off): a CPT
    checkpoint there (it carries our plan sidecar) is refused before any GPU time."""
    from hebatron_nemo.backends.megatron_bridge.callbacks import write_sidecar

    tmp, data, exps = cluster
    cfg = compose_experiment("hebatron_sft_h100x16", cluster_overrides(tmp, data), recipe="sft")
    cfg.megatron_bridge.save_dir = str(tmp_path / "megatron")
    assert not [x for x in checks.path_problems(cfg, 0, sft=True) if "CPT checkpoint" in x]
    (tmp_path / "megatron" / "iter_0000040").mkdir(parents=True)
    (tmp_path / "megatron" / "latest_checkpointed_iteration.txt").write_text("40")
    assert not [x for x in checks.path_problems(cfg, 0, sft=True) if "CPT checkpoint" in x]  # SFT's own: resumed
    write_sidecar(tmp_path / "megatron", 40, exps["hebatron_cpt_8k_h100x64"][1], 0, 1280 * 40)
    problems = [x for x in checks.path_problems(cfg, 0, sft=True) if "CPT checkpoint" in x]
    assert len(problems) == 1 and "megatron_bridge.save_dir/load_dir=" in problems[0] and "iteration 40" in problems[0]


@pytest.mark.slow  # two recipe subprocesses
def test_dry_run_prints_layout_and_config(cluster):
    tmp, data, _ = cluster
    env = {**os.environ, "HEBATRON_TRACEBACK": ""}
    r = subprocess.run([sys.executable, "recipes/cpt.py", "experiment=hebatron_cpt_64k_h100x64",
                        "megatron_bridge.dry_run=true", *cluster_overrides(tmp, data)],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "world size   = nodes x gpus_per_node = 8 x 8 = 64" in out
    assert "data parallel DP = 64 / 8 = 8" in out and "65,536 / CP 8 = 8,192 tokens per GPU" in out
    assert "segment 1 'seq64k' starts at" in out and "on the plateau" in out
    assert "train_samples:" in out and "context_parallel_size: 8" in out
    assert "mixed precision: Megatron-Bridge recipe bf16_mixed" in out and "optimizer state saved dp_reshardable" in out
    bad = subprocess.run([sys.executable, "recipes/cpt.py", "experiment=hebatron_cpt_64k_h100x64",
                          "megatron_bridge.dry_run=true", "parallelism.expert_model_parallel_size=48", *cluster_overrides(tmp, data)],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "error: megatron_bridge segment 1: " in bad.stderr and "parallelism.expert_model_parallel_size=48" in bad.stderr


def test_per_source_sums_and_stats():
    g = torch.Generator().manual_seed(0)
    tl = torch.rand(6, 10, generator=g, dtype=torch.float64)
    mask = (torch.rand(6, 10, generator=g) > 0.3).double()
    src = torch.tensor([0, 2, 2, 1, 0, 2])
    loss, tok = per_source_sums(tl, mask, src, 3)
    for s in range(3):
        rows = src == s
        assert loss[s].item() == pytest.approx(float((tl[rows] * mask[rows]).sum()), rel=1e-12)
        assert tok[s].item() == float(mask[rows].sum())
    st = SourceStats(2, 3)
    st.add(src, torch.tensor([0, 0, 1, 1, 1, 1]), torch.tensor([1, 0, 0, 0, 1, 0]).bool(), tl, mask)
    st.paused = True
    st.add(src, torch.zeros(6, dtype=torch.long), torch.zeros(6).bool(), tl, mask)  # eval: not counted
    c = st.reduce()
    assert c[..., 0].sum() == 6 and c[..., 1].sum() == mask.sum() and c[..., 2].sum() == 2
    assert c[..., 3].sum().item() == pytest.approx(float((tl * mask).sum()), rel=1e-12)
    assert st.counts.abs().sum() == 0  # reset after the step


def _dp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(100 + rank)
    st = SourceStats(3, 4)
    for _ in range(3):  # three micro-batches of 2 samples
        tl = torch.rand(2, 16, generator=g)
        mask = (torch.rand(2, 16, generator=g) > 0.5).float()
        src = torch.randint(0, 4, (2,), generator=g)
        ph = torch.randint(0, 3, (2,), generator=g)
        st.add(src, ph, src == 3, tl, mask, count_samples=True)
    local = st.counts.clone()
    reduced = st.reduce()
    torch.save({"local": local, "reduced": reduced}, out / f"r{rank}.pt")
    torch.distributed.destroy_process_group()


def test_stats_reduce_over_data_parallel(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dp_worker, args=(2, port, tmp_path), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "r0.pt"), torch.load(tmp_path / "r1.pt")
    total = r0["local"] + r1["local"]
    assert torch.equal(r0["reduced"], total) and torch.equal(r1["reduced"], total)
    assert total[..., 0].sum() == 12  # 2 ranks x 3 micro-batches x 2 samples


@pytest.mark.slow  # two recipe subprocesses
def test_plan_recipe_writes_the_plan_the_cluster_jobs_check(cluster, tmp_path):
    _, data, exps = cluster
    env = {**os.environ, "HEBATRON_TRACEBACK": ""}
    over = cluster_overrides(tmp_path, data)
    missing = subprocess.run([sys.executable, "recipes/cpt.py", "experiment=hebatron_cpt_8k_h100x64",
                              "megatron_bridge.dry_run=true", *over], cwd=REPO, capture_output=True, text=True,
                             env=env, timeout=600)
    assert missing.returncode == 2 and "recipes/plan.py" in missing.stderr
    r = subprocess.run([sys.executable, "recipes/plan.py", "experiment=hebatron_cpt_64k_h100x64", *over], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = json.loads(next(tmp_path.glob("runs/*/plan.json")).read_text())
    assert plan["fingerprint"] == exps["hebatron_cpt_8k_h100x64"][1]["fingerprint"]  # one plan for both jobs


def test_parallelism_presets_compose(tmp_path):
    from mb_fixtures import compose_experiment as compose

    for preset, (ep_backend, cp, world) in {"h100_8gpu": ("hybridep", 1, 8), "h100_8gpu_deepep": ("deepep", 1, 8),
                                            "h100_16gpu": ("hybridep", 1, 16), "h100_64gpu": ("hybridep", 1, 64),
                                            "h100_64gpu_64k_cp8": ("hybridep", 8, 64)}.items():
        cfg = compose("tiny_cpu", [f"parallelism={preset}"])
        assert cfg.parallelism.name == preset and cfg.parallelism.moe_dispatcher == ep_backend
        assert checks.layout(cfg.parallelism)["world"] == world and cfg.parallelism.context_parallel_size == cp
        assert checks.parallelism_problems(cfg.parallelism, 128, []) == []


def test_pipeline_refuses_the_cluster_backend(cluster, tmp_path):
    from hydra import compose, initialize_config_dir

    from hebatron_nemo.config import register_configs
    from hebatron_nemo.pipeline.stages import run_pipeline

    register_configs()
    _, data, _ = cluster
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=["experiment=hebatron_cpt_8k_h100x64",
                                                         *cluster_overrides(tmp_path, data)])
    with pytest.raises(ConfigError, match="backend=megatron_bridge: the pipeline runs the local backend"):
        run_pipeline(cfg, log=lambda *a, **k: None)


@pytest.mark.parametrize("name", CPT_EXPERIMENTS)
def test_the_cpt_seam_builds_its_fields_from_the_knob_table(cluster, name):
    """Every row of the knob table lands in the segment job's fields; nothing else is set by a knob."""
    from test_knobs import seam_uses_the_table

    from hebatron_nemo.backends.megatron_bridge.seam import CPT_KNOBS

    _, _, exps = cluster
    cfg, plan = exps[name]
    k = checks.segment_index(cfg, plan["segments"])
    assert seam_uses_the_table(cpt_overrides(cfg, plan, k), cfg, CPT_KNOBS, plan["segments"][k]) == []
    moved = OmegaConf.merge(cfg, {"eval": {"eval_interval": 7}, "checkpoint": {"save_interval": 9},
                                  "logging": {"log_interval": 3, "wandb": False}})
    o = cpt_overrides(moved, plan, k)
    assert (o["validation"]["eval_interval"], o["checkpoint"]["save_interval"], o["logger"]["log_interval"]) == (7, 9, 3)
    assert o["logger"]["wandb_project"] is None and o["logger"]["wandb_save_dir"] is None
