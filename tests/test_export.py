"""Release export (hebatron_nemo/export/hf.py): NVIDIA's released layout, logit parity under the CPU
env's transformers (5.24) and the container's (5.12.1, the compat layer, in a subprocess), and a
loader that raises on any key that does not match instead of re-initializing it.

The 5.12.1 parts need HEBATRON_COMPAT_DIR (set by `make test`); without it they skip, saying so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from corpus import ENGLISH, HEBREW

from hebatron_nemo.backends.local.cpt import export_model
from hebatron_nemo.backends.local.sft import _add_chat_template
from hebatron_nemo.data.tokenizer import LocalTokenizer, train_byte_level_bpe
from hebatron_nemo.export import hf
from hebatron_nemo.export.hf import (
    ExportKeyError,
    NotReleaseFormatError,
    export_hf,
    load_exported,
    parity_input,
    release_config,
    release_key_shapes,
)
from hebatron_nemo.models.nemotron_h import build_model, hf_config, load_model_config
from hebatron_nemo.sft.template import CHAT_TEMPLATE

REPO = Path(__file__).resolve().parents[1]
COMPAT = os.environ.get("HEBATRON_COMPAT_DIR")
needs_compat = pytest.mark.skipif(not COMPAT, reason="HEBATRON_COMPAT_DIR is not set (make test sets it): the "
                                                     "transformers 5.12.1 (container) half of the check cannot run")
VOCAB = 600
TOL = 1e-5


def _perturb(model, seed=1):
    """Every parameter and buffer moved off its initial value (router bias, norms, A_log, D, dt_bias too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            scale = 0.2 if ("norm" in name or "e_score_correction_bias" in name) else 0.05
            t.add_(scale * torch.randn(t.shape, generator=g))
    return model


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, probe_process):
    """A trained-looking micro model and an SFT-style folder for it, as the local backend writes them."""
    tmp = tmp_path_factory.mktemp("export")
    tok = tmp / "tok"
    train_byte_level_bpe(HEBREW * 10 + ENGLISH * 10, str(tok), VOCAB, 1, {"test": 1})
    model = _perturb(build_model(load_model_config("micro"), VOCAB, seed=0)).eval()
    src = tmp / "sft" / "model"
    export_model(model, {"tokenizer": {"path": str(tok)}, "fingerprint": "test-fp"}, src)
    _add_chat_template(src, LocalTokenizer(str(tok)))
    return tmp, model, src


@pytest.fixture(scope="module")
def exported(trained, probe_process):
    """The SFT folder exported, verified in process (5.24) and, when available, under 5.12.1; then the
    probe (already running under 5.12.1) is told where it is."""
    tmp, model, src = trained
    out = ""
    try:
        out = export_hf(src, tmp / "release", compat_dirs=[COMPAT] if COMPAT else [])
    finally:
        if probe_process is not None:
            Path(probe_process[0]["go_file"]).write_text(str(out))
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = edit(load_file(str(path)))
    save_file(tensors, str(path), metadata={"format": "pt"})
    (folder / hf.MANIFEST).unlink()  # the sha256 would (rightly) fail first


# ------------------------------------------------------------------------------------------ layout


def test_export_is_in_the_release_layout(exported, trained):
    _, model, _ = trained
    expected = release_key_shapes(model.config)
    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert {k: tuple(f.get_slice(k).get_shape()) for k in keys} == {k: tuple(v) for k, v in expected.items()}
        assert f.get_tensor("backbone.layers.1.mixer.gate.e_score_correction_bias").dtype == torch.float32
    assert {"backbone.embeddings.weight", "backbone.norm_f.weight", "lm_head.weight",
            "backbone.layers.0.mixer.A_log", "backbone.layers.2.mixer.q_proj.weight",
            "backbone.layers.3.mixer.experts.0.down_proj.weight", "backbone.layers.3.mixer.shared_experts.up_proj.weight",
            "backbone.layers.3.mixer.gate.weight"} <= keys
    assert all(k.startswith("backbone.") or k == "lm_head.weight" for k in keys)
    assert not any(k.endswith(("experts.up_proj", "experts.down_proj")) or "embedding.weight" in k for k in keys)
    # the per-expert tensors are the fused tensors' slices
    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        for proj in ("up_proj", "down_proj"):
            fused = getattr(model.model.layers[1].mixer.experts, proj).detach()
            for e in range(fused.shape[0]):
                assert torch.equal(f.get_tensor(f"backbone.layers.1.mixer.experts.{e}.{proj}.weight"), fused[e])

    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["architectures"] == ["NemotronHForCausalLM"] and cfg["model_type"] == "nemotron_h"
    pattern = load_model_config("micro").pattern  # the model's own layout, in the release's notation
    assert cfg["hybrid_override_pattern"] == pattern and cfg["num_hidden_layers"] == len(pattern)
    assert "layers_block_type" not in cfg and "mtp_layers_block_type" not in cfg and "output_router_logits" not in cfg
    for key in ("n_routed_experts", "mamba_num_heads", "hidden_size", "vocab_size"):
        assert cfg[key] == getattr(model.config, key), key
    assert cfg["torch_dtype"] == "float32"
    assert cfg["time_step_limit"] == [cfg["time_step_min"], hf.DT_LIMIT_MAX]

    tc = json.loads((exported / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == CHAT_TEMPLATE
    tok = LocalTokenizer(str(exported))
    # the special-token ids are the exported tokenizer's own
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == \
        tuple(tok.tok.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.tok.token_to_id("<|im_end|>"), tok.eod] and "_from_model_config" not in gen

    manifest = json.loads((exported / hf.MANIFEST).read_text())
    assert manifest["source"]["kind"] == "training_state" and manifest["source"]["fingerprint"] == "test-fp"
    assert manifest["weights"]["model.safetensors"]["sha256"] == hf._sha256(exported / "model.safetensors")
    assert not list(exported.parent.glob(".release.tmp-*"))  # the temp folder was renamed


# ------------------------------------------------------------------------------------------ parity


def test_parity_under_the_running_transformers(exported, trained):
    import transformers

    _, model, _ = trained
    ids = parity_input(model.config)
    loaded = load_exported(exported, dtype=torch.float32)
    diff = float((_logits(loaded, ids) - _logits(model, ids)).abs().max())
    assert diff <= TOL, diff
    # the check is not vacuous: a freshly initialized model is far off
    fresh = build_model(load_model_config("micro"), VOCAB, seed=0)
    assert float((_logits(fresh, ids) - _logits(model, ids)).abs().max()) > 1e-2
    results = json.loads((exported / hf.MANIFEST).read_text())["parity"]
    assert results[0]["transformers"] == transformers.__version__ and results[0]["max_abs_diff"] <= TOL


def test_parity_under_the_container_transformers(exported, trained, compat_probe):
    """The export loaded by transformers 5.12.1 (a subprocess on the compat layer) against the
    training model, directly; and export_hf's own verification recorded the same."""
    _, model, _ = trained
    job, _ = compat_probe
    ids = torch.tensor(job["ids"])
    chunk = model.config.chunk_size
    assert ids.shape[1] > 3 * chunk  # three boundaries of the Mamba-2 chunked scan
    got = load_file(job["logits_file"])["logits"]  # 5.12.1's stock CPU path
    per_position = (got - _logits(model, ids)).abs().amax(dim=(0, 2))
    assert float(per_position[:chunk].max()) <= TOL  # the first chunk is exact
    # transformers#47246, measured: from the first chunk boundary on the stock CPU path is off
    over = (per_position > TOL).nonzero().flatten().tolist()
    assert over and over[0] == chunk, over[:5]
    results = {r["transformers"]: r for r in json.loads((exported / hf.MANIFEST).read_text())["parity"]}
    assert "5.12.1" in results, results.keys()
    r = results["5.12.1"]
    assert r["where"].startswith("subprocess") and r["max_abs_diff"] <= TOL and r["input_shape"] == list(ids.shape)
    d = r["known_deviation"]  # reported by name, with the numbers, not hidden
    assert d["id"] == "transformers#47246" and d["first_position"] == over[0]
    assert d["max_abs_diff"] == pytest.approx(float(per_position.max()), rel=1e-5) and d["max_abs_diff"] > 10 * TOL
    assert r["architecture"] == next(v for k, v in results.items() if k != "5.12.1")["architecture"]
    own = next(v for k, v in results.items() if k != "5.12.1")  # 5.24: chunk-invariant, every position gated
    assert "known_deviation" not in own and own["max_abs_diff"] <= TOL and own["input_shape"] == list(ids.shape)


def test_parity_sees_a_fault_that_starts_at_a_chunk_boundary(trained, tmp_path):
    """A difference only beyond the first Mamba chunk fails the check under the running transformers,
    naming where it starts (the earlier one-chunk input could not see it)."""
    _, model, src = trained
    out = export_hf(model, tmp_path / "out", src, compat_dirs=[])
    chunk = model.config.chunk_size
    shifted = build_model(load_model_config("micro"), VOCAB, seed=0)
    shifted.load_state_dict(model.state_dict())
    shifted.eval()

    def beyond_first_chunk(module, inputs, output):  # a fault of the kind transformers#47246 is
        output = output.clone()
        output[:, chunk:] += 1e-3
        return output

    shifted.lm_head.register_forward_hook(beyond_first_chunk)
    with pytest.raises(hf.ParityError, match=f"from position {chunk} of"):
        hf.check_parity(out, shifted)


def test_known_deviation_has_to_have_its_shape():
    per_position = torch.zeros(100)
    per_position[32:] = 0.1
    ref = torch.zeros(1, 100, 4)
    ok = hf._known_chunk_scan_fault(per_position, ref.clone(), ref, 32, TOL, "5.12.1")
    assert ok["id"] == "transformers#47246" and ok["first_position"] == 32 and ok["max_abs_diff"] == pytest.approx(0.1)
    assert hf._known_chunk_scan_fault(per_position, ref.clone(), ref, 32, TOL, "5.24.0") is None  # fixed there
    assert hf._known_chunk_scan_fault(per_position, ref + 1.0, ref, 32, TOL, "5.12.1") is None  # weights wrong
    assert hf._known_chunk_scan_fault(per_position, None, ref, 32, TOL, "5.12.1") is None  # not measured
    early = per_position.clone()
    early[5] = 0.1
    assert hf._known_chunk_scan_fault(early, ref.clone(), ref, 32, TOL, "5.12.1") is None  # inside the first chunk


def test_parity_failure_is_loud_and_keeps_the_previous_export(trained, tmp_path, monkeypatch):
    _, model, src = trained
    out = export_hf(model, tmp_path / "out", src, compat_dirs=[])
    before = (out / hf.MANIFEST).read_text()
    other = _perturb(build_model(load_model_config("micro"), VOCAB, seed=0), seed=7)
    real = hf.check_parity
    monkeypatch.setattr(hf, "check_parity", lambda export_dir, reference_model, **kw: real(export_dir, other, **kw))
    with pytest.raises(hf.ParityError, match="logits differ"):
        export_hf(model, out, src, compat_dirs=[])
    assert (out / hf.MANIFEST).read_text() == before  # the earlier, verified export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left


def test_bf16_export_with_shards(trained, tmp_path):
    _, model, src = trained
    out = export_hf(model, tmp_path / "bf16", src, dtype="bfloat16", max_shard_bytes=40_000, compat_dirs=[])
    index = json.loads((out / hf.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    dtypes = {}
    for fname in files:
        with safe_open(str(out / fname), "pt") as f:
            dtypes.update({k: f.get_slice(k).get_dtype() for k in f.keys()})
    assert dtypes["backbone.layers.1.mixer.gate.e_score_correction_bias"] == "F32"
    assert dtypes["backbone.embeddings.weight"] == "BF16"
    manifest = json.loads((out / hf.MANIFEST).read_text())
    assert set(manifest["weights"]) == set(files) and manifest["parity"][0]["max_abs_diff"] <= TOL
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_exported(out).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------ strict loader


def test_loader_raises_on_a_missing_key(exported, tmp_path):
    bad = _copy(exported, tmp_path / "missing")
    _rewrite_weights(bad, lambda t: {k: v for k, v in t.items() if k != "backbone.layers.3.mixer.gate.e_score_correction_bias"})
    with pytest.raises(ExportKeyError, match=r"missing: backbone\.layers\.3\.mixer\.gate\.e_score_correction_bias") as e:
        load_exported(bad)
    assert e.value.missing == ["backbone.layers.3.mixer.gate.e_score_correction_bias"] and not e.value.unexpected


def test_loader_raises_on_an_unexpected_key(exported, tmp_path):
    bad = _copy(exported, tmp_path / "unexpected")
    _rewrite_weights(bad, lambda t: {**t, "backbone.layers.0.mixer.extra.weight": torch.zeros(3)})
    with pytest.raises(ExportKeyError, match=r"unexpected: backbone\.layers\.0\.mixer\.extra\.weight"):
        load_exported(bad)


def test_loader_raises_on_a_mismatched_shape(exported, tmp_path):
    bad = _copy(exported, tmp_path / "shape")
    _rewrite_weights(bad, lambda t: {**t, "backbone.norm_f.weight": torch.ones(31)})
    with pytest.raises(ExportKeyError, match=r"mismatched shape: backbone\.norm_f\.weight"):
        load_exported(bad)


def test_loader_checks_the_manifest_sha(exported, tmp_path):
    bad = _copy(exported, tmp_path / "sha")
    t = load_file(str(bad / "model.safetensors"))
    t["backbone.norm_f.weight"] = t["backbone.norm_f.weight"] + 1
    save_file(t, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(hf.ExportError, match="sha256"):
        load_exported(bad)


def test_5_12_embedding_name_is_an_error_not_a_silent_reinit(exported, tmp_path, trained):
    """transformers 5.12.1's save_pretrained writes `backbone.embedding.weight`; 5.24 only logs it and
    re-initializes the embedding (logits off by O(1)). The strict loader names both keys."""
    _, model, _ = trained
    bad = _copy(exported, tmp_path / "embedding")
    _rewrite_weights(bad, lambda t: {("backbone.embedding.weight" if k == "backbone.embeddings.weight" else k): v
                                     for k, v in t.items()})
    with pytest.raises(ExportKeyError) as e:
        load_exported(bad)
    assert e.value.missing == ["backbone.embeddings.weight"] and e.value.unexpected == ["backbone.embedding.weight"]
    # what transformers alone does with it (strict=False): loads, silently wrong
    ids = parity_input(model.config)
    loose = load_exported(bad, strict=False, dtype=torch.float32)
    assert float((_logits(loose, ids) - _logits(model, ids)).abs().max()) > 1e-2


def test_plain_save_pretrained_is_rejected_and_converts(trained, tmp_path):
    """A 5.24 save_pretrained folder (5.24 layer names in config.json) is rejected by the loader with a
    message saying how to convert it; export_hf converts it (verified)."""
    tmp, model, src = trained
    plain = tmp_path / "plain"
    model.save_pretrained(str(plain))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, plain / name)
    with pytest.raises(NotReleaseFormatError, match=r"linear_attention.*5\.12\.1.*export_hf"):
        load_exported(plain)
    out = export_hf(plain, tmp_path / "converted", compat_dirs=[])
    manifest = json.loads((out / hf.MANIFEST).read_text())
    assert manifest["source"]["kind"] == "save_pretrained" and manifest["parity"][0]["max_abs_diff"] <= TOL
    ids = parity_input(model.config)
    assert float((_logits(load_exported(out, dtype=torch.float32), ids) - _logits(model, ids)).abs().max()) <= TOL


# --------------------------------------------------------------------------------------- config map


def _strict_json(path: Path):
    """json.loads that refuses NaN, Infinity and -Infinity (JavaScript's JSON.parse and strict parsers do)."""
    def refuse(name):
        raise ValueError(f"{path.name}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_exported_json_file_is_strict_json(exported):
    import numpy as np

    names = sorted(p.name for p in exported.glob("*.json"))
    assert {"config.json", "generation_config.json", "tokenizer_config.json", hf.MANIFEST} <= set(names)
    for name in names:
        _strict_json(exported / name)
    limit = _strict_json(exported / "config.json")["time_step_limit"]
    # the upper clamp: the largest float32, so clamping any finite float32 dt to it changes nothing
    assert limit[1] == float(np.finfo(np.float32).max) and np.float32(limit[1]) == np.finfo(np.float32).max
    dt = torch.tensor([1e-3, 7.5, 3e38, float(np.finfo(np.float32).max)])
    assert torch.equal(dt.clamp(limit[0], limit[1]), dt.clamp(limit[0], float("inf")))


def test_release_config_keys_are_read_back_by_5_24(exported):
    from transformers import AutoConfig, NemotronHConfig

    fields = set(NemotronHConfig.__annotations__)  # the class's own fields
    assert set(hf.RELEASE_CONFIG_KEYS) <= fields
    assert fields - set(hf.RELEASE_CONFIG_KEYS) == {"layers_block_type", "mtp_layers_block_type", "output_router_logits"}
    written = json.loads((exported / "config.json").read_text())
    back = AutoConfig.from_pretrained(str(exported))
    for key in hf.RELEASE_CONFIG_KEYS:
        value = getattr(back, key)
        assert (list(value) if isinstance(value, tuple) else value) == written[key], key
    assert back.layers_block_type == ["linear_attention", "moe", "full_attention", "moe"]
    assert back.dtype == torch.float32


def test_release_config_maps_layer_names_of_both_versions():
    cfg = hf_config(load_model_config("micro"), VOCAB)
    new = release_config(cfg, torch.float32)
    old = cfg.to_dict()
    old["layers_block_type"] = ["mamba", "moe", "attention", "moe"]
    assert release_config(old, torch.float32) == new
    assert new["hybrid_override_pattern"] == load_model_config("micro").pattern
    bad = {**old, "layers_block_type": ["mamba", "sliding_attention"]}
    with pytest.raises(hf.ExportError, match="sliding_attention"):
        release_config(bad, torch.float32)


COMPAT_PROBE = r"""
import json, sys, torch
import transformers
from transformers import NemotronHConfig, NemotronHForCausalLM
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
from hebatron_nemo.export import hf

job = json.load(open(sys.argv[1]))
out = {"transformers": transformers.__version__, "fields": sorted(NemotronHConfig.__annotations__)}  # its own fields
cfg = hf._as_config(job["config"])
out["read_back"] = {k: getattr(cfg, k) for k in hf.RELEASE_CONFIG_KEYS if k != "time_step_limit"}
out["time_step_limit"] = [float(x) for x in cfg.time_step_limit]
out["layers_block_type"] = list(cfg.layers_block_type)
with torch.device("meta"):
    model = NemotronHForCausalLM(cfg)
meta = model.state_dict()
mapping = get_model_conversion_mapping(model)
renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
converters = [m for m in mapping if isinstance(m, WeightConverter)]
# 5.12.1's own loader machinery maps each exported key onto a module tensor; stacked experts count
landed, problems = {}, []
for key, shape in job["keys"].items():
    target, conv = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
    if target not in meta:
        problems.append(f"{key} -> {target}: no such module tensor")
        continue
    landed.setdefault(target, []).append((shape, conv is not None))
for target, t in meta.items():
    got = landed.get(target)
    if not got:
        problems.append(f"{target}: no exported key loads into it")
    elif got[0][1]:
        if [len(got)] + got[0][0] != list(t.shape) or any(s != got[0][0] for s, _ in got):
            problems.append(f"{target}: {len(got)} experts of {got[0][0]} vs {list(t.shape)}")
    elif len(got) != 1 or got[0][0] != list(t.shape):
        problems.append(f"{target}: {got} vs {list(t.shape)}")
out["problems"] = problems
out["module_tensors"] = len(meta)
out["parameters"] = sum(t.numel() for t in meta.values())

# 5.12.1's own save_pretrained of a small model, and the strict loader's verdict on it under 5.12.1
small = NemotronHForCausalLM(hf._as_config(job["small_config"]))
small.save_pretrained(job["saved_by_5_12"])
from safetensors import safe_open
with safe_open(job["saved_by_5_12"] + "/model.safetensors", "pt") as f:
    out["saved_embedding_keys"] = sorted(k for k in f.keys() if "embed" in k)
verdicts = {}
try:
    hf.load_exported(job["saved_by_5_12"])
    verdicts["as_saved"] = "loaded"
except hf.NotReleaseFormatError as e:
    verdicts["as_saved"] = "NotReleaseFormatError: " + str(e)
json.dump(job["small_config"], open(job["saved_by_5_12"] + "/config.json", "w"))  # release config, 5.12.1 weights
try:
    hf.load_exported(job["saved_by_5_12"])
    verdicts["release_config"] = "loaded"
except hf.ExportKeyError as e:
    verdicts["release_config"] = {"missing": e.missing, "unexpected": e.unexpected}
out["verdicts"] = verdicts

# last, the export itself (written meanwhile by the parent), loaded strictly; its logits on fixed ids
import os, time
from safetensors.torch import save_file
deadline = time.time() + 300
while not os.path.exists(job["go_file"]) and time.time() < deadline:
    time.sleep(0.2)
export_dir = open(job["go_file"]).read() if os.path.exists(job["go_file"]) else ""
if export_dir:
    model = hf.load_exported(export_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(job["ids"]), use_cache=False).logits.float()
    save_file({"logits": logits.contiguous()}, job["logits_file"])
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe_process(tmp_path_factory):
    """Starts the transformers 5.12.1 probe early (a subprocess: ~10 s of imports), in parallel with the
    export; `compat_probe` collects it."""
    if not COMPAT:
        yield None
        return
    tmp = tmp_path_factory.mktemp("probe")
    full = hf_config(load_model_config("nemotron3_nano_30b_a3b"))
    job = {"config": release_config(full, "bfloat16"),
           "keys": {k: list(v) for k, v in release_key_shapes(full).items()},  # 5.24, meta device
           "small_config": release_config(hf_config(load_model_config("micro"), VOCAB), "float32"),
           "saved_by_5_12": str(tmp / "saved_by_5_12"),
           "ids": parity_input(hf_config(load_model_config("micro"), VOCAB)).tolist(),
           "go_file": str(tmp / "go"), "logits_file": str(tmp / "logits.safetensors")}
    (tmp / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([COMPAT, str(REPO)]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", COMPAT_PROBE, str(tmp / "job.json")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield job, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def compat_probe(probe_process):
    if probe_process is None:
        pytest.skip("HEBATRON_COMPAT_DIR is not set (make test sets it): transformers 5.12.1 checks skipped")
    job, proc = probe_process
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    return job, json.loads(line[len("RESULT "):])


def test_full_size_names_match_5_12_1_on_meta(compat_probe):
    job, out = compat_probe
    assert out["transformers"] == "5.12.1"
    assert out["problems"] == []
    moe_layers = load_model_config("nemotron3_nano_30b_a3b").pattern.count("E")
    experts = load_model_config("nemotron3_nano_30b_a3b").n_routed_experts
    # one fused up/down tensor per MoE layer in transformers, one per expert in the release
    assert len(job["keys"]) == out["module_tensors"] - 2 * moe_layers + 2 * moe_layers * experts
    assert 31.5e9 < out["parameters"] < 31.7e9  # the released model's ~31.6B parameters


def test_release_config_is_read_by_5_12_1_as_written(compat_probe):
    job, out = compat_probe
    assert set(hf.RELEASE_CONFIG_KEYS) <= set(out["fields"])
    assert set(out["fields"]) - set(hf.RELEASE_CONFIG_KEYS) == {"layers_block_type", "mtp_layers_block_type"}
    for key, value in out["read_back"].items():
        assert value == job["config"][key], key
    assert out["time_step_limit"] == job["config"]["time_step_limit"]  # read back by 5.12.1 exactly as written
    assert "".join({"mamba": "M", "moe": "E", "attention": "*", "mlp": "-"}[t] for t in out["layers_block_type"]) \
        == load_model_config("nemotron3_nano_30b_a3b").pattern


def test_strict_loader_under_5_12_1_rejects_what_5_12_1_saves(compat_probe):
    """5.12.1's save_pretrained writes `backbone.embedding.weight` (5.12.1 itself renames it back on load,
    5.24 does not); the strict loader rejects it under 5.12.1 too, and its layers_block_type config."""
    _, out = compat_probe
    assert out["saved_embedding_keys"] == ["backbone.embedding.weight"]
    assert out["verdicts"]["as_saved"].startswith("NotReleaseFormatError") and "mamba" in out["verdicts"]["as_saved"]
    assert out["verdicts"]["release_config"] == {"missing": ["backbone.embeddings.weight"],
                                                 "unexpected": ["backbone.embedding.weight"]}


@needs_compat
def test_weights_saved_by_5_12_are_rejected_under_5_24(compat_probe):
    job, _ = compat_probe
    with pytest.raises(ExportKeyError) as e:  # the folder now has the release config and 5.12.1's weights
        load_exported(job["saved_by_5_12"])
    assert e.value.missing == ["backbone.embeddings.weight"] and e.value.unexpected == ["backbone.embedding.weight"]


# -------------------------------------------------------------------------------------------- recipe


def test_recipe_exports_the_runs_sft_model(trained, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from hebatron_nemo.config import register_configs

    _, model, src = trained
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="export", overrides=["experiment=tiny_cpu", f"paths.work={tmp_path}"])
        cpt_cfg = compose(config_name="cpt", overrides=["experiment=tiny_cpu", f"paths.work={tmp_path}"])
    assert cfg.run_dir == cpt_cfg.run_dir and cfg.source == "sft"
    assert hf.source_dir_of(cfg) == Path(cfg.run_dir) / "sft" / "model"
    with pytest.raises(hf.ExportError, match="recipes/sft.py"):
        hf.run_export(cfg, log=lambda m: None)
    shutil.copytree(src, hf.source_dir_of(cfg))
    cfg.compat_dir = None  # the compat half of export_hf is covered above; keep this test fast
    lines = []
    manifest = hf.run_export(cfg, log=lines.append)
    out = Path(cfg.out_dir)
    assert out == Path(cfg.run_dir) / "hf" / "sft" and (out / "model.safetensors").is_file()
    assert manifest["parity"][0]["max_abs_diff"] <= TOL and any("warning: no compat layer" in m for m in lines)
    cfg.source = "cpt"
    assert hf.source_dir_of(cfg) == Path(cfg.run_dir) / "model"


def test_recipe_cli_names_the_missing_stage(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "recipes" / "export.py"), "experiment=tiny_cpu",
                          f"paths.work={tmp_path}", "source=cpt"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HEBATRON_COMPAT_DIR": ""})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error:" in out.stderr and "recipes/cpt.py" in out.stderr and "/model" in out.stderr
