"""Tokenization to megatron-core `.bin/.idx` as a datatrove step (interim version; see the tok branch)."""

from __future__ import annotations

from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from hebatron_nemo.data.prepare import SPLITS


class TokenizeToIndexed(PipelineStep):
    """Documents -> `<output_folder>/<split>/<rank>.bin/.idx` (split from `doc.metadata["split"]`)."""

    name = "tokenize"
    type = "🔢 - TOKENIZER"

    def __init__(self, output_folder: str, tokenizer_path: str, eod_token: str = "</s>", add_bos: bool = False,
                 append_eod: bool = True, batch_docs: int = 512):
        super().__init__()
        self.output_folder, self.batch_docs = output_folder, batch_docs
        self.tok_args = dict(path=tokenizer_path, eod_token=eod_token, add_bos=add_bos, append_eod=append_eod)

    def run(self, data, rank: int = 0, world_size: int = 1):
        from hebatron_nemo.data.indexed import AtomicIndexedWriter, optimal_dtype
        from hebatron_nemo.data.tokenizer import LocalTokenizer, set_tokenizer_threads

        set_tokenizer_threads(1)
        tok = LocalTokenizer(**self.tok_args)
        extra = (1 if tok.append_eod else 0) + (1 if tok.bos is not None else 0)
        dtype = optimal_dtype(tok.vocab_size)
        writers = {s: AtomicIndexedWriter(str(Path(self.output_folder) / s / f"{rank:05d}"), dtype) for s in SPLITS}
        batch = []

        def flush():
            for d, ids in zip(batch, tok.encode_documents([d.text for d in batch])):
                writers[d.metadata.get("split", "train")].add(ids)
                d.metadata["n_tokens"] = len(ids) - extra
            out = list(batch)
            batch.clear()
            return out

        try:
            for doc in data:
                batch.append(doc)
                if len(batch) >= self.batch_docs:
                    yield from flush()
            if batch:
                yield from flush()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        for w in writers.values():
            w.commit() if w.documents else w.abort()


def merge_indexed(prefixes: list[str], out_prefix: str) -> tuple[int, int]:
    """`prefixes` concatenated, in order, into `out_prefix.bin/.idx` (megatron-core's add_index), atomically."""
    import os

    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    first = IndexedDataset(prefixes[0])
    tmp = f"{out_prefix}.tmp-{os.getpid()}"
    builder = IndexedDatasetBuilder(tmp + ".bin", dtype=first.index.dtype)
    try:
        for p in prefixes:
            builder.add_index(p)
        builder.finalize(tmp + ".idx")
    except BaseException:
        builder.data_file.close()
        for ext in (".bin", ".idx"):
            if os.path.exists(tmp + ext):
                os.unlink(tmp + ext)
        raise
    for ext in (".idx", ".bin"):
        if os.path.exists(out_prefix + ext):
            os.unlink(out_prefix + ext)
    os.replace(tmp + ".bin", out_prefix + ".bin")
    os.replace(tmp + ".idx", out_prefix + ".idx")
    merged = IndexedDataset(out_prefix)
    return len(merged), int(merged.index.sequence_lengths.sum())
