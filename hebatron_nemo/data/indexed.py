"""Megatron indexed datasets (`.bin` + `.idx`) written atomically with megatron-core's builder."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np

from hebatron_nemo.errors import DataError

HIST_MAX_LOG2 = 24  # the document-length histogram has power-of-two bins up to 16M tokens

# megatron-core's `.idx` layout (version 1): this header, <Q version, <B dtype code, <Q sequences,
# <Q documents, int32 sequence lengths, int64 byte offsets, int64 document boundaries.
INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# megatron-core's `DType` codes of the token dtypes, and its vocabulary size from which int32 is used.
TOKEN_DTYPE_CODES = {"uint16": 8, "int32": 4}
UINT16_VOCAB_LIMIT = 65500


def optimal_dtype(vocab_size: int):
    """int32 from 65,500 tokens up (Nemotron's 131,072), else uint16: megatron-core's own rule."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


def token_dtype(vocab_size: int) -> np.dtype:
    """`optimal_dtype` without importing megatron-core (whose import costs seconds: torch and more)."""
    return np.dtype(np.uint16 if vocab_size < UINT16_VOCAB_LIMIT else np.int32)


def _replace_pair(tmp: str, prefix: str) -> None:
    """Renames `tmp.bin/.idx` to `prefix.bin/.idx`: old pair removed first, new `.idx` renamed last."""
    for ext in (".idx", ".bin"):
        if os.path.exists(prefix + ext):
            os.unlink(prefix + ext)
    os.replace(tmp + ".bin", prefix + ".bin")
    os.replace(tmp + ".idx", prefix + ".idx")


def remove_pair(prefix: str) -> None:
    """Removes `prefix.idx` then `prefix.bin` where present (the order a reader never sees half of)."""
    for ext in (".idx", ".bin"):
        if os.path.exists(prefix + ext):
            os.unlink(prefix + ext)


def write_index(path: str, dtype, sequence_lengths: np.ndarray, document_indices: np.ndarray) -> None:
    """Writes a megatron-core `.idx` (byte for byte what `IndexedDatasetBuilder.finalize` writes)."""
    dtype = np.dtype(dtype)
    lengths = np.asarray(sequence_lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1] * np.int64(dtype.itemsize), out=pointers[1:])
    docs = np.asarray(document_indices, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(INDEX_HEADER + struct.pack("<Q", INDEX_VERSION) + struct.pack("<B", TOKEN_DTYPE_CODES[dtype.name])
                + struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(docs)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(docs.tobytes())


def read_index(prefix: str) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """(token dtype, sequence lengths, document boundaries) of `prefix.idx` (as written by `write_index`
    or megatron-core)."""
    path = prefix + ".idx"
    with open(path, "rb") as f:
        head = f.read(len(INDEX_HEADER) + 8 + 1 + 16)
        if len(head) < len(INDEX_HEADER) + 25 or head[: len(INDEX_HEADER)] != INDEX_HEADER:
            raise DataError("not a megatron-core index (bad header)", path=path)
        version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[len(INDEX_HEADER):])
        codes = {v: k for k, v in TOKEN_DTYPE_CODES.items()}
        if version != INDEX_VERSION or code not in codes:
            raise DataError(f"unsupported index version {version} or dtype code {code}", path=path)
        lengths = np.fromfile(f, dtype=np.int32, count=n_seq)
        f.seek(8 * n_seq, os.SEEK_CUR)
        docs = np.fromfile(f, dtype=np.int64, count=n_doc)
    if len(lengths) != n_seq or len(docs) != n_doc:
        raise DataError(f"truncated index: {len(lengths)}/{n_seq} sequences, {len(docs)}/{n_doc} documents", path=path)
    return np.dtype(codes[code]), lengths, docs


class IndexedShardWriter:
    """`<prefix>.bin/.idx` of one-sequence documents, written in batches with numpy alone (no torch or
    megatron-core import), byte-identical to `AtomicIndexedWriter`; atomic in the same way."""

    def __init__(self, prefix: str, dtype):
        self.prefix = prefix
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self.tmp = f"{prefix}.tmp-{os.getpid()}"
        self.dtype = np.dtype(dtype)
        self._bin = open(self.tmp + ".bin", "wb")
        self._lengths: list[np.ndarray] = []
        self.documents = 0
        self.tokens = 0

    def add_batch(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Appends documents: `ids` all their tokens back to back, `lengths` the tokens of each."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != len(ids):
            raise ValueError(f"{len(ids)} ids for documents of {int(lengths.sum())} tokens")
        np.asarray(ids, dtype=self.dtype).tofile(self._bin)
        self._lengths.append(lengths)
        self.documents += len(lengths)
        self.tokens += len(ids)

    def commit(self) -> None:
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        write_index(self.tmp + ".idx", self.dtype, lengths, np.arange(len(lengths) + 1, dtype=np.int64))
        _replace_pair(self.tmp, self.prefix)

    def abort(self) -> None:
        self._bin.close()
        for ext in (".bin", ".idx"):
            if os.path.exists(self.tmp + ext):
                os.unlink(self.tmp + ext)


def concat_indexed(prefixes: list[str], out_prefix: str) -> tuple[int, int]:
    """`prefixes` one after another into `out_prefix.bin/.idx`, atomically, with numpy alone: the
    bytes of megatron-core's `IndexedDatasetBuilder.add_index` over the same prefixes. Returns
    (documents, tokens)."""
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{out_prefix}.tmp-{os.getpid()}"
    dtype, lengths, docs = None, [], [np.zeros(1, np.int64)]
    offset = 0
    try:
        with open(tmp + ".bin", "wb") as out:
            for prefix in prefixes:
                dt, seq, bounds = read_index(prefix)
                if dtype is not None and dt != dtype:
                    raise DataError(f"token dtype {dt.name} differs from {dtype.name} of the earlier shards",
                                    path=prefix + ".idx")
                dtype = dt
                lengths.append(seq)
                docs.append(offset + bounds[1:])
                offset += len(seq)
                with open(prefix + ".bin", "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
        if dtype is None:
            raise DataError("nothing to merge: no shard", path=out_prefix)
        all_lengths = np.concatenate(lengths)
        write_index(tmp + ".idx", dtype, all_lengths, np.concatenate(docs))
        _replace_pair(tmp, out_prefix)
    except BaseException:
        for ext in (".bin", ".idx"):
            if os.path.exists(tmp + ext):
                os.unlink(tmp + ext)
        raise
    return int(sum(len(d) for d in docs) - 1), int(all_lengths.sum())


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
        _replace_pair(self.tmp, self.prefix)

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
