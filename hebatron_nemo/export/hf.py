"""Release export: a trained Nemotron-H as an HF folder in the layout of NVIDIA's released checkpoint
(nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16), verified by logit parity under every transformers
version that will read it, and a strict loader.

Why this exists (measured on a 2-core CPU machine, 2026-11): checkpoints are not portable
between transformers 5.12.1 (the NeMo container's) and 5.24 (the CPU env's) as `save_pretrained`
writes them. 5.24 writes `layers_block_type: [linear_attention, full_attention, ...]`, which 5.12.1
rejects; 5.12.1 writes its embedding as `backbone.embedding.weight` (its save path reverses a
load-time rename `embedding.weight -> embeddings.weight`), which 5.24 does not know: it reports
`model.embeddings.weight` missing in a log line and leaves it randomly initialized.

API
---
``export_hf(model_dir_or_model, out_dir, tokenizer_dir=None, chat_template=None, generation=None, *,
dtype=None, max_shard_bytes=5e9, verify=True, compat_dirs=None, tolerance=1e-5) -> Path``
    Writes ``out_dir`` atomically (a temp folder beside it, renamed when complete and verified):
    ``model.safetensors`` (or ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``),
    ``config.json``, ``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``
    (+ ``special_tokens_map.json``) and the manifest ``hebatron_export.json`` (source, sha256 of every
    weight file, parity results per transformers version). The source is an in-memory
    ``NemotronHForCausalLM``, a folder written by the local backend (``training_state.safetensors``
    is loaded strictly into a model built from its config.json), or any folder the running
    transformers loads without missing/unexpected keys (a plain ``save_pretrained`` folder, an
    earlier export). With ``verify`` the temp folder is loaded back with ``load_exported`` under the
    running transformers, and under each compat layer (default: ``$HEBATRON_COMPAT_DIR``) in a
    subprocess, and logits on a fixed input must match the source model within ``tolerance``;
    otherwise ``ParityError`` is raised and nothing is left at ``out_dir``.

``load_exported(path, strict=True, dtype=None)``
    ``AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)`` under the running
    transformers. Strict (the default) raises instead of transformers' warning:
    ``NotReleaseFormatError`` for a config.json that is not the release's (``layers_block_type``
    instead of ``hybrid_override_pattern``: a plain ``save_pretrained`` folder -- rejected, convert it
    with ``export_hf``); ``ExportKeyError`` naming every weight key that differs from the release
    names derived from the config (checked on the safetensors headers, so no version's renaming can
    hide it), and every missing / unexpected / mismatched key transformers reports; ``ExportError``
    on a weight file whose sha256 differs from the manifest.

Key mapping (module state dict -> release names; the module names are the same in 5.12.1 and 5.24)
-------------------------------------------------------------------------------------------------
* ``model.<rest>`` -> ``backbone.<rest>`` (``model.embeddings.weight`` -> ``backbone.embeddings.weight``,
  the name the release and Megatron-Bridge's Nemotron-H bridge use; *not* 5.12.1's
  ``backbone.embedding.weight``), ``model.norm_f.weight`` -> ``backbone.norm_f.weight``.
* the fused routed experts ``model.layers.N.mixer.experts.up_proj`` ``[E, I, H]`` and ``.down_proj``
  ``[E, H, I]`` -> one tensor per expert, ``backbone.layers.N.mixer.experts.{e}.up_proj.weight`` ``[I, H]``
  and ``...down_proj.weight`` ``[H, I]`` (both versions' loaders merge ``experts.*.up_proj.weight``
  with ``MergeModulelist(dim=0)``).
* ``lm_head.weight`` unchanged (left out when embeddings are tied). Anything else is an error.
* dtype: floating tensors are cast to the export dtype (default: the model's), except the router's
  ``gate.e_score_correction_bias``, which stays fp32 as both versions keep it (``_keep_in_fp32_modules_strict``).

Config (written with the names the release uses, which 5.12.1 reads and 5.24 still reads)
----------------------------------------------------------------------------------------
* the layer list goes back to NVIDIA's letters: ``hybrid_override_pattern`` (``M`` for ``mamba`` /
  ``linear_attention``, ``*`` for ``attention`` / ``full_attention``, ``E`` ``moe``, ``-`` ``mlp``) plus
  ``num_hidden_layers``; ``layers_block_type`` and ``mtp_layers_block_type`` are not written (each
  version derives its own names from the pattern). Models with MTP layers are refused.
* every other field of 5.12.1's ``NemotronHConfig`` dataclass (``RELEASE_CONFIG_KEYS``; 5.24 has them
  all), copied from the model's config; 5.24-only fields (``output_router_logits``) are dropped.
* ``time_step_limit`` = ``[time_step_min, 3.4028234663852886e+38]``: the dt clamp the model was
  trained with. 5.24's mixer ignores ``time_step_limit`` and always clamps dt to ``[time_step_min, inf)``;
  5.12.1's CPU path does the same, but its CUDA-kernel path (the container's) clamps to
  ``time_step_limit``, whose class default (the released config.json has no such key) is
  ``(0.0, inf)``. Writing the trained clamp makes all three compute the same function. The upper
  bound is the largest float32 (``DT_LIMIT_MAX``), not infinity: ``Infinity`` is not JSON (strict
  parsers, JavaScript's ``JSON.parse``, reject it), and no finite float32 dt is above it, so the clamp
  is the same. Every JSON file of an export is strict JSON.
* ``bos/eos/pad_token_id`` from the tokenizer's special tokens; ``torch_dtype`` (the release's key);
  ``architectures: ["NemotronHForCausalLM"]``, ``model_type: nemotron_h``; no ``auto_map`` (no remote
  code) and no ``transformers_version`` (the manifest records versions).

Parity input: 2 sequences of ``3 * chunk_size + chunk_size // 2 + 1`` fixed random tokens, so the
Mamba-2 chunked scan crosses three chunk boundaries: a fault that only shows where the inter-chunk
state recurrence starts (position ``chunk_size``) cannot hide. Under the running transformers every
position must match. Under a compat layer, a known upstream fault is reported, measured, instead of
hidden or failed on:

``transformers#47246`` (``KNOWN_DEVIATIONS``): 5.12.1's pure-PyTorch Mamba path (its CPU fallback,
``torch_forward``) sums the inter-chunk state recurrence over the wrong axis (see
hebatron_nemo/models/fast_scan.py), so from position ``chunk_size`` on it computes a different function
from 5.24 and from its own CUDA kernels, whatever the checkpoint. There the check runs twice in the
subprocess: with the stock mixer, whose logits must match within the first chunk, and with the mixers'
scan replaced by ``fast_scan.ssd_chunk_scan`` (the correct SSD, run on 5.12.1's own modules and the
export's weights), whose logits must match at every position. The stock mixer's divergence beyond the
first chunk is recorded in the manifest's parity entry as ``known_deviation`` (id, max |dlogit|, first
position over tolerance); a divergence of any other shape is a ``ParityError``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from hebatron_nemo.config import DEFAULT_TOLERANCE
from hebatron_nemo.errors import ConfigError, HebatronError
from hebatron_nemo.utils.paths import REPO_ROOT

MANIFEST = "hebatron_export.json"
FORMAT = "nemotron-h-release/v1"
#: the local backend's own state_dict in a model folder (its module names under the running transformers)
TRAINING_STATE = "training_state.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: upstream faults the parity check names instead of failing on (see the module docstring)
KNOWN_DEVIATIONS = {
    "transformers#47246": {
        "affects": "transformers < 5.24, pure-PyTorch Mamba-2 path (torch_forward, the CPU fallback)",
        "what": "the inter-chunk state recurrence is summed over the wrong axis: logits diverge from position "
                "chunk_size on; the CUDA kernels and 5.24 are chunk-invariant",
        "fixed_in": "5.24",
    },
}

# layer type names of 5.12.1 (mamba, attention) and of 5.24 (linear_attention, full_attention) -> letters
LAYER_LETTER = {"mamba": "M", "linear_attention": "M", "attention": "*", "full_attention": "*", "moe": "E", "mlp": "-"}
NEW_LAYER_NAMES = {"linear_attention", "full_attention"}

# The fields of transformers 5.12.1's NemotronHConfig dataclass (the container's), less the layer lists
# (written as hybrid_override_pattern). tests/test_export.py checks this against 5.12.1 and 5.24.
RELEASE_CONFIG_KEYS = (
    "attention_bias", "attention_dropout", "bos_token_id", "chunk_size", "conv_kernel", "eos_token_id",
    "expand", "head_dim", "hidden_dropout", "hidden_size", "initializer_range", "intermediate_size",
    "layer_norm_epsilon", "mamba_head_dim", "mamba_hidden_act", "mamba_num_heads", "mamba_proj_bias",
    "mamba_ssm_cache_dtype", "max_position_embeddings", "mlp_bias", "mlp_hidden_act",
    "moe_intermediate_size", "moe_latent_size", "moe_shared_expert_intermediate_size",
    "moe_shared_expert_overlap", "n_group", "n_groups", "n_routed_experts", "n_shared_experts",
    "norm_topk_prob", "num_attention_heads", "num_experts_per_tok", "num_key_value_heads",
    "num_logits_to_keep", "num_nextn_predict_layers", "pad_token_id", "rescale_prenorm_residual",
    "residual_in_fp32", "routed_scaling_factor", "sliding_window", "ssm_state_size",
    "tie_word_embeddings", "time_step_floor", "time_step_limit", "time_step_max", "time_step_min",
    "topk_group", "use_bias", "use_cache", "use_conv_bias", "use_mamba_kernels", "vocab_size",
)
FP32_SUFFIXES = (".mixer.gate.e_score_correction_bias",)
#: the upper dt clamp written to config.json: the largest float32 (clamping a finite float32 to it is the
#: identity, as clamping to infinity is), because Infinity is not JSON
DT_LIMIT_MAX = 3.4028234663852886e+38
_EXPERTS = re.compile(r"^layers\.(\d+)\.mixer\.experts\.(up_proj|down_proj)$")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


class ExportError(HebatronError):
    """An export cannot be written or an exported folder cannot be trusted; the message says why."""


class NotReleaseFormatError(ExportError):
    """A model folder whose config.json is not in the release's format (e.g. a plain save_pretrained)."""


class ExportKeyError(ExportError):
    """Weight keys differ from what the model expects; the message names every one."""

    def __init__(self, path, *, missing=(), unexpected=(), mismatched=(), errors=(), where=""):
        self.path, self.missing, self.unexpected = str(path), list(missing), list(unexpected)
        self.mismatched, self.errors = list(mismatched), list(errors)
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("mismatched shape", self.mismatched), ("load errors", self.errors)):
            if items:
                shown = ", ".join(map(str, items[:12])) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                parts.append(f"{label}: {shown}")
        super().__init__(f"{path}: weights do not match the model{where}: " + "; ".join(parts))


class ParityError(ExportError):
    """An exported model computes different logits from its source (or a different architecture)."""


# --------------------------------------------------------------------------------------------- names


def _torch_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).replace("torch.", ""))
    if name is None:
        raise ConfigError(f"export dtype {dtype!r}: use float32, bfloat16 or float16")
    return getattr(torch, name)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _release_names(module_name: str, shape) -> list[tuple[str, tuple, Optional[int]]]:
    """(release key, shape, expert index or None) for one entry of the module state dict."""
    shape = tuple(int(s) for s in shape)
    if module_name == "lm_head.weight":
        return [(module_name, shape, None)]
    if not module_name.startswith("model."):
        raise ExportError(f"no release name for the model's tensor {module_name!r} "
                          "(only model.* and lm_head.weight map)")
    rest = module_name[len("model."):]
    m = _EXPERTS.match(rest)
    if m:
        layer, proj = m.groups()
        return [(f"backbone.layers.{layer}.mixer.experts.{e}.{proj}.weight", shape[1:], e) for e in range(shape[0])]
    return [("backbone." + rest, shape, None)]


def _skip(config, module_name: str) -> bool:
    return module_name == "lm_head.weight" and bool(getattr(config, "tie_word_embeddings", False))


def _as_config(config):
    """A NemotronHConfig of the running transformers from a config object or a config.json dict."""
    if isinstance(config, dict):
        from transformers import NemotronHConfig

        d = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
        return NemotronHConfig(**d)
    return config


def release_key_shapes(config) -> dict[str, tuple]:
    """The release key names and shapes a model of `config` exports to, from a model built on the
    meta device (no weights materialized: works for the 31.6B config on any machine)."""
    import torch
    from transformers import NemotronHForCausalLM

    config = _as_config(config)
    with torch.device("meta"):
        model = NemotronHForCausalLM(config)
    out: dict[str, tuple] = {}
    for name, t in model.state_dict().items():
        if _skip(config, name):
            continue
        for key, shape, _ in _release_names(name, t.shape):
            out[key] = shape
    return out


def release_state_dict(model, dtype=None) -> dict:
    """The model's weights under the release key names (contiguous CPU copies, one tensor per expert)."""
    dtype = _torch_dtype(dtype)
    out = {}
    for name, t in model.state_dict().items():
        if _skip(model.config, name):
            continue
        for key, _, e in _release_names(name, t.shape):
            x = (t if e is None else t[e]).detach().to("cpu")
            if dtype is not None and x.is_floating_point() and not key.endswith(FP32_SUFFIXES):
                x = x.to(dtype)
            if key in out:
                raise ExportError(f"two tensors map to the release key {key!r}")
            out[key] = x.contiguous().clone()
    return out


def release_config(config, dtype, token_ids: Optional[dict] = None) -> dict:
    """config.json in the release's format from a NemotronHConfig of either transformers version."""
    d = config.to_dict() if not isinstance(config, dict) else dict(config)
    if d.get("model_type") != "nemotron_h":
        raise ExportError(f"model_type {d.get('model_type')!r}: only Nemotron-H (nemotron_h) models export here")
    if d.get("num_nextn_predict_layers"):
        raise ExportError("the model has MTP layers (num_nextn_predict_layers > 0): their export is not implemented")
    types = d.get("layers_block_type")
    if types is not None:
        unknown = sorted(set(types) - set(LAYER_LETTER))
        if unknown:
            raise ExportError(f"layers_block_type has layer types with no pattern letter: {unknown}")
        pattern = "".join(LAYER_LETTER[t] for t in types)
    elif d.get("hybrid_override_pattern"):
        pattern = d["hybrid_override_pattern"]
    else:
        raise ExportError("the config has neither layers_block_type nor hybrid_override_pattern")
    missing = [k for k in RELEASE_CONFIG_KEYS if k not in d]
    if missing:
        raise ExportError(f"the model config lacks fields the release config has: {missing}")
    out = {k: d[k] for k in RELEASE_CONFIG_KEYS}
    out["time_step_limit"] = [float(d["time_step_min"]), DT_LIMIT_MAX]
    out.update(token_ids or {})
    out.update({"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
                "hybrid_override_pattern": pattern, "num_hidden_layers": len(pattern),
                "torch_dtype": _dtype_name(_torch_dtype(dtype))})
    return dict(sorted(out.items()))


# -------------------------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    from hebatron_nemo.utils.hashing import sha256_file

    return sha256_file(path)


def _read_json(path: Path):
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def _write_json(path: Path, obj) -> None:
    # allow_nan=False: NaN and Infinity are not JSON; a value that would need them is a bug to surface here
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def _write_weights(tensors: dict, out: Path, max_shard_bytes: int) -> dict:
    from safetensors.torch import save_file

    shards: list[list[str]] = [[]]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    n = len(shards)
    names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    files = {}
    umask = os.umask(0)
    os.umask(umask)
    for fname, keys in zip(names, shards):
        save_file({k: tensors[k] for k in keys}, str(out / fname), metadata={"format": "pt"})
        os.chmod(out / fname, 0o666 & ~umask)  # safetensors writes 0600; a release folder is shared
        files[fname] = {"sha256": _sha256(out / fname), "bytes": (out / fname).stat().st_size, "tensors": len(keys)}
    if n > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {k: fname for fname, keys in zip(names, shards) for k in keys}
        _write_json(out / INDEX_FILE, {"metadata": {"total_size": total},
                                       "weight_map": dict(sorted(weight_map.items()))})
    return files


def _checkpoint_key_shapes(path: Path) -> dict[str, tuple]:
    """Key -> shape from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    index = _read_json(path / INDEX_FILE)
    files = sorted(set(index["weight_map"].values())) if index else [SINGLE_FILE]
    out = {}
    for fname in files:
        if not (path / fname).is_file():
            raise ExportError(f"{path}: weight file {fname} is missing")
        try:
            with safe_open(str(path / fname), "pt") as f:
                for k in f.keys():
                    out[k] = tuple(f.get_slice(k).get_shape())
        except Exception as e:  # safetensors raises its own SafetensorError (truncated or damaged header)
            raise ExportError(f"{path / fname}: not a readable safetensors file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from e
    return out


def _tokenizer_ids(tok_dir: Path) -> tuple[dict, int]:
    """bos/eos/pad ids named by tokenizer_config.json (when the tokenizer has them) and the vocab size."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tc = _read_json(tok_dir / "tokenizer_config.json") or {}
    ids = {}
    for field_name in ("bos", "eos", "pad"):
        token = tc.get(f"{field_name}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and tok.token_to_id(token) is not None:
            ids[f"{field_name}_token_id"] = tok.token_to_id(token)
    return ids, tok.get_vocab_size(with_added_tokens=True)


# ------------------------------------------------------------------------------------------ loading


def _from_pretrained_checked(path: Path, dtype=None, strict: bool = True):
    """from_pretrained with the load report turned into ExportKeyError (strict)."""
    import transformers
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"output_loading_info": True}
    if dtype is not None:
        kwargs["dtype"] = _torch_dtype(dtype)
    where = f" (transformers {transformers.__version__})"
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as e:  # RuntimeError, ValueError, OSError, safetensors' SafetensorError, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"{path}: transformers {transformers.__version__} could not load it: {first}") from e
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(str(m) for m in (info.get("mismatched_keys") or []))
    errors = [str(e) for e in (info.get("error_msgs") or [])]
    if strict and (missing or unexpected or mismatched or errors):
        raise ExportKeyError(path, missing=missing, unexpected=unexpected, mismatched=mismatched, errors=errors,
                             where=where)
    return model


def _require_release_config(cfg: dict, path: Path) -> None:
    if cfg.get("model_type") != "nemotron_h":
        raise NotReleaseFormatError(f"{path}: config.json model_type is {cfg.get('model_type')!r}, not nemotron_h")
    types = cfg.get("layers_block_type")
    if types is not None:
        writer = ("transformers >= 5.2x (linear_attention/full_attention names), as a plain save_pretrained "
                  "writes it; transformers 5.12.1, the container's, cannot read it"
                  if set(types) & NEW_LAYER_NAMES else "an older transformers' save_pretrained")
        raise NotReleaseFormatError(
            f"{path}: config.json lists layers_block_type {sorted(set(types))}: written by {writer}. It is not the "
            "released checkpoint's format (hybrid_override_pattern) and its weights are unverified. Convert it: "
            f"hebatron_nemo.export.export_hf({str(path)!r}, OUT_DIR) (or recipes/export.py source_dir=...).")
    if not cfg.get("hybrid_override_pattern"):
        raise NotReleaseFormatError(f"{path}: config.json has no hybrid_override_pattern (the release's layer list)")


def _verify_manifest(path: Path, manifest: dict) -> None:
    for fname, meta in (manifest.get("weights") or {}).items():
        if not (path / fname).is_file():
            raise ExportError(f"{path}: {fname}, listed in {MANIFEST}, is missing")
        digest = _sha256(path / fname)
        if digest != meta.get("sha256"):
            raise ExportError(f"{path}: {fname} sha256 {digest[:16]}... differs from the one in {MANIFEST} "
                              f"({str(meta.get('sha256'))[:16]}...)")


def load_exported(path, strict: bool = True, dtype=None, check_sha: bool = True):
    """The exported model under the running transformers (eval mode).

    strict: the folder must be in the release format and its weights must be exactly the model's:
    any missing, unexpected or mismatched key raises ExportKeyError naming them (transformers itself
    only logs them and re-initializes what is missing). With a manifest, weight files are checked
    against their sha256 (check_sha=False skips that)."""
    path = Path(path)
    cfg = _read_json(path / "config.json")
    if cfg is None:
        raise ExportError(f"{path}: no config.json")
    if not strict:
        return _from_pretrained_checked(path, dtype, strict=False).eval()
    _require_release_config(cfg, path)
    manifest = _read_json(path / MANIFEST)
    if manifest is not None and check_sha:
        _verify_manifest(path, manifest)
    expected = release_key_shapes(cfg)
    found = _checkpoint_key_shapes(path)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(f"{k}: {list(found[k])} in the checkpoint, {list(expected[k])} expected"
                        for k in set(expected) & set(found) if tuple(found[k]) != tuple(expected[k]))
    if missing or unexpected or mismatched:
        raise ExportKeyError(path, missing=missing, unexpected=unexpected, mismatched=mismatched,
                             where=" (release key names of its config.json)")
    return _from_pretrained_checked(path, dtype, strict=True).eval()


def _load_source(source):
    """(model, info about the source, source folder or None)."""
    if hasattr(source, "state_dict") and hasattr(source, "config"):
        return source, {"kind": "model"}, None
    src = Path(source)
    if not (src / "config.json").is_file():
        raise ExportError(f"{src}: no config.json there: not a model folder (CPT writes <run_dir>/model, "
                          "SFT <run_dir>/sft/model)")
    info: dict[str, Any] = {"path": str(src.resolve())}
    if (src / "COMPLETE").is_file():
        info["fingerprint"] = (src / "COMPLETE").read_text().strip()
    if (src / TRAINING_STATE).is_file():
        from safetensors.torch import load_file
        from transformers import AutoConfig, NemotronHForCausalLM

        try:
            config = AutoConfig.from_pretrained(str(src))
        except (ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{src}: the running transformers cannot read its config.json: {e}") from e
        if config.model_type != "nemotron_h":
            raise ExportError(f"{src}: model_type {config.model_type!r}, not nemotron_h")
        model = NemotronHForCausalLM(config)
        state = load_file(str(src / TRAINING_STATE))
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or mismatched:
            raise ExportKeyError(src / TRAINING_STATE, missing=missing, unexpected=unexpected, mismatched=mismatched)
        model.load_state_dict(state, strict=True)
        info["kind"] = "training_state"
        info["training_state_sha256"] = _sha256(src / TRAINING_STATE)
    else:
        model = _from_pretrained_checked(src)
        info["kind"] = "save_pretrained"
    return model.eval(), info, src


# ------------------------------------------------------------------------------------------- parity


def parity_input(config, batch: int = 2, seq_length: Optional[int] = None, seed: int = 0):
    """Fixed token ids for the parity check: `3 * chunk_size + chunk_size // 2 + 1` tokens, three chunk
    boundaries of the Mamba-2 scan (see the module docstring)."""
    import torch

    chunk = int(config.chunk_size)
    seq_length = seq_length or 3 * chunk + chunk // 2 + 1
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, int(config.vocab_size), (batch, seq_length), generator=g)


def _logits(model, input_ids):
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(input_ids=input_ids, use_cache=False).logits.float().cpu()
    finally:
        model.train(was_training)


def _architecture(model) -> dict:
    """What both versions must agree on: the layer pattern and every tensor's module name and shape."""
    names = sorted(f"{k}:{list(v.shape)}" for k, v in model.state_dict().items())
    return {"pattern": model.config.hybrid_override_pattern,
            "tensors_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(), "tensors": len(names)}


PROBE_TEXT = "שלום, world! <|im_start|>user\nמה שלומך?<|im_end|>"
PROBE_CHAT = [{"role": "user", "content": "מה השעה?"}, {"role": "assistant", "content": "It is noon."}]


def _tokenizer_probe(path: Path) -> Optional[dict]:
    """Token ids of a fixed text, the rendered chat template and the generation stop ids, as the running
    transformers reads them from the folder, to compare across versions."""
    if not (path / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(path))
    out = {"ids": tok(PROBE_TEXT, add_special_tokens=False)["input_ids"], "chat": None,
           "eos_token_id": GenerationConfig.from_pretrained(str(path)).eos_token_id}
    if tok.chat_template:
        out["chat"] = tok.apply_chat_template(PROBE_CHAT, tokenize=False)
    return out


def _parity_worker(export_dir: str, ids_path: str, out_path: str, info_path: str, compat_dir: str) -> None:
    """Runs in a subprocess under a compat layer: loads the export strictly, writes its logits."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    if not str(Path(transformers.__file__).resolve()).startswith(str(Path(compat_dir).resolve())):
        raise SystemExit(f"the compat layer is not in effect: transformers comes from {transformers.__file__}")
    ids = load_file(ids_path)["input_ids"]
    model = load_exported(export_dir, strict=True, dtype=torch.float32)
    out = {"logits": _logits(model, ids).contiguous()}
    if ids.shape[1] > int(model.config.chunk_size):
        # the same weights and modules with the correct chunked scan: tells an upstream scan fault
        # (transformers#47246) from an export fault beyond the first chunk
        from hebatron_nemo.models.fast_scan import enable_fast_scan

        if enable_fast_scan(model):
            out["logits_correct_scan"] = _logits(model, ids).contiguous()
    save_file(out, out_path)
    _write_json(Path(info_path), {"transformers": transformers.__version__, "architecture": _architecture(model),
                                  "layers_block_type": list(model.config.layers_block_type),
                                  "tokenizer": _tokenizer_probe(Path(export_dir))})


def check_parity(export_dir, reference_model, *, input_ids=None, compat_dir: Optional[str] = None,
                 tolerance: float = DEFAULT_TOLERANCE, timeout: int = 900) -> dict:
    """Loads `export_dir` with `load_exported` (in process, or under the transformers of `compat_dir`
    in a subprocess) and compares its fp32 logits on `input_ids` with `reference_model`'s. Raises
    ParityError when the max abs difference exceeds `tolerance`, the architecture (pattern, module
    names and shapes) differs, or the tokenizer encodes or renders differently."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    export_dir = Path(export_dir)
    if input_ids is None:
        input_ids = parity_input(reference_model.config)
    ref = _logits(reference_model, input_ids)
    ref_arch = _architecture(reference_model)
    own_probe = _tokenizer_probe(export_dir)
    t0 = time.time()
    if compat_dir is None:
        model = load_exported(export_dir, strict=True, dtype=torch.float32)
        got, arch, probe = _logits(model, input_ids), _architecture(model), own_probe
        got_correct_scan = None
        version = transformers.__version__
        where = "in process"
    else:
        with tempfile.TemporaryDirectory(prefix="hebatron-parity-") as tmp:
            ids_path, out_path, info_path = (str(Path(tmp) / n)
                                             for n in ("ids.safetensors", "logits.safetensors", "info.json"))
            save_file({"input_ids": input_ids.contiguous()}, ids_path)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(compat_dir), str(REPO_ROOT)]),
                   "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            code = "import sys; from hebatron_nemo.export.hf import _parity_worker; _parity_worker(*sys.argv[1:])"
            argv = [sys.executable, "-c", code, str(export_dir), ids_path, out_path, info_path, str(compat_dir)]
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                raise ParityError(f"{export_dir}: loading under the compat layer {compat_dir} failed:\n"
                                  f"{proc.stderr[-3000:]}")
            saved = load_file(out_path)
            got, got_correct_scan = saved["logits"], saved.get("logits_correct_scan")
            info = _read_json(Path(info_path))
        arch, version, probe = info["architecture"], info["transformers"], info["tokenizer"]
        where = f"subprocess, PYTHONPATH={compat_dir}"
    if got.shape != ref.shape:
        raise ParityError(f"{export_dir}: logits shape {list(got.shape)} under transformers {version}, "
                          f"{list(ref.shape)} from the source")
    chunk = int(reference_model.config.chunk_size)
    per_position = (got - ref).abs().amax(dim=(0, 2))  # max |dlogit| at each position
    diff = float(per_position.max())
    result = {"transformers": version, "where": where, "max_abs_diff": diff, "tolerance": tolerance,
              "input_shape": list(input_ids.shape), "chunk_size": chunk, "architecture": arch,
              "seconds": round(time.time() - t0, 2)}
    if not diff <= tolerance:  # also catches NaN
        deviation = None
        if compat_dir is not None:
            deviation = _known_chunk_scan_fault(per_position, got_correct_scan, ref, chunk, tolerance, version)
        if deviation is None:
            over = (~(per_position <= tolerance)).nonzero()
            first = int(over[0]) if len(over) else -1
            raise ParityError(f"{export_dir}: logits differ from the source model by {diff:.3g} (> {tolerance:g}) under "
                              f"transformers {version} ({where}), from position {first} of {per_position.numel()} "
                              f"(Mamba chunk_size {chunk})")
        # gated: the stock path within the first chunk, the correct scan everywhere; the rest is named
        result["max_abs_diff"] = max(float(per_position[:chunk].max()), deviation.pop("correct_scan_max_abs_diff"))
        result["known_deviation"] = deviation
    if arch != ref_arch:
        raise ParityError(f"{export_dir}: transformers {version} builds a different architecture: "
                          f"{arch} vs {ref_arch}")
    if probe != own_probe:
        raise ParityError(f"{export_dir}: the tokenizer encodes or renders differently, or the generation stop ids "
                          f"differ, under transformers {version}: {probe} vs {own_probe}")
    return result


def _known_chunk_scan_fault(per_position, got_correct_scan, ref, chunk: int, tolerance: float, version: str):
    """The measured transformers#47246 deviation, or None when the difference does not have its shape:
    an affected version, the stock path exact within the first chunk and off from a position at or after
    `chunk`, and the same weights with the correct scan exact at every position."""
    from packaging.version import Version

    if got_correct_scan is None or Version(version) >= Version(KNOWN_DEVIATIONS["transformers#47246"]["fixed_in"]):
        return None
    over = (~(per_position <= tolerance)).nonzero()
    first = int(over[0])
    correct = float((got_correct_scan - ref).abs().max())
    if first < chunk or not correct <= tolerance:
        return None
    return {"id": "transformers#47246", **KNOWN_DEVIATIONS["transformers#47246"],
            "max_abs_diff": float(per_position.max()), "first_position": first,
            "positions_over_tolerance": int(len(over)), "positions": int(per_position.numel()),
            "correct_scan_max_abs_diff": correct}


# -------------------------------------------------------------------------------------------- export


def _chat_template_choice(chat_template, src: Optional[Path], tok_dir: Path):
    """(template or None, where it came from)."""
    if chat_template is False:
        return None, None
    if isinstance(chat_template, str):
        return chat_template, "argument"
    has = False
    for d in {p for p in (src, tok_dir) if p is not None}:
        tc = _read_json(d / "tokenizer_config.json") or {}
        has = has or bool(tc.get("chat_template")) or (d / "chat_template.jinja").is_file()
    if has:
        from hebatron_nemo.sft.template import CHAT_TEMPLATE

        return CHAT_TEMPLATE, "hebatron_nemo.sft.template.CHAT_TEMPLATE"
    return None, None


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise ExportError(f"{out} exists (overwrite=False)")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def export_hf(model_dir_or_model, out_dir, tokenizer_dir=None, chat_template=None, generation: Optional[dict] = None,
              *, dtype=None, max_shard_bytes: int = 5_000_000_000, verify: bool = True,
              compat_dirs: Optional[Iterable[str]] = None, tolerance: float = DEFAULT_TOLERANCE, parity_ids=None,
              overwrite: bool = True, log: Optional[Callable[[str], None]] = None,
              source_note: Optional[dict] = None) -> Path:
    """Writes the model as a release-format HF folder at `out_dir` (see the module docstring) and
    returns its path.

    tokenizer_dir: folder with tokenizer.json (+ tokenizer_config.json); default the source folder.
    chat_template: a Jinja string; None: hebatron_nemo.sft.template.CHAT_TEMPLATE when the source (or
      tokenizer) folder carries a chat template, else none; False: none.
    generation: entries merged over the source's generation_config.json.
    dtype: float32 | bfloat16 | float16 (default: the model's parameter dtype).
    compat_dirs: compat layers (PYTHONPATH dirs) to verify under besides the running transformers;
      default [$HEBATRON_COMPAT_DIR] when set. verify=False writes without any parity check.
    source_note: entries added to the manifest's `source` (e.g. which checkpoint an in-memory model is)."""
    import torch
    import transformers

    log = log or (lambda msg: None)
    model, source_info, src = _load_source(model_dir_or_model)
    source_info = {**source_info, **(source_note or {})}
    if getattr(model.config, "model_type", None) != "nemotron_h":
        raise ExportError(f"model_type {getattr(model.config, 'model_type', None)!r}: only Nemotron-H exports here")
    model_dtype = next(model.parameters()).dtype
    dtype = _torch_dtype(dtype) or model_dtype
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else src
    if tok_dir is None or not (tok_dir / "tokenizer.json").is_file():
        raise ExportError(f"no tokenizer.json in {tok_dir}: pass tokenizer_dir (needed for an in-memory model)")
    token_ids, tok_vocab = _tokenizer_ids(tok_dir)
    if tok_vocab > model.config.vocab_size:
        raise ExportError(f"the tokenizer in {tok_dir} has {tok_vocab} tokens, the model's vocab_size is "
                          f"{model.config.vocab_size}")
    if compat_dirs is None:
        compat_dirs = [os.environ["HEBATRON_COMPAT_DIR"]] if os.environ.get("HEBATRON_COMPAT_DIR") else []
    compat_dirs = [str(c) for c in compat_dirs]

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a killed export (one writer per folder)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        tensors = release_state_dict(model, dtype)
        expected = release_key_shapes(model.config)
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != expected:
            raise ExportError(f"internal: exported keys differ from the release names of the config: "
                              f"{sorted(set(got) ^ set(expected))[:10]}")
        files = _write_weights(tensors, tmp, int(max_shard_bytes))
        n_params = sum(t.numel() for t in tensors.values())
        del tensors
        _write_json(tmp / "config.json", release_config(model.config, dtype, token_ids))

        for name in TOKENIZER_FILES:
            if (tok_dir / name).is_file():
                shutil.copy(tok_dir / name, tmp / name)
        template, template_from = _chat_template_choice(chat_template, src, tok_dir)
        tc = _read_json(tok_dir / "tokenizer_config.json") or {}
        tc.pop("chat_template", None)
        if template is not None:
            tc["chat_template"] = template
        _write_json(tmp / "tokenizer_config.json", tc)

        gen = {k: v for k, v in ((_read_json(src / "generation_config.json") if src else None) or {}).items()
               if k not in ("transformers_version", "_from_model_config")}  # the file is curated, not derived
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            gen.setdefault(key, token_ids.get(key, getattr(model.config, key, None)))
        gen.update(generation or {})
        _write_json(tmp / "generation_config.json", dict(sorted(gen.items())))

        manifest = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": source_info,
            "exported_with": {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]},
            "dtype": _dtype_name(dtype),
            "parameters": n_params,
            "weights": files,
            "tokenizer_dir": str(tok_dir.resolve()),
            "chat_template": template_from,
            "parity": [],
        }
        _write_json(tmp / MANIFEST, manifest)
        if verify:
            reference = model
            if dtype != torch.float32 or model_dtype != torch.float32:
                # the parity check runs in fp32: the source upcast, its weights rounded as exported
                reference = copy.deepcopy(model).float()
                with torch.no_grad():
                    for name, p in list(reference.named_parameters()) + list(reference.named_buffers()):
                        if p.is_floating_point() and not name.endswith(FP32_SUFFIXES):
                            p.copy_(p.to(dtype).float())
            ids = parity_ids if parity_ids is not None else parity_input(model.config)
            for compat in [None, *compat_dirs]:
                r = check_parity(tmp, reference, input_ids=ids, compat_dir=compat, tolerance=tolerance)
                log(f"parity under transformers {r['transformers']} ({r['where']}): max |dlogit| "
                    f"{r['max_abs_diff']:.3g} <= {tolerance:g} on {r['input_shape']} tokens")
                if "known_deviation" in r:
                    d = r["known_deviation"]
                    log(f"  known deviation {d['id']} under transformers {r['transformers']} (stock CPU Mamba path): "
                        f"max |dlogit| {d['max_abs_diff']:.3g} from position {d['first_position']} (chunk_size "
                        f"{r['chunk_size']}); with the correct scan the same weights match; fixed in {d['fixed_in']}")
                manifest["parity"].append(r)
            _write_json(tmp / MANIFEST, manifest)
        _replace_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------------------- recipe


def source_dir_of(cfg) -> Path:
    if cfg.source_dir:
        return Path(str(cfg.source_dir))
    if cfg.source not in ("cpt", "sft"):
        raise ConfigError(f"source={cfg.source!r}: use source=cpt or source=sft (or source_dir=PATH)")
    return Path(str(cfg.run_dir)) / ("model" if cfg.source == "cpt" else "sft/model")


def run_export(cfg, log=print) -> dict:
    """The recipe: export, verify under the running transformers and the compat layer; the manifest."""
    src = source_dir_of(cfg)
    if not (src / "config.json").is_file():
        stage = "recipes/cpt.py" if cfg.source == "cpt" and not cfg.source_dir else "recipes/sft.py"
        raise ExportError(f"{src}: no model folder there; run {stage} with the same overrides first")
    compat = [str(cfg.compat_dir)] if cfg.compat_dir else []
    if not compat:
        log("warning: no compat layer (compat_dir / HEBATRON_COMPAT_DIR unset): parity is checked under the running "
            "transformers only, not under the container's 5.12.1")
    template = Path(str(cfg.chat_template)).read_text() if cfg.chat_template else None
    from omegaconf import OmegaConf

    out = export_hf(src, str(cfg.out_dir), cfg.tokenizer_dir, template,
                    OmegaConf.to_container(cfg.generation, resolve=True) or None, dtype=cfg.dtype,
                    max_shard_bytes=cfg.max_shard_bytes, compat_dirs=compat, tolerance=cfg.tolerance, log=log)
    manifest = _read_json(out / MANIFEST)
    log(f"exported {src} -> {out} ({manifest['parameters']:,} parameters, {manifest['dtype']}, "
        f"{len(manifest['weights'])} weight file(s)); verified under transformers "
        + ", ".join(r["transformers"] for r in manifest["parity"]))
    return manifest
