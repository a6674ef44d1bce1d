"""Raw corpora -> normalized, filtered, deduplicated, tokenized Megatron datasets with manifests.

Work happens in two stages per source, so that a large corpus can be split over machines:

1. **shard** (`shard=i/N`): stream the documents whose ordinal is i mod N; normalize, filter,
   decontaminate, drop duplicates within the shard, assign the hold-out split, compute the difficulty
   signals and a MinHash signature, tokenize, and write candidate `.bin/.idx` per split with a table of
   the documents (`<split>.docs.parquet`) and their signatures (`<split>.minhash.npy`).
2. **merge**: once all N shards are complete, drop duplicates across shards and across earlier
   sources, drop near duplicates, and write each split in the source's original document order:
   `<output_dir>/<source>/<split>.bin/.idx`, `<split>.signals.parquet`, `hashes.npy`, `manifest.json`.

Every output is written under a temporary name and renamed; `manifest.json` is written last and is
the completion marker. A rerun whose inputs match a manifest's fingerprint skips that work.
"""

from __future__ import annotations

import hashlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from omegaconf import OmegaConf

from hebatron_nemo import __version__
from hebatron_nemo.data import registry
from hebatron_nemo.data.filters import (REASONS, Decontaminator, DocumentFilter, FilterReport, MinHasher,
                                        load_eval_texts, load_remove_ids, near_duplicates, text_hash)
from hebatron_nemo.data.indexed import AtomicIndexedWriter, length_histogram, optimal_dtype
from hebatron_nemo.utils.hashing import stable_hash
from hebatron_nemo.utils.io import read_json, write_json_atomic
from hebatron_nemo.utils.logs import quiet_megatron
from hebatron_nemo.data.normalize import HebrewNormalizer, NormalizeConfig, count_words
from hebatron_nemo.data.readers import count_documents, iter_documents, resolve_files
from hebatron_nemo.data.signals import ReferencePerplexity, compression_ratio
from hebatron_nemo.data.tokenizer import LocalTokenizer
from hebatron_nemo.errors import ConfigError, DataError

SPLITS = ("train", "valid", "test")
MANIFEST_VERSION = 1
DOC_COLUMNS = ("ordinal", "doc_id", "hash", "n_chars", "n_words", "n_tokens", "compression_ratio",
               "tokens_per_word", "perplexity")


def parse_shard(spec: str) -> tuple[int, int]:
    """`"i/N"` -> (i, N), with 0 <= i < N."""
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ConfigError(f"shard must look like 'i/N' (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard {spec!r}: need 0 <= i < N")
    return i, n


def holdout_draw(doc_id: str, salt: str) -> float:
    """A number in [0, 1) from a salted hash of a document id: the document's hold-out lottery ticket."""
    digest = hashlib.sha256(f"{salt}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def holdout_split(doc_id: str, holdout) -> str:
    """`train`, `valid` or `test` for a document, from a salted hash of its id (stable across shards)."""
    if not holdout.valid and not holdout.test:
        return "train"
    u = holdout_draw(doc_id, holdout.salt)
    if u < holdout.test:
        return "test"
    if u < holdout.test + holdout.valid:
        return "valid"
    return "train"


def fingerprint_files(path: str, fmt: str) -> dict:
    """Content hashes of a source's input files (blake2b), so an edited corpus is never mistaken for
    the one a manifest describes. Files are named relative to the source's root, so the same corpus
    copied or mounted elsewhere has the same fingerprint."""
    from hebatron_nemo.data.readers import _relative_name, _resolve

    root, files = _resolve(path, fmt)
    entries = {}
    for f in files:
        h = hashlib.blake2b(digest_size=16)
        targets = sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
        size = 0
        for t in targets:
            size += t.stat().st_size
            with open(t, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        entries[_relative_name(f, root) if f != root else f.name] = {"bytes": size, "blake2b": h.hexdigest()}
    return {"files": entries, "hash": stable_hash(entries)}


class SourceContext:
    """Everything needed to process one source: its config with overrides applied, and identities."""

    def __init__(self, cfg, name: str, tokenizer: LocalTokenizer | None,
                 decontaminator: Decontaminator | None):
        data = cfg.data
        self.cfg, self.data, self.name = cfg, data, name
        self.src = data.sources[name]
        self.path = registry.source_path(data, name)
        norm_cfg = registry.effective(data.normalize, self.src.normalize, f"data.sources.{name}.normalize")
        self.normalizer = HebrewNormalizer(NormalizeConfig(**OmegaConf.to_container(norm_cfg)))
        filt = registry.effective(data.filters, self.src.filters, f"data.sources.{name}.filters")
        self.filters = OmegaConf.to_container(filt)
        self.doc_filter = DocumentFilter(language=self.src.language, **self.filters)
        self.tokenizer = tokenizer
        self.decontaminator = decontaminator if data.decontamination.enabled else None
        self.out_dir = Path(str(data.output_dir)) / name
        self._identity: dict | None = None

    def shard_dir(self, i: int, n: int) -> Path:
        return self.out_dir / "shards" / f"{i:05d}-of-{n:05d}"

    def identity(self) -> dict:
        """The inputs a shard's output depends on (besides the shard spec). Computed once per context:
        it hashes every input file, and the shard and merge stages both need it."""
        if self._identity is None:
            self._identity = self._compute_identity()
        return self._identity

    def _compute_identity(self) -> dict:
        nd = self.data.near_dedup
        return {
            "source": {k: self.src[k] for k in ("path", "format", "text_field", "id_field", "language", "role")},
            "files": fingerprint_files(self.path, self.src.format)["hash"],
            "normalizer": self.normalizer.identity(),
            "filters": self.filters,
            "holdout": OmegaConf.to_container(self.src.holdout),
            "exact_dedup_in_shard": bool(self.data.exact_dedup.enabled),
            "decontamination": self.decontaminator.identity() if self.decontaminator else None,
            "minhash": {"num_perm": nd.num_perm, "shingle_words": nd.shingle_words, "seed": nd.seed}
            if nd.enabled else None,
            # the tokenizer is its tokenizer.json's sha256, wherever its folder lies
            "tokenizer": {k: v for k, v in self.tokenizer.identity().items() if k != "path"}
            if self.tokenizer else None,
            "signals": OmegaConf.to_container(self.data.signals),
        }


@dataclass(frozen=True)
class _Holdout:
    """`HoldoutConfig` as a plain object, for `holdout_split` in the per-document loop."""

    valid: float
    test: float
    min_docs: int
    salt: str


def _compression_ratios(texts: list[str]) -> list[float]:
    return [compression_ratio(t) for t in texts]


def _batched(it: Iterable, n: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("docs"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


def prepare_shard(ctx: SourceContext, shard: tuple[int, int], batch_docs: int = 512, progress: bool = False,
                  overwrite: bool = False, log: Callable = print) -> dict:
    """Stage 1 for one shard of one source; returns its manifest (skips when already complete)."""
    i, n = shard
    out = ctx.shard_dir(i, n)
    identity = ctx.identity()
    fingerprint = stable_hash({"identity": identity, "shard": [i, n], "version": MANIFEST_VERSION})
    done = read_json(out / "manifest.json")
    if done and done.get("fingerprint") == fingerprint and not overwrite:
        log(f"  {ctx.name} shard {i}/{n}: up to date")
        return done
    if done:
        (out / "manifest.json").unlink()
    out.mkdir(parents=True, exist_ok=True)

    dtype = optimal_dtype(ctx.tokenizer.vocab_size)
    writers = {s: AtomicIndexedWriter(str(out / s), dtype) for s in SPLITS}
    rows: dict[str, dict[str, list]] = {s: {c: [] for c in DOC_COLUMNS} for s in SPLITS}
    sigs: dict[str, list] = {s: [] for s in SPLITS}
    report = FilterReport()
    seen_hashes: set[int] = set()
    nd = ctx.data.near_dedup
    minhasher = MinHasher(nd.num_perm, nd.shingle_words, nd.seed) if nd.enabled else None
    ppl = None
    if ctx.data.signals.reference_model:
        s = ctx.data.signals
        ppl = ReferencePerplexity(s.reference_model, s.reference_max_tokens, s.reference_batch_size)

    total = count_documents(ctx.path, ctx.src.format, ctx.src.text_field) if progress else None
    bar = _progress(progress)
    task = None
    if bar:
        bar.start()
        task = bar.add_task(f"{ctx.name} {i}/{n}", total=math.ceil(total / n) if total else None)
    t0 = time.time()
    # plain values: OmegaConf attribute access costs microseconds, and this loop runs per document
    exact_dedup = bool(ctx.data.exact_dedup.enabled)
    holdout = _Holdout(**OmegaConf.to_container(ctx.src.holdout))
    eod_tokens = 1 if ctx.tokenizer.append_eod else 0
    decontaminator, doc_filter = ctx.decontaminator, ctx.doc_filter
    # With more than one worker, a batch's compression ratios (zlib, which runs without the GIL) are
    # computed on a second thread while the batch is tokenized.
    helper = ThreadPoolExecutor(1) if int(ctx.cfg.get("workers", 1) or 1) > 1 else None
    try:
        docs = iter_documents(ctx.path, ctx.src.format, ctx.src.text_field, ctx.src.id_field, shard=(i, n))
        for batch in _batched(docs, batch_docs):
            texts = ctx.normalizer.normalize_batch([d.text for d in batch])
            kept = []
            for doc, text in zip(batch, texts):
                report.seen_docs += 1
                report.seen_chars += len(doc.text)
                reason = doc_filter.reason(text)
                if reason is None and decontaminator and decontaminator.is_contaminated(text):
                    reason = "decontaminated"
                h = text_hash(text) if reason is None else 0
                if reason is None and exact_dedup:
                    if h in seen_hashes:
                        reason = "exact_dup_in_source"
                    seen_hashes.add(h)
                if reason is not None:
                    report.remove(reason, len(text))
                    continue
                kept.append((doc, text, h))
            if kept:
                kept_texts = [t for _, t, _ in kept]
                ratios = helper.submit(_compression_ratios, kept_texts) if helper else None
                ids_list = ctx.tokenizer.encode_documents(kept_texts)
                ratios = ratios.result() if helper else _compression_ratios(kept_texts)
                perplexities = ppl(kept_texts) if ppl else [float("nan")] * len(kept)
                for (doc, text, h), ids, p, ratio in zip(kept, ids_list, perplexities, ratios):
                    split = holdout_split(doc.doc_id, holdout)
                    writers[split].add(ids)
                    n_words = count_words(text)
                    n_tokens = len(ids) - eod_tokens
                    r = rows[split]
                    r["ordinal"].append(doc.ordinal)
                    r["doc_id"].append(doc.doc_id)
                    r["hash"].append(h)
                    r["n_chars"].append(len(text))
                    r["n_words"].append(n_words)
                    r["n_tokens"].append(n_tokens)
                    r["compression_ratio"].append(ratio)
                    r["tokens_per_word"].append(n_tokens / max(1, n_words))
                    r["perplexity"].append(p)
                    if minhasher:
                        sigs[split].append(minhasher.signature(text))
                    report.kept_docs += 1
                    report.kept_chars += len(text)
            if bar:
                bar.update(task, advance=len(batch))
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if helper:
            helper.shutdown()
        if bar:
            bar.stop()
    if report.seen_docs == 0:
        for w in writers.values():
            w.abort()
        raise DataError(f"source {ctx.name!r} shard {i}/{n} has no documents", path=ctx.path)

    for s in SPLITS:
        # megatron-core cannot open an empty .bin (mmap of 0 bytes): an empty split has no files
        writers[s].commit() if writers[s].documents else writers[s].abort()
        _write_table(out / f"{s}.docs.parquet", rows[s])
        width = nd.num_perm if minhasher else 0
        np.save(out / f"{s}.minhash.npy", np.array(sigs[s], dtype=np.uint64).reshape(len(sigs[s]), width))
    manifest = {"kind": "shard", "source": ctx.name, "shard": [i, n], "fingerprint": fingerprint,
                "identity": identity, "report": report.to_dict(),
                "splits": {s: {"documents": writers[s].documents, "tokens": writers[s].tokens} for s in SPLITS},
                "seconds": round(time.time() - t0, 3), "version": MANIFEST_VERSION}
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def _write_table(path: Path, columns: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "ordinal": pa.array(columns["ordinal"], pa.int64()),
        "doc_id": pa.array(columns["doc_id"], pa.string()),
        "hash": pa.array(np.array(columns["hash"], dtype=np.uint64), pa.uint64()),
        **{c: pa.array(columns[c], pa.int64()) for c in ("n_chars", "n_words", "n_tokens")},
        **{c: pa.array(columns[c], pa.float64()) for c in ("compression_ratio", "tokens_per_word", "perplexity")},
    })
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _read_table(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def merge_source(ctx: SourceContext, n_shards: int, earlier_sources: list[str], overwrite: bool = False,
                 log: Callable = print) -> dict:
    """Stage 2: merges the N complete shards of a source into its final splits; returns the manifest."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    shard_manifests = []
    missing = []
    for i in range(n_shards):
        m = read_json(ctx.shard_dir(i, n_shards) / "manifest.json")
        (shard_manifests.append(m) if m else missing.append(i))
    if missing:
        raise ConfigError(f"source {ctx.name!r}: shards {missing} of {n_shards} are not complete; run "
                          f"prepare with shard=i/{n_shards} for each, then merge")
    identities = {stable_hash(m["identity"]) for m in shard_manifests}
    if len(identities) != 1:
        raise ConfigError(f"source {ctx.name!r}: its shards were prepared with different settings or inputs; "
                          "rerun them with the same config")
    if stable_hash(shard_manifests[0]["identity"]) != stable_hash(ctx.identity()):
        raise ConfigError(f"source {ctx.name!r}: the shards do not match the current config or input files; "
                          "rerun the shards")

    dd, nd = ctx.data.exact_dedup, ctx.data.near_dedup
    earlier = []
    if dd.enabled and dd.scope == "global":
        for other in earlier_sources:
            m = read_json(Path(str(ctx.data.output_dir)) / other / "manifest.json")
            if not m:
                raise ConfigError(f"source {ctx.name!r} is deduplicated against earlier sources "
                                  f"(data.exact_dedup.scope=global) but {other!r} is not prepared yet: prepare "
                                  "sources in registry order, or set data.exact_dedup.scope=source")
            earlier.append((other, m["fingerprint"]))
    elif dd.scope not in ("global", "source"):
        raise ConfigError(f"data.exact_dedup.scope must be 'global' or 'source', got {dd.scope!r}")
    remove_ids_fp = None
    if nd.remove_ids_file:
        if not Path(nd.remove_ids_file).is_file():
            raise DataError("duplicate-id list not found (data.near_dedup.remove_ids_file)", path=nd.remove_ids_file)
        remove_ids_fp = hashlib.sha256(Path(nd.remove_ids_file).read_bytes()).hexdigest()
    fingerprint = stable_hash({"shards": [m["fingerprint"] for m in shard_manifests], "earlier": earlier,
                               "exact_dedup": OmegaConf.to_container(dd), "near_dedup": OmegaConf.to_container(nd),
                               "remove_ids": remove_ids_fp, "version": MANIFEST_VERSION})
    final_path = ctx.out_dir / "manifest.json"
    done = read_json(final_path)
    if done and done.get("fingerprint") == fingerprint and not overwrite:
        log(f"  {ctx.name}: up to date")
        return done
    if done:
        final_path.unlink()

    # Gather every candidate document of every shard and split, in the source's original order.
    parts = []
    for i in range(n_shards):
        for s_idx, s in enumerate(SPLITS):
            t = _read_table(ctx.shard_dir(i, n_shards) / f"{s}.docs.parquet")
            k = len(t["ordinal"])
            t["shard"] = np.full(k, i, dtype=np.int64)
            t["split"] = np.full(k, s_idx, dtype=np.int64)
            t["local"] = np.arange(k, dtype=np.int64)
            sig = np.load(ctx.shard_dir(i, n_shards) / f"{s}.minhash.npy")
            t["sig_row"] = np.arange(k, dtype=np.int64)
            parts.append((t, sig, i, s))
    cols = {c: np.concatenate([p[0][c] for p in parts]) for c in parts[0][0]}
    order = np.argsort(cols["ordinal"], kind="stable")
    cols = {c: v[order] for c, v in cols.items()}
    n = len(order)
    keep = np.ones(n, dtype=bool)
    report = FilterReport()
    for m in shard_manifests:
        report.merge(FilterReport.from_dict(m["report"]))

    def drop(mask: np.ndarray, reason: str) -> None:
        mask = mask & keep
        report.remove(reason, int(cols["n_chars"][mask].sum()), int(mask.sum()))
        keep[mask] = False

    if dd.enabled:
        # Across shards: the first occurrence in original order wins.
        _, first = np.unique(cols["hash"], return_index=True)
        dup = np.ones(n, dtype=bool)
        dup[first] = False
        drop(dup, "exact_dup_in_source")
        for other, _ in earlier:
            other_hashes = np.load(Path(str(ctx.data.output_dir)) / other / "hashes.npy")
            drop(np.isin(cols["hash"], other_hashes), "exact_dup_across_sources")
    if nd.remove_ids_file:
        ids = load_remove_ids(nd.remove_ids_file)
        drop(np.isin(cols["doc_id"].astype(str), np.array(sorted(ids), dtype=str)), "external_dup_list")
    elif nd.enabled:
        candidates = np.flatnonzero(keep)
        if len(candidates) > nd.max_docs:
            raise ConfigError(
                f"source {ctx.name!r} has {len(candidates):,} documents, above data.near_dedup.max_docs="
                f"{nd.max_docs:,} for in-process MinHash. Run NeMo Curator's fuzzy deduplication (or datatrove's "
                "minhash pipeline) on the corpus and pass its duplicate-id list as data.near_dedup.remove_ids_file, "
                "or raise max_docs if the machine has the memory (~num_perm x 8 bytes per document).")
        sig_by_part = {(p[2], p[3]): p[1] for p in parts}
        sigs = np.stack([sig_by_part[(int(cols["shard"][j]), SPLITS[int(cols["split"][j])])][int(cols["sig_row"][j])]
                         for j in candidates]) if len(candidates) else np.zeros((0, nd.num_perm), np.uint64)
        dup_mask = np.zeros(n, dtype=bool)
        if len(candidates):
            dup_mask[candidates] = near_duplicates(sigs, nd.threshold, nd.seed)
        drop(dup_mask, "near_dup")
    report.kept_docs = int(keep.sum())
    report.kept_chars = int(cols["n_chars"][keep].sum())
    dest = _top_up_holdout(cols, keep, ctx.src.holdout)

    datasets: dict = {}

    def dataset(shard: int, split: str):
        if (shard, split) not in datasets:
            datasets[(shard, split)] = IndexedDataset(str(ctx.shard_dir(shard, n_shards) / split))
        return datasets[(shard, split)]

    dtype = optimal_dtype(ctx.tokenizer.vocab_size)
    splits_out = {}
    for s_idx, s in enumerate(SPLITS):
        sel = np.flatnonzero(keep & (dest == s_idx))
        prefix = str(ctx.out_dir / s)
        writer = AtomicIndexedWriter(prefix, dtype)
        try:
            for j in sel:
                writer.add(dataset(int(cols["shard"][j]), SPLITS[int(cols["split"][j])])[int(cols["local"][j])])
            writer.commit() if len(sel) else writer.abort()
        except BaseException:
            writer.abort()
            raise
        # recorded relative to the manifest's folder, so the prepared folder can be moved or mounted anywhere
        rel_prefix = s if len(sel) else None  # None: nothing to read (megatron-core cannot open an empty dataset)
        table = {c: cols[c][sel].tolist() for c in DOC_COLUMNS}
        _write_table(ctx.out_dir / f"{s}.signals.parquet", table)
        lengths = cols["n_tokens"][sel] + (1 if ctx.tokenizer.append_eod else 0)
        words = int(cols["n_words"][sel].sum())
        splits_out[s] = {
            "prefix": rel_prefix, "documents": int(len(sel)), "tokens": int(lengths.sum()),
            "characters": int(cols["n_chars"][sel].sum()), "words": words,
            "tokens_per_word": float(cols["n_tokens"][sel].sum() / max(1, words)),
            "length_histogram": length_histogram(lengths),
        }
    hashes = np.unique(cols["hash"][keep])
    tmp = ctx.out_dir / "hashes.tmp.npy"
    np.save(tmp, hashes)
    tmp.replace(ctx.out_dir / "hashes.npy")

    ident = shard_manifests[0]["identity"]
    src = ctx.src
    manifest = {
        "kind": "source", "source": ctx.name, "fingerprint": fingerprint, "version": MANIFEST_VERSION,
        "hebatron_nemo": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "registry": {"language": src.language, "register": src.register, "phase": src.phase, "role": src.role,
                     "licence": src.licence, "path": ctx.path, "format": src.format,
                     "text_field": src.text_field, "substituted": src.substituted},
        "source_fingerprint": ident["files"], "normalizer": ident["normalizer"],
        "tokenizer": {**ident["tokenizer"], "path": ctx.tokenizer.path},  # where it was (the plan prefers the run's)
        "filters": ident["filters"], "decontamination": ident["decontamination"],
        "exact_dedup": OmegaConf.to_container(dd), "near_dedup": OmegaConf.to_container(nd),
        "dedup_against": [e[0] for e in earlier], "shards": n_shards, "dtype": np.dtype(dtype).name,
        "report": report.to_dict(), "splits": splits_out,
    }
    write_json_atomic(final_path, manifest)
    return manifest


def _top_up_holdout(cols: dict, keep: np.ndarray, holdout) -> np.ndarray:
    """Destination split per document: the hash-drawn split, except that a held-out split with a
    non-zero fraction but fewer than `holdout.min_docs` documents takes the training documents with the
    lowest draws (still deterministic and independent of shard count). Train keeps at least half."""
    dest = cols["split"].copy()
    kept = np.flatnonzero(keep)
    budget = len(kept) // 2 - int((dest[kept] != 0).sum())
    for s_idx, frac in ((2, holdout.test), (1, holdout.valid)):
        short = holdout.min_docs - int((dest[kept] == s_idx).sum())
        if frac <= 0 or short <= 0 or budget < short:
            continue
        train = kept[dest[kept] == 0]
        draws = np.array([holdout_draw(d, holdout.salt) for d in cols["doc_id"][train]])
        moved = train[np.argsort(draws, kind="stable")[:short]]
        dest[moved] = s_idx
        budget -= short
    return dest


def validate_passthrough(ctx_cfg, name: str) -> dict:
    """SFT and eval sources are not tokenized here: read them fully to surface errors, record counts."""
    from hebatron_nemo.data.readers import validate_source

    data = ctx_cfg.data
    src = data.sources[name]
    path = registry.source_path(data, name)
    n = validate_source(path, src.format, src.text_field, src.id_field)
    manifest = {"kind": "passthrough", "source": name, "documents": n, "role": src.role,
                "source_fingerprint": fingerprint_files(path, src.format)["hash"], "path": path,
                "licence": src.licence, "language": src.language}
    write_json_atomic(Path(str(data.output_dir)) / name / "manifest.json", manifest)
    return manifest


def build_decontaminator(cfg) -> Decontaminator | None:
    """`data.decontamination`'s task files and eval files as one decontaminator (hebatron_nemo.data.decontam)."""
    from hebatron_nemo.data import decontam

    return decontam.build_decontaminator(cfg.data.decontamination, str(cfg.data.raw_dir))


__all__ = ["SPLITS", "REASONS", "parse_shard", "holdout_split", "SourceContext", "prepare_shard",
           "merge_source", "validate_passthrough", "build_decontaminator", "fingerprint_files"]


# ---------------------------------------------------------------------------------------------
# The whole stage: tokenizer, every selected source, summary.


def _training_texts(cfg, names: list[str], max_chars: int) -> Iterator[str]:
    """Normalized, filtered training-split text of each source, capped per source, for BPE training."""
    for name in names:
        ctx = SourceContext(cfg, name, None, None)
        used = 0
        for doc in iter_documents(ctx.path, ctx.src.format, ctx.src.text_field, ctx.src.id_field):
            text = ctx.normalizer(doc.text)
            if ctx.doc_filter.reason(text) or holdout_split(doc.doc_id, ctx.src.holdout) != "train":
                continue
            yield text
            used += len(text)
            if used >= max_chars:
                break


def ensure_tokenizer(cfg, log: Callable = print) -> LocalTokenizer:
    """Loads the configured tokenizer, training the demo BPE first when configured and out of date."""
    tcfg = cfg.tokenizer
    if tcfg.train.enabled:
        names = list(tcfg.train.sources) or registry.tokenized_sources(cfg.data)
        registry.require_sources(cfg.data, names, what="tokenizer.train.sources")
        fp = {"sources": {n: SourceContext(cfg, n, None, None).identity() for n in names},
              "vocab_size": tcfg.train.vocab_size, "min_frequency": tcfg.train.min_frequency,
              "max_chars_per_source": tcfg.train.max_chars_per_source}
        fp = {"hash": stable_hash(fp)}
        from hebatron_nemo.data.tokenizer import read_train_fingerprint, train_byte_level_bpe

        if read_train_fingerprint(tcfg.path) != fp:
            log(f"training byte-level BPE ({tcfg.train.vocab_size} tokens) on {', '.join(names)} -> {tcfg.path}")
            t0 = time.time()
            train_byte_level_bpe(_training_texts(cfg, names, tcfg.train.max_chars_per_source), tcfg.path,
                                 tcfg.train.vocab_size, tcfg.train.min_frequency, fp)
            log(f"  trained in {time.time() - t0:.1f}s")
    return LocalTokenizer(tcfg.path, tcfg.eod_token, tcfg.add_bos, tcfg.append_eod)


def prepare(cfg, log: Callable = print) -> dict:
    """Runs the prepare stage for the configured data registry; returns {source: manifest}."""
    from hebatron_nemo.data.tokenizer import set_tokenizer_threads

    quiet_megatron()
    data = cfg.data
    names = list(cfg.sources) or list(data.sources)
    registry.validate_registry(data, check_paths=True, only=names)
    i, n = parse_shard(cfg.shard)
    ordered = [s for s in data.sources if s in names]
    if cfg.dry_run:
        return _dry_run(cfg, ordered, (i, n), log)
    if not cfg.merge_only:
        _validate_inputs(cfg, ordered, (i, n), log)
    set_tokenizer_threads(cfg.workers)
    tokenizer = ensure_tokenizer(cfg, log)
    decon = build_decontaminator(cfg)
    if decon:
        log(f"decontamination: {decon.identity()['ngrams']:,} {data.decontamination.ngram}-grams "
            f"from {decon.eval_texts:,} eval texts")
    manifests = {}
    tokenized = registry.tokenized_sources(data)
    for name in ordered:
        src = data.sources[name]
        if src.role not in ("pretrain", "anchor"):
            if i == 0:
                manifests[name] = validate_passthrough(cfg, name)
            continue
        ctx = SourceContext(cfg, name, tokenizer, decon)
        if not cfg.merge_only:
            prepare_shard(ctx, (i, n), cfg.batch_docs, cfg.progress, cfg.overwrite, log)
        if n == 1 or cfg.merge_only:
            earlier = tokenized[: tokenized.index(name)]
            manifests[name] = merge_source(ctx, n, earlier, cfg.overwrite, log)
        else:
            log(f"  {name}: shard {i}/{n} done; after all shards, run with merge_only=true shard=0/{n}")
    return manifests


def _validate_inputs(cfg, names: list[str], shard: tuple[int, int], log: Callable) -> None:
    """Reads every selected source (the documents of this shard) before any work is done, so that a
    bad line in the last source fails the run before the first is tokenized (or the tokenizer
    trained). A source whose shard manifest records the same input files (by content hash) was
    read in full when that shard was prepared and is not read again."""
    from hebatron_nemo.data.readers import validate_source

    data = cfg.data
    i, n = shard
    for name in names:
        src = data.sources[name]
        path = registry.source_path(data, name)
        if src.role not in ("pretrain", "anchor"):
            if i == 0:
                validate_source(path, src.format, src.text_field, src.id_field)
            continue
        shard_dir = Path(str(data.output_dir)) / name / "shards" / f"{i:05d}-of-{n:05d}"
        done = read_json(shard_dir / "manifest.json")
        if done and done.get("identity", {}).get("files") == fingerprint_files(path, src.format)["hash"]:
            continue
        for _ in iter_documents(path, src.format, src.text_field, src.id_field, shard=shard):
            pass
    log(f"inputs checked: {len(names)} source(s)")


def _dry_run(cfg, names: list[str], shard: tuple[int, int], log: Callable) -> dict:
    """Validates every selected source fully (bad input fails here) and prints what would be done."""
    from hebatron_nemo.data.readers import validate_source

    data = cfg.data
    plan = {}
    for name in names:
        src = data.sources[name]
        path = registry.source_path(data, name)
        docs = validate_source(path, src.format, src.text_field, src.id_field)
        final = read_json(Path(str(data.output_dir)) / name / "manifest.json")
        plan[name] = {"documents": docs, "role": src.role, "path": path, "prepared": bool(final)}
        log(f"  {name:<14} {src.role:<8} {docs:>8,} docs  {path}  {'(prepared)' if final else ''}")
    log(f"dry run: shard {shard[0]}/{shard[1]}; nothing written")
    return plan
