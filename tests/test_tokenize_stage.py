"""The tokenization stage on datatrove tasks: byte identity with one writer (and so with Megatron's tool),
split routing, empty splits, reruns that skip completed tasks, and failed tasks leaving no pair behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from test_megatron_identity import RECORD, SAMPLE, sample_docs, train_sample_tokenizer


def sha256(path) -> str:
    from hebatron_nemo.utils.hashing import sha256_file

    return sha256_file(path)


def pair_sha(prefix) -> tuple[str, str]:
    return sha256(f"{prefix}.bin"), sha256(f"{prefix}.idx")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return train_sample_tokenizer(tmp_path_factory.mktemp("tok") / "sample_bpe")


def write_parquet_shards(folder: Path, docs: list[dict], n: int) -> list[str]:
    """`docs` in order, cut into `n` contiguous parquet files (columns text, id, and split if any doc has one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(n):
        part = docs[k * len(docs) // n:(k + 1) * len(docs) // n]
        cols = {"text": [d["text"] for d in part], "id": [d["id"] for d in part]}
        if any("split" in d for d in docs):
            cols["split"] = [d.get("split", "train") for d in part]
        files.append(str(folder / f"part-{k:03d}.parquet"))
        pq.write_table(pa.table(cols), files[-1])
    return files


def reference_pair(tokenizer: Path, texts: list[str], prefix: Path) -> Path:
    """One `AtomicIndexedWriter` (megatron-core's builder) over `encode_documents` of all texts."""
    from hebatron_nemo.data.indexed import AtomicIndexedWriter, optimal_dtype
    from hebatron_nemo.data.tokenizer import LocalTokenizer

    tok = LocalTokenizer(str(tokenizer))
    w = AtomicIndexedWriter(str(prefix), optimal_dtype(tok.vocab_size))
    for ids in tok.encode_documents(texts):
        w.add(ids)
    w.commit()
    return prefix


def documents(rows: list[dict]):
    from datatrove.data import Document

    return [Document(text=r["text"], id=r["id"], metadata={k: v for k, v in r.items() if k not in ("text", "id")})
            for r in rows]


@pytest.mark.parametrize("tasks,workers", [(1, 1), (3, 2)])
def test_merged_tasks_equal_one_writer_and_megatron(tmp_path, tokenizer, tasks, workers):
    from hebatron_nemo.data.tokenize_stage import tokenize_shards

    docs = sample_docs()
    files = write_parquet_shards(tmp_path / "in", docs, tasks)
    out = tokenize_shards(files, "text", str(tmp_path / "out" / "merged"), str(tokenizer), workers,
                          str(tmp_path / "logs"), batch_docs=50)
    ref = reference_pair(tokenizer, [d["text"] for d in docs], tmp_path / "ref")
    assert out == {"train": {"prefix": str(tmp_path / "out" / "merged"), "documents": len(docs),
                             "tokens": out["train"]["tokens"]}}
    assert pair_sha(tmp_path / "out" / "merged") == pair_sha(ref)
    rec = json.loads(RECORD.read_text())
    assert rec["sample"] == SAMPLE and out["train"]["tokens"] == rec["tokens"]
    assert pair_sha(tmp_path / "out" / "merged") == (rec["bin_sha256"], rec["idx_sha256"])
    # one pair per task, then merged
    assert sorted(p.name for p in (tmp_path / "logs" / "tokens" / "train").iterdir()) == \
        sorted(f"{r:05d}.{e}" for r in range(tasks) for e in ("bin", "idx"))


def test_megatron_core_merge_gives_the_same_bytes(tmp_path, tokenizer):
    from hebatron_nemo.data.tokenize_stage import merge_indexed, shard_prefix, tokenize_shards

    docs = sample_docs()
    files = write_parquet_shards(tmp_path / "in", docs, 2)
    tokenize_shards(files, "text", str(tmp_path / "a"), str(tokenizer), 1, str(tmp_path / "logs"))
    shards = [shard_prefix(str(tmp_path / "logs" / "tokens"), "train", r) for r in range(2)]
    got = merge_indexed(shards, str(tmp_path / "b"), builder="megatron-core")
    assert got == (len(docs), json.loads(RECORD.read_text())["tokens"])
    assert pair_sha(tmp_path / "a") == pair_sha(tmp_path / "b") == pair_sha(
        reference_pair(tokenizer, [d["text"] for d in docs], tmp_path / "ref"))
    # a missing (empty) prefix is skipped, by either builder
    for builder in ("megatron-core", "numpy"):
        assert merge_indexed([shards[0], str(tmp_path / "nothing"), shards[1]], str(tmp_path / "c"),
                             builder=builder) == got
        assert pair_sha(tmp_path / "c") == pair_sha(tmp_path / "a")


def test_jsonl_shards(tmp_path, tokenizer):
    """datatrove's JsonlReader needs `orjson` (not in the locked environment at the time of writing)."""
    pytest.importorskip("orjson")
    from corpus import write_jsonl

    from hebatron_nemo.data.tokenize_stage import tokenize_shards

    docs = sample_docs()
    files = [str(write_jsonl(tmp_path / "in" / f"p{k}.jsonl", docs[k * 200:(k + 1) * 200])) for k in range(2)]
    tokenize_shards(files, "text", str(tmp_path / "a"), str(tokenizer), 2, str(tmp_path / "logs"))
    assert pair_sha(tmp_path / "a") == pair_sha(reference_pair(tokenizer, [d["text"] for d in docs], tmp_path / "ref"))


def test_splits_are_routed_and_documents_come_out_in_order(tmp_path, tokenizer):
    from hebatron_nemo.data.tokenize_stage import TokenizeToIndexed, shard_prefix
    from hebatron_nemo.data.tokenizer import LocalTokenizer

    rows = [dict(d, split=("train", "valid", "train", "test", "train")[i % 5]) for i, d in enumerate(sample_docs())]
    step = TokenizeToIndexed(str(tokenizer), str(tmp_path / "tok"), batch_docs=37)
    out = list(step.run(iter(documents(rows)), rank=4, world_size=7))
    assert [d.id for d in out] == [r["id"] for r in rows]
    tok = LocalTokenizer(str(tokenizer))
    assert [d.metadata["n_tokens"] for d in out] == [len(ids) - 1 for ids in tok.encode_documents([r["text"] for r in rows])]
    for split in ("train", "valid", "test"):
        texts = [r["text"] for r in rows if r["split"] == split]
        ref = reference_pair(tokenizer, texts, tmp_path / f"ref-{split}")
        assert pair_sha(shard_prefix(str(tmp_path / "tok"), split, 4)) == pair_sha(ref), split
    manifest = json.loads((tmp_path / "tok" / "manifests" / "00004.json").read_text())
    assert manifest["splits"]["valid"]["documents"] == sum(r["split"] == "valid" for r in rows)
    assert not list((tmp_path / "tok").rglob("*.tmp-*"))


def test_an_empty_split_writes_no_files(tmp_path, tokenizer):
    from hebatron_nemo.data.tokenize_stage import TokenizeToIndexed

    rows = [dict(d, split="valid" if i < 5 else "train") for i, d in enumerate(sample_docs()[:40])]
    list(TokenizeToIndexed(str(tokenizer), str(tmp_path / "tok")).run(iter(documents(rows)), rank=0))
    assert sorted(p.relative_to(tmp_path / "tok").as_posix() for p in (tmp_path / "tok").rglob("*.*")) == [
        "manifests/00000.json", "train/00000.bin", "train/00000.idx", "valid/00000.bin", "valid/00000.idx"]
    # a task that gets no documents at all writes no pair either
    list(TokenizeToIndexed(str(tokenizer), str(tmp_path / "none")).run(iter([]), rank=0))
    assert [p.name for p in (tmp_path / "none").rglob("*.*")] == ["00000.json"]


def test_an_unknown_split_names_the_document(tmp_path, tokenizer):
    from hebatron_nemo.data.tokenize_stage import TokenizeToIndexed
    from hebatron_nemo.errors import DataError

    rows = [dict(d, split="dev" if i == 7 else "train", file_path="in/x.parquet") for i, d in enumerate(sample_docs()[:20])]
    with pytest.raises(DataError, match=r"in/x.parquet.*split.*he-7.*'dev'"):
        list(TokenizeToIndexed(str(tokenizer), str(tmp_path / "tok")).run(iter(documents(rows)), rank=0))
    assert not list((tmp_path / "tok").rglob("*.bin")) and not list((tmp_path / "tok").rglob("*.idx"))


def test_a_rerun_skips_completed_tasks_and_merges_again(tmp_path, tokenizer):
    from hebatron_nemo.data.tokenize_stage import tokenize_shards

    docs = sample_docs()
    files = write_parquet_shards(tmp_path / "in", docs, 3)
    args = (files, "text", str(tmp_path / "out"), str(tokenizer), 1, str(tmp_path / "logs"))
    first = tokenize_shards(*args)
    shard = tmp_path / "logs" / "tokens" / "train"
    stamps = {p.name: p.stat().st_mtime_ns for p in shard.iterdir()}
    sha = pair_sha(tmp_path / "out")
    os.unlink(tmp_path / "out.bin")
    os.unlink(tmp_path / "logs" / "completions" / "00001")  # task 1 runs again, tasks 0 and 2 are skipped
    assert tokenize_shards(*args) == first
    assert pair_sha(tmp_path / "out") == sha
    again = {p.name: p.stat().st_mtime_ns for p in shard.iterdir()}
    assert {k for k in stamps if again[k] != stamps[k]} == {"00001.bin", "00001.idx"}
    # other settings over completed tasks are an error, not a dataset of mixed tokenizations
    from hebatron_nemo.errors import ConfigError

    with pytest.raises(ConfigError, match="append_eod"):
        tokenize_shards(*args, append_eod=False)
    # a completed task whose shard was deleted is an error, not a silently shorter dataset
    os.unlink(shard / "00002.bin")
    with pytest.raises(Exception, match="00002.bin"):
        tokenize_shards(*args)


def test_a_task_that_fails_midway_leaves_no_complete_looking_pair(tmp_path, tokenizer):
    from hebatron_nemo.data.tokenize_stage import TokenizeToIndexed, shard_prefix

    rows = sample_docs()

    def failing():
        for i, d in enumerate(documents(rows)):
            if i == 150:
                raise RuntimeError("reader died")
            yield d

    step = TokenizeToIndexed(str(tokenizer), str(tmp_path / "tok"), batch_docs=40)
    list(step.run(iter(documents(rows)), rank=2))  # an earlier, complete attempt of task 2
    prefix = shard_prefix(str(tmp_path / "tok"), "train", 2)
    assert os.path.exists(prefix + ".bin") and os.path.exists(prefix + ".idx")
    with pytest.raises(RuntimeError, match="reader died"):
        list(step.run(failing(), rank=2))
    assert not list((tmp_path / "tok").rglob("*.bin")) and not list((tmp_path / "tok").rglob("*.idx"))
    assert not list((tmp_path / "tok").rglob("*.tmp-*")) and not (tmp_path / "tok" / "manifests" / "00002.json").exists()
    # a consumer that stops early (closes the generator) aborts the same way
    gen = step.run(iter(documents(rows)), rank=3)
    next(gen)
    gen.close()
    assert not list((tmp_path / "tok").rglob("*.bin"))


def test_failing_task_in_the_executor_is_reported_and_not_merged(tmp_path, tokenizer):
    from hebatron_nemo.data.tokenize_stage import tokenize_shards

    files = write_parquet_shards(tmp_path / "in", sample_docs(), 2)
    Path(files[1]).write_bytes(b"not parquet")
    with pytest.raises(Exception):
        tokenize_shards(files, "text", str(tmp_path / "out"), str(tokenizer), 1, str(tmp_path / "logs"))
    assert not (tmp_path / "out.bin").exists() and not (tmp_path / "out.idx").exists()
    assert not (tmp_path / "logs" / "completions" / "00001").exists()


def test_encode_flat_with_bos_and_without_eod(tokenizer):
    from hebatron_nemo.data.tokenizer import LocalTokenizer

    texts = [d["text"] for d in sample_docs()[::7]] + ["", "x"]
    for add_bos, append_eod in [(True, True), (True, False), (False, False)]:
        tok = LocalTokenizer(str(tokenizer), add_bos=add_bos, append_eod=append_eod)
        ref = [([tok.bos] if add_bos else []) + e.ids + ([tok.eod] if append_eod else [])
               for e in tok.tok.encode_batch(texts, add_special_tokens=False)]
        ids, lens = tok.encode_flat(texts)
        assert ids.dtype == np.int32 and lens.tolist() == [len(r) for r in ref]
        assert ids.tolist() == [i for r in ref for i in r]
        assert tok.encode_documents(texts) == ref


def test_index_reader_and_writer_round_trip_megatron_core(tmp_path, tokenizer):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from hebatron_nemo.data.indexed import optimal_dtype, read_index, token_dtype
    from hebatron_nemo.errors import DataError

    for v in (100, 65499, 65500, 131072):
        assert token_dtype(v) == np.dtype(optimal_dtype(v))
    prefix = reference_pair(tokenizer, [d["text"] for d in sample_docs()[:30]], tmp_path / "ref")
    dtype, lengths, bounds = read_index(str(prefix))
    ds = IndexedDataset(str(prefix))
    assert dtype == ds.index.dtype and lengths.tolist() == ds.sequence_lengths.tolist()
    assert bounds.tolist() == ds.document_indices.tolist()
    (tmp_path / "bad.idx").write_bytes(b"MMIDIDX\x00")
    with pytest.raises(DataError, match="bad.idx.*header"):
        read_index(str(tmp_path / "bad"))


def test_parquet_text_reader_gives_datatrove_documents(tmp_path):
    """The column reader yields what datatrove's ParquetReader yields for text, id, split and file_path."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datatrove.pipeline.readers import ParquetReader

    from hebatron_nemo.data.tokenize_stage import ParquetTextReader

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": ["a b", "", "שלום", None, "c"], "id": ["x", "y", None, "w", "v"],
                             "split": ["train", "valid", "test", "train", None], "other": [1, 2, 3, 4, 5]}),
                   tmp_path / "in" / "f.parquet")
    pq.write_table(pa.table({"text": ["only text", "more"]}), tmp_path / "in" / "g.parquet")

    def read(cls):
        return [(d.text, d.id, d.metadata.get("split"), d.metadata["file_path"])
                for d in cls(str(tmp_path / "in"), batch_size=2).run(None, 0, 1)]

    ours = read(ParquetTextReader)
    assert ours == read(ParquetReader)
    assert [o[1] for o in ours] == ["x", None, "v", "g.parquet/0", "g.parquet/1"]
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "in" / "h.parquet")
    from hebatron_nemo.errors import DataError

    with pytest.raises(DataError, match=r"h.parquet \[field 'text'\]"):
        read(ParquetTextReader)


def test_tokenize_shards_routes_a_split_column(tmp_path, tokenizer):
    from hebatron_nemo.data.tokenize_stage import tokenize_shards

    rows = [dict(d, split="valid" if i % 4 == 1 else "train") for i, d in enumerate(sample_docs())]
    files = write_parquet_shards(tmp_path / "in", rows, 2)
    out = tokenize_shards(files, "text", str(tmp_path / "m"), str(tokenizer), 2, str(tmp_path / "logs"))
    assert sorted(out) == ["train", "valid"] and out["valid"]["prefix"] == str(tmp_path / "m.valid")
    for split in ("train", "valid"):
        ref = reference_pair(tokenizer, [r["text"] for r in rows if r["split"] == split], tmp_path / f"ref-{split}")
        assert pair_sha(out[split]["prefix"]) == pair_sha(ref)
