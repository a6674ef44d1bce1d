"""The Megatron-Bridge backend's run contracts that need no Megatron-Bridge: the plan sidecar and the
resume check run before `pretrain()`, and the per-phase Hebrew / English anchor validation sets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from corpus import plan_config, synthetic_prepared

from hebatron_nemo.backends.megatron_bridge.callbacks import (SIDECAR, check_resume_before_pretrain, eval_losses,
                                                             iter_dir, write_sidecar)
from hebatron_nemo.backends.megatron_bridge.dataset_provider import (ValidationWindows, build_curriculum_datasets,
                                                                    validation_sets)
from hebatron_nemo.curriculum.runplan import make_plan
from hebatron_nemo.errors import ConfigError

SOURCES = ["he_a", "he_b", "he_long", "en_x"]
SEGS = [{"name": "s1", "seq_length": 32, "global_batch_size": 16}, {"name": "s2", "seq_length": 128, "global_batch_size": 8}]
PHASES = [{"name": "formal", "segment": "s1", "tokens": 5000, "sources": {"he_a": 1.0}},
          {"name": "colloquial", "segment": "s1", "tokens": 3000, "sources": {"he_b": 0.5, "he_a": 0.5}},
          {"name": "long", "segment": "s2", "tokens": 4000, "sources": {"he_long": 1.0}}]
ANCHOR = {"share": 0.25, "sources": {"en_x": 1.0}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mbresume")
    synthetic_prepared(tmp / "data", {"he_a": 300, "he_b": 200, "en_x": 300}, mean_len=60)
    synthetic_prepared(tmp / "data", {"he_long": 80}, seed=1, mean_len=400)
    cfg = plan_config(tmp, SOURCES, PHASES, SEGS, ANCHOR)
    return make_plan(cfg, log=lambda *a, **k: None), tmp


def _ckpt(root, plan, consumed, segment=0, it=None):
    it = it if it is not None else consumed // 16
    write_sidecar(root, it, plan, segment, consumed)
    (root / "latest_checkpointed_iteration.txt").write_text(str(it))


def test_resume_check_before_pretrain(run, tmp_path):
    plan, _ = run
    s1, s2 = plan["segments"]
    quiet = lambda *a, **k: None  # noqa: E731
    assert check_resume_before_pretrain(tmp_path / "none", plan, 0, log=quiet) == 0  # a fresh segment-0 job
    with pytest.raises(ConfigError, match="continues a checkpoint, but .* has none.*run the previous segment"):
        check_resume_before_pretrain(tmp_path / "none", plan, 1, log=quiet)
    root = tmp_path / "ckpt"
    _ckpt(root, plan, s1["num_samples"])  # segment 0 done: its forced last checkpoint
    assert (iter_dir(root, s1["num_samples"] // 16) / SIDECAR).exists()
    assert check_resume_before_pretrain(root, plan, 1, log=quiet) == s2["start_sample"]
    with pytest.raises(ConfigError, match="already consumed .* the end of segment 0"):
        check_resume_before_pretrain(root, plan, 0, log=quiet)
    _ckpt(root, plan, 32)  # segment 0 only partly trained
    with pytest.raises(ConfigError, match="segment 0 is not finished"):
        check_resume_before_pretrain(root, plan, 1, log=quiet)
    assert check_resume_before_pretrain(root, plan, 0, log=quiet) == 32  # a restarted segment-0 job
    changed = copy.deepcopy(plan)
    changed["fingerprint"] = "other"
    changed["phases"][0]["fingerprint"] = "changed"
    with pytest.raises(ConfigError, match=r"phase 'formal' \(in progress.*changed"):
        check_resume_before_pretrain(root, changed, 0, log=quiet)
    (root / "latest_checkpointed_iteration.txt").write_text("7")
    with pytest.raises(ConfigError, match="has no hebatron_plan.json"):
        check_resume_before_pretrain(root, plan, 0, log=quiet)


def test_validation_sets_per_phase_and_anchor(run):
    plan, tmp = run
    assert [s["name"] for s in validation_sets(plan, 0)] == ["he/formal", "he/colloquial", "en/anchor"]
    assert validation_sets(plan, 0)[1]["sources"] == ["he_a", "he_b"]
    assert [s["name"] for s in validation_sets(plan, 1)] == ["he/long", "en/anchor"]
    period = 2 * plan["segments"][0]["global_batch"]  # eval_iters 2
    v = ValidationWindows(plan, 0, length=5 * period, period=period)
    assert len(v) == 5 * period
    items = [v[i] for i in range(period)]
    sets = np.array([int(x["eval_set"]) for x in items])
    assert np.bincount(sets).tolist() == [11, 11, 10]  # the period split evenly between the 3 sets
    names = plan["source_names"]
    for x in items:
        assert x["tokens"].shape == (32,) and torch.equal(x["tokens"][1:], x["labels"][:-1])
        assert x["loss_mask"].sum() == 32
        k = int(x["eval_set"])
        assert names[int(x["source_id"])] in validation_sets(plan, 0)[k]["sources"]
        assert bool(x["is_anchor"]) == (k == 2)
    for i in (0, 7, period - 1):  # every evaluation sees the same windows
        assert torch.equal(v[i]["tokens"], v[i + 3 * period]["tokens"])
    end = plan["segments"][0]["num_samples"]
    train, valid, test = build_curriculum_datasets(str(tmp / "run" / "plan.json"), 0, None, end, 4 * period, 0, period)
    assert isinstance(valid, ValidationWindows) and len(valid) >= 4 * period and test is None
    # a resumed job starts validation at a consumed count from earlier segments: any `period`
    # consecutive indices are the same windows
    start = 10**9 + 7
    seen = sorted(tuple(valid[i]["tokens"].tolist()) for i in range(start, start + period))
    assert seen == sorted(tuple(valid[i]["tokens"].tolist()) for i in range(period))
    assert build_curriculum_datasets(str(tmp / "run" / "plan.json"), 0, None, end, 0, 0, period)[1] is None


def test_eval_losses_per_set():
    c = np.zeros((3, 2, 4))
    c[0, 0] = (4, 100, 0, 250.0)
    c[0, 1] = (2, 50, 0, 50.0)
    c[2, 1] = (3, 30, 3, 60.0)
    assert eval_losses(c, ["he/formal", "he/colloquial", "en/anchor"]) == {"eval/he/formal": 2.0, "eval/en/anchor": 2.0}


def test_segment_0_requires_a_parity_record_for_its_hf_folder(tmp_path):
    from hebatron_nemo.backends.megatron_bridge.convert import parity_problem, write_parity_record

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "nemotron_h"}')
    (hf / "model.safetensors").write_bytes(b"weights")
    run = tmp_path / "run"
    assert "no HF -> Megatron logit parity record" in parity_problem(run, str(hf))
    assert "recipes/convert.py parity" in parity_problem(run, str(hf))
    write_parity_record(run, str(hf), {"max_abs": 0.1, "min_cosine": 0.9999, "argmax_agreement": 1.0})
    assert parity_problem(run, str(hf)) is None
    (hf / "model.safetensors").write_bytes(b"other weights")  # a different model behind the same path
    assert "is for another HF folder" in parity_problem(run, str(hf))
