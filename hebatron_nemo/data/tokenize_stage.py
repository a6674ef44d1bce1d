"""Tokenization to megatron-core `.bin/.idx` as a datatrove pipeline step, run in parallel across tasks.

`TokenizeToIndexed` consumes the documents a datatrove pipeline yields (the output of the document-level
steps of `prepare`), encodes them with `LocalTokenizer` (one HF/Rayon thread per task: the parallelism is
across tasks, one process each), and writes one `.bin/.idx` pair per task and split. `merge_indexed`
concatenates those pairs in task order into one dataset; `tokenize_shards` is the stage on its own,
from parquet or JSONL shards (one per task) to one merged dataset per split.

For the same documents in the same order the merged files are byte-identical to Megatron-LM's
`tools/preprocess_data.py --append-eod` on a JSONL of those documents (one sequence per document,
megatron-core's dtype rule), except that an empty text, which Megatron writes as zero tokens, is not a
document here: datatrove's readers drop documents without text before this step sees them.

Per task and split the pair is written under temporary names and renamed at the task's end (the
`.idx` last), before datatrove marks the task completed; a task that fails leaves no pair under the
final names (its stale pairs from an earlier attempt are removed when it starts). A split without
documents in a task writes nothing (megatron-core cannot map an empty `.bin`); each task also writes
`{output_folder}/manifests/{rank:05d}.json` with its documents and tokens per split, which
`tokenize_shards` checks the shards against before merging.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import ParquetReader

from hebatron_nemo.data.indexed import IndexedShardWriter, concat_indexed, remove_pair, token_dtype
from hebatron_nemo.errors import ConfigError, DataError
from hebatron_nemo.utils.io import write_json_atomic

MANIFESTS = "manifests"
DEFAULT_SPLIT = "train"


def _splits() -> tuple[str, ...]:
    from hebatron_nemo.data.prepare import SPLITS

    return tuple(SPLITS)


def shard_prefix(output_folder: str, split: str, rank: int) -> str:
    """Where task `rank` writes the documents of `split`: `{output_folder}/{split}/{rank:05d}`."""
    return os.path.join(output_folder, split, f"{rank:05d}")


def manifest_path(output_folder: str, rank: int) -> str:
    return os.path.join(output_folder, MANIFESTS, f"{rank:05d}.json")


class TokenizeToIndexed(PipelineStep):
    """Encodes each document's text and appends it to its split's `.bin/.idx` of this task.

    Args:
        tokenizer: folder with `tokenizer.json` (`LocalTokenizer`)
        output_folder: local folder; task `rank` writes `{output_folder}/{split}/{rank:05d}.bin/.idx`
        eod_token, add_bos, append_eod: as `LocalTokenizer` (Megatron's `--append-eod`: EOD on, BOS off)
        batch_docs: documents encoded per tokenizer call (and held back before being yielded on)

    The split of a document is `doc.metadata.get("split", "train")`, one of `prepare.SPLITS`. Sets
    `doc.metadata["n_tokens"]` (token ids without BOS/EOD) and yields every document, in input order.
    """

    name = "🔢 Megatron .bin/.idx"
    type = "🔢 - TOKENIZER"

    def __init__(self, tokenizer: str, output_folder: str, eod_token: str = "</s>", add_bos: bool = False,
                 append_eod: bool = True, batch_docs: int = 512):
        super().__init__()
        if batch_docs < 1:
            raise ConfigError(f"batch_docs must be at least 1, not {batch_docs}")
        if not (Path(tokenizer) / "tokenizer.json").exists():
            raise ConfigError(f"tokenizer.path: no tokenizer.json in {str(tokenizer)!r}")
        self.tokenizer = str(tokenizer)
        self.output_folder = str(output_folder)
        self.eod_token, self.add_bos, self.append_eod = eod_token, add_bos, append_eod
        self.batch_docs = batch_docs
        self.splits = _splits()

    def settings(self) -> dict:
        """What the tokens depend on besides the text: a rerun that skips completed tasks checks it."""
        from hebatron_nemo.utils.hashing import sha256_file

        return {"tokenizer_json_sha256": sha256_file(Path(self.tokenizer) / "tokenizer.json"),
                "eod_token": self.eod_token, "add_bos": self.add_bos, "append_eod": self.append_eod}

    def _load_tokenizer(self):
        from hebatron_nemo.data.tokenizer import LocalTokenizer, set_tokenizer_threads

        set_tokenizer_threads(1)  # before the tokenizer's first use: Rayon sizes its pool once
        return LocalTokenizer(self.tokenizer, self.eod_token, self.add_bos, self.append_eod)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data is None:
            return
        for split in self.splits:  # a pair left by an earlier, failed attempt of this task
            remove_pair(shard_prefix(self.output_folder, split, rank))
        manifest = manifest_path(self.output_folder, rank)
        if os.path.exists(manifest):
            os.unlink(manifest)
        tok = self._load_tokenizer()
        dtype = token_dtype(tok.vocab_size)
        writers: dict[str, IndexedShardWriter] = {}
        committed = False
        try:
            batch = []
            for doc in data:
                batch.append(doc)
                if len(batch) >= self.batch_docs:
                    self._encode_batch(tok, dtype, batch, writers, rank)
                    yield from batch
                    batch = []
            if batch:
                self._encode_batch(tok, dtype, batch, writers, rank)
                yield from batch
            for w in writers.values():
                w.commit()
            committed = True
            write_json_atomic(manifest, {
                "rank": rank, "tokenizer": tok.identity(), "settings": self.settings(), "dtype": dtype.name,
                "splits": {s: {"documents": w.documents, "tokens": w.tokens} for s, w in writers.items()}})
        finally:
            if not committed:
                for w in writers.values():
                    w.abort()

    def _encode_batch(self, tok, dtype, batch: list, writers: dict, rank: int) -> None:
        by_split: dict[str, list[int]] = {}
        for i, doc in enumerate(batch):
            split = doc.metadata.get("split", DEFAULT_SPLIT)
            if split not in self.splits:
                raise DataError(f"document {doc.id!r} has split {split!r}, not one of {list(self.splits)}",
                                path=doc.metadata.get("file_path"), field="metadata.split")
            by_split.setdefault(split, []).append(i)
        extra = tok.extra_tokens()
        for split, idx in by_split.items():
            with self.track_time(unit="batch"):
                ids, lens = tok.encode_flat([batch[i].text for i in idx])
                if split not in writers:
                    writers[split] = IndexedShardWriter(shard_prefix(self.output_folder, split, rank), dtype)
                writers[split].add_batch(ids, lens)
            for i, n in zip(idx, (lens - extra).tolist()):
                batch[i].metadata["n_tokens"] = n
            self.stat_update(f"{split}_documents", value=len(idx), unit="batch")
            self.stat_update(f"{split}_tokens", value=len(ids), unit="batch")


def merge_indexed(prefixes: list[str], out_prefix: str, builder: str = "megatron-core") -> tuple[int, int]:
    """Concatenates `prefixes` (`.bin/.idx` pairs) in the order given into `out_prefix.bin/.idx`,
    atomically; a prefix without files (a task whose split was empty) is skipped. Returns (documents,
    tokens).

    `builder="megatron-core"` appends with megatron-core's `IndexedDatasetBuilder.add_index`;
    `builder="numpy"` writes the same bytes with `indexed.concat_indexed`, without importing megatron-core
    (torch and the rest: seconds of start-up, more than the merge itself)."""
    present = [p for p in prefixes if os.path.exists(p + ".idx") and os.path.exists(p + ".bin")]
    if not present:
        raise DataError(f"nothing to merge: none of {len(prefixes)} shards exists", path=out_prefix)
    if builder == "numpy":
        return concat_indexed(present, out_prefix)
    if builder != "megatron-core":
        raise ConfigError(f"merge builder must be 'megatron-core' or 'numpy', not {builder!r}")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from hebatron_nemo.data.indexed import read_index

    dtype, lengths, _ = read_index(present[0])
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{out_prefix}.tmp-{os.getpid()}"
    builder_ = IndexedDatasetBuilder(tmp + ".bin", dtype=dtype.type)
    # add_index calls gc.collect() per shard: with torch loaded, a scan of millions of objects each time.
    # Frozen, the objects that exist now are left out of those scans (new ones are still collected).
    gc.freeze()
    try:
        for p in present:
            builder_.add_index(p)
        builder_.finalize(tmp + ".idx")
        remove_pair(out_prefix)
        os.replace(tmp + ".bin", out_prefix + ".bin")
        os.replace(tmp + ".idx", out_prefix + ".idx")
    except BaseException:
        builder_.data_file.close()
        for ext in (".bin", ".idx"):
            if os.path.exists(tmp + ext):
                os.unlink(tmp + ext)
        raise
    finally:
        gc.unfreeze()
    return len(builder_.document_indices) - 1, int(np.sum(builder_.sequence_lengths, dtype=np.int64))


class ParquetTextReader(ParquetReader):
    """datatrove's ParquetReader reading only the columns this stage uses (text, id, and `split` where the
    file has one), column by column: the same Documents in a third of the reading time (no row dicts, no
    adapter, the file path resolved once per file). Documents without text are dropped and a file
    without an id column gives ids `{file}/{n}`, as datatrove's readers do."""

    name = "📒 Parquet (text, id, split)"

    def read_file(self, filepath: str):
        import pyarrow.parquet as pq

        resolved = self.data_folder.resolve_paths(filepath)
        with self.data_folder.open(filepath, "rb") as f, pq.ParquetFile(f) as pqf:
            names = set(pqf.schema_arrow.names)
            if self.text_key not in names:
                raise DataError(f"no column {self.text_key!r} (columns: {sorted(names)})", path=resolved,
                                field=self.text_key)
            columns = [c for c in (self.text_key, self.id_key, "split") if c in names]
            kept = 0  # datatrove's id of a row without an id column: `{file}/{documents kept before it}`
            for batch in pqf.iter_batches(batch_size=self.batch_size, columns=columns):
                with self.track_time("batch"):
                    cols = {name: batch.column(name).to_pylist() for name in columns}
                    texts = cols[self.text_key]
                    ids = cols.get(self.id_key)
                    splits = cols.get("split")
                    documents = []
                    for j, text in enumerate(texts):
                        if not text:
                            continue
                        meta = {"file_path": resolved}
                        if splits is not None:
                            meta["split"] = splits[j]
                        doc_id = ids[j] if ids is not None else f"{filepath}/{kept}"
                        documents.append(Document(text=text, id=doc_id, metadata=meta))
                        kept += 1
                yield from documents


def _reader(input_files: list[str], text_key: str, id_key: str, paths_file: str, data_folder: str):
    from datatrove.pipeline.readers import JsonlReader

    kinds = {"parquet" if f.endswith(".parquet") else "jsonl" if ".jsonl" in os.path.basename(f) else None
             for f in input_files}
    if None in kinds or len(kinds) != 1:
        raise ConfigError(f"input_files must all be .parquet or all .jsonl[.gz|.zst], not {sorted(map(str, kinds))}")
    if kinds == {"parquet"}:
        return ParquetTextReader(data_folder, paths_file=paths_file, text_key=text_key, id_key=id_key,
                                 batch_size=4096)
    return JsonlReader(data_folder, paths_file=paths_file, text_key=text_key, id_key=id_key,
                       compression="infer")


def tokenize_shards(input_files: list[str], text_key: str, out_prefix: str, tokenizer: str, workers: int,
                    logging_dir: str, *, eod_token: str = "</s>", add_bos: bool = False, append_eod: bool = True,
                    batch_docs: int = 512, id_key: str = "id", start_method: str = "fork",
                    merge_builder: str = "numpy") -> dict:
    """Tokenizes `input_files` (one per task, in order; all parquet or all JSONL) with `workers`
    processes of datatrove's `LocalPipelineExecutor`, then merges the tasks' pairs in task order.

    The `train` split goes to `out_prefix.bin/.idx`, another split `s` (a `split` column) to
    `{out_prefix}.{s}.bin/.idx`. Task outputs stay under `{logging_dir}/tokens`: a rerun with the same
    `logging_dir` skips the tasks datatrove marked completed and merges again. Returns
    `{split: {"prefix", "documents", "tokens"}}`.

    `start_method`: "fork" starts the workers with the parent's imports (datatrove, tokenizers) already
    loaded; datatrove's default "forkserver" imports them again in a fresh server process."""
    from datatrove.executor import LocalPipelineExecutor

    if not input_files:
        raise ConfigError("tokenize_shards: no input_files")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, not {workers}")
    files = [os.path.abspath(f) for f in input_files]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ConfigError(f"input_files: not found: {missing[:5]}")
    logging_dir = os.path.abspath(logging_dir)
    output_folder = os.path.join(logging_dir, "tokens")
    data_folder = os.path.commonpath([os.path.dirname(f) for f in files])
    paths_file = os.path.join(logging_dir, "input_files.txt")
    listing = "".join(os.path.relpath(f, data_folder) + "\n" for f in files)
    if os.path.exists(paths_file) and Path(paths_file).read_text(encoding="utf-8") != listing:
        raise ConfigError(f"logging_dir {logging_dir} holds a run over other input files ({paths_file}): "
                          "use a new logging_dir")
    Path(logging_dir).mkdir(parents=True, exist_ok=True)
    Path(paths_file).write_text(listing, encoding="utf-8")
    step = TokenizeToIndexed(tokenizer, output_folder, eod_token=eod_token, add_bos=add_bos,
                             append_eod=append_eod, batch_docs=batch_docs)
    executor = LocalPipelineExecutor(
        [_reader(files, text_key, id_key, paths_file, data_folder), step], tasks=len(files), workers=workers,
        logging_dir=logging_dir, skip_completed=True, start_method=start_method)
    executor.run()
    incomplete = executor.get_incomplete_ranks()
    if incomplete:
        raise DataError(f"tasks {incomplete} did not complete (see {logging_dir}/logs)", path=logging_dir)
    counts: dict[str, list[dict]] = {}
    settings = step.settings()
    for rank in range(len(files)):
        path = manifest_path(output_folder, rank)
        if not os.path.exists(path):
            raise DataError(f"task {rank} is marked completed but wrote no manifest", path=path)
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
        if rec.get("settings") != settings:
            raise ConfigError(f"task {rank} of {logging_dir} was tokenized with {rec.get('settings')}, not "
                              f"{settings}: use a new logging_dir (completed tasks are not redone)")
        for split, c in rec["splits"].items():
            counts.setdefault(split, []).append({"rank": rank, **c})
    out = {}
    for split, shards in counts.items():
        prefix = out_prefix if split == DEFAULT_SPLIT else f"{out_prefix}.{split}"
        prefixes = [shard_prefix(output_folder, split, s["rank"]) for s in shards]
        for p in prefixes:
            if not (os.path.exists(p + ".bin") and os.path.exists(p + ".idx")):
                raise DataError("a completed task's shard is missing (deleted after the run?): rerun with a new "
                                "logging_dir", path=p + ".bin")
        docs, tokens = merge_indexed(prefixes, prefix, builder=merge_builder)
        want = (sum(s["documents"] for s in shards), sum(s["tokens"] for s in shards))
        if (docs, tokens) != want:
            raise DataError(f"merged {docs} documents / {tokens} tokens, the tasks wrote {want}", path=prefix)
        out[split] = {"prefix": prefix, "documents": docs, "tokens": tokens}
    return out
