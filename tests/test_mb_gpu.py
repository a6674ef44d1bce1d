"""GPU tier of the Megatron-Bridge backend (marked `gpu`: skipped without CUDA; run inside the NeMo
container on an H100 node). Needs the base model as a local HF folder in $NEMOTRON_BASE_DIR.

    NEMOTRON_BASE_DIR=/models/NVIDIA-Nemotron-3-Nano-30B-A3B-Base-BF16 python -m pytest -m gpu tests/test_mb_gpu.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _base_dir() -> str:
    d = os.environ.get("NEMOTRON_BASE_DIR", "")
    if not (Path(d) / "config.json").exists():
        pytest.fail(f"NEMOTRON_BASE_DIR={d!r} is not a local HF folder of the base model (the GPU tier needs it)")
    return d


def test_hf_to_megatron_logit_parity():
    """The gate before training (Megatron-Bridge #2381): HF and converted Megatron logits agree."""
    from hebatron_nemo.backends.megatron_bridge.convert import init_single_gpu_parallel_state, logit_parity

    init_single_gpu_parallel_state(port=29513)  # the same setup as `recipes/convert.py parity`
    result = logit_parity(_base_dir())
    assert result["argmax_agreement"] > 0.99, result


def test_import_then_export_round_trip(tmp_path):
    """HF -> Megatron -> HF through AutoBridge: every tensor comes back bit for bit."""
    from safetensors import safe_open

    from hebatron_nemo.backends.megatron_bridge.convert import export_hf, import_hf

    base = _base_dir()
    import_hf(base, str(tmp_path / "megatron"))
    export_hf(str(tmp_path / "megatron"), base, str(tmp_path / "hf"))
    ref = {}
    for f in sorted(Path(base).glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            ref.update({k: s.get_tensor(k) for k in s.keys()})
    got = {}
    for f in sorted((tmp_path / "hf").glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            got.update({k: s.get_tensor(k) for k in s.keys()})
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and bool((got[k] == ref[k]).all()), k
