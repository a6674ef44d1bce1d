"""HF <-> Megatron conversion of Nemotron-3 Nano through Megatron-Bridge's `AutoBridge`, and the logit
parity gate run before training (Nano's conversion had a logit mismatch: Megatron-Bridge #2381).

GPU only (Megatron models need CUDA and Transformer Engine); the tests are marked `gpu`."""

from __future__ import annotations

from pathlib import Path

from hebatron_nemo.utils.hashing import sha256_file
from hebatron_nemo.utils.io import read_json, write_json_atomic
from hebatron_nemo.errors import ConfigError

PARITY_RECORD = "parity.json"


def hf_fingerprint(hf_dir: str | Path) -> str:
    """The HF folder's identity: config.json and the safetensors index (or the single weights file)."""
    d = Path(hf_dir)
    files = [d / "config.json", d / "model.safetensors.index.json"]
    if not files[1].exists():
        files[1] = d / "model.safetensors"
    return "-".join(sha256_file(f)[:16] for f in files if f.exists())


def write_parity_record(run_dir: str | Path, hf_dir: str, result: dict) -> Path:
    path = Path(run_dir) / PARITY_RECORD
    write_json_atomic(path, {"hf_dir": str(hf_dir), "hf_fingerprint": hf_fingerprint(hf_dir), "passed": True,
                             **result})
    return path


def parity_problem(run_dir: str | Path, hf_dir: str) -> str | None:
    """None when `run_dir` holds a passing parity record for this exact HF folder; else what to do."""
    rec = read_json(Path(run_dir) / PARITY_RECORD)
    fix = (f"Fix: run `python recipes/convert.py parity --hf-dir {hf_dir} --run-dir {run_dir}` on one GPU "
           "(or set megatron_bridge.require_parity=false)")
    if rec is None:
        return f"megatron_bridge.require_parity: no HF -> Megatron logit parity record in {run_dir}. {fix}"
    if not rec.get("passed") or rec.get("hf_fingerprint") != hf_fingerprint(hf_dir):
        return (f"megatron_bridge.require_parity: {Path(run_dir) / PARITY_RECORD} is for another HF folder or did not "
                f"pass (recorded {rec.get('hf_dir')}, fingerprint {rec.get('hf_fingerprint')}). {fix}")
    return None

PROMPTS = ("שלום, מה שלומך היום?", "The capital of France is", "בית המשפט העליון קבע כי",
           "def fibonacci(n):")


def init_single_gpu_parallel_state(seed: int = 1234, backend: str = "nccl", port: int = 29517) -> None:
    """One process as a world of one for the parity gate: torch.distributed, megatron-core's model
    parallel groups (all sizes 1), then the model-parallel CUDA RNG tracker seeded, in that order, as
    MB's own setup does (`_set_random_seed` after `initialize_model_parallel`). Without the seed the
    tracker has no "model-parallel-rng" state and building Nano fails in MambaMixer's
    `get_cuda_rng_tracker().fork()`. Idempotent: existing groups are kept, the tracker is reseeded."""
    import os

    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
        dist.init_process_group(backend, rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(int(seed))


def import_hf(hf_dir: str, megatron_dir: str) -> None:
    """HF folder -> Megatron (torch_dist) checkpoint."""
    from megatron.bridge import AutoBridge

    if not (Path(hf_dir) / "config.json").exists():
        raise ConfigError(f"{hf_dir}: not an HF model folder (no config.json)")
    AutoBridge.import_ckpt(hf_dir, megatron_dir)


def export_hf(megatron_dir: str, hf_source_dir: str, out_dir: str) -> None:
    """Megatron checkpoint -> HF folder (config and tokenizer from `hf_source_dir`), written aside and renamed."""
    import os
    import shutil

    from megatron.bridge import AutoBridge

    tmp = Path(str(out_dir) + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    bridge = AutoBridge.from_hf_pretrained(hf_source_dir)
    bridge.export_ckpt(megatron_dir, str(tmp))
    if Path(out_dir).exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def logit_parity(hf_dir: str, prompts=PROMPTS, atol: float = 0.5, min_cosine: float = 0.999,
                 hf_device: str = "cpu") -> dict:
    """Compares the HF model's logits with the Megatron model converted from it (one GPU, TP=EP=1).

    The HF reference runs first (on `hf_device`; the CPU by default: the two 63 GB bf16 copies of
    Nano do not fit one 80 GB GPU together) and is freed before the Megatron model is built.
    Returns {"max_abs", "min_cosine", "argmax_agreement"}; raises ConfigError when the conversion is
    off (then no training should start from it)."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron.bridge import AutoBridge

    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = [tok(p, return_tensors="pt").input_ids for p in prompts]
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16).to(hf_device).eval()
    with torch.no_grad():
        ref = [hf(x.to(hf_device)).logits.float().cpu() for x in ids]
    del hf
    gc.collect()
    provider = AutoBridge.from_hf_pretrained(hf_dir).to_megatron_provider(load_weights=True)
    provider.tensor_model_parallel_size = provider.expert_model_parallel_size = 1
    provider.finalize()
    megatron = provider.provide_distributed_model(wrap_with_ddp=False)[0].cuda().eval()
    worst, cos_min, agree, n = 0.0, 1.0, 0, 0
    with torch.no_grad():
        for x, a in zip(ids, ref):
            x = x.cuda()
            pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
            b = megatron(input_ids=x, position_ids=pos, attention_mask=None).float().cpu()[..., : a.shape[-1]]
            worst = max(worst, float((a - b).abs().max()))
            cos_min = min(cos_min, float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min()))
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            n += x.numel()
    result = {"max_abs": worst, "min_cosine": cos_min, "argmax_agreement": agree / max(n, 1)}
    if worst > atol or cos_min < min_cosine:
        raise ConfigError(f"HF -> Megatron logit parity failed for {hf_dir}: {result} (limits atol={atol}, "
                          f"cosine>={min_cosine}); do not train from this conversion (Megatron-Bridge #2381)")
    return result
