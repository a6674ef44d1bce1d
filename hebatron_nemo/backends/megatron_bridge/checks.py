"""Checks before GPU time: world-size arithmetic and the conditions Megatron-Bridge / megatron-core
would otherwise assert minutes into a job (or never, training on the wrong thing). MB-free.

Every problem names the config field and the fix; `preflight` collects all of them and raises one
ConfigError, so a user fixes a config in one round trip."""

from __future__ import annotations

from pathlib import Path

from hebatron_nemo.config import BACKENDS, MOE_DISPATCHERS
from hebatron_nemo.errors import ConfigError

PRECISIONS = ("bf16", "fp8")


def layout(par) -> dict:
    """World size and the parallel groups' sizes of one job (megatron-core's decomposition:
    world = TP x PP x CP x DP; experts are sharded over EP inside the DP x CP group)."""
    world = int(par.nodes) * int(par.gpus_per_node)
    tp, pp, cp = (int(par.tensor_model_parallel_size), int(par.pipeline_model_parallel_size),
                  int(par.context_parallel_size))
    model_parallel = tp * pp * cp
    dp = world // model_parallel if model_parallel and world % model_parallel == 0 else None
    return {"world": world, "tp": tp, "pp": pp, "cp": cp, "ep": int(par.expert_model_parallel_size),
            "etp": int(par.expert_tensor_parallel_size), "model_parallel": model_parallel, "dp": dp}


def layout_lines(par, seg: dict | None = None, n_experts: int | None = None) -> list[str]:
    """The world-size arithmetic, written out for the dry run."""
    lay = layout(par)
    lines = [f"world size   = nodes x gpus_per_node = {par.nodes} x {par.gpus_per_node} = {lay['world']}",
             f"model groups = TP x PP x CP = {lay['tp']} x {lay['pp']} x {lay['cp']} = {lay['model_parallel']}",
             f"data parallel DP = {lay['world']} / {lay['model_parallel']} = {lay['dp']}"]
    if n_experts:
        lines.append(f"experts      = {n_experts} / EP {lay['ep']} = {n_experts / lay['ep']:g} per GPU; "
                     f"EP {lay['ep']} inside DP x CP = {(lay['dp'] or 0) * lay['cp']}")
    if seg is not None and lay["dp"]:
        mb = seg["micro_batch"]
        accum = seg["global_batch"] / (lay["dp"] * mb)
        lines.append(f"global batch = {seg['global_batch']} samples x {seg['seq_length']:,} tokens = "
                     f"{seg['global_batch'] * seg['seq_length']:,} tokens/step = DP {lay['dp']} x micro {mb} x "
                     f"{accum:g} accumulation steps")
        if lay["cp"] > 1:
            lines.append(f"context      = {seg['seq_length']:,} / CP {lay['cp']} = {seg['seq_length'] // lay['cp']:,} "
                         "tokens per GPU per sample")
    return lines


def parallelism_problems(par, n_experts: int, segments: list[dict], job_segment: int | None = None) -> list[str]:
    """Problems of a parallelism preset against the model and the plan's segments."""
    p: list[str] = []
    lay = layout(par)
    for name in ("nodes", "gpus_per_node", "tensor_model_parallel_size", "pipeline_model_parallel_size",
                 "context_parallel_size", "expert_model_parallel_size", "expert_tensor_parallel_size"):
        if int(getattr(par, name)) < 1:
            p.append(f"parallelism.{name}={getattr(par, name)} must be >= 1")
    if p:
        return p
    if lay["dp"] is None:
        p.append(f"parallelism: {lay['world']} GPUs (nodes x gpus_per_node) do not divide by TP x PP x CP = "
                 f"{lay['tp']} x {lay['pp']} x {lay['cp']} = {lay['model_parallel']}. Fix: change parallelism.nodes "
                 "or the tensor/pipeline/context sizes")
        return p
    if n_experts % lay["ep"]:
        p.append(f"parallelism.expert_model_parallel_size={lay['ep']} does not divide the model's {n_experts} experts "
                 f"(model.n_routed_experts). Fix: use a divisor of {n_experts}, e.g. 8")
    if (lay["dp"] * lay["cp"]) % lay["ep"]:
        p.append(f"parallelism.expert_model_parallel_size={lay['ep']} does not divide the DP x CP group "
                 f"({lay['dp']} x {lay['cp']} = "
                 f"{lay['dp'] * lay['cp']}). Fix: lower parallelism.expert_model_parallel_size or add GPUs")
    if lay["pp"] > 1:
        p.append(f"parallelism.pipeline_model_parallel_size={lay['pp']}: the per-source ledger is counted on the "
                 "last pipeline stage and written from rank 0, so it would be empty. Fix: "
                 "parallelism.pipeline_model_parallel_size=1 (Nano fits with TP1 PP1 EP8)")
    if par.sequence_parallel and lay["tp"] == 1:
        p.append("parallelism.sequence_parallel=true needs parallelism.tensor_model_parallel_size > 1. "
                 "Fix: set it false")
    if par.moe_dispatcher not in MOE_DISPATCHERS:
        p.append(f"parallelism.moe_dispatcher={par.moe_dispatcher!r} is not one of {MOE_DISPATCHERS}")
    if par.moe_dispatcher == "deepep" and lay["ep"] > int(par.gpus_per_node):
        p.append(f"parallelism.moe_dispatcher=deepep with EP {lay['ep']} > {par.gpus_per_node} GPUs per node: DeepEP "
                 "times out across nodes on H100 (Megatron-Bridge #1335). Fix: moe_dispatcher=hybridep")
    if lay["cp"] > 1 and par.cp_comm_type not in ("p2p", "a2a", "allgather", "a2a+p2p"):
        p.append(f"parallelism.cp_comm_type={par.cp_comm_type!r} is not a megatron-core CP exchange")
    if lay["cp"] > 2 and par.cp_comm_type == "a2a":
        p.append("parallelism.cp_comm_type=a2a: Nemotron-3 Nano has 2 KV heads, which caps all-to-all CP at 2. "
                 "Fix: cp_comm_type=p2p")
    for k, seg in enumerate(segments):
        if job_segment is not None and k != job_segment:
            continue
        key = f"curriculum.segments[{k}] ({seg['name']})"
        if lay["cp"] > 1 and seg["seq_length"] % (2 * lay["cp"]):
            p.append(f"{key}.seq_length={seg['seq_length']} is not divisible by 2 x CP = {2 * lay['cp']} "
                     "(context parallel splits each sequence into 2 x CP chunks). Fix: change seq_length or "
                     "parallelism.context_parallel_size")
        if seg["global_batch"] % (lay["dp"] * seg["micro_batch"]):
            p.append(f"{key}.global_batch_size={seg['global_batch']} is not divisible by DP x micro_batch_size = "
                     f"{lay['dp']} x "
                     f"{seg['micro_batch']} = {lay['dp'] * seg['micro_batch']} with parallelism={par.name}. Fix: a "
                     f"global batch that is a multiple of {lay['dp'] * seg['micro_batch']}, or another preset")
        if seg.get("data_parallel_size") not in (None, lay["dp"]):
            p.append(f"{key}.data_parallel_size={seg['data_parallel_size']} but parallelism={par.name} gives DP "
                     f"{lay['dp']}. Fix: set {key}.data_parallel_size={lay['dp']} (the plan checks batches against it)")
    return p


def path_problems(cfg, segment: int, sft: bool = False) -> list[str]:
    """Inputs that must exist before a job starts."""
    mb = cfg.megatron_bridge
    p = []
    tok = Path(str(cfg.tokenizer.path))
    if not (tok / "tokenizer.json").exists():
        p.append(f"tokenizer.path={tok}: no tokenizer.json there. Fix: point it at the local model folder")
    if sft:
        init = Path(str(cfg.sft.init_from))
        if not (init / "config.json").exists():
            p.append(f"sft.init_from={init}: not an HF model folder (no config.json). Fix: export the CPT model "
                     "(recipes/export.py) or point it at one")
        # SFT resumes whatever checkpoint `load` holds, whole (step, optimizer): a CPT checkpoint there (its
        # plan sidecar) would be continued as if it were this SFT run's own
        from hebatron_nemo.backends.megatron_bridge.callbacks import SIDECAR, iter_dir, latest_iteration

        load = Path(str(mb.load_dir or mb.save_dir))
        it = latest_iteration(load)
        if it is not None and (iter_dir(load, it) / SIDECAR).exists():
            p.append(f"megatron_bridge.save_dir/load_dir={load} holds a CPT checkpoint (iteration {it}, "
                     f"{SIDECAR}): SFT would resume it as its own run. Fix: give SFT its own save_dir "
                     "(hebatron_sft_h100x16: ${sft.run_dir}/megatron); it starts from sft.init_from")
        return p
    if segment == 0 and mb.load_dir is None:
        hf = mb.hf_model_dir
        if hf is None or not (Path(str(hf)) / "config.json").exists():
            p.append(f"megatron_bridge.hf_model_dir={hf}: segment 0 starts from a local HF folder with config.json "
                     "and safetensors. Fix: set it (never a hub id: clusters are air-gapped)")
        elif mb.require_parity:
            from hebatron_nemo.backends.megatron_bridge.convert import parity_problem

            problem = parity_problem(cfg.run_dir, str(hf))
            if problem:
                p.append(problem)
    if segment > 0:
        load = Path(str(mb.load_dir or mb.save_dir))
        if not (load / "latest_checkpointed_iteration.txt").exists():
            p.append(f"megatron_bridge.load_dir={load}: no Megatron checkpoint (latest_checkpointed_iteration.txt) to "
                     f"continue segment {segment} from. Fix: run segment {segment - 1} first, or set load_dir")
    return p


def config_problems(cfg) -> list[str]:
    p = []
    if cfg.backend not in BACKENDS:
        p.append(f"backend={cfg.backend!r} is not one of {BACKENDS}")
    if cfg.megatron_bridge.precision not in PRECISIONS:
        p.append(f"megatron_bridge.precision={cfg.megatron_bridge.precision!r} is not one of {PRECISIONS}")
    if int(cfg.model.n_routed_experts) != 128 or str(cfg.model.pattern).count("E") != 23:
        p.append(f"model={cfg.model.name}: the Megatron-Bridge backend trains Nemotron-3 Nano 30B-A3B (its recipe "
                 "builds that architecture). Fix: model=nemotron3_nano_30b_a3b")
    return p


def raise_if(problems: list[str], what: str) -> None:
    if problems:
        raise ConfigError(f"{what}: {len(problems)} problem(s) before any GPU time:\n  - " + "\n  - ".join(problems))


def segment_index(cfg, segments: list[dict]) -> int:
    """The index, in the plan's `segments` (or `schedule_outline`'s), of the segment `segment` names: the one
    segment a Megatron-Bridge CPT job trains. None: the first."""
    name = cfg.get("segment")
    if name is None:
        return 0
    names = [s["name"] for s in segments]
    if str(name) not in names:
        raise ConfigError(f"segment={name!r} is not a segment of the plan: {names}. Fix: segment=<one of them>")
    return names.index(str(name))


def preflight(cfg, plan: dict, segment: int, check_paths: bool = True) -> None:
    """Every check for one CPT segment job; raises one ConfigError listing all problems."""
    problems = config_problems(cfg)
    problems += parallelism_problems(cfg.parallelism, int(cfg.model.n_routed_experts), plan["segments"], segment)
    vocab = plan["tokenizer"].get("vocab_size")
    if vocab is not None and int(vocab) > int(cfg.model.vocab_size):
        problems.append(f"the plan's data was tokenized with {vocab:,} ids, more than model.vocab_size="
                        f"{cfg.model.vocab_size}. Fix: prepare the data with the model's tokenizer")
    if check_paths:
        problems += path_problems(cfg, segment)
    raise_if(problems, f"megatron_bridge segment {segment}")
