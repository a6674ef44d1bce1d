"""The curriculum mixture with its anchor stream, as a dataset indexed by global sample index.

`SegmentIndex` maps a global sample index of one segment to (stream, cursor, is_anchor, phase) from
a few arrays built from the plan: a pure function, no iterator state, so resuming at consumed samples
N is reading index N (Megatron-Bridge's `single` sampler does exactly that).

- Anchor samples sit at fixed positions of every global batch (`plan.anchor_positions`); anchor slot j
  of a segment reads the anchor pattern at j mod period, so what the anchor delivers depends on the
  anchor config and the slot number only: never on the curriculum.
- Curriculum slots follow the phases in their realized order; within a phase the chairman order keeps
  every prefix within one sample of the shares of the phase's apportioned counts (docs/curriculum.md
  states the bound against the declared weights); cursors continue per stream across phases.

`CurriculumDataset` adds the tokens: stream cursor c reads sample c mod samples_per_epoch of epoch
c // samples_per_epoch, a megatron-core `GPTDataset` over the stream's documents with a seed of
(seed, source, segment, band, epoch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from hebatron_nemo.curriculum.apportion import chairman_order
from hebatron_nemo.curriculum.plan import SourceData, _seed, docs_hash, stream_documents
from hebatron_nemo.utils.hashing import sha256_file
from hebatron_nemo.data.registry import plan_data_path
from hebatron_nemo.data.tokenizer import MegatronTokenizerView
from hebatron_nemo.errors import ConfigError


# One curriculum sample: local stream id and cursor, packed (6 bytes, no padding; _chairman.c writes
# the int16 at byte 0 and the uint32 at byte 2, native byte order).
CUR_RECORD = np.dtype([("src", np.int16), ("cursor", np.uint32)], align=False)
assert CUR_RECORD.itemsize == 6


def _block_counts(desired: np.ndarray, size: int, remaining: np.ndarray) -> np.ndarray:
    """Integer counts for one block of a transition window: close to `desired`, never more than a
    stream has left, summing to `size` (the last block takes exactly what remains)."""
    want = np.clip(desired, 0, remaining).astype(np.float64)
    if want.sum() <= 0:
        want = remaining.astype(np.float64)
    raw = want / want.sum() * size
    counts = np.minimum(np.floor(raw).astype(np.int64), remaining)
    short = size - int(counts.sum())
    for s in np.argsort(-(raw - counts), kind="stable").tolist() * 2:  # at most two passes are needed
        if short == 0:
            break
        spare = int(remaining[s] - counts[s])
        if spare > 0:
            add = min(spare, short)
            counts[s] += add
            short -= add
    return counts


def blend_counts(phase: dict) -> dict:
    """stream id (str) -> samples of the phase's own blend (before transitions): what the mixture is built
    from. Plans without transitions (and older plans) hold them in `counts` only."""
    return phase.get("blend_counts", phase["counts"])


def curriculum_records(phases: list[dict], per_batch: int, transition_batches: int = 0):
    """The curriculum samples of one segment's phases (training order): (sorted stream ids int16, one
    CUR_RECORD per curriculum ordinal, window half-widths).

    Each phase is its blend's chairman order, cursors continuing per stream; with `transition_batches`
    > 0 the windows around each boundary are then rewritten (`_apply_transitions`). `halves[j]` is the
    half-width, in curriculum ordinals, of the window around the boundary after phase j: the samples
    before `end_j - halves[j]` depend only on phases 0..j, never on a later phase."""
    sids = sorted({int(s) for p in phases for s in blend_counts(p)})
    local = {s: i for i, s in enumerate(sids)}
    stream_ids = np.array(sids, dtype=np.int16)
    base = np.zeros(len(sids), dtype=np.int64)
    total = sum(int(n) for p in phases for n in blend_counts(p).values())
    cur = np.empty(total, dtype=CUR_RECORD)  # filled in place, phase by phase: no concatenation copy
    at = 0
    for p in phases:
        counts = np.zeros(len(sids), dtype=np.int64)
        for s, n in blend_counts(p).items():
            counts[local[int(s)]] = n
        n = int(counts.sum())
        chairman_order(counts, base, out=cur["src"][at:at + n], cursor=cur["cursor"][at:at + n])
        at += n
    halves = [0] * max(0, len(phases) - 1)
    if transition_batches > 0 and len(phases) > 1:
        halves = _apply_transitions(cur, len(sids), [p["batches"] for p in phases], per_batch, transition_batches)
    return stream_ids, cur, halves


def _apply_transitions(cur: np.ndarray, S: int, batches: list[int], per: int, tb: int) -> list[int]:
    """Linear transitions: over `tb` batches each side of a boundary, the mix moves linearly from
    one phase's weights to the next. Per-stream totals over the two phases are unchanged (the ramp's
    integral equals the step's), so budgets and the consumed sample sets stay exact. Returns each
    boundary's half-width (curriculum ordinals; a whole number of batches)."""
    src, cursor = cur["src"], cur["cursor"]
    ends = np.cumsum(batches) * per
    starts = np.concatenate([[0], ends[:-1]])
    halves = []
    for j in range(len(batches) - 1):
        b = int(ends[j])
        half = max(0, min(tb * per, b - int(starts[j]), int(ends[j + 1]) - b))
        halves.append(half)
        if half <= 0:
            continue
        lo, hi = b - half, b + half
        window = src[lo:hi].astype(np.int64)
        w0 = np.bincount(window[:half], minlength=S) / half
        w1 = np.bincount(window[half:], minlength=S) / half
        blocks = min(64, 2 * half)
        edges = np.linspace(0, 2 * half, blocks + 1).round().astype(np.int64)
        # cumulative target of the linear ramp at each block edge (its integral equals the step's)
        x = edges / (2 * half)
        target = np.outer(x * (1 - x / 2), w0) * 2 * half + np.outer(x * x / 2, w1) * 2 * half
        remaining = np.bincount(window, minlength=S)
        used = np.zeros(S, dtype=np.float64)
        base = np.zeros(S, dtype=np.int64)
        cursor_base = np.array([cursor[lo:hi][window == s].min() if (window == s).any() else 0
                                for s in range(S)], dtype=np.int64)
        new_src, new_cur = [], []
        for e in range(blocks):
            counts = _block_counts(target[e + 1] - used, int(edges[e + 1] - edges[e]), remaining)
            used += counts
            remaining -= counts
            o, c = chairman_order(counts, base)
            new_src.append(o)
            new_cur.append(c.astype(np.int64) + cursor_base[o])
        src[lo:hi] = np.concatenate(new_src)
        cursor[lo:hi] = np.concatenate(new_cur).astype(np.uint32)
    return halves


class SegmentIndex:
    """Global sample index -> (stream id, cursor, is_anchor, phase order index) for one segment.

    Arrays kept: `cur`, one packed 6-byte record per curriculum sample (`cur_src`: local stream id,
    `cur_cursor`: cursor in that stream; a random lookup reads one cache line, or two for the ~8% of records
    that straddle one, where separate arrays would read two), and
    small tables: `slot` (one entry per position of a global batch), `batch_phase` (one per batch),
    `anc_sid`/`anc_step`/`anc_base` (one per anchor-period slot: anchor slot j reads r = j mod period,
    cursor = (j div period) * step + base).

    Two lookups: `locate_batch` (numpy, a whole global batch at once) and `locate` (one index); at the
    cluster's batch both cost far below 1% of a training step (docs/curriculum.md, "Lookup cost")."""

    def __init__(self, plan: dict, segment: int):
        seg = plan["segments"][segment]
        self.segment = segment
        self.start, self.num_samples = seg["start_sample"], seg["num_samples"]
        if self.num_samples >= 2**32:
            raise ConfigError(f"segment {segment} has {self.num_samples} samples; the mixture index addresses "
                              f"fewer than 2^32 per segment (split it into several segments)")
        self.end = self.start + self.num_samples
        self.global_batch = gb = seg["global_batch"]
        self.anchor_per_batch = a = seg["anchor_per_batch"]
        self.curriculum_per_batch = gb - a
        phases = [p for p in plan["phases"] if p["segment"] == segment]
        self.phase_ids = np.array([p["order_index"] for p in phases], dtype=np.int64)
        self.phase_end_batch = np.cumsum([p["batches"] for p in phases])
        # phase order index of every batch of the segment (4 bytes a batch)
        nb = self.num_samples // gb
        at_batch = np.searchsorted(self.phase_end_batch, np.arange(nb), side="right")
        self.batch_phase = (self.phase_ids[np.minimum(at_batch, len(phases) - 1)].astype(np.int32)
                            if phases else np.zeros(0, np.int32))

        # Position inside a global batch -> anchor ordinal (>= 0) or -(curriculum ordinal + 1).
        is_anc = np.zeros(gb, dtype=bool)
        is_anc[np.asarray(seg["anchor_positions"], dtype=np.int64)] = True
        self.slot = np.where(is_anc, np.cumsum(is_anc) - 1, -np.cumsum(~is_anc)).astype(np.int32)

        # Curriculum: phase by phase in realized order, cursors continuing per stream.
        tb = int(plan.get("curriculum", {}).get("transition_batches", 0))
        self.stream_ids, self.cur, _ = curriculum_records(phases, self.curriculum_per_batch, tb)

        # Anchor: one period of the pattern, repeated.
        pattern = seg["anchor_pattern"]
        self.period = seg["anchor_period"]
        if pattern and self.period >= 2**31:
            raise ConfigError(f"segment {segment}: anchor period {self.period} must be below 2^31")
        if pattern:
            pids = [int(s) for s in pattern]
            pcounts = np.array([pattern[str(s)] for s in pids], dtype=np.int64)
            o, c = chairman_order(pcounts)
            self.anc_sid = np.array(pids, dtype=np.int32)[o]
            self.anc_step = pcounts[o].astype(np.int32)  # the stream's anchor samples per period
            self.anc_base = c.astype(np.int32)
        else:
            self.anc_sid = self.anc_step = self.anc_base = np.zeros(1, np.int32)  # never read: no anchor slot

    @property
    def cur_src(self) -> np.ndarray:
        """Local stream id (index into `stream_ids`) of each curriculum ordinal: a strided view of `cur`."""
        return self.cur["src"]

    @property
    def cur_cursor(self) -> np.ndarray:
        """Cursor in its stream of each curriculum ordinal: a strided view of `cur`."""
        return self.cur["cursor"]

    def _check(self, g: int) -> None:
        if not self.start <= g < self.end:
            raise IndexError(f"sample index {g} is outside segment {self.segment} [{self.start}, {self.end})")

    def locate(self, g: int) -> tuple[int, int, bool, int]:
        """(stream id, cursor in that stream, is_anchor, phase order index) of global sample g, as Python
        ints and a bool (`CurriculumDataset.__getitem__` reads one sample at a time)."""
        g = int(g)
        self._check(g)
        batch, pos = divmod(g - self.start, self.global_batch)
        phase = int(self.batch_phase[batch])
        s = int(self.slot[pos])
        if s >= 0:
            q, r = divmod(batch * self.anchor_per_batch + s, self.period)
            return int(self.anc_sid[r]), q * int(self.anc_step[r]) + int(self.anc_base[r]), True, phase
        c = batch * self.curriculum_per_batch - s - 1
        rec = self.cur[c]
        return int(self.stream_ids[rec["src"]]), int(rec["cursor"]), False, phase

    def locate_batch(self, g: np.ndarray):
        """`locate` over an array of global indices: (stream ids int16, cursors uint32, is_anchor bool, phase
        order indices int16), each of g's shape; an index outside the segment is an IndexError."""
        g = np.ascontiguousarray(g, dtype=np.int64)
        flat = g.reshape(-1)
        if flat.size and (flat.min() < self.start or flat.max() >= self.end):
            bad = flat[(flat < self.start) | (flat >= self.end)][0]
            raise IndexError(f"sample index {bad} is outside segment {self.segment} [{self.start}, {self.end})")
        batch, pos = np.divmod(flat - self.start, self.global_batch)
        phase = self.batch_phase[batch].astype(np.int16)
        s = self.slot[pos]
        is_anchor = s >= 0
        sid = np.empty(flat.size, dtype=np.int16)
        cursor = np.empty(flat.size, dtype=np.uint32)
        if is_anchor.any():
            q, r = np.divmod(batch[is_anchor] * self.anchor_per_batch + s[is_anchor], self.period)
            sid[is_anchor] = self.anc_sid[r]
            cursor[is_anchor] = q * self.anc_step[r] + self.anc_base[r]
        cm = ~is_anchor
        if cm.any():
            rec = self.cur[batch[cm] * self.curriculum_per_batch - s[cm] - 1]
            sid[cm] = self.stream_ids[rec["src"]]
            cursor[cm] = rec["cursor"]
        return tuple(x.reshape(g.shape) for x in (sid, cursor, is_anchor, phase))


def stream_cache_dir(cache_dir: str, stream: dict, seq_length: int) -> str:
    key = hashlib.sha256(repr((stream["key"], stream["source_fingerprint"], stream["docs_sha256"], stream["seed"],
                               seq_length)).encode()).hexdigest()[:16]
    return str(Path(cache_dir) / f"{stream['key'].replace('/', '_')}-{key}")


class StreamSamples:
    """The samples of one stream, epoch after epoch (megatron-core GPTDatasets built lazily)."""

    def __init__(self, plan: dict, stream: dict, cache_dir: str):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.plan, self.stream, self.cache_dir = plan, stream, cache_dir
        self.seq_length = plan["segments"][stream["segment"]]["seq_length"]
        self.spe = stream["samples_per_epoch"]
        self.path = plan_data_path(plan, stream["prefix"])  # the prefix is relative to the plan's data root
        self.indexed = IndexedDataset(self.path)
        self._docs = None
        self.epochs: dict[int, object] = {}

    @property
    def docs(self) -> np.ndarray:
        if self._docs is None:
            st = self.stream
            lengths = np.asarray(self.indexed.sequence_lengths, dtype=np.int64)  # one sequence per document
            src = SourceData(st["source"], st["prefix"], st["source_fingerprint"], lengths,
                             self.path + ".signals.parquet")
            docs = stream_documents(src, st["seed"], tuple(st["doc_range"]), st["band"])
            if docs_hash(docs) != st["docs_sha256"]:
                raise ConfigError(f"stream {st['key']}: its documents changed since the plan was made "
                                  f"({self.path}); rerun recipes/plan.py")
            self._docs = docs
        return self._docs

    def epoch(self, e: int):
        if e not in self.epochs:
            from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
            from megatron.core.datasets.utils import Split

            st = self.stream
            cfg = GPTDatasetConfig(
                # the declared segment: a stream reads the same samples whichever position its segment trains at
                random_seed=_seed("epoch", st["seed"], st["source"], st.get("declared_segment", st["segment"]),
                                  repr(st["band"]), e),
                sequence_length=self.seq_length, blend=([self.path], None), split="100,0,0",
                path_to_cache=stream_cache_dir(self.cache_dir, st, self.seq_length),
                tokenizer=MegatronTokenizerView.from_plan(self.plan["tokenizer"]), reset_position_ids=False,
                reset_attention_mask=False, eod_mask_loss=False, mmap_bin_files=True,
                # no per-sample [1, S, S] causal mask (4 GiB of bools at 64K, through the dataloader
                # workers): Megatron-Bridge's step and the local backend build causal attention
                # themselves and never read it
                create_attention_mask=False)
            # dataset_path is bookkeeping for megatron-core (it names the cache files): the relative
            # prefix keeps the caches valid wherever the data is mounted
            ds = GPTDataset(self.indexed, st["prefix"], self.docs, None, Split.train, cfg)
            if len(ds) != self.spe:
                raise RuntimeError(f"stream {st['key']} epoch {e}: GPTDataset has {len(ds)} samples, the plan "
                                   f"expected {self.spe}")
            self.epochs[e] = ds
        return self.epochs[e]

    def __getitem__(self, cursor: int):
        e, local = divmod(int(cursor), self.spe)
        return self.epoch(e)[local]


class CurriculumDataset:
    """One segment's samples by global index: megatron-core GPTDataset samples plus `source_id`,
    `stream_id`, `phase_id`, `is_anchor` and `index`. `len()` is the segment's end index, so a sampler
    that starts at the consumed-sample count (the previous segments' samples) walks exactly this segment."""

    def __init__(self, plan: dict, segment: int, cache_dir: str):
        self.plan, self.segment_index = plan, segment
        self.index = SegmentIndex(plan, segment)
        self.cache_dir = cache_dir
        self.source_names = plan["source_names"]
        self._streams: dict[int, StreamSamples] = {}

    def stream(self, sid: int) -> StreamSamples:
        if sid not in self._streams:
            self._streams[sid] = StreamSamples(self.plan, self.plan["streams"][sid], self.cache_dir)
        return self._streams[sid]

    def __len__(self) -> int:
        return self.index.end

    def __getitem__(self, g: int) -> dict:
        import torch

        sid, cursor, is_anchor, phase = self.index.locate(g)
        sample = dict(self.stream(sid)[cursor])
        st = self.plan["streams"][sid]
        sample["source_id"] = torch.tensor(self.source_names.index(st["source"]), dtype=torch.long)
        sample["stream_id"] = torch.tensor(sid, dtype=torch.long)
        sample["phase_id"] = torch.tensor(phase, dtype=torch.long)
        sample["is_anchor"] = torch.tensor(bool(is_anchor))
        sample["index"] = torch.tensor(int(g), dtype=torch.long)
        return sample


def build_caches(plan: dict, cache_dir: str, progress: bool = False, log=print) -> dict:
    """Builds every stream's GPTDataset index caches for the epochs the plan needs; returns their
    sha256 per stream so training ranks can verify they load what the plan built."""
    out = {}
    for st in plan["streams"]:
        ss = StreamSamples(plan, st, cache_dir)
        for e in range(st["epochs_indexed"]):
            ss.epoch(e)
        d = Path(stream_cache_dir(cache_dir, st, ss.seq_length))
        files = {f.name: sha256_file(f)[:20] for f in sorted(d.glob("*.npy"))}
        out[st["key"]] = {"dir": d.name, "files": files}  # relative to cache_dir: caches can move too
        if progress:
            log(f"  cache {st['key']}: {st['epochs_indexed']} epoch(s), {len(files)} files")
    return out


def ensure_caches(plan: dict, cache_dir: str) -> None:
    """On training ranks: the plan built the caches; if they are missing, rank 0 builds them while the
    other ranks wait at a barrier (the fallback the plan's cache step avoids)."""
    import torch.distributed as dist

    missing = [k for k, v in plan.get("caches", {}).items()
               if not all((Path(cache_dir) / v["dir"] / f).exists() for f in v["files"])]
    if not missing and plan.get("caches"):
        return
    if dist.is_available() and dist.is_initialized():
        if dist.get_rank() == 0:
            build_caches(plan, cache_dir)
        dist.barrier()
    else:
        build_caches(plan, cache_dir)


__all__ = ["SegmentIndex", "CurriculumDataset", "StreamSamples", "build_caches", "ensure_caches"]
