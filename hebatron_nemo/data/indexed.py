"""Megatron indexed datasets (`.bin` + `.idx`) written atomically with megatron-core's builder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HIST_MAX_LOG2 = 24  # the document-length histogram has power-of-two bins up to 16M tokens


def optimal_dtype(vocab_size: int):
    """int32 from 65,500 tokens up (Nemotron's 131,072), else uint16: megatron-core's own rule."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


class AtomicIndexedWriter:
    """Builds `<prefix>.bin/.idx` under temporary names and renames them into place on `commit()`.

    A run killed midway leaves only `*.tmp-*` files, never a `.bin/.idx` pair under the final name:
    the old `.idx` is removed before the new `.bin` arrives, and the new `.idx` is renamed last."""

    def __init__(self, prefix: str, dtype):
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix = prefix
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self.tmp = f"{prefix}.tmp-{os.getpid()}"
        self.dtype = dtype
        self.builder = IndexedDatasetBuilder(self.tmp + ".bin", dtype=dtype)
        self.documents = 0
        self.tokens = 0

    def add(self, ids) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self.builder.add_document(arr, [arr.size])
        self.documents += 1
        self.tokens += int(arr.size)

    def commit(self) -> None:
        self.builder.finalize(self.tmp + ".idx")
        for ext in (".idx", ".bin"):
            if os.path.exists(self.prefix + ext):
                os.unlink(self.prefix + ext)
        os.replace(self.tmp + ".bin", self.prefix + ".bin")
        os.replace(self.tmp + ".idx", self.prefix + ".idx")

    def abort(self) -> None:
        try:
            self.builder.data_file.close()
        except Exception:
            pass
        for ext in (".bin", ".idx"):
            if os.path.exists(self.tmp + ext):
                os.unlink(self.tmp + ext)


def length_histogram(lengths: np.ndarray) -> dict:
    """Documents and tokens per power-of-two length bin: bin k holds lengths in [2^k, 2^(k+1)).

    The plan reads it to tell how many tokens come from documents longer than a sequence length."""
    lengths = np.asarray(lengths, dtype=np.int64)
    bins = np.zeros(HIST_MAX_LOG2 + 1, dtype=np.int64)
    toks = np.zeros(HIST_MAX_LOG2 + 1, dtype=np.int64)
    if lengths.size:
        k = np.clip(np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64), 0, HIST_MAX_LOG2)
        np.add.at(bins, k, 1)
        np.add.at(toks, k, lengths)
    return {"bin_lower_edges": [2**k for k in range(HIST_MAX_LOG2 + 1)], "docs": bins.tolist(),
            "tokens": toks.tolist()}
