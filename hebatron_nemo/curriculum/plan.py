"""The CPT data plan: phases, segments, streams, sample counts and global index ranges, before training.

Vocabulary:

- A **segment** is one training job at one sequence length. Its samples are the global indices
  `[start_sample, start_sample + num_samples)`; every global batch holds `anchor_per_batch` anchor
  samples at fixed, evenly strided positions and `global_batch - anchor_per_batch` curriculum samples.
- A **phase** is a run of whole global batches inside a segment with its own source weights. Phase
  budgets count curriculum tokens only.
- A **stream** is what one source contributes to one segment: a fixed set of its training documents
  (disjoint from that source's documents in other segments, optionally a difficulty band), cut into
  samples by megatron-core's `GPTDataset`, one epoch at a time with a seed that depends only on
  (seed, source, segment, band, epoch). Phases consume a stream in order through a cursor, so a source
  used by two phases continues where it stopped, and a larger budget appends and never reorders.

`build_plan(cfg)` validates everything and returns the plan as a JSON-able dict (`plan.json`, schema
in `hebatron_nemo/schemas/plan.schema.json`). Bad plans fail here with the field named.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from hebatron_nemo import __version__
from hebatron_nemo.config import ORDERS
from hebatron_nemo.curriculum.apportion import chairman_order, largest_remainder
from hebatron_nemo.utils.hashing import stable_hash
from hebatron_nemo.utils.io import read_json
from hebatron_nemo.errors import ConfigError

PLAN_SCHEMA_VERSION = 1
ADD_EXTRA_TOKEN = 1  # GPTDataset reads seq_length + 1 tokens per sample (inputs and shifted labels)


def _check_weights(weights: dict, key: str) -> dict[str, float]:
    if not weights:
        raise ConfigError(f"{key}: no sources")
    out = {}
    for name, w in weights.items():
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.{name}: weight must be a number, got {w!r}") from None
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"{key}.{name}: weight must be finite and >= 0, got {w}")
        out[name] = w
    if sum(out.values()) <= 0:
        raise ConfigError(f"{key}: all weights are zero")
    return {n: w for n, w in out.items() if w > 0}


def _seed(*parts) -> int:
    """A 31-bit seed from the parts (megatron-core seeds numpy's RandomState with it)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big") & 0x7FFFFFFF


# ---------------------------------------------------------------------------------------------
# Streams: the documents of a source used in one segment


@dataclass
class SourceData:
    """A prepared source's training split: document token lengths and difficulty signals."""

    name: str
    prefix: str  # as the plan stores it: relative to the data root (`<source>/train`)
    fingerprint: str
    doc_lengths: np.ndarray  # tokens per document, EOD included
    signals_path: str

    _signals: dict | None = None

    def signal(self, column: str) -> np.ndarray:
        if self._signals is None:
            import pyarrow.parquet as pq

            table = pq.read_table(self.signals_path)
            self._signals = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
        if column not in self._signals:
            raise ConfigError(f"select.signal {column!r} is not a signal of source {self.name!r}; "
                              f"available: {sorted(set(self._signals) - {'ordinal', 'doc_id', 'hash'})}")
        return self._signals[column]


def load_source(data_cfg, name: str) -> SourceData:
    """Reads a prepared source's manifest and document lengths; fails naming the command that prepares it."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    manifest = read_json(Path(str(data_cfg.output_dir)) / name / "manifest.json")
    if not manifest or manifest.get("kind") != "source":
        raise ConfigError(f"source {name!r} is not prepared (no {data_cfg.output_dir}/{name}/manifest.json): run "
                          f"`python recipes/prepare_data.py data={data_cfg.name} sources=[{name}]`")
    from hebatron_nemo.data.registry import split_prefix

    train = manifest["splits"]["train"]
    if not train["prefix"] or not train["documents"]:
        raise ConfigError(f"source {name!r} has no training documents after filtering")
    root = Path(str(data_cfg.output_dir))
    path = split_prefix(root / name, train["prefix"])
    ds = IndexedDataset(path)
    seq = ds.sequence_lengths.astype(np.int64)
    doc_idx = ds.document_indices
    lengths = np.add.reduceat(seq, doc_idx[:-1]) if len(seq) else np.zeros(0, np.int64)
    # the plan stores the prefix relative to data.output_dir, so it reads wherever the data is mounted
    rel = Path(path).relative_to(root).as_posix() if Path(path).is_relative_to(root) else path
    return SourceData(name, rel, manifest["fingerprint"], lengths, path + ".signals.parquet")


def stream_documents(src: SourceData, seed: int, doc_range: tuple[float, float], band: dict | None) -> np.ndarray:
    """The (sorted) document indices of a stream: a slice of a fixed permutation of the source's
    documents (the segment's share), then optionally a quantile band of a difficulty signal.

    Depends only on the source, the seed, the slice and the band: never on budgets or weights."""
    n = len(src.doc_lengths)
    perm = np.random.default_rng(_seed("segment-split", seed, src.name)).permutation(n)
    lo, hi = int(round(doc_range[0] * n)), int(round(doc_range[1] * n))
    docs = np.sort(perm[lo:hi])
    if band is not None:
        values = src.signal(band["signal"])[docs]
        ranked = docs[np.lexsort((docs, values))]  # by signal, ties by document index
        a, b = int(math.floor(band["quantile"][0] * len(ranked))), int(math.floor(band["quantile"][1] * len(ranked)))
        docs = np.sort(ranked[a:b])
    return docs.astype(np.int32)


def samples_per_epoch(tokens: int, seq_length: int) -> int:
    """GPTDataset's sample count for one epoch over documents holding `tokens` tokens."""
    return max(0, (tokens - ADD_EXTRA_TOKEN) // seq_length)


def docs_hash(docs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(docs, dtype=np.int32).tobytes()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# Validation of the composed config


def _validate(cfg) -> None:
    cur, anchor = cfg.curriculum, cfg.anchor
    if cur.order not in ORDERS:
        raise ConfigError(f"curriculum.order must be one of {ORDERS}, got {cur.order!r}")
    if cur.max_epochs < 1:
        raise ConfigError(f"curriculum.max_epochs must be >= 1, got {cur.max_epochs}")
    if cur.transition_batches < 0:
        raise ConfigError(f"curriculum.transition_batches must be >= 0 (global batches of linear blend each side of "
                          f"a phase boundary; 0 = a step change), got {cur.transition_batches}")
    if not cur.segments:
        raise ConfigError("curriculum.segments is empty")
    if not cur.phases:
        raise ConfigError("curriculum.phases is empty")
    names = [s.name for s in cur.segments]
    if len(set(names)) != len(names):
        raise ConfigError(f"curriculum.segments: duplicate names {names}")
    for i, seg in enumerate(cur.segments):
        key = f"curriculum.segments[{i}] ({seg.name})"
        for fld in ("seq_length", "global_batch_size", "micro_batch_size", "data_parallel_size"):
            if getattr(seg, fld) < 1:
                raise ConfigError(f"{key}.{fld} must be >= 1, got {getattr(seg, fld)}")
        if seg.global_batch_size % (seg.data_parallel_size * seg.micro_batch_size):
            raise ConfigError(f"{key}: global_batch_size {seg.global_batch_size} is not divisible by data_parallel_size x "
                              f"micro_batch_size = {seg.data_parallel_size} x {seg.micro_batch_size}")
    pnames = [p.name for p in cur.phases]
    if len(set(pnames)) != len(pnames):
        raise ConfigError(f"curriculum.phases: duplicate names {pnames}")
    last_seg = -1
    for i, ph in enumerate(cur.phases):
        key = f"curriculum.phases[{i}] ({ph.name})"
        if ph.segment not in names:
            raise ConfigError(f"{key}.segment {ph.segment!r} is not a segment; segments: {names}")
        seg_idx = names.index(ph.segment)
        if seg_idx < last_seg:
            raise ConfigError(f"{key}: phases must be listed segment by segment in segment order")
        last_seg = seg_idx
        try:
            tokens = float(ph.tokens)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.tokens must be a number, got {ph.tokens!r}") from None
        if not math.isfinite(tokens) or tokens <= 0:
            raise ConfigError(f"{key}.tokens must be a positive token budget, got {ph.tokens}")
        _check_weights(ph.sources, f"{key}.sources")
        registry = cfg.get("data", {}).get("sources", None) if hasattr(cfg, "get") else None
        for src in ph.sources:
            if registry is not None and src not in registry:
                raise ConfigError(f"{key}.sources: unknown source {src!r} in phase {ph.name!r}; the registry "
                                  f"{cfg.data.name!r} has: {', '.join(sorted(registry))}")
        for src, sel in ph.select.items():
            if src not in ph.sources:
                raise ConfigError(f"{key}.select.{src}: not one of the phase's sources")
            q = list(sel.quantile)
            if len(q) != 2 or not 0.0 <= q[0] < q[1] <= 1.0:
                raise ConfigError(f"{key}.select.{src}.quantile must be [lo, hi] with 0 <= lo < hi <= 1, got {q}")
    for i, seg in enumerate(cur.segments):
        if not any(p.segment == seg.name for p in cur.phases):
            raise ConfigError(f"curriculum.segments[{i}] ({seg.name}) has no phase")
    if not (isinstance(anchor.share, (int, float)) and math.isfinite(anchor.share) and 0.0 <= anchor.share < 1.0):
        raise ConfigError(f"anchor.share must be in [0, 1), got {anchor.share}")
    tol = anchor.tolerance
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"anchor.tolerance must be a finite number >= 0 (the largest accepted |effective - "
                          f"nominal| anchor share), got {tol}")
    if anchor.share > 0:
        _check_weights(anchor.sources, "anchor.sources")
        registry = cfg.get("data", {}).get("sources", None) if hasattr(cfg, "get") else None
        for src in anchor.sources:
            if registry is not None and src not in registry:
                raise ConfigError(f"anchor.sources: unknown source {src!r}; the registry {cfg.data.name!r} has: "
                                  f"{', '.join(sorted(registry))}")
    if anchor.period < 1:
        raise ConfigError(f"anchor.period must be >= 1, got {anchor.period}")


def _anchor_per_batch(cfg, seg) -> int:
    share = float(cfg.anchor.share)
    a = int(math.floor(share * seg.global_batch_size + 0.5))
    effective = a / seg.global_batch_size
    if share > 0 and a == 0:
        raise ConfigError(f"anchor.share={share} x global_batch_size={seg.global_batch_size} of segment {seg.name!r} rounds to 0 "
                          f"anchor samples per batch; raise the global batch (>= {math.ceil(0.5 / share)})")
    if abs(effective - share) > cfg.anchor.tolerance and not cfg.anchor.allow_rounding:
        good = [b for b in range(seg.global_batch_size, seg.global_batch_size * 4 + 1)
                if b % (seg.data_parallel_size * seg.micro_batch_size) == 0
                and abs(math.floor(share * b + 0.5) / b - share) <= cfg.anchor.tolerance][:3]
        raise ConfigError(
            f"anchor.share={share} with global_batch_size={seg.global_batch_size} (segment {seg.name!r}) gives {a} anchor "
            f"samples per batch, an effective share of {effective:.4f} (error {abs(effective - share):.4f} > "
            f"anchor.tolerance={cfg.anchor.tolerance}). Use a global batch such as {good or '(none nearby)'} "
            "or set anchor.allow_rounding=true")
    if a >= seg.global_batch_size:
        raise ConfigError(f"segment {seg.name!r}: the anchor takes the whole global batch")
    return a


def anchor_positions(global_batch: int, anchor_per_batch: int, micro_batch: int | None = None,
                     data_parallel_size: int = 1) -> list[int]:
    """Positions of the anchor samples inside a global batch, spread as evenly as integers allow over
    the (micro-step, data-parallel rank) chunks of Megatron's pretraining sampler: a global batch is
    `global_batch / (micro_batch x dp)` micro-steps of `micro_batch x dp` consecutive indices, rank r
    reading the r-th `micro_batch` of each. Every chunk holds floor or ceil of a/C anchor samples
    (C = global_batch / micro_batch chunks), every rank floor or ceil of a/dp, every micro-step floor or
    ceil of a/steps; inside a chunk they are evenly strided. Without `micro_batch` the batch is one chunk
    (evenly strided over the whole batch)."""
    a, gb = anchor_per_batch, global_batch
    mb = gb if micro_batch is None else micro_batch
    dp = 1 if micro_batch is None else data_parallel_size
    if a <= 0:
        return []
    steps = gb // (mb * dp)
    # micro-step s takes the anchor samples i whose centred stride point falls in it: floor or ceil of
    # a/steps each (with one step, or one sample a step, this is the plain evenly strided layout)
    per_step = np.bincount([((2 * i + 1) * steps) // (2 * a) for i in range(a)], minlength=steps)
    out, turn = [], 0
    for step in range(steps):
        y = int(per_step[step])
        q, e = divmod(y, dp)
        # the e ranks that take one more rotate over the steps, so every rank ends with floor or ceil of a/dp
        lucky = {(turn + j) % dp for j in range(e)}
        turn = (turn + e) % dp
        for r in range(dp):
            x = q + (r in lucky)
            first = (step * dp + r) * mb
            out += [first + ((2 * i + 1) * mb) // (2 * x) for i in range(x)]
    return out


ORDER_READINGS = {
    "easy_to_hard": "phases in declared order, segments in declared order",
    "reversed": "within-segment reversal: each segment's phases in reverse; segments (the long-context one "
                "last) in declared order",
    "reversed_full": "full reversal: segments in reverse (the long-context segment first) and each segment's "
                     "phases in reverse",
    "shuffled": "each segment's phases in a seeded random order (curriculum.order_seed); segments in "
                "declared order",
    "none": "each segment's phases merged into one static blend; segments in declared order",
}


def with_data_parallel(cfg):
    """`cfg` with every curriculum segment's `data_parallel_size` set: its own value, else the DP its
    parallelism preset gives (`megatron_bridge.segment_parallelism`, one preset per segment in training
    order), else 1. One place for a cluster segment's DP: the preset that runs it."""
    import copy

    from omegaconf import OmegaConf

    cur = cfg.curriculum
    if all(s.data_parallel_size is not None for s in cur.segments):
        return cfg
    names = list(OmegaConf.select(cfg, "megatron_bridge.segment_parallelism", default=None) or [])
    order = segment_order(cur)
    if names and len(names) != len(order):
        raise ConfigError(f"megatron_bridge.segment_parallelism={names} names {len(names)} presets, the curriculum "
                          f"has {len(order)} segments. Fix: one conf/parallelism preset name per segment, in order")
    out = copy.deepcopy(cfg)
    OmegaConf.set_readonly(out, False)
    for t, k in enumerate(order):
        seg = out.curriculum.segments[k]
        if seg.data_parallel_size is None:
            dp = 1
            if names:
                from hebatron_nemo.backends.megatron_bridge.checks import layout
                from hebatron_nemo.backends.megatron_bridge.seam import load_preset

                dp = layout(load_preset(names[t]))["dp"]
                if dp is None:
                    raise ConfigError(f"parallelism preset {names[t]!r} (segment {seg.name!r}): its GPUs do not "
                                      "divide by TP x PP x CP. Fix: the preset's sizes")
            seg.data_parallel_size = int(dp)
    return out


def segment_order(cur) -> list[int]:
    """The declared segment indices in the order they train: reversed under `reversed_full` only."""
    idx = list(range(len(cur.segments)))
    return idx[::-1] if cur.order == "reversed_full" else idx


def realized_order(cur) -> list[list[int]]:
    """Per segment in training order (`segment_order`), the declared phase indices in the order they
    train under `curriculum.order`. `reversed`, `shuffled` and `none` permute (merge) only phases that
    share a segment; `reversed_full` also reverses the segments."""
    groups: list[list[int]] = []
    for k in segment_order(cur):
        seg = cur.segments[k]
        idx = [i for i, p in enumerate(cur.phases) if p.segment == seg.name]
        if cur.order in ("reversed", "reversed_full"):
            idx = idx[::-1]
        elif cur.order == "shuffled":
            idx = [idx[j] for j in np.random.default_rng(_seed("order", cur.order_seed, seg.name)).permutation(len(idx))]
        groups.append(idx)
    return groups


def _realize_transitions(segments: list[dict], phases: list[dict], tb: int) -> None:
    """With transitions, a phase's batches hold samples of its neighbours' streams: sets each phase's
    `counts` to what its batches realize (from the mixture itself, so the ledger's planned and realized
    samples agree) and `transition_start_sample` to the first global index whose sample depends on it
    (its window's start). `blend_counts` keeps the phase's own apportionment, which the mixture is built
    from; per-stream totals over a segment are unchanged."""
    if tb <= 0:
        return
    from hebatron_nemo.curriculum.mixture import curriculum_records

    for seg in segments:
        group = [p for p in phases if p["segment"] == seg["index"]]
        if len(group) < 2:
            continue
        per = seg["curriculum_per_batch"]
        sids, cur, halves = curriculum_records(group, per, tb)
        at = 0
        for j, p in enumerate(group):
            n = p["batches"] * per
            c = np.bincount(cur["src"][at:at + n].astype(np.int64), minlength=len(sids))
            p["counts"] = {str(int(sids[i])): int(c[i]) for i in np.flatnonzero(c)}
            if j > 0:
                p["transition_start_sample"] = p["start_sample"] - (halves[j - 1] // per) * seg["global_batch"]
            at += n


# ---------------------------------------------------------------------------------------------
# The plan


def build_plan(cfg, log=print) -> dict[str, Any]:
    """Validates the config and computes the whole plan (no training, no cache building)."""
    cfg = with_data_parallel(cfg)
    _validate(cfg)
    cur, anchor, data = cfg.curriculum, cfg.anchor, cfg.data
    seg_names = [s.name for s in cur.segments]
    from hebatron_nemo.data.registry import require_sources

    used = sorted({s for p in cur.phases for s in p.sources} | (set(anchor.sources) if anchor.share > 0 else set()))
    require_sources(data, used, what="curriculum/anchor")
    for name in used:
        if data.sources[name].role not in ("pretrain", "anchor"):
            raise ConfigError(f"source {name!r} has role {data.sources[name].role!r}: only pretrain/anchor sources "
                              "can be trained on in CPT")
    sources = {name: load_source(data, name) for name in used}

    # Which segments use each source, and the share of its documents each gets.
    seg_use: dict[str, list[int]] = {}
    for p in cur.phases:
        for s in p.sources:
            k = seg_names.index(p.segment)
            if k not in seg_use.setdefault(s, []):
                seg_use[s].append(k)
    if anchor.share > 0:
        for s in anchor.sources:
            for k in range(len(cur.segments)):
                if k not in seg_use.setdefault(s, []):
                    seg_use[s].append(k)
    ranges: dict[tuple[str, int], tuple[float, float]] = {}
    for s, segs in seg_use.items():
        segs.sort()
        shares = list(cur.segment_doc_shares.get(s, [1.0] * len(segs)))
        if len(shares) != len(segs) or any(x <= 0 for x in shares):
            raise ConfigError(f"curriculum.segment_doc_shares.{s} needs {len(segs)} positive shares "
                              f"(segments {[seg_names[k] for k in segs]}), got {shares}")
        edges = np.concatenate([[0.0], np.cumsum(shares) / sum(shares)])
        for j, k in enumerate(segs):
            ranges[(s, k)] = (float(edges[j]), float(edges[j + 1]))

    seg_order = segment_order(cur)  # declared segment indices in training order
    position = {k: t for t, k in enumerate(seg_order)}

    # Streams: (source, segment, band); anchor streams are (source, segment) with role "anchor".
    streams: list[dict] = []
    index: dict[tuple, int] = {}

    def stream_for(source: str, k: int, band: dict | None, role: str) -> int:
        key = (source, k, None if band is None else (band["signal"], *band["quantile"]), role)
        if key in index:
            return index[key]
        src = sources[source]
        docs = stream_documents(src, cur.seed, ranges[(source, k)], band)
        seq = cur.segments[k].seq_length
        tokens = int(src.doc_lengths[docs].sum())
        name = f"{source}@{cur.segments[k].name}" + (
            "" if band is None else f"[{band['signal']}:{band['quantile'][0]:g}-{band['quantile'][1]:g}]")
        spe = samples_per_epoch(tokens, seq)
        if spe < 1:
            raise ConfigError(f"source {source!r} has {tokens:,} tokens in segment {cur.segments[k].name!r}"
                              f"{'' if band is None else ' band ' + str(band)}: fewer than one {seq}-token sample")
        long_tokens = int(src.doc_lengths[docs][src.doc_lengths[docs] > seq].sum())
        streams.append({
            "id": len(streams), "key": name, "source": source, "segment": position[k], "declared_segment": k,
            "role": role, "band": band,
            "prefix": src.prefix, "source_fingerprint": src.fingerprint, "doc_range": list(ranges[(source, k)]),
            "documents": int(len(docs)), "docs_sha256": docs_hash(docs), "tokens": tokens,
            "tokens_in_docs_longer_than_seq": long_tokens, "samples_per_epoch": spe,
            "seed": cur.seed, "samples_needed": 0, "epochs": 0.0,
        })
        index[key] = len(streams) - 1
        return index[key]

    # Stream ids in training order: per segment its anchor streams, then its phases' streams in the
    # order they train (within a phase, its sources in declared order). A change to a phase therefore
    # only renumbers (appends) the ids of streams first used at or after it, in every arm.
    order = realized_order(cur)
    declared: list[dict | None] = [None] * len(cur.phases)
    for t, k in enumerate(seg_order):
        seg = cur.segments[k]
        a = _anchor_per_batch(cfg, seg)
        if a:
            for s in _check_weights(anchor.sources, "anchor.sources"):
                stream_for(s, k, None, "anchor")
        per_batch = seg.global_batch_size - a
        for i in order[t]:  # budgets -> batches -> exact per-stream counts
            p = cur.phases[i]
            batches = math.ceil(float(p.tokens) / seg.seq_length / per_batch)
            weights = _check_weights(p.sources, f"curriculum.phases[{i}] ({p.name}).sources")
            counts_by_source = largest_remainder(weights, batches * per_batch)
            counts = {}
            for src, n in counts_by_source.items():
                band = OmegaConf.to_container(p.select[src]) if src in p.select else None
                counts[stream_for(src, k, band, "curriculum")] = n
            declared[i] = {"name": p.name, "declared_index": i, "segment": t, "batches": batches,
                           "curriculum_samples": batches * per_batch, "weights": weights, "counts": counts,
                           "description": p.description}
    _check_overlaps(streams)

    # Segments in training order, phases in realized order.
    segments, phases = [], []
    start_sample = start_step = 0
    for t, k in enumerate(seg_order):
        seg = cur.segments[k]
        a = _anchor_per_batch(cfg, seg)
        group = [declared[i] for i in order[t]]
        if cur.order == "none" and len(group) > 1:
            merged = {"name": "+".join(g["name"] for g in group), "declared_index": group[0]["declared_index"],
                      "segment": t, "batches": sum(g["batches"] for g in group),
                      "curriculum_samples": sum(g["curriculum_samples"] for g in group), "counts": {},
                      "weights": {}, "description": "order=none: the segment's phases as one static blend"}
            for g in group:
                for sid, n in g["counts"].items():
                    merged["counts"][sid] = merged["counts"].get(sid, 0) + n
            total = merged["curriculum_samples"]
            merged["weights"] = {streams[sid]["source"]: n / total for sid, n in merged["counts"].items()}
            group = [merged]
        seg_start_step = start_step
        seg_batches = sum(g["batches"] for g in group)
        anchor_slots = seg_batches * a
        anchor_counts = {}
        anchor_pattern = {}
        if a:
            weights = _check_weights(anchor.sources, "anchor.sources")
            pattern_counts = largest_remainder(weights, anchor.period)
            for src, c in pattern_counts.items():
                if c == 0:
                    continue
                sid = stream_for(src, k, None, "anchor")
                anchor_pattern[sid] = c
            full, rest = divmod(anchor_slots, anchor.period)
            pat_ids = list(anchor_pattern)
            order_ids, _ = chairman_order(np.array([anchor_pattern[s] for s in pat_ids]))
            tail = np.bincount(order_ids[:rest], minlength=len(pat_ids))
            anchor_counts = {sid: full * anchor_pattern[sid] + int(tail[j]) for j, sid in enumerate(pat_ids)}
        for g in group:
            g_start = start_sample + (start_step - seg_start_step) * seg.global_batch_size
            phases.append({
                **g, "order_index": len(phases), "segment_name": seg.name,
                "start_step": start_step, "end_step": start_step + g["batches"],
                "start_sample": g_start, "end_sample": g_start + g["batches"] * seg.global_batch_size,
                "transition_start_sample": g_start,
                "anchor_samples": g["batches"] * a,
                "curriculum_tokens": g["curriculum_samples"] * seg.seq_length,
                "anchor_tokens": g["batches"] * a * seg.seq_length,
                "blend_counts": {str(sid): n for sid, n in g["counts"].items()},
                "counts": {str(sid): n for sid, n in g["counts"].items()},
            })
            start_step += g["batches"]
        n_samples = seg_batches * seg.global_batch_size
        segments.append({
            "index": t, "declared_index": k, "name": seg.name, "seq_length": seg.seq_length,
            "global_batch": seg.global_batch_size,
            "micro_batch": seg.micro_batch_size, "data_parallel_size": seg.data_parallel_size,
            "anchor_per_batch": a, "curriculum_per_batch": seg.global_batch_size - a,
            "anchor_share_nominal": float(anchor.share), "anchor_share_effective": a / seg.global_batch_size,
            "anchor_positions": (anchor_positions(seg.global_batch_size, a, seg.micro_batch_size, seg.data_parallel_size)
                                 if a else []),
            "anchor_pattern": {str(sid): c for sid, c in anchor_pattern.items()}, "anchor_period": anchor.period,
            "anchor_counts": {str(sid): n for sid, n in anchor_counts.items()},
            "batches": seg_batches, "start_step": seg_start_step, "start_sample": start_sample,
            "num_samples": n_samples, "tokens": n_samples * seg.seq_length,
            "tokens_per_step": seg.global_batch_size * seg.seq_length,
        })
        start_sample += n_samples
    _realize_transitions(segments, phases, int(cur.transition_batches))

    # Stream demand and feasibility.
    for p in phases:
        for sid, n in p["counts"].items():
            streams[int(sid)]["samples_needed"] += n
    for seg in segments:
        for sid, n in seg["anchor_counts"].items():
            streams[int(sid)]["samples_needed"] += n
    problems = []
    for st in streams:
        st["epochs"] = st["samples_needed"] / st["samples_per_epoch"]
        st["epochs_indexed"] = max(1, math.ceil(st["epochs"]))
        if st["epochs"] > cur.max_epochs:
            problems.append(f"stream {st['key']} needs {st['samples_needed']:,} samples = {st['epochs']:.2f} epochs of "
                            f"its {st['documents']:,} documents ({st['samples_per_epoch']:,} samples/epoch), above "
                            f"curriculum.max_epochs={cur.max_epochs}: lower the budget or weight, give the source "
                            "more documents, or raise max_epochs")
    if problems:
        raise ConfigError("infeasible plan:\n  " + "\n  ".join(problems))

    plan = {
        "schema_version": PLAN_SCHEMA_VERSION,
        "tokenizer": _tokenizer_info(data, used, OmegaConf.select(cfg, "tokenizer.path", default=None)),
        "hebatron_nemo": __version__,
        "data": data.name,
        "curriculum": {"name": cur.name, "order": cur.order, "order_seed": cur.order_seed, "seed": cur.seed,
                       "max_epochs": cur.max_epochs, "transition_batches": cur.transition_batches,
                       "reading": ORDER_READINGS[cur.order]},
        "anchor": {"share": float(anchor.share), "sources": dict(anchor.sources) if anchor.share > 0 else {},
                   "period": anchor.period, "allow_rounding": bool(anchor.allow_rounding)},
        "segments": segments, "phases": phases, "streams": streams,
        "source_names": list(data.sources),  # source_id = position in the registry (stable across plans)
        "sources": {n: {"prefix": s.prefix, "fingerprint": s.fingerprint, "documents": int(len(s.doc_lengths)),
                        "tokens": int(s.doc_lengths.sum())} for n, s in sources.items()},
    }
    _add_fingerprints(plan)
    # set after the fingerprint: where the data lies is not part of what the plan means
    plan["data_root"] = str(Path(str(data.output_dir)).expanduser().absolute())
    plan["totals"] = _totals(plan, cfg)
    plan["warnings"] = _warnings(plan, cfg)
    plan["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return plan


def _tokenizer_info(data_cfg, names: list[str], tokenizer_dir: str | None = None) -> dict:
    """The one tokenizer every planned source was prepared with (ids only mix within one vocabulary).
    Its folder is the run's `tokenizer.path` when that holds the same tokenizer.json (by sha256), else
    the one the manifests recorded at prepare time (which may be another machine's mount)."""
    from tokenizers import Tokenizer

    from hebatron_nemo.utils.hashing import sha256_file

    idents = {}
    for n in names:
        ident = read_json(Path(str(data_cfg.output_dir)) / n / "manifest.json")["tokenizer"]
        idents.setdefault(ident["tokenizer_json_sha256"], []).append((n, ident))
    if len(idents) != 1:
        listing = "; ".join(f"{[n for n, _ in v]} with {k[:12]}" for k, v in idents.items())
        raise ConfigError(f"planned sources were tokenized with different tokenizers: {listing}")
    ident = next(iter(idents.values()))[0][1]
    path = ident["path"]
    if tokenizer_dir and (Path(str(tokenizer_dir)) / "tokenizer.json").is_file() \
            and sha256_file(Path(str(tokenizer_dir)) / "tokenizer.json") == ident["tokenizer_json_sha256"]:
        path = str(Path(str(tokenizer_dir)).expanduser().absolute())
    pad = None
    tok_file = Path(path) / "tokenizer.json"
    if tok_file.exists():
        pad = Tokenizer.from_file(str(tok_file)).token_to_id("<pad>")
    return {"path": path, "tokenizer_json_sha256": ident["tokenizer_json_sha256"],
            "vocab_size": ident["vocab_size"], "eod": ident["eod"], "pad": 0 if pad is None else pad}


def _check_overlaps(streams: list[dict]) -> None:
    """Two streams of one source in one segment must not share documents (their cursors are separate,
    so shared documents would repeat before an epoch ends)."""
    by = {}
    for st in streams:
        by.setdefault((st["source"], st["segment"]), []).append(st)
    for (source, k), group in by.items():
        if len(group) < 2:
            continue
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                ba, bb = a["band"], b["band"]
                same_signal = ba and bb and ba["signal"] == bb["signal"]
                disjoint = same_signal and (ba["quantile"][1] <= bb["quantile"][0] or bb["quantile"][1] <= ba["quantile"][0])
                if not disjoint:
                    raise ConfigError(f"source {source!r} is used in segment {k} by overlapping streams "
                                      f"({a['key']} as {a['role']}, {b['key']} as {b['role']}): use disjoint "
                                      "quantile bands of one signal, or the same selection in every phase")


def _add_fingerprints(plan: dict) -> None:
    streams = plan["streams"]

    def stream_identity(sid: int) -> dict:
        st = streams[int(sid)]
        return {k: st[k] for k in ("key", "source_fingerprint", "docs_sha256", "seed", "role", "band")}

    tb = plan["curriculum"]["transition_batches"]
    for p in plan["phases"]:
        seg = plan["segments"][p["segment"]]
        # (with transitions, the windows around a phase's boundaries mix it with its neighbours)
        p["fingerprint"] = stable_hash({**({"transition_batches": tb} if tb else {}),
            "name": p["name"], "start_sample": p["start_sample"], "batches": p["batches"],
            "segment": {k: seg[k] for k in ("seq_length", "global_batch", "anchor_per_batch", "start_sample")},
            "counts": {stream_identity(s)["key"]: n for s, n in p.get("blend_counts", p["counts"]).items()},
            "streams": [stream_identity(s) for s in p.get("blend_counts", p["counts"])],
            "anchor": {"pattern": {streams[int(s)]["key"]: c for s, c in seg["anchor_pattern"].items()},
                       "streams": [stream_identity(s) for s in seg["anchor_pattern"]]},
        })
    # where the data and the tokenizer lie is not part of what the plan means (the tokenizer is its sha256)
    meaning = {k: v for k, v in plan.items() if k not in ("created", "totals", "warnings", "data_root")}
    meaning["tokenizer"] = {k: v for k, v in plan["tokenizer"].items() if k != "path"}
    plan["fingerprint"] = stable_hash(meaning)


def _totals(plan: dict, cfg) -> dict:
    tokens = sum(s["tokens"] for s in plan["segments"])
    anchor_tokens = sum(p["anchor_tokens"] for p in plan["phases"])
    tps = float(cfg.compute.tokens_per_second_per_gpu)
    gpu_hours = tokens / tps / 3600 if tps > 0 else float("nan")
    return {"tokens": tokens, "curriculum_tokens": tokens - anchor_tokens, "anchor_tokens": anchor_tokens,
            "steps": sum(s["batches"] for s in plan["segments"]),
            "samples": sum(s["num_samples"] for s in plan["segments"]),
            "gpu_hours": gpu_hours, "tokens_per_second_per_gpu": tps, "gpus": int(cfg.compute.gpus),
            "wall_hours": gpu_hours / max(1, int(cfg.compute.gpus))}


def _warnings(plan: dict, cfg) -> list[str]:
    out = []
    shortest = min(s["seq_length"] for s in plan["segments"])
    for p in plan["phases"]:
        seg = plan["segments"][p["segment"]]
        if seg["seq_length"] <= shortest:
            continue
        total = sum(p["counts"].values())
        frac = sum(n / total * plan["streams"][int(s)]["tokens_in_docs_longer_than_seq"]
                   / max(1, plan["streams"][int(s)]["tokens"]) for s, n in p["counts"].items())
        p["long_doc_token_fraction"] = frac
        if frac < cfg.curriculum.long_context_min_fraction:
            out.append(f"phase {p['name']!r} trains at {seg['seq_length']:,} tokens but only {frac:.0%} of its tokens "
                       f"come from documents longer than that (curriculum.long_context_min_fraction="
                       f"{cfg.curriculum.long_context_min_fraction}): most samples stitch short documents together")
    return out
