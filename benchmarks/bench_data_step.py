"""Benchmark: the data layer's cost for one global batch at the cluster's shape (1,280 x 8,192 tokens).

Run by a developer, not CI (minutes, ~0.5 GB of scratch data):

    PYTHONPATH=. python benchmarks/bench_data_step.py --out benchmarks/results/bench_data_step.json

It writes three prepared sources of random int32 token documents (vocab 131,072, as Nemotron's tokenizer;
document lengths log-normal around ~1,000 tokens with a long tail up to 64K; `--tokens` in all) with
megatron-core's `IndexedDatasetBuilder`, plans one segment of `seq_length` 8,192 and `global_batch` 1,280
with a 25% anchor share over two phases (the plan stage's own code, caches included), then times, for the
1,280 global indices of one batch in the middle of the segment:

- `locate_batch`: the numpy batched lookup (stream, cursor, is_anchor, phase) of the whole batch;
- `locate`: the per-item lookup, 1,280 calls;
- `read`: `CurriculumDataset[g]` for each index: the lookup plus megatron-core's `GPTDataset` read of the
  8,193 tokens from the memory-mapped `.bin` and the tensors the trainer gets.

Each is the median of `--repeats` passes over a different batch each time (the first pass, which maps
the files and builds the GPTDatasets, is reported separately as `read_first`). Times are wall seconds. The
files were just written, so they are in the page cache: the reads measure megatron-core's path, not the
storage. On the cluster each of the 64 data-parallel ranks reads only its 20 samples of a batch, so the
whole-batch figures here are 64 times what one rank spends.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SEQ, GLOBAL_BATCH, VOCAB = 8192, 1280, 131_072
SOURCES = {"he_a": 0.4, "he_b": 0.35, "en_x": 0.25}  # share of --tokens written per source


def write_sources(out: Path, tokens: int, seed: int) -> None:
    """Prepared sources as `recipes/prepare_data.py` writes them (train .bin/.idx, signals, manifest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hebatron_nemo.data.indexed import AtomicIndexedWriter
    from hebatron_nemo.utils.io import write_json_atomic

    rng = np.random.default_rng(seed)
    for name, share in SOURCES.items():
        d = out / name
        splits, want = {}, int(tokens * share)
        for split in ("valid", "test", "train"):
            target = want if split == "train" else 50_000
            lengths = []
            w = AtomicIndexedWriter(str(d / split), np.int32)
            while sum(lengths) < target:
                n = int(np.clip(rng.lognormal(np.log(1000), 1.0), 16, 65_536))
                ids = rng.integers(10, VOCAB, size=n, dtype=np.int32)
                ids[-1] = 2  # EOD
                w.add(ids)
                lengths.append(n)
            w.commit()
            splits[split] = {"prefix": str(d / split), "documents": len(lengths), "tokens": int(sum(lengths))}
        lengths = np.asarray(lengths)
        pq.write_table(pa.table({"ordinal": np.arange(len(lengths)), "doc_id": [f"{name}-{i}" for i in range(len(lengths))],
                                 "n_tokens": lengths - 1, "compression_ratio": rng.random(len(lengths)) * 3 + 1,
                                 "n_chars": lengths * 3}), d / "train.signals.parquet")
        write_json_atomic(d / "manifest.json", {
            "kind": "source", "source": name, "fingerprint": f"bench-{name}-{seed}", "splits": splits,
            "tokenizer": {"path": "/nonexistent", "tokenizer_json_sha256": "synthetic", "vocab_size": VOCAB,
                          "eod": 2, "bos": None, "append_eod": True}})


def plan_config(root: Path, batches: int):
    from omegaconf import OmegaConf

    from hebatron_nemo.config import PlanConfig

    reg = {s: {"language": "en" if s.startswith("en") else "he", "register": "bench",
               "role": "anchor" if s.startswith("en") else "pretrain", "path": f"{s}.jsonl", "licence": "bench"}
           for s in SOURCES}
    half = batches // 2 * GLOBAL_BATCH * SEQ * 0.75  # curriculum tokens per phase
    return OmegaConf.merge(OmegaConf.structured(PlanConfig), {
        "paths": {"work": str(root)},
        "data": {"name": "bench", "raw_dir": str(root / "raw"), "output_dir": str(root / "data"), "sources": reg},
        "curriculum": {"name": "bench", "segments": [{"name": "seq8k", "seq_length": SEQ, "global_batch_size": GLOBAL_BATCH,
                                                      "micro_batch_size": 1, "data_parallel_size": 64}],
                       "phases": [{"name": "p1", "segment": "seq8k", "tokens": half, "sources": {"he_a": 0.7, "he_b": 0.3}},
                                  {"name": "p2", "segment": "seq8k", "tokens": half, "sources": {"he_a": 0.3, "he_b": 0.7}}]},
        "anchor": {"share": 0.25, "sources": {"en_x": 1.0}},
        "run_dir": str(root / "run"), "cache_dir": str(root / "cache"),
    })


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=float, default=1.2e8, help="tokens written over the three sources")
    ap.add_argument("--batches", type=int, default=8, help="global batches in the planned segment")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here too")
    args = ap.parse_args(argv)

    from hebatron_nemo.curriculum.mixture import CurriculumDataset, build_caches
    from hebatron_nemo.curriculum.plan import build_plan
    from hebatron_nemo.utils.logs import quiet_megatron

    quiet_megatron()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_sources(root / "data", int(args.tokens), args.seed)
        cfg = plan_config(root, args.batches)
        plan = build_plan(cfg, log=lambda *a, **k: None)
        plan["caches"] = build_caches(plan, str(cfg.cache_dir), log=lambda *a, **k: None)
        setup = time.perf_counter() - t0
        ds = CurriculumDataset(plan, 0, str(cfg.cache_dir))
        idx = ds.index
        nb = idx.num_samples // GLOBAL_BATCH

        def batch_indices(b: int) -> np.ndarray:
            return idx.start + b * GLOBAL_BATCH + np.arange(GLOBAL_BATCH)

        def timed(fn) -> float:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        first = timed(lambda: [ds[int(g)] for g in batch_indices(nb // 2)])
        figures = {"locate_batch": [], "locate": [], "read": []}
        for r in range(args.repeats):
            g = batch_indices((nb // 2 + 1 + r) % nb)
            items = g.tolist()
            figures["locate_batch"].append(timed(lambda: idx.locate_batch(g)))
            figures["locate"].append(timed(lambda: [idx.locate(x) for x in items]))
            figures["read"].append(timed(lambda: [ds[x] for x in items]))
        sample = ds[int(batch_indices(0)[0])]
        assert sample["tokens"].numel() == SEQ, sample["tokens"].shape
    res = {
        "shape": {"global_batch": GLOBAL_BATCH, "seq_length": SEQ, "tokens_written": int(args.tokens),
                  "segment_samples": int(idx.num_samples), "anchor_per_batch": int(idx.anchor_per_batch)},
        "seconds_per_global_batch": {k: statistics.median(v) for k, v in figures.items()},
        "read_first": first, "setup_seconds": setup,
        "machine": {"loadavg": Path("/proc/loadavg").read_text().split()[:3] if os.path.exists("/proc/loadavg") else None,
                    "cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
    }
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
