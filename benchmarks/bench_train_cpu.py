"""Benchmark: CPU training-step throughput of the tiny Nemotron-H across transformers versions and scans.

Run by a developer, not CI (~20-30 min on 2 busy cores with the defaults below):

    PYTHONPATH=.:tests python benchmarks/bench_train_cpu.py \
        --variants 5.12.1,5.24.0,fast,5.24.0+malloc,fast+malloc --rounds 3 --steps 8 \
        --out benchmarks/results/bench_train_cpu.json
    PYTHONPATH=.:tests python benchmarks/bench_train_cpu.py --report benchmarks/results/bench_train_cpu.json  # table again

Tokens/s of one training step (forward + fp32 cross entropy + backward + AdamW step; fp32,
`use_cache=False`, torch threads = --threads) of `conf/model/<--model>.yaml`, for the same initial
weights and the same token batches, in three variants:

- `5.12.1`: transformers 5.12.1, the compatibility layer on PYTHONPATH (the container's version; its
  Mamba-2 path is `NemotronHMamba2Mixer.torch_forward`);
- `5.24.0`: transformers 5.24.0, the main env (`mamba2_chunk_scan`, its einsum-based fallback);
- `fast`: 5.24.0 with `hebatron_nemo.models.fast_scan.enable_fast_scan` (torch ops only: no Triton,
  no compiled extension, no torch.compile);

and each optionally `+malloc`: the same with glibc told not to return freed memory to the kernel
(MALLOC_ENV), which removes the page faults of the many short-lived activation buffers.

One persistent worker subprocess per variant (5.12.1's with the compat layer on PYTHONPATH) builds the
model once from weights saved with safetensors (built with --seed; loaded strictly, names mapped if a
version renames them) and reports a SHA-256 of its parameters and buffers, which must agree. Then the
orchestrator runs cycles: one training step of every variant in turn (rotating order), so all variants
are measured seconds apart and the load of other processes hits them alike (idle workers block on a
pipe). Each round resets every worker to the initial weights and a fresh AdamW (the local trainer's
settings, no clipping) per shape, so the losses of the first --loss-steps steps are compared across
variants and across rounds. The batches are fixed random tokens (--batches per shape, cycled).

Figures: median and min seconds per step over all timed steps, tokens/s from the median (and from the
min), speedups vs 5.12.1 and vs 5.24.0 as ratio of medians, median of the per-cycle ratios ("pair")
and ratio of minima ("best"), the max relative loss differences, and for 5.24.0 and fast a
torch.profiler breakdown (mean of --profile-steps steps): wall time per layer type (Mamba, MoE,
attention, embedding+head+loss, optimizer; forward and backward from module hooks), self CPU time per
layer type, and the top ops by self CPU time (overall and in the Mamba layers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VARIANTS = ("5.12.1", "5.24.0", "fast")
# "+malloc" after a variant: the same, with glibc malloc told to keep freed memory (no mmap for big
# blocks, no trimming), so the many short-lived activation tensors do not page-fault on every step
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}
GROUP_OF_BLOCK = {"mamba": "mamba", "linear_attention": "mamba", "moe": "moe", "attention": "attention",
                  "full_attention": "attention", "mlp": "mlp"}
GROUPS = ("mamba", "moe", "attention", "mlp", "embedding+head+loss", "optimizer", "other")
# the local trainer's AdamW (hebatron_nemo/backends/local/trainer.py, conf OptimConfig defaults)
LR, BETAS, EPS, WEIGHT_DECAY = 3e-3, (0.9, 0.95), 1e-8, 0.1


# ------------------------------------------------------------------------------------------------
# helpers (both sides)


def default_compat_dir() -> Path | None:
    """The compatibility layer as scripts/env.sh names it: <root>/compat-<sha256(requirements/compat.lock)[:12]>."""
    for var in ("HEBATRON_COMPAT_DIR", "HEBATRON_COMPAT"):  # the Makefile sets HEBATRON_COMPAT_DIR
        if os.environ.get(var):
            return Path(os.environ[var])
    root = Path(os.environ.get("HEBATRON_ENV_ROOT", Path.home() / ".cache/hebatron/envs"))
    lock = REPO / "requirements" / "compat.lock"
    if lock.exists():
        d = root / f"compat-{hashlib.sha256(lock.read_bytes()).hexdigest()[:12]}"
        if (d / ".complete").exists() or (d / "transformers").is_dir():
            return d
    found = sorted(root.glob("compat-*/transformers"))
    return found[-1].parent if found else None


def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for s in text.split(","):
        b, t = s.lower().split("x")
        out.append((int(b), int(t)))
    return out


def map_state_dict_names(sd: dict, model_keys: set[str]) -> dict:
    """Saved names -> this version's names. Identical for 5.12.1 and 5.24.0 (`model.layers.N.mixer.*`);
    older releases used `backbone.` for the trunk, mapped here in both directions."""
    if set(sd) == model_keys:
        return sd
    out = {}
    for k, v in sd.items():
        for a, b in (("model.", "backbone."), ("backbone.", "model.")):
            if k not in model_keys and k.startswith(a) and b + k[len(a):] in model_keys:
                k = b + k[len(a):]
                break
        out[k] = v
    return out


def state_hash(model) -> str:
    """SHA-256 over the canonical names (trunk = `model.`), dtypes, shapes and bytes of parameters and buffers."""
    import torch

    h = hashlib.sha256()
    items = dict(model.named_parameters())
    items.update(dict(model.named_buffers()))
    for name in sorted(items, key=lambda n: n.replace("backbone.", "model.", 1)):
        t = items[name].detach().contiguous().cpu()
        h.update(name.replace("backbone.", "model.", 1).encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# worker side (one subprocess per variant and round)


def _build(args):
    import torch
    from safetensors.torch import load_file

    import transformers
    from transformers import NemotronHForCausalLM

    from hebatron_nemo.models.nemotron_h import hf_config, load_model_config

    sd = load_file(str(Path(args.workdir) / "weights.safetensors"))
    vocab = sd["lm_head.weight"].shape[0]
    config = hf_config(load_model_config(args.model), vocab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = NemotronHForCausalLM(config)
    keys = set(model.state_dict())
    sd = map_state_dict_names(sd, keys)
    model.load_state_dict(sd, strict=True)
    model.train()
    if args.variant.split("+")[0] == "fast":
        from hebatron_nemo.models.fast_scan import enable_fast_scan

        n = enable_fast_scan(model)
        assert n == config.hybrid_override_pattern.count("M"), n
    info = {
        "transformers": transformers.__version__,
        "transformers_path": str(Path(transformers.__file__).parent),
        "torch": torch.__version__,
        "param_hash": state_hash(model),
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "layer_types": list(getattr(config, "layers_block_type", None) or config.layer_types),
        "time_step_limit_used": list(
            (lambda m: (m.time_step_min, float("inf")) if hasattr(m, "torch_forward") else m.time_step_limit)(
                next(m for m in model.modules() if type(m).__name__.endswith("Mamba2Mixer"))
            )
        ),
    }
    return model, info


def _optimizer(model):
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                              {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=BETAS, eps=EPS,
                             foreach=False)


def _step(model, opt, tokens):
    import torch

    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    logits = model(input_ids=inputs, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


class _Ranges:
    """Profiler ranges `grp:<group>:fwd|bwd` around each block (forward and backward hooks) and the embedding."""

    def __init__(self, model):
        import torch

        self.handles = []
        self.open = {}
        trunk = model.model if hasattr(model, "model") else model.backbone
        mods = [(trunk.embeddings, "embedding+head+loss"), (trunk.norm_f, "embedding+head+loss"),
                (model.lm_head, "embedding+head+loss")]
        for i, block in enumerate(trunk.layers):
            mods.append((block, GROUP_OF_BLOCK.get(block.block_type, block.block_type)))
        for m, group in mods:
            key_f, key_b = f"grp:{group}:fwd", f"grp:{group}:bwd"
            self.handles.append(m.register_forward_pre_hook(lambda mod, inp, k=key_f: self._enter(mod, k)))
            self.handles.append(m.register_forward_hook(lambda mod, inp, out, k=key_f: self._exit(mod, k)))
            if m is not trunk.embeddings:  # integer inputs: no input gradient, its backward is one op
                self.handles.append(m.register_full_backward_pre_hook(lambda mod, go, k=key_b: self._enter(mod, k)))
                self.handles.append(m.register_full_backward_hook(lambda mod, gi, go, k=key_b: self._exit(mod, k)))
        self.torch = torch

    def _enter(self, mod, key):
        rf = self.torch.autograd.profiler.record_function(key)
        rf.__enter__()
        self.open[(id(mod), key)] = rf

    def _exit(self, mod, key):
        rf = self.open.pop((id(mod), key), None)
        if rf is not None:
            rf.__exit__(None, None, None)

    def remove(self):
        for h in self.handles:
            h.remove()


def _profile_step(model, opt, batches, top: int, n: int) -> dict:
    """torch.profiler over n training steps; every figure is per step (the mean of the n)."""
    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    ranges = _Ranges(model)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for k in range(n):
                tokens = batches[k % batches.shape[0]]
                inputs, labels = tokens[:, :-1], tokens[:, 1:]
                with record_function("phase:forward"):
                    logits = model(input_ids=inputs, use_cache=False).logits
                    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                             labels.reshape(-1))
                with record_function("phase:backward"):
                    loss.backward()
                with record_function("phase:optimizer"):
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            wall = (time.perf_counter() - t0) / n
    finally:
        ranges.remove()

    events = [e for e in prof.events() if getattr(e, "device_type", None) is None or "CPU" in str(e.device_type)]
    range_wall = {}
    for e in events:
        if e.name.startswith(("grp:", "phase:")):
            range_wall[e.name] = range_wall.get(e.name, 0.0) + e.cpu_time_total / 1e6 / n

    def group_of(e):
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("grp:"):
                return p.name.split(":")[1]
            if p.name == "phase:optimizer":
                return "optimizer"
            p = p.cpu_parent
        return None

    self_by_group: dict[str, float] = {}
    ops_by_group: dict[str, dict[str, float]] = {}
    phase_of = {}
    for e in events:
        if e.name.startswith(("grp:", "phase:")):
            continue
        g = group_of(e)
        if g is None:
            # the loss (cross entropy, its backward) and anything outside the block hooks
            p, ph = e.cpu_parent, None
            while p is not None:
                if p.name.startswith("phase:"):
                    ph = p.name
                p = p.cpu_parent
            g = "embedding+head+loss" if ph in ("phase:forward", "phase:backward") else "other"
        s = e.self_cpu_time_total / 1e6 / n
        self_by_group[g] = self_by_group.get(g, 0.0) + s
        ops_by_group.setdefault(g, {})
        ops_by_group[g][e.name] = ops_by_group[g].get(e.name, 0.0) + s
        phase_of[g] = True

    fwd, bwd, optw = (range_wall.get(f"phase:{p}", 0.0) for p in ("forward", "backward", "optimizer"))
    wall_by_group = {}
    for g in GROUPS:
        f, b = range_wall.get(f"grp:{g}:fwd", 0.0), range_wall.get(f"grp:{g}:bwd", 0.0)
        if f or b:
            wall_by_group[g] = {"forward_s": f, "backward_s": b, "total_s": f + b}
    # the loss and glue between hooked modules: the phase totals minus what the block hooks measured
    hooked_f = sum(range_wall.get(f"grp:{g}:fwd", 0.0) for g in GROUPS)
    hooked_b = sum(range_wall.get(f"grp:{g}:bwd", 0.0) for g in GROUPS)
    e = wall_by_group.setdefault("embedding+head+loss", {"forward_s": 0.0, "backward_s": 0.0, "total_s": 0.0})
    e["forward_s"] += max(0.0, fwd - hooked_f)
    e["backward_s"] += max(0.0, bwd - hooked_b)
    e["total_s"] = e["forward_s"] + e["backward_s"]
    wall_by_group["optimizer"] = {"forward_s": 0.0, "backward_s": 0.0, "total_s": optw}

    ka = prof.key_averages()
    rows = sorted(ka, key=lambda r: r.self_cpu_time_total, reverse=True)
    top_ops = [{"op": r.key, "self_cpu_ms": r.self_cpu_time_total / 1e3 / n, "calls": r.count / n}
               for r in rows[:top] if not r.key.startswith(("grp:", "phase:"))]
    total_self = sum(self_by_group.values())
    return {
        "steps_profiled": n,
        "step_wall_s": wall,
        "phases_s": {"forward": fwd, "backward": bwd, "optimizer": optw},
        "wall_by_group_s": wall_by_group,
        "self_cpu_by_group_s": dict(sorted(self_by_group.items(), key=lambda kv: -kv[1])),
        "self_cpu_share_by_group": {g: v / total_self for g, v in sorted(self_by_group.items(), key=lambda kv: -kv[1])},
        "top_ops_by_group": {g: [{"op": k, "self_cpu_ms": v * 1e3} for k, v in
                                 sorted(d.items(), key=lambda kv: -kv[1])[:6]] for g, d in ops_by_group.items()},
        "top_ops": top_ops,
    }


MARK = "@@bench_train_cpu@@ "


def _send(obj) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker(args) -> None:
    """A persistent worker: builds its variant once, then answers one command per stdin line
    (`reset <shape>`: initial weights + fresh AdamW; `step`: one timed training step; `profile <shape>`;
    `quit`). Idle workers block on stdin, so only the variant being measured uses the CPU."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    model, info = _build(args)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    data = load_file(str(Path(args.workdir) / "data.safetensors"))
    _send({"variant": args.variant, **info, "threads": torch.get_num_threads()})
    opt, batches, i = None, None, 0
    for line in sys.stdin:
        op, _, arg = line.strip().partition(" ")
        if op == "reset":
            model.load_state_dict(init, strict=True)
            opt, batches, i = _optimizer(model), data[arg], 0
            _send({"ok": True})
        elif op == "step":
            tokens = batches[i % batches.shape[0]]
            t0 = time.perf_counter()
            loss = _step(model, opt, tokens)
            _send({"loss": loss, "t": time.perf_counter() - t0, "i": i})
            i += 1
        elif op == "profile":
            model.load_state_dict(init, strict=True)
            opt, batches = _optimizer(model), data[arg]
            for k in range(2):
                _step(model, opt, batches[k % batches.shape[0]])
            _send(_profile_step(model, opt, batches, args.top, args.profile_steps))
        elif op == "quit":
            break
        else:
            _send({"error": f"unknown command {line!r}"})


# ------------------------------------------------------------------------------------------------
# orchestrator


def _prepare(args, workdir: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    from hebatron_nemo.models.nemotron_h import build_model, count_parameters, load_model_config

    cfg = load_model_config(args.model)
    model = build_model(cfg, vocab_size=args.vocab, seed=args.seed)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(workdir / "weights.safetensors"))
    g = torch.Generator().manual_seed(args.seed + 1)
    data = {}
    for b, t in parse_shapes(args.shapes):
        data[f"{b}x{t}"] = torch.randint(0, model.config.vocab_size, (args.batches, b, t + 1), generator=g)
    save_file(data, str(workdir / "data.safetensors"))
    return {"param_hash": state_hash(model), **count_parameters(model), "vocab_size": model.config.vocab_size,
            "pattern": model.config.hybrid_override_pattern}


class Worker:
    """The orchestrator's handle on one persistent worker subprocess."""

    def __init__(self, args, variant: str, workdir: Path, compat: Path | None):
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        for k in MALLOC_ENV:
            env.pop(k, None)
        base, _, extra = variant.partition("+")
        # the checkout on the path (the worker imports hebatron_nemo), behind the compat layer for 5.12.1
        env["PYTHONPATH"] = os.pathsep.join([str(compat), str(REPO)] if base == "5.12.1" else [str(REPO)])
        if extra == "malloc":
            env.update(MALLOC_ENV)
        env["OMP_NUM_THREADS"] = str(args.threads)
        self.variant = variant
        self.log = open(workdir / f"worker-{variant}.log", "w+")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--variant", variant, "--workdir",
               str(workdir), "--model", args.model, "--threads", str(args.threads), "--seed", str(args.seed),
               "--top", str(args.top), "--profile-steps", str(args.profile_steps)]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        self.log.seek(0)
        raise RuntimeError(f"worker {self.variant} died:\n{self.log.read()[-4000:]}")

    def call(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"worker {self.variant}: {out['error']}")
        return out

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()
        self.log.close()


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def _aggregate(variants, shapes, tokens, info, cycles, losses, profiles) -> dict:
    """Per variant and shape: step-time statistics, tokens/s, speedups (ratios of medians, and medians of
    the per-cycle ratios: variants measured seconds apart), and the losses of the first steps."""
    results = {}
    for v in variants:
        vr = {k: info[v][k] for k in ("transformers", "transformers_path", "torch", "param_hash",
                                      "experts_implementation", "attn_implementation", "layer_types",
                                      "time_step_limit_used", "threads")}
        vr["shapes"] = {}
        for s in shapes:
            times = [c[v] for c in cycles[s]]
            rnd = losses[s][v]
            vr["shapes"][s] = {
                "tokens_per_step": tokens[s],
                "median_step_s": statistics.median(times),
                "min_step_s": min(times),
                "tokens_per_s": tokens[s] / statistics.median(times),
                "tokens_per_s_best": tokens[s] / min(times),
                "step_s": times,
                "losses": rnd[0],
                "losses_max_abs_diff_across_rounds": max(abs(a - b) for l in rnd for a, b in zip(l, rnd[0])),
            }
        results[v] = vr
    for v in variants:
        for s in shapes:
            d = results[v]["shapes"][s]
            for base in ("5.12.1", "5.24.0"):
                if base in results:
                    b = results[base]["shapes"][s]
                    d[f"speedup_vs_{base}"] = b["median_step_s"] / d["median_step_s"]
                    d[f"speedup_vs_{base}_paired"] = statistics.median(c[base] / c[v] for c in cycles[s])
                    d[f"speedup_vs_{base}_best"] = b["min_step_s"] / d["min_step_s"]
                    bl = b["losses"]
                    d[f"loss_max_abs_diff_vs_{base}"] = max((abs(x - y) for x, y in zip(d["losses"], bl)), default=0.0)
                    d[f"loss_max_rel_diff_vs_{base}"] = max((_rel(x, y) for x, y in zip(d["losses"], bl)), default=0.0)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma list of 5.12.1, 5.24.0, fast, each optionally with +malloc (see MALLOC_ENV)")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the model config's)")
    ap.add_argument("--shapes", default="4x256,16x128", help="batch x sequence length, comma separated")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per shape and round (each variant)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after each reset")
    ap.add_argument("--loss-steps", type=int, default=3, help="steps whose losses are compared across variants")
    ap.add_argument("--batches", type=int, default=4, help="distinct random batches per shape (cycled)")
    ap.add_argument("--rounds", type=int, default=3, help="resets to the initial weights (losses checked each time)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=15, help="top ops in the profile")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-steps", type=int, default=3, help="steps per profile (figures are per-step means)")
    ap.add_argument("--compat", default=None, help="the transformers 5.12.1 layer (default: scripts/env.sh's)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_train_cpu.json"))
    ap.add_argument("--report", metavar="JSON", help="only print the table of an earlier run's JSON")
    # worker
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        worker(args)
        return 0
    if args.report:
        print_report(json.loads(Path(args.report).read_text()))
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = {v for v in variants if v.partition("+")[0] not in VARIANTS or v.partition("+")[2] not in ("", "malloc")}
    if bad:
        ap.error(f"unknown variants {sorted(bad)}")
    compat = Path(args.compat) if args.compat else default_compat_dir()
    skipped = {}
    if any(v.startswith("5.12.1") for v in variants) and (compat is None or not (compat / "transformers").is_dir()):
        for v in [v for v in variants if v.startswith("5.12.1")]:
            skipped[v] = f"no compatibility layer found (looked for {compat}); run scripts/env.sh compat"
            variants.remove(v)
    shapes = [f"{b}x{t}" for b, t in parse_shapes(args.shapes)]
    tokens = {f"{b}x{t}": b * t for b, t in parse_shapes(args.shapes)}

    t_start = time.time()
    load_start = _loadavg()
    cycles: dict[str, list[dict[str, float]]] = {s: [] for s in shapes}
    losses: dict[str, dict[str, list[list[float]]]] = {s: {v: [] for v in variants} for s in shapes}
    profiles: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_cpu-") as tmp:
        workdir = Path(tmp)
        prep = _prepare(args, workdir)
        print(f"model {args.model}: {prep['total']:,} parameters, pattern {prep['pattern']}, vocab "
              f"{prep['vocab_size']}; shapes {args.shapes}; threads {args.threads}; {args.rounds} rounds x "
              f"({args.warmup} warmup + {args.steps} timed) steps, variants interleaved step by step", flush=True)
        workers: dict[str, Worker] = {}
        try:
            for v in variants:
                workers[v] = Worker(args, v, workdir, compat)
            info = {v: w.info for v, w in workers.items()}
            n_cycle = 0
            for r in range(args.rounds):
                for s in shapes:
                    t0 = time.time()
                    for w in workers.values():
                        w.call(f"reset {s}")
                    round_losses = {v: [] for v in variants}
                    round_cycles = []
                    for k in range(max(args.warmup + args.steps, args.loss_steps)):
                        n_cycle += 1
                        order = variants[n_cycle % len(variants):] + variants[: n_cycle % len(variants)]
                        res = {v: workers[v].call("step") for v in order}
                        for v in variants:
                            if k < args.loss_steps:
                                round_losses[v].append(res[v]["loss"])
                        if args.warmup <= k < args.warmup + args.steps:
                            round_cycles.append({v: res[v]["t"] for v in variants})
                    for v in variants:
                        losses[s][v].append(round_losses[v])
                    cycles[s].extend(round_cycles)
                    med = {v: statistics.median(c[v] for c in round_cycles) for v in variants}
                    print(f"  round {r + 1} {s:>7}: " + ", ".join(f"{v} {m:.3f}" for v, m in med.items())
                          + f" s/step  ({time.time() - t0:.0f} s, load {(_loadavg() or [0])[0]:.1f})", flush=True)
            if not args.no_profile:
                for v in variants:
                    if v in ("5.24.0", "fast"):  # the plain ones: where the step's time goes
                        profiles[v] = {s: {"profile": workers[v].call(f"profile {s}")} for s in shapes}
                        print(f"  profiled {v}", flush=True)
        finally:
            for w in workers.values():
                w.close()
    load_end = _loadavg()

    hashes = {v: info[v]["param_hash"] for v in variants}
    results = _aggregate(variants, shapes, tokens, info, cycles, losses, profiles)
    report = {
        "benchmark": "bench_train_cpu",
        "command": "python benchmarks/bench_train_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        "duration_s": time.time() - t_start,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": load_end},
        "setup": {"model": args.model, **prep, "shapes": shapes, "threads": args.threads, "rounds": args.rounds,
                  "steps": args.steps, "warmup": args.warmup, "loss_steps": args.loss_steps,
                  "batches_per_shape": args.batches, "seed": args.seed, "dtype": "float32", "use_cache": False,
                  "optimizer": {"name": "AdamW", "lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WEIGHT_DECAY,
                                "foreach": False, "clip_grad": None},
                  "compat_layer": str(compat) if compat else None, "malloc_env": MALLOC_ENV,
                  "step": "forward (logits, use_cache=False) + fp32 cross entropy + backward + AdamW step + zero_grad",
                  "timing": "persistent workers, one per variant; each cycle runs one step of every variant "
                            "(rotating order), so paired speedups compare steps seconds apart"},
        "skipped": skipped,
        "weights_identical": len(set(hashes.values())) == 1 and prep["param_hash"] in hashes.values(),
        "param_hashes": hashes,
        "results": results,
        "profiles": profiles,
    }
    for base in ("5.12.1", "5.24.0"):
        if base in results:
            report[f"loss_max_rel_diff_vs_{base}"] = {
                v: max(results[v]["shapes"][s][f"loss_max_rel_diff_vs_{base}"] for s in shapes) for v in variants}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    print(f"\nwrote {out}")
    return 0


def print_report(rep: dict) -> None:
    res, shapes = rep["results"], rep["setup"]["shapes"]
    print(f"\nweights identical across variants: {rep['weights_identical']} (sha256 {rep['setup']['param_hash'][:16]}...)"
          f"; load average {rep['machine']['loadavg_start']} -> {rep['machine']['loadavg_end']}")
    bases = [b for b in ("5.12.1", "5.24.0") if b in res]
    hdr = (f"{'variant':>13} {'shape':>7} {'s/step med':>10} {'min':>6} {'tok/s':>6} {'tok/s best':>10}"
           + "".join(f" {'x' + b + ' med|pair|best':>22}" for b in bases)
           + "".join(f" {'loss rel diff vs ' + b:>22}" for b in bases))
    print(hdr)
    print("-" * len(hdr))
    for s in shapes:
        for v, r in res.items():
            d = r["shapes"][s]
            sp = "".join(f" {d[f'speedup_vs_{b}']:8.2f}|{d[f'speedup_vs_{b}_paired']:5.2f}|{d[f'speedup_vs_{b}_best']:5.2f} "
                         for b in bases)
            ld = "".join(f" {d[f'loss_max_rel_diff_vs_{b}']:22.1e}" for b in bases)
            print(f"{v:>13} {s:>7} {d['median_step_s']:10.3f} {d['min_step_s']:6.3f} {d['tokens_per_s']:6.0f} "
                  f"{d['tokens_per_s_best']:10.0f}{sp}{ld}")
    print(f"(losses of the first {rep['setup']['loss_steps']} steps from the same initial weights and batches; "
          f"step-0 losses: " + ", ".join(f"{s} {res[next(iter(res))]['shapes'][s]['losses'][0]:.7f}" for s in shapes) + ")")
    for v, shp in rep["profiles"].items():
        for s, rec in shp.items():
            p = rec["profile"]
            print(f"\nprofile {v} {s}: {p['step_wall_s']:.3f} s/step under the profiler (mean of "
                  f"{p.get('steps_profiled', 1)}) — wall by layer type (fwd+bwd from module hooks):")
            tot = sum(x["total_s"] for x in p["wall_by_group_s"].values())
            for g, x in sorted(p["wall_by_group_s"].items(), key=lambda kv: -kv[1]["total_s"]):
                print(f"    {g:<20} {x['total_s'] * 1e3:8.1f} ms ({x['total_s'] / tot:5.1%})  fwd {x['forward_s'] * 1e3:7.1f}"
                      f"  bwd {x['backward_s'] * 1e3:7.1f}")
            print("  top ops by self CPU: " + ", ".join(f"{o['op']} {o['self_cpu_ms']:.1f} ms" for o in p["top_ops"][:8]))
            share = p["self_cpu_share_by_group"]
            print("  self CPU by layer type: " + ", ".join(f"{g} {x:.0%}" for g, x in share.items()))
            mamba = p["top_ops_by_group"].get("mamba", [])
            print("  top ops in Mamba layers: " + ", ".join(f"{o['op']} {o['self_cpu_ms']:.1f} ms" for o in mamba[:6]))


if __name__ == "__main__":
    sys.exit(main())
