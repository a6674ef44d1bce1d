"""Raw corpora -> normalized, filtered, deduplicated, tokenized Megatron datasets with manifests.

The document-level work runs as a stage graph on datatrove (`prepare_graph.py`: clean -> MinHash
buckets -> cluster -> tokenize -> merge), in tasks: locally with `workers` processes, or on Slurm with
`cluster=<profile>`. This module holds what the stages share (the per-source rules, the hold-out
draw, the manifests) and the entry point `prepare(cfg)`.

Outputs per tokenized source: `<output_dir>/<source>/<split>.bin/.idx`, `<split>.signals.parquet`
and `manifest.json`, each written under a temporary name and renamed; `manifest.json` is written last
and is the completion marker. A rerun whose inputs match every manifest's fingerprint does nothing; an
interrupted run resumes from the graph's finished tasks.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from omegaconf import OmegaConf

from hebatron_nemo import __version__
from hebatron_nemo.data import registry
from hebatron_nemo.data.filters import REASONS, Decontaminator, DocumentFilter, FilterReport
from hebatron_nemo.data.indexed import AtomicIndexedWriter, length_histogram, optimal_dtype
from hebatron_nemo.utils.hashing import stable_hash
from hebatron_nemo.utils.io import read_json, write_json_atomic
from hebatron_nemo.utils.logs import quiet_megatron
from hebatron_nemo.data.languages import build_normalizer
from hebatron_nemo.data.readers import iter_documents
from hebatron_nemo.data.tokenizer import LocalTokenizer
from hebatron_nemo.errors import ConfigError, DataError

SPLITS = ("train", "valid", "test")
MANIFEST_VERSION = 2  # 2: prepared by the datatrove stage graph
DOC_COLUMNS = ("ordinal", "doc_id", "hash", "n_chars", "n_words", "n_tokens", "compression_ratio",
               "tokens_per_word", "perplexity")


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
        self.normalizer = build_normalizer(self.src.language, norm_cfg)
        filt = registry.effective(data.filters, self.src.filters, f"data.sources.{name}.filters")
        self.filters = OmegaConf.to_container(filt)
        self.doc_filter = DocumentFilter(language=self.src.language, **self.filters)
        self.tokenizer = tokenizer
        self.decontaminator = decontaminator if data.decontamination.enabled else None
        self.out_dir = Path(str(data.output_dir)) / name
        self._identity: dict | None = None

    def rules(self) -> "SourceRules":
        """What the graph's tasks need of this source (a small picklable object)."""
        s = self.src
        return SourceRules(self.name, self.path, s.format, s.text_field, s.id_field, self.normalizer,
                           self.doc_filter, _Holdout(**OmegaConf.to_container(s.holdout)))

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
            "exact_dedup_in_task": bool(self.data.exact_dedup.enabled),
            "decontamination": self.decontaminator.identity() if self.decontaminator else None,
            "minhash": {k: nd[k] for k in ("n_grams", "num_buckets", "hashes_per_bucket", "seed")}
            if nd.enabled else None,
            # the tokenizer is its tokenizer.json's sha256, wherever its folder lies
            "tokenizer": {k: v for k, v in self.tokenizer.identity().items() if k != "path"}
            if self.tokenizer else None,
            "signals": OmegaConf.to_container(self.data.signals),
        }


@dataclass(frozen=True)
class SourceRules:
    """One source's reading and cleaning rules, as the graph's tasks use them."""

    name: str
    path: str
    format: str
    text_field: str
    id_field: str | None
    normalizer: object  # the language's normalizer (hebatron_nemo.data.languages)
    doc_filter: DocumentFilter
    holdout: "_Holdout"


@dataclass(frozen=True)
class _Holdout:
    """`HoldoutConfig` as a plain object, for `holdout_split` in the per-document loop."""

    valid: float
    test: float
    min_docs: int
    salt: str


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


# ---------------------------------------------------------------------------------------------
# The graph's last stage: one source's tasks -> its final splits and manifest


def merge_source(ctx: SourceContext, ranks: list[int], work: Path, fingerprint: str, extra: dict) -> dict:
    """Concatenates a source's tasks (in task order) into `<output_dir>/<source>/<split>.bin/.idx` with
    megatron-core's `IndexedDatasetBuilder.add_index`, streams their document tables into
    `<split>.signals.parquet`, and writes `manifest.json` last. Memory holds one task's table at a time,
    except when a held-out split is short of `holdout.min_docs` (a small source): then the documents
    are copied one by one to their topped-up split."""
    from hebatron_nemo.data.prepare_graph import read_json_reports

    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    final = out / "manifest.json"
    if final.exists():
        final.unlink()
    report = FilterReport()
    for r in read_json_reports(work / "reports" / "clean", ranks):
        report.merge(FilterReport.from_dict(r))
    if ctx.data.near_dedup.enabled:
        for r in read_json_reports(work / "reports" / "near_dup", ranks):
            if r["docs"]:
                report.remove("near_dup", int(r["chars"]), int(r["docs"]))
    tables = {s: [work / "tokens" / s / f"{r:05d}.docs.parquet" for r in ranks] for s in SPLITS}
    counts = {s: sum(_table_rows(t) for t in tables[s]) for s in SPLITS}
    report.kept_docs = sum(counts.values())
    if report.seen_docs == 0:
        raise DataError(f"source {ctx.name!r} has no documents", path=ctx.path)
    special = ctx.tokenizer.extra_tokens()  # BOS and EOD: in the .bin, not in a document's n_tokens
    holdout = ctx.src.holdout
    short = any(f > 0 and counts[s] < holdout.min_docs for s, f in (("valid", holdout.valid), ("test", holdout.test)))
    splits_out = (_merge_topped_up(ctx, ranks, work, tables, special) if short
                  else _merge_in_task_order(ctx, ranks, work, tables, special))
    report.kept_chars = sum(v.pop("_chars_kept") for v in splits_out.values())
    ident = ctx.identity()
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
        "exact_dedup": OmegaConf.to_container(ctx.data.exact_dedup),
        "near_dedup": OmegaConf.to_container(ctx.data.near_dedup),
        "dedup_against": extra["sources"], "tasks": extra["tasks"], "dtype": np.dtype(optimal_dtype(
            ctx.tokenizer.vocab_size)).name,
        "report": report.to_dict(), "splits": splits_out,
    }
    write_json_atomic(final, manifest)
    return manifest


def _table_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0


def _split_record(prefix: str | None, n_docs: int, lengths: np.ndarray, chars: int, words: int,
                  tokens_in_text: int) -> dict:
    return {"prefix": prefix, "documents": int(n_docs), "tokens": int(lengths.sum()), "characters": int(chars),
            "words": int(words), "tokens_per_word": float(tokens_in_text / max(1, words)),
            "length_histogram": length_histogram(lengths), "_chars_kept": int(chars)}


def _merge_in_task_order(ctx, ranks, work: Path, tables: dict, special: int) -> dict:
    import pyarrow.parquet as pq

    from hebatron_nemo.data.tokenize_stage import merge_indexed

    splits_out = {}
    for s in SPLITS:
        prefixes = [str(work / "tokens" / s / f"{r:05d}") for r in ranks]
        present = [p for p in prefixes if Path(p + ".idx").exists()]
        n_docs = merge_indexed(present, str(ctx.out_dir / s), builder="megatron-core")[0] if present else 0
        lengths, chars, words, toks = [], 0, 0, 0
        tmp = ctx.out_dir / f"{s}.signals.parquet.tmp"
        writer = None
        for t in tables[s]:
            if not t.exists():
                continue
            table = pq.read_table(t)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            n_tok = table.column("n_tokens").to_numpy()
            lengths.append(n_tok + special)
            chars += int(table.column("n_chars").to_numpy().sum())
            words += int(table.column("n_words").to_numpy().sum())
            toks += int(n_tok.sum())
        if writer is None:
            _write_table(tmp, {c: [] for c in DOC_COLUMNS})
        else:
            writer.close()
        tmp.replace(ctx.out_dir / f"{s}.signals.parquet")
        if not present:
            for ext in (".bin", ".idx"):
                (ctx.out_dir / f"{s}{ext}").unlink(missing_ok=True)
        all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        assert len(all_lengths) == n_docs, (ctx.name, s, len(all_lengths), n_docs)
        splits_out[s] = _split_record(s if n_docs else None, n_docs, all_lengths, chars, words, toks)
    return splits_out


def _merge_topped_up(ctx, ranks, work: Path, tables: dict, special: int) -> dict:
    """The small-source path: every document of the source in memory, moved to its topped-up split."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    parts = []
    for s_idx, s in enumerate(SPLITS):
        for r, t in zip(ranks, tables[s]):
            if not t.exists():
                continue
            cols = _read_table(t)
            k = len(cols["ordinal"])
            cols.update(split=np.full(k, s_idx, np.int64), rank=np.full(k, r, np.int64), local=np.arange(k))
            parts.append(cols)
    cols = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    keep = np.ones(len(cols["ordinal"]), dtype=bool)
    dest = _top_up_holdout(cols, keep, ctx.src.holdout)
    datasets: dict = {}

    def dataset(r: int, split: str):
        if (r, split) not in datasets:
            datasets[(r, split)] = IndexedDataset(str(work / "tokens" / split / f"{r:05d}"))
        return datasets[(r, split)]

    dtype = optimal_dtype(ctx.tokenizer.vocab_size)
    splits_out = {}
    for s_idx, s in enumerate(SPLITS):
        sel = np.flatnonzero(dest == s_idx)
        writer = AtomicIndexedWriter(str(ctx.out_dir / s), dtype)
        try:
            for j in sel:
                writer.add(dataset(int(cols["rank"][j]), SPLITS[int(cols["split"][j])])[int(cols["local"][j])])
            writer.commit() if len(sel) else writer.abort()
        except BaseException:
            writer.abort()
            raise
        if not len(sel):
            for ext in (".bin", ".idx"):
                (ctx.out_dir / f"{s}{ext}").unlink(missing_ok=True)
        _write_table(ctx.out_dir / f"{s}.signals.parquet", {c: cols[c][sel].tolist() for c in DOC_COLUMNS})
        n_tok = cols["n_tokens"][sel]
        splits_out[s] = _split_record(s if len(sel) else None, len(sel), n_tok + special, int(cols["n_chars"][sel].sum()),
                                      int(cols["n_words"][sel].sum()), int(n_tok.sum()))
    return splits_out


__all__ = ["SPLITS", "REASONS", "holdout_split", "SourceContext", "SourceRules", "merge_source",
           "validate_passthrough", "build_decontaminator", "fingerprint_files", "prepare"]


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
    """Runs the prepare stage for the configured data registry; returns {source: manifest}.

    With `cluster=<profile>` the graph's stages are submitted as Slurm job arrays and this returns
    {"submitted": [...]} at once: rerun the same command after they finish (or fail) to resubmit only
    the unfinished tasks; the manifests appear when the merge stage has run."""
    quiet_megatron()
    data = cfg.data
    names = list(cfg.sources) or list(data.sources)
    registry.validate_registry(data, check_paths=True, only=names)
    if int(cfg.tasks) < 1:
        raise ConfigError(f"tasks must be >= 1, got {cfg.tasks}")
    ordered = [s for s in data.sources if s in names]
    if cfg.dry_run:
        return _dry_run(cfg, ordered, log)
    on_slurm = cfg.get("cluster") is not None
    if not on_slurm:  # on Slurm each task reads its own documents and fails with the same located error
        _validate_inputs(cfg, ordered, log)
    tokenizer = ensure_tokenizer(cfg, log)
    decon = build_decontaminator(cfg)
    if decon:
        log(f"decontamination: {decon.identity()['ngrams']:,} {data.decontamination.ngram}-grams "
            f"from {decon.eval_texts:,} eval texts")
    manifests = {}
    for name in ordered:
        if data.sources[name].role not in ("pretrain", "anchor"):
            manifests[name] = validate_passthrough(cfg, name)
    tokenized = [n for n in ordered if data.sources[n].role in ("pretrain", "anchor")]
    if not tokenized:
        return manifests
    ctxs = {n: SourceContext(cfg, n, tokenizer, decon) for n in tokenized}
    tasks = int(cfg.tasks)
    fingerprint = stable_hash({"sources": {n: c.identity() for n, c in ctxs.items()}, "tasks": tasks,
                               "exact_dedup": OmegaConf.to_container(data.exact_dedup),
                               "near_dedup": OmegaConf.to_container(data.near_dedup), "version": MANIFEST_VERSION})
    done = {n: read_json(c.out_dir / "manifest.json") for n, c in ctxs.items()}
    work = Path(str(data.output_dir)) / ".prepare" / fingerprint[:16]
    if not cfg.overwrite and all(m and m.get("fingerprint") == fingerprint for m in done.values()):
        for n in tokenized:
            log(f"  {n}: up to date")
        if not cfg.get("keep_work", False):  # a Slurm run's work, merged since
            shutil.rmtree(work, ignore_errors=True)
        return {**manifests, **done}
    from functools import partial

    from hebatron_nemo.data import prepare_graph as g

    if cfg.overwrite:
        shutil.rmtree(work, ignore_errors=True)
    layout = g.TaskLayout(tuple(tokenized), tasks)
    extra = {"sources": tokenized, "tasks": tasks}
    merge = partial(_merge_one, ctxs=ctxs, layout=layout, work=work, fingerprint=fingerprint, extra=extra)
    tok = cfg.tokenizer
    graph = g.build_graph(work, layout, {n: c.rules() for n, c in ctxs.items()}, decon,
                          bool(data.exact_dedup.enabled), data.near_dedup, OmegaConf.to_container(data.signals),
                          {"tokenizer": str(tokenizer.path), "eod_token": tok.eod_token, "add_bos": tok.add_bos,
                           "append_eod": tok.append_eod}, int(cfg.batch_docs), merge)
    stop_after = cfg.get("stop_after")
    log(f"prepare graph: {len(tokenized)} source(s) x {tasks} task(s) in {work}")
    if on_slurm:
        import sys

        records = g.submit_slurm(graph, cfg.cluster, int(cfg.workers), sys.prefix, log, stop_after=stop_after)
        log("submitted: rerun this command after the jobs end to resubmit unfinished tasks; the manifests appear "
            f"when the merge stage has run (logs: {work / 'logs'})")
        return {**manifests, "submitted": records}
    g.run_local(graph, int(cfg.workers), log, stop_after=stop_after)
    if stop_after:
        log(f"stopped after the {stop_after} stage; its files are in {work}")
        return {**manifests, "stopped_after": stop_after}
    for n, c in ctxs.items():
        manifests[n] = read_json(c.out_dir / "manifest.json")
    if not cfg.get("keep_work", False):
        shutil.rmtree(work, ignore_errors=True)
    return manifests


def _merge_one(source: str, ctxs: dict, layout, work: Path, fingerprint: str, extra: dict) -> dict:
    return merge_source(ctxs[source], list(layout.ranks(source)), work, fingerprint, extra)


def _validate_inputs(cfg, names: list[str], log: Callable) -> None:
    """Reads every selected source before any work is done, so that a bad line in the last source
    fails the run before the first is processed (or the tokenizer trained). A source whose manifest
    records the same input files (by content hash) was read in full then and is not read again."""
    from hebatron_nemo.data.readers import validate_source

    data = cfg.data
    for name in names:
        src = data.sources[name]
        path = registry.source_path(data, name)
        if src.role not in ("pretrain", "anchor"):
            validate_source(path, src.format, src.text_field, src.id_field)
            continue
        done = read_json(Path(str(data.output_dir)) / name / "manifest.json")
        if done and done.get("source_fingerprint") == fingerprint_files(path, src.format)["hash"]:
            continue
        for _ in iter_documents(path, src.format, src.text_field, src.id_field):
            pass
    log(f"inputs checked: {len(names)} source(s)")


def _dry_run(cfg, names: list[str], log: Callable) -> dict:
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
    n_tok = sum(1 for n in names if data.sources[n].role in ("pretrain", "anchor"))
    nd, tasks = data.near_dedup, int(cfg.tasks)
    log(f"dry run: the stage graph would run clean {n_tok * tasks} task(s), "
        + (f"buckets {nd.num_buckets * nd.tasks_per_bucket}, cluster 1, " if nd.enabled else "")
        + f"tokenize {n_tok * tasks}, merge {n_tok}"
        + (f", on Slurm ({cfg.cluster.name})" if cfg.get("cluster") is not None else f", {cfg.workers} at a time")
        + "; nothing written")
    return plan
