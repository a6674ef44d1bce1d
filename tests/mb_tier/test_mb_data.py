"""Megatron-Bridge's real data path over our curriculum dataset: `get_dataset_provider` routes our
provider to our builder (and a GPTDatasetConfig to MB's stock one), and MB's `MegatronPretrainingSampler`
(inside MB's own `build_pretraining_data_loader`) at data parallel 1/2/4 and several consumed-sample
counts walks exactly our global sample stream: resume = consumed samples, nothing else."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from corpus import plan_config, synthetic_prepared

from hebatron_nemo.backends.megatron_bridge.dataset_provider import provider_class
from hebatron_nemo.backends.megatron_bridge.forward import SourceStats, make_forward_step
from hebatron_nemo.curriculum.mixture import CurriculumDataset
from hebatron_nemo.curriculum.runplan import make_plan

SOURCES = ["he_a", "he_long", "en_x"]
SEGS = [{"name": "s1", "seq_length": 32, "global_batch_size": 16, "micro_batch_size": 2},
        {"name": "s2", "seq_length": 128, "global_batch_size": 8, "micro_batch_size": 1}]
PHASES = [{"name": "formal", "segment": "s1", "tokens": 6000, "sources": {"he_a": 1.0}},
          {"name": "long", "segment": "s2", "tokens": 4000, "sources": {"he_long": 1.0}}]
ANCHOR = {"share": 0.25, "sources": {"en_x": 1.0}}


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mbdata")
    synthetic_prepared(tmp / "data", {"he_a": 300, "en_x": 300}, mean_len=60)
    synthetic_prepared(tmp / "data", {"he_long": 80}, seed=1, mean_len=400)
    cfg = plan_config(tmp, SOURCES, PHASES, SEGS, ANCHOR)
    return make_plan(cfg, log=lambda *a, **k: None), tmp


def test_get_dataset_provider_routes_ours_to_our_builder(plan):
    from megatron.bridge.data.utils import get_dataset_provider, pretrain_train_valid_test_datasets_provider
    from megatron.bridge.recipes.nemotronh import nemotron_3_nano_pretrain_config

    p, tmp = plan
    seg = p["segments"][1]
    end = seg["start_sample"] + seg["num_samples"]
    ours = provider_class()(plan_path=str(tmp / "run" / "plan.json"), segment=1, cache_dir=str(tmp / "cache"))
    build = get_dataset_provider(ours)
    assert build is not pretrain_train_valid_test_datasets_provider
    train, valid, test = build([(seg["start_step"] + seg["batches"]) * seg["global_batch"], 0, 0], ours)
    assert isinstance(train, CurriculumDataset) and len(train) == end and valid is None and test is None
    assert int(train[seg["start_sample"]]["phase_id"]) == 1
    # the recipe's own GPTDatasetConfig goes to MB's stock blended builder, not ours
    assert get_dataset_provider(nemotron_3_nano_pretrain_config().dataset) is pretrain_train_valid_test_datasets_provider
    with pytest.raises(Exception, match="dataloader_type must be 'single'"):
        provider_class()(plan_path="x", dataloader_type="cyclic")


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_mb_sampler_walks_our_global_stream(plan, dp):
    from megatron.bridge.data.samplers import build_pretraining_data_loader

    p, tmp = plan
    for k, seg in enumerate(p["segments"]):
        ds = CurriculumDataset(p, k, str(tmp / "cache"))
        start, end, gbs, mb = seg["start_sample"], seg["start_sample"] + seg["num_samples"], seg["global_batch"], seg["micro_batch"]
        for consumed in sorted({start, start + gbs, start + 3 * gbs, end - gbs}):
            loaders = [build_pretraining_data_loader(ds, consumed, "single", mb, 0, True, pin_memory=False,
                                                     data_parallel_rank=r, data_parallel_size=dp)
                       for r in range(dp)]
            iters = [iter(x) for x in loaders]
            walked = []
            # one optimizer step = gbs / (mb x dp) micro-steps; within a micro-step rank r holds
            # indices [c + r*mb, c + (r+1)*mb): the local trainer's layout
            for step_start in range(consumed, end, gbs):
                for m in range(gbs // (mb * dp)):
                    for r in range(dp):
                        batch = next(iters[r])
                        want = [step_start + m * mb * dp + r * mb + j for j in range(mb)]
                        assert batch["index"].tolist() == want
                        walked += want
                        for j, g in enumerate(want):  # the same samples our dataset serves by index
                            ref = ds[g]
                            assert torch.equal(batch["tokens"][j], ref["tokens"])
                            assert int(batch["source_id"][j]) == int(ref["source_id"])
                            assert bool(batch["is_anchor"][j]) == bool(ref["is_anchor"])
            assert walked == list(range(consumed, end))
            for it in iters:
                with pytest.raises(StopIteration):
                    next(it)


def test_forward_step_wrapper_with_mb_loss_function(plan):
    """The wrapper keeps source_id/phase_id/is_anchor across MB's loss function (MB's real
    masked_next_token_loss partial). The model forward itself needs CUDA and TE, so the base forward
    here draws the batch as MB's get_batch does and returns given per-token losses."""
    from megatron.bridge.training.losses import create_masked_next_token_loss_function

    p, tmp = plan
    ds = CurriculumDataset(p, 0, str(tmp / "cache"))
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    token_loss = torch.rand(batch["tokens"].shape, dtype=torch.float32, generator=torch.Generator().manual_seed(3))

    def base(state, data_iterator, model, return_schedule_plan=False):
        b = next(data_iterator)
        return token_loss, create_masked_next_token_loss_function(b["loss_mask"], False, False)

    stats = SourceStats(len(p["phases"]), len(p["source_names"]))
    fwd = make_forward_step(stats, base_forward_step=base)
    out, loss_fn = fwd(None, iter([batch]), None)
    loss, n_tokens, report = loss_fn(out)
    mask = batch["loss_mask"].float()
    assert loss.item() == pytest.approx(float((token_loss * mask).sum()), rel=1e-6)  # MB's result, unchanged
    assert int(n_tokens) == int(mask.sum()) and "lm loss" in report
    c = stats.reduce()
    assert c[..., 0].sum() == 8 and c[..., 1].sum() == mask.sum()
    assert c[..., 2].sum() == int(batch["is_anchor"].sum()) > 0
    for s in range(len(p["source_names"])):
        rows = batch["source_id"] == s
        assert c[:, s, 3].sum().item() == pytest.approx(float((token_loss[rows].double() * mask[rows].double()).sum()))
    assert isinstance(loss_fn, partial)
    # MB's train loop injects its GlobalState into this wrapper exactly as into gpt_step.forward_step
    from megatron.bridge.training.utils.train_utils import needs_global_state_injection

    assert needs_global_state_injection(make_forward_step(stats)) is True


def test_validation_resumes_at_any_consumed_count(plan):
    """MB builds the validation loader at the checkpoint's consumed validation samples (counted in the
    previous segment's batches): our periodic set serves it, and one evaluation sees every window once."""
    from megatron.bridge.data.samplers import build_pretraining_data_loader

    from hebatron_nemo.backends.megatron_bridge.dataset_provider import build_curriculum_datasets

    p, tmp = plan
    seg = p["segments"][1]
    period = 2 * seg["global_batch"]
    _, valid, _ = build_curriculum_datasets(str(tmp / "run" / "plan.json"), 1, str(tmp / "cache"),
                                            (seg["start_step"] + seg["batches"]) * seg["global_batch"], 3 * period, 0,
                                            period)
    consumed = 21 * p["segments"][0]["global_batch"] + 3  # from segment 0, not a multiple of the period
    loader = build_pretraining_data_loader(valid, consumed, "single", 1, 0, True, pin_memory=False,
                                           data_parallel_rank=0, data_parallel_size=1)
    it = iter(loader)
    one_eval = [tuple(next(it)["tokens"][0].tolist()) for _ in range(period)]
    assert sorted(one_eval) == sorted(tuple(valid[i]["tokens"].tolist()) for i in range(period))


def test_samples_carry_no_attention_mask(plan):
    """megatron-core's GPTDataset adds a [1, S, S] causal mask per sample by default (4 GiB of bools
    at 64K, through every dataloader worker) that Megatron-Bridge's step never reads: ours are built
    without it (and MB's batch loader then sends None, on every TP rank alike)."""
    p, tmp = plan
    ds = CurriculumDataset(p, 1, str(tmp / "cache"))
    seg = p["segments"][1]
    sample = ds[seg["start_sample"]]
    assert "attention_mask" not in sample
    assert set(sample) >= {"tokens", "labels", "loss_mask", "position_ids"}
    assert sample["tokens"].shape == (seg["seq_length"],)
    built = [e for st in ds._streams.values() for e in st.epochs.values()]
    assert built and all(e.config.create_attention_mask is False for e in built)
