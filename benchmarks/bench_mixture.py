"""Benchmark: the curriculum mixture index (`SegmentIndex`) against megatron-core's blending index.

Run by a developer, not CI:

    PYTHONPATH=.:tests python benchmarks/bench_mixture.py --sizes 1e6,1e7,1e8 --out benchmarks/results/bench_mixture.json

For each total sample count N, one segment of global batch 1024 with 256 anchor slots per batch (25%):
20 curriculum sources in 3 phases (different random weights per phase, a few sources absent in each)
and an anchor of 2 sources. Measured in the same run, each build in a fresh subprocess:

- ours: `SegmentIndex(plan, 0)` (the chairman C kernel is compiled and loaded before timing);
- megatron-core: `helpers_cpp.build_blending_indices` for a static blend of the same N over the
  22 sources, with the overall shares of our plan as weights (the reference).

Figures: build seconds (best of --repeats builds), build samples/s, peak memory of the build (VmHWM -
VmRSS before the build, after resetting the high-water mark via /proc/self/clear_refs; the tracemalloc
peak too), bytes per sample of the arrays kept, lookups/s per item (--items random indices, a Python loop)
and batched (--batch random indices; median of --lookup-repeats passes). What each lookup returns:

- per item, ours: `locate(g)` -> a tuple of Python ints/bool (stream id, cursor in the stream, is_anchor,
  phase), checked against the segment's bounds (IndexError outside).
  megatron-core: `int(dataset_index[i]), int(dataset_sample_index[i])` -> a tuple of two Python ints
  (dataset id, sample in that dataset); no bounds check beyond numpy's.
- batched, ours: `locate_batch(g)` -> four arrays (stream id int16, cursor uint32, is_anchor bool, phase
  int16; 9 bytes per index, one allocation), bounds-checked. megatron-core: `dataset_index[g],
  dataset_sample_index[g]` -> two arrays (int16, int64; 10 bytes per index).

Each size runs
--rounds alternating pairs of workers (ours, megatron, ours, ...); timings take the best round, memory the
largest. Times are the measuring thread's CPU time by default (--clock cpu; the JSON has wall times too):
on a shared machine wall times swing with other load, and both sides are single-threaded.
Ratios are ours / megatron-core; "ours ok" says whether ours is no worse.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

GLOBAL_BATCH = 1024
ANCHOR_PER_BATCH = 256
ANCHOR_PERIOD = 10_000
N_CUR, N_ANC = 20, 2
PHASE_FRACTIONS = (0.4, 0.35, 0.25)
ABSENT_PER_PHASE = 3


# ------------------------------------------------------------------------------------------------
# The plan (only the keys SegmentIndex reads) and the equivalent static blend


def make_plan(n_target: int, seed: int) -> dict:
    from hebatron_nemo.curriculum.apportion import largest_remainder
    from hebatron_nemo.curriculum.plan import anchor_positions

    rng = np.random.default_rng(seed)
    batches = max(len(PHASE_FRACTIONS), round(n_target / GLOBAL_BATCH))
    per = GLOBAL_BATCH - ANCHOR_PER_BATCH
    pb = [int(batches * f) for f in PHASE_FRACTIONS]
    pb[-1] = batches - sum(pb[:-1])
    phases = []
    for k, b in enumerate(pb):
        absent = set(rng.choice(N_CUR, ABSENT_PER_PHASE, replace=False).tolist())
        w = rng.dirichlet(np.ones(N_CUR))
        weights = {str(s): float(w[s]) for s in range(N_CUR) if s not in absent}
        counts = largest_remainder(weights, b * per)
        phases.append({"segment": 0, "order_index": k, "batches": b,
                       "counts": {s: c for s, c in counts.items() if c > 0}})
    aw = rng.dirichlet(np.ones(N_ANC))
    pattern = largest_remainder({str(N_CUR + j): float(aw[j]) for j in range(N_ANC)}, ANCHOR_PERIOD)
    seg = {"start_sample": 0, "num_samples": batches * GLOBAL_BATCH, "global_batch": GLOBAL_BATCH,
           "anchor_per_batch": ANCHOR_PER_BATCH, "anchor_positions": anchor_positions(GLOBAL_BATCH, ANCHOR_PER_BATCH),
           "anchor_pattern": {s: c for s, c in pattern.items() if c > 0}, "anchor_period": ANCHOR_PERIOD}
    return {"segments": [seg], "phases": phases, "curriculum": {"transition_batches": 0}}


def static_weights(plan: dict) -> np.ndarray:
    """Overall share of each of the 22 streams over the segment (curriculum counts + anchor slots)."""
    seg = plan["segments"][0]
    tot = np.zeros(N_CUR + N_ANC, dtype=np.float64)
    for p in plan["phases"]:
        for s, c in p["counts"].items():
            tot[int(s)] += c
    anchor_slots = sum(p["batches"] for p in plan["phases"]) * seg["anchor_per_batch"]
    for s, c in seg["anchor_pattern"].items():
        tot[int(s)] += anchor_slots * c / seg["anchor_period"]
    return tot / tot.sum()


# ------------------------------------------------------------------------------------------------
# Worker side (one subprocess per measurement)


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load_helpers_cpp():
    """megatron-core's compiled helpers, loaded without importing megatron.core (which imports torch)."""
    import importlib.machinery
    import importlib.util

    spec = importlib.util.find_spec("megatron.core")
    ddir = Path(spec.submodule_search_locations[0]) / "datasets"
    so = next(ddir.glob("helpers_cpp*.so"))
    name = "megatron.core.datasets.helpers_cpp"
    loader = importlib.machinery.ExtensionFileLoader(name, str(so))
    mspec = importlib.util.spec_from_file_location(name, str(so), loader=loader)
    mod = importlib.util.module_from_spec(mspec)
    loader.exec_module(mod)
    return mod


def _prefault(nbytes: int) -> None:
    """Touch and free `nbytes` of fresh memory before measuring. In a VM whose guest memory the host backs
    lazily (e.g. firecracker), the first touch of a page costs ~10-20 us instead of ~0.5 us, which would
    charge whichever build happens to run first on that memory; afterwards the kernel hands the same pages
    to the build (glibc unmaps large numpy buffers on free), so only the ordinary page-fault cost remains."""
    if nbytes > 0:
        buf = np.ones(nbytes, dtype=np.uint8)
        del buf


def _timed(fn):
    """(result, wall seconds, CPU seconds of this thread: user + system, page faults included)."""
    w0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    return out, time.perf_counter() - w0, time.thread_time() - c0


def _measure_build(build, repeats: int, clock: str):
    """Peak RSS of the first build, best time of `repeats`, then a tracemalloc'd build."""
    gc.collect()
    hwm_reset = _reset_hwm()
    before = _status()
    obj, w, c = _timed(build)
    wall, cpu = [w], [c]
    after = _status()
    rss_peak = after["VmHWM"] - before["VmRSS"] if hwm_reset else after["VmHWM"] - before["VmHWM"]
    rss_kept = after["VmRSS"] - before["VmRSS"]
    for _ in range(repeats - 1):
        del obj
        gc.collect()
        obj, w, c = _timed(build)
        wall.append(w)
        cpu.append(c)
    del obj
    gc.collect()
    tracemalloc.start()
    obj = build()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times = cpu if clock == "cpu" else wall
    return obj, {"build_s": min(times), "build_wall_s": wall, "build_cpu_s": cpu, "peak_rss_bytes": rss_peak,
                 "rss_kept_bytes": rss_kept, "tracemalloc_peak_bytes": traced_peak, "hwm_reset": hwm_reset}


def _rate(fn, n: int, repeats: int, clock: str) -> dict:
    wall, cpu = [], []
    for _ in range(repeats):
        _, w, c = _timed(fn)
        wall.append(w)
        cpu.append(c)
    ts = cpu if clock == "cpu" else wall
    return {"per_s": n / float(np.median(ts)), "best_per_s": n / min(ts), "wall_s": wall, "cpu_s": cpu}


def worker(args) -> dict:
    spec = json.loads(Path(args.spec).read_text())
    n = spec["num_samples"]
    rng = np.random.default_rng(spec["seed"] + 1)
    items = rng.integers(0, n, args.items).tolist()  # Python ints for the per-item loops
    batch = rng.integers(0, n, args.batch).astype(np.int64)
    _prefault(args.prefault_bytes_per_sample * n)

    if args.worker == "ours":
        from hebatron_nemo.curriculum.apportion import _load, chairman_order
        from hebatron_nemo.curriculum.mixture import SegmentIndex

        if not _load():
            raise SystemExit("the chairman C kernel did not compile/load: the benchmark would time the Python fallback")
        chairman_order(np.array([3, 2, 1]))  # warm: kernel loaded, ctypes paths exercised
        plan = spec["plan"]
        idx, res = _measure_build(lambda: SegmentIndex(plan, 0), args.repeats, args.clock)
        kept = {k: v.nbytes for k, v in vars(idx).items() if isinstance(v, np.ndarray)}
        res["kept_arrays"] = kept
        res["kept_bytes"] = sum(kept.values())

        locate = idx.locate

        def per_item():
            for g in items:
                locate(g)

        res["lookup_item"] = _rate(per_item, len(items), args.lookup_repeats, args.clock)
        res["lookup_batch"] = _rate(lambda: idx.locate_batch(batch), len(batch), args.lookup_repeats, args.clock)
        # sanity: the two lookups agree
        sid, cur, anc, ph = idx.locate_batch(np.asarray(items[:2000]))
        for j, g in enumerate(items[:2000]):
            assert idx.locate(g) == (int(sid[j]), int(cur[j]), bool(anc[j]), int(ph[j]))
    else:
        helpers = _load_helpers_cpp()
        w = np.asarray(spec["weights"], dtype=np.float64)
        helpers.build_blending_indices(np.empty(8, np.int16), np.empty(8, np.int64), w, len(w), 8, False)  # warm

        def build():
            di = np.empty(n, dtype=np.int16)
            dsi = np.empty(n, dtype=np.int64)
            helpers.build_blending_indices(di, dsi, w, len(w), n, False)
            return di, dsi

        (di, dsi), res = _measure_build(build, args.repeats, args.clock)
        res["kept_arrays"] = {"dataset_index": di.nbytes, "dataset_sample_index": dsi.nbytes}
        res["kept_bytes"] = di.nbytes + dsi.nbytes

        def per_item():
            for i in items:
                int(di[i]), int(dsi[i])

        res["lookup_item"] = _rate(per_item, len(items), args.lookup_repeats, args.clock)
        res["lookup_batch"] = _rate(lambda: (di[batch], dsi[batch]), len(batch), args.lookup_repeats, args.clock)
        counts = np.bincount(di, minlength=len(w))
        res["max_share_error_samples"] = float(np.abs(counts - w * n).max())
    res["num_samples"] = n
    return res


# ------------------------------------------------------------------------------------------------
# Driver


def machine_info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mcore = version("megatron-core")
    except PackageNotFoundError:
        mcore = None
    cpu = None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = None
    try:
        mem = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "hebatron_nemo/curriculum"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu, "mem_bytes": mem,
            "python": platform.python_version(), "numpy": np.__version__, "megatron_core": mcore,
            "platform": platform.platform(), "repo_commit": commit, "curriculum_dirty": dirty,
            "loadavg_1m_at_start": load, "repo": str(REPO)}


FIGURES = [  # (label, key, higher is better)
    ("build s", "build_s", False),
    ("build samples/s", "build_samples_per_s", True),
    ("peak MB (RSS)", "peak_rss_mb", False),
    ("peak MB (tracemalloc)", "tracemalloc_peak_mb", False),
    ("bytes/sample kept", "bytes_per_sample", False),
    ("lookups/s per item", "lookup_item_per_s", True),
    ("lookups/s batched", "lookup_batch_per_s", True),
]


def figures(r: dict) -> dict:
    n = r["num_samples"]
    return {"build_s": r["build_s"], "build_samples_per_s": n / r["build_s"],
            "peak_rss_mb": r["peak_rss_bytes"] / 2**20, "tracemalloc_peak_mb": r["tracemalloc_peak_bytes"] / 2**20,
            "bytes_per_sample": r["kept_bytes"] / n, "lookup_item_per_s": r["lookup_item"]["per_s"],
            "lookup_batch_per_s": r["lookup_batch"]["per_s"]}


def best_figures(rounds: list[dict]) -> dict:
    """Per figure over rounds: best timing/throughput, largest memory."""
    fs = [figures(r) for r in rounds]
    out = {}
    for _, key, higher in FIGURES:
        vals = [f[key] for f in fs]
        memory = key.endswith("_mb") or key == "bytes_per_sample"
        out[key] = max(vals) if (higher or memory) else min(vals)
    return out


def run_worker(kind: str, spec_path: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", str(spec_path),
           "--repeats", str(args.repeats), "--items", str(args.items), "--batch", str(args.batch),
           "--lookup-repeats", str(args.lookup_repeats),
           "--prefault-bytes-per-sample", str(args.prefault_bytes_per_sample), "--clock", args.clock]
    # A fixed glibc mmap threshold: every large numpy buffer is its own mapping, unmapped on free, so each
    # build's RSS delta counts the pages it touches (the dynamic threshold would serve later builds from a
    # heap that earlier allocations left resident, and the figures would depend on allocation history).
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=262144",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5:
        return f"{v:.3g}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e6,1e7,1e8", help="total global samples, comma-separated (1e6 style ok)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_mixture.json"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--repeats", type=int, default=3, help="builds per measurement (time: best)")
    ap.add_argument("--items", type=int, default=200_000, help="random indices for the per-item lookups")
    ap.add_argument("--batch", type=int, default=1_000_000, help="random indices for the batched lookups")
    ap.add_argument("--lookup-repeats", type=int, default=5, help="passes per lookup figure (median)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating rounds (ours, megatron, ours, ...) per size; timing figures take the best "
                         "round, memory figures the largest (a shared machine's load varies within a run)")
    ap.add_argument("--prefault-bytes-per-sample", type=int, default=16,
                    help="memory touched and freed in each worker before measuring (0: off); see _prefault")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="timing figures from the measuring thread's CPU time (user + system, robust to other "
                         "load on a shared machine; both implementations are single-threaded) or wall time; "
                         "the JSON holds both")
    ap.add_argument("--worker", choices=["ours", "megatron"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    from hebatron_nemo.curriculum.apportion import _load

    if not _load():  # compile the chairman kernel once, outside every timed build
        print("warning: no C compiler, ours runs the pure-Python chairman", file=sys.stderr)

    import tempfile

    info = machine_info()
    results = {"machine": info, "config": {"global_batch": GLOBAL_BATCH, "anchor_per_batch": ANCHOR_PER_BATCH,
                                           "anchor_period": ANCHOR_PERIOD, "curriculum_sources": N_CUR,
                                           "anchor_sources": N_ANC, "phase_fractions": PHASE_FRACTIONS,
                                           "absent_per_phase": ABSENT_PER_PHASE, "seed": args.seed,
                                           "repeats": args.repeats, "items": args.items, "batch": args.batch,
                                           "lookup_repeats": args.lookup_repeats, "rounds": args.rounds,
                                           "clock": args.clock,
                                           "prefault_bytes_per_sample": args.prefault_bytes_per_sample},
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "sizes": []}
    print(f"machine: {info['nproc']} cpus ({info['cpu']}), python {info['python']}, numpy {info['numpy']}, "
          f"megatron-core {info['megatron_core']}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(float(s)) for s in args.sizes.split(",") if s.strip()]:
            plan = make_plan(size, args.seed)
            n = plan["segments"][0]["num_samples"]
            w = static_weights(plan)
            spec_path = Path(tmp) / f"spec-{size}.json"
            spec_path.write_text(json.dumps({"plan": plan, "num_samples": n, "weights": w.tolist(), "seed": args.seed}))
            ours, mega = [], []
            for _ in range(max(1, args.rounds)):
                ours.append(run_worker("ours", spec_path, args))
                mega.append(run_worker("megatron", spec_path, args))
            fo, fm = best_figures(ours), best_figures(mega)
            cmp = {}
            for label, key, higher in FIGURES:
                ratio = fo[key] / fm[key] if fm[key] else float("inf")
                ok = fo[key] >= fm[key] if higher else fo[key] <= fm[key]
                cmp[key] = {"ours": fo[key], "megatron": fm[key], "ratio": ratio, "higher_is_better": higher,
                            "ours_no_worse": ok}
                rows.append((f"{n:.3g}", label, fmt(fo[key]), fmt(fm[key]), f"{ratio:.3g}", "yes" if ok else "NO"))
            results["sizes"].append({"requested": size, "num_samples": n, "static_weights": w.tolist(),
                                     "ours_rounds": ours, "megatron_rounds": mega, "figures": cmp})
            print(f"  N={n}: done", flush=True)

    head = ("N", "figure", "ours", "megatron", "ours/mcore", "ours ok")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
    print(line.format(*head))
    print("  ".join("-" * w for w in widths))
    last = None
    for r in rows:
        if last is not None and r[0] != last:
            print()
        print(line.format(*r))
        last = r[0]
    worse = [(s["num_samples"], k) for s in results["sizes"] for k, v in s["figures"].items() if not v["ours_no_worse"]]
    results["ours_worse_on"] = [{"num_samples": n, "figure": k} for n, k in worse]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out}")
    if worse:
        print("ours worse than megatron-core on: " + ", ".join(f"{k} @ N={n:.3g}" for n, k in worse))
    return 0


if __name__ == "__main__":
    sys.exit(main())
