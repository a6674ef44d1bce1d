"""The prepare stage end to end on small corpora: outputs, read-back through megatron-core, tasks,
idempotence and resumption, filters and their report, and interrupted runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from corpus import ENGLISH, HEBREW, make_docs, prepare_config, source, write_jsonl

from hebatron_nemo.utils.hashing import files_sha256
from hebatron_nemo.data.prepare import SPLITS, prepare
from hebatron_nemo.data.tokenizer import LocalTokenizer
from hebatron_nemo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _quiet(*_a, **_k):
    pass


@pytest.fixture
def corpus(tmp_path):
    raw = tmp_path / "raw"
    write_jsonl(raw / "he.jsonl", make_docs(HEBREW, 120, seed=1, prefix="he"))
    write_jsonl(raw / "en.jsonl", make_docs(ENGLISH, 80, seed=2, prefix="en"))
    sources = {"he_news": source("he.jsonl"), "en_anchor": source("en.jsonl", language="en", role="anchor")}
    return tmp_path, sources


def _split(out_dir: Path, m: dict, split: str) -> str:
    """The path of a split from its manifest entry (recorded relative to the source's folder)."""
    from hebatron_nemo.data.registry import split_prefix

    return split_prefix(Path(out_dir) / m["source"], m["splits"][split]["prefix"])


def _read_all(prefix: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def test_outputs_read_back_with_megatron_indexed_dataset(corpus):
    tmp, sources = corpus
    cfg = prepare_config(tmp, sources, **{"data.near_dedup.enabled": False, "data.exact_dedup.enabled": False})
    manifests = prepare(cfg, log=_quiet)
    tok = LocalTokenizer(str(tmp / "tok"))
    signals_rows = []
    for name in sources:
        m = manifests[name]
        assert m["kind"] == "source"
        assert sum(m["splits"][s]["documents"] for s in SPLITS) == m["report"]["kept_docs"]
        import pyarrow.parquet as pq

        raw = {json.loads(line)["id"]: json.loads(line)["text"]
               for line in open(tmp / "raw" / sources[name]["path"], encoding="utf-8")}
        for split in SPLITS:
            prefix = _split(tmp / "out", m, split)
            docs = _read_all(prefix)
            table = pq.read_table(prefix + ".signals.parquet").to_pydict()
            assert len(docs) == len(table["doc_id"]) == m["splits"][split]["documents"]
            # the tokens of document k are the tokenizer's ids of that document's (normalized) text + EOD
            expected = tok.encode_documents([" ".join(raw[d].split()) for d in table["doc_id"]])
            assert docs == expected
            assert all(d[-1] == tok.eod for d in docs)
            assert sum(map(len, docs)) == m["splits"][split]["tokens"]
            assert table["ordinal"] == sorted(table["ordinal"])  # original corpus order is kept
            signals_rows += list(zip(table["n_tokens"], (len(d) - 1 for d in docs)))
    assert all(a == b for a, b in signals_rows)
    assert manifests["he_news"]["splits"]["train"]["tokens_per_word"] > 1.0
    assert manifests["he_news"]["dtype"] == "uint16"


def test_gpt_dataset_reads_identical_token_ids(corpus):
    """megatron-core's GPTDataset (through its builder) sees exactly the tokens we wrote."""
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    tmp, sources = corpus
    manifests = prepare(prepare_config(tmp, sources), log=_quiet)
    prefix = _split(tmp / "out", manifests["he_news"], "train")
    stream = np.concatenate([np.array(d) for d in _read_all(prefix)])
    tok = LocalTokenizer(str(tmp / "tok"))

    from hebatron_nemo.data.tokenizer import MegatronTokenizerView

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)
    seq = 32
    config = GPTDatasetConfig(random_seed=1, sequence_length=seq, blend=([prefix], None), split="100,0,0",
                              path_to_cache=str(tmp / "cache"), tokenizer=MegatronTokenizerView.from_tokenizer(tok), reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False, mid_level_dataset_surplus=0.005)
    n = (len(stream) - 1) // seq
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [n, None, None], lambda: True, config).build()
    # With one epoch, the samples cover the (shuffled) documents; every sample is a contiguous window
    # of the concatenation of documents in the dataset's document order.
    doc_order = train.document_index
    docs = _read_all(prefix)
    concat = np.concatenate([np.array(docs[d]) for d in doc_order])
    for i in range(min(n, 20)):
        j = train.shuffle_index[i]
        doc_idx_first, offset_first = train.sample_index[j]
        start = sum(len(docs[d]) for d in doc_order[:doc_idx_first]) + offset_first
        sample = train[i]
        np.testing.assert_array_equal(sample["tokens"].numpy(), concat[start:start + seq])


def _docs_by_id(out_dir: Path, m: dict) -> dict[str, list[int]]:
    """doc id -> token ids, over every split of a prepared source (the signals table is in .bin order)."""
    import pyarrow.parquet as pq

    docs = {}
    for split in SPLITS:
        if not m["splits"][split]["prefix"]:
            continue
        prefix = _split(out_dir, m, split)
        ids = pq.read_table(prefix + ".signals.parquet").column("doc_id").to_pylist()
        docs.update({f"{split}/{i}": t for i, t in zip(ids, _read_all(prefix))})
    return docs


@pytest.mark.slow  # four prepare runs (~12 s)
def test_more_tasks_give_the_same_documents(corpus):
    """tasks=3 splits each source into three tasks (ordinal mod 3): without deduplication, the same
    documents, token ids, splits and report as one task (only the order, task by task, differs); with
    it, as many documents kept (which copy of a duplicate survives may differ)."""
    tmp, sources = corpus
    no_dedup = {"data.raw_dir": str(tmp / "raw"), "data.near_dedup.enabled": False, "data.exact_dedup.enabled": False}
    one = prepare(prepare_config(tmp / "one", sources, **no_dedup), log=_quiet)
    three = prepare(prepare_config(tmp / "three", sources, tmp / "one" / "tok", **no_dedup, tasks=3), log=_quiet)
    for name in sources:
        assert _docs_by_id(tmp / "one" / "out", one[name]) == _docs_by_id(tmp / "three" / "out", three[name])
        assert one[name]["report"] == three[name]["report"]
        assert three[name]["tasks"] == 3
    raw = {"data.raw_dir": str(tmp / "raw")}
    one = prepare(prepare_config(tmp / "one_d", sources, tmp / "one" / "tok", **raw), log=_quiet)
    three = prepare(prepare_config(tmp / "three_d", sources, tmp / "one" / "tok", **raw, tasks=3), log=_quiet)
    for name in sources:
        assert one[name]["report"]["kept_docs"] == three[name]["report"]["kept_docs"]


def test_an_interrupted_graph_reruns_only_unfinished_tasks(corpus):
    """The graph's tasks are tracked by datatrove: after a task of the tokenize stage is lost, a rerun
    runs that task and the merge again, nothing else, and gives the same bytes."""
    tmp, sources = corpus
    cfg = prepare_config(tmp, sources, **{"tasks": 2, "keep_work": True})
    first = prepare(cfg, log=_quiet)
    before = {n: {s: files_sha256(_split(tmp / "out", m, s)) for s in SPLITS if m["splits"][s]["prefix"]}
              for n, m in first.items()}
    work = next((tmp / "out" / ".prepare").iterdir())
    (work / "logs" / "tokenize" / "completions" / "00001").unlink()
    for f in (work / "tokens").rglob("00001.*"):
        f.unlink()
    for n in sources:
        (tmp / "out" / n / "manifest.json").unlink()
    lines = []
    again = prepare(cfg, log=lines.append)
    ran = {ln.split()[0]: ln for ln in lines if "task(s):" in ln}
    assert "done already" in ran["clean"] and "done already" in ran["cluster"], lines
    assert "1 ran" in ran["tokenize"] and "2 ran" in ran["merge"], lines
    after = {n: {s: files_sha256(_split(tmp / "out", m, s)) for s in SPLITS if m["splits"][s]["prefix"]}
             for n, m in again.items()}
    assert after == before


def test_work_folder_is_removed_after_success_unless_kept(corpus):
    tmp, sources = corpus
    prepare(prepare_config(tmp, sources), log=_quiet)
    assert not any((tmp / "out" / ".prepare").iterdir())


def test_rerun_is_idempotent_and_detects_changed_input(corpus):
    tmp, sources = corpus
    cfg = prepare_config(tmp, sources)
    first = prepare(cfg, log=_quiet)
    bin_path = Path(_split(tmp / "out", first["he_news"], "train") + ".bin")
    mtime = bin_path.stat().st_mtime_ns
    lines = []
    second = prepare(cfg, log=lines.append)
    assert second["he_news"]["fingerprint"] == first["he_news"]["fingerprint"]
    assert bin_path.stat().st_mtime_ns == mtime
    assert any("up to date" in line for line in lines)
    # editing the corpus changes the fingerprint and redoes the work
    with open(tmp / "raw" / "he.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "new", "text": "מסמך חדש לגמרי שנוסף לקורפוס אחרי ההכנה הראשונה שלו."}, ensure_ascii=False) + "\n")
    third = prepare(cfg, log=_quiet)
    assert third["he_news"]["fingerprint"] != first["he_news"]["fingerprint"]
    assert third["he_news"]["report"]["seen_docs"] == first["he_news"]["report"]["seen_docs"] + 1


def test_filters_dedup_decontamination_and_their_report(tmp_path):
    raw = tmp_path / "raw"
    base = make_docs(HEBREW, 60, seed=3, min_sent=3, max_sent=5, prefix="he")
    rows = list(base)
    rows.append({"id": "exact-dup", "text": base[5]["text"]})  # exact duplicate (after whitespace normalization)
    rows.append({"id": "ws-dup", "text": "  " + base[6]["text"].replace(" ", "   ") + "\u200f"})
    near = base[7]["text"].split()
    rows.append({"id": "near-dup", "text": " ".join(near[:-1] + ["שונה"])})  # one word changed
    rows.append({"id": "short", "text": "קצר מדי"})
    rows.append({"id": "english", "text": "This sentence is English and should fail the Hebrew script filter entirely."})
    contaminated = "המשפט הזה מופיע בסט ההערכה שלנו ולכן אסור לו להופיע באימון בכלל"
    rows.append({"id": "contaminated", "text": base[9]["text"] + " " + contaminated})
    write_jsonl(raw / "he.jsonl", rows)
    write_jsonl(raw / "en.jsonl", [{"id": "x-src", "text": base[10]["text"]}]
                + make_docs(ENGLISH, 30, seed=4, prefix="en"))
    write_jsonl(raw / "eval.jsonl", [{"id": "e1", "question": contaminated}])
    sources = {"he_news": source("he.jsonl"), "en_anchor": source("en.jsonl", language="en", role="anchor")}
    cfg = prepare_config(tmp_path, sources, **{
        "data.decontamination.eval_files": [{"path": "eval.jsonl", "fields": ["question"]}],
        "data.decontamination.ngram": 6})
    m = prepare(cfg, log=_quiet)
    he = m["he_news"]["report"]["removed_docs"]
    assert he["min_chars"] + he["min_words"] == 1
    assert he["min_script_ratio"] == 1
    assert he["decontaminated"] == 1
    assert he["exact_dup_in_source"] == 2
    assert he["near_dup"] >= 1
    # the English source repeats a Hebrew document: it is dropped there (the later task of a MinHash pair)
    assert m["en_anchor"]["report"]["removed_docs"]["near_dup"] == 1
    assert m["en_anchor"]["dedup_against"] == ["he_news", "en_anchor"]
    import pyarrow.parquet as pq

    kept_ids = set()
    for split in SPLITS:
        kept_ids |= set(pq.read_table(_split(tmp_path / "out", m["he_news"], split) + ".signals.parquet")
                        .column("doc_id").to_pylist())
    assert not kept_ids & {"exact-dup", "ws-dup", "short", "english", "contaminated", "near-dup"}
    assert {"he-5", "he-6", "he-7"} <= kept_ids  # the first occurrence wins


def test_holdout_is_stable_and_disjoint(corpus):
    tmp, sources = corpus
    sources["he_news"]["holdout"] = {"valid": 0.1, "test": 0.1}
    m = prepare(prepare_config(tmp, sources), log=_quiet)["he_news"]
    import pyarrow.parquet as pq

    ids = {s: set(pq.read_table(_split(tmp / "out", m, s) + ".signals.parquet").column("doc_id").to_pylist())
           for s in SPLITS}
    assert ids["valid"] and ids["test"]
    assert not (ids["train"] & ids["valid"]) and not (ids["train"] & ids["test"]) and not (ids["valid"] & ids["test"])
    from hebatron_nemo.data.prepare import holdout_split
    from omegaconf import OmegaConf
    from hebatron_nemo.config import HoldoutConfig

    h = OmegaConf.structured(HoldoutConfig(valid=0.1, test=0.1))
    assert all(holdout_split(d, h) == "valid" for d in ids["valid"])


def test_manifest_token_counts_match_the_bin_with_bos(corpus):
    """With `tokenizer.add_bos` each document carries BOS and EOD: the manifest's token counts (and its
    length histogram) are what the `.bin` holds, not the documents' text tokens."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tmp, sources = corpus
    prepare(prepare_config(tmp, {"he_news": sources["he_news"]}), log=_quiet)  # trains the tokenizer
    m = prepare(prepare_config(tmp, {"he_news": sources["he_news"]}, tmp / "tok",
                               **{"tokenizer.add_bos": True, "data.output_dir": str(tmp / "bos")}), log=_quiet)["he_news"]
    for split in SPLITS:
        if not m["splits"][split]["prefix"]:
            continue
        ds = IndexedDataset(_split(tmp / "bos", m, split))
        assert m["splits"][split]["tokens"] == int(ds.sequence_lengths.sum())
        assert sum(m["splits"][split]["length_histogram"]["tokens"]) == int(ds.sequence_lengths.sum())
        assert ds[0][0] == 1 and ds[0][-1] == 2  # <s> ... </s>


def test_big_vocabulary_writes_int32(tmp_path):
    """Nemotron's 131,072-token vocabulary needs int32 token ids in the .bin (megatron-core's rule)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for s in HEBREW for w in s.split()})
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words)})
    for i in range(len(vocab), 70_000):
        vocab[f"filler{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    write_jsonl(tmp_path / "raw" / "he.jsonl", make_docs(HEBREW, 20, seed=5, prefix="he"))
    m = prepare(prepare_config(tmp_path, {"he": source("he.jsonl")}, tmp_path / "tok"), log=_quiet)["he"]
    assert m["dtype"] == "int32"
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(_split(tmp_path / "out", m, "train"))
    assert ds.index.dtype == np.int32
    assert ds[0][-1] == 2 and max(ds[0][:-1]) < 4 + len(words)


def test_unknown_source_and_missing_path_fail_before_work(corpus):
    tmp, sources = corpus
    with pytest.raises(ConfigError, match=r"unknown source 'he_nwes' in sources.*he_news"):
        prepare(prepare_config(tmp, sources, **{"sources": ["he_nwes"]}), log=_quiet)
    sources["he_news"]["path"] = "missing.jsonl"
    with pytest.raises(ConfigError, match=r"data.sources.he_news.path: .*missing.jsonl"):
        prepare(prepare_config(tmp, sources), log=_quiet)
    assert not (tmp / "tok").exists()  # nothing was trained or written


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from corpus import prepare_config, source
    from hebatron_nemo.data import prepare as P
    from hebatron_nemo.data.tokenizer import LocalTokenizer
    calls = 0
    original = LocalTokenizer.encode_flat
    def dying(self, texts):
        global calls
        calls += 1
        if calls == {die_at}:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, texts)
    LocalTokenizer.encode_flat = dying
    cfg = prepare_config(__import__("pathlib").Path({tmp!r}), {{"he_news": source("he.jsonl")}}, batch_docs=16)
    P.prepare(cfg, log=lambda *a: None)
""")


@pytest.mark.slow  # a prepare subprocess each (~8 s)
@pytest.mark.parametrize("die_at", [3, 8])
def test_killed_run_leaves_no_complete_looking_output(corpus, die_at):
    """SIGKILL in the middle of tokenizing (3) or of the last batch before the merge (8): no `.bin/.idx`
    pair and no manifest under a final name; a rerun completes."""
    tmp, sources = corpus
    script = KILL_SCRIPT.format(tmp=str(tmp), die_at=die_at)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == -9, proc.stderr[-2000:]
    out = tmp / "out" / "he_news"
    finals = [p for p in out.rglob("*") if p.suffix in (".bin", ".idx") and ".tmp-" not in p.name]
    pairs = {p.with_suffix("") for p in finals if p.suffix == ".idx" and p.with_suffix(".bin").exists()}
    assert not (out / "manifest.json").exists()
    assert not pairs, pairs
    m = prepare(prepare_config(tmp, {"he_news": sources["he_news"]}, batch_docs=16), log=_quiet)["he_news"]
    assert m["report"]["seen_docs"] == 120


def test_removed_near_dedup_keys_say_what_replaced_them():
    from hebatron_nemo.config import renamed_key

    assert "was removed: near-dedup runs on datatrove" in renamed_key("data.near_dedup.max_docs")
    assert "use data.near_dedup.n_grams" in renamed_key("data.near_dedup.shingle_words")
    assert "use tasks" in renamed_key("shard")


def test_reference_model_perplexity_signal(corpus):
    """With `data.signals.reference_model`, each document gets its perplexity under that local model."""
    import pyarrow.parquet as pq
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tmp, sources = corpus
    prepare(prepare_config(tmp, {"he_news": sources["he_news"]}), log=_quiet)  # trains the tokenizer
    ref = tmp / "ref_model"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=32, n_layer=1, n_head=2, n_positions=512))
    model.save_pretrained(ref)
    PreTrainedTokenizerFast.from_pretrained(str(tmp / "tok")).save_pretrained(ref)
    m = prepare(prepare_config(tmp, {"he_news": sources["he_news"]}, tmp / "tok",
                               **{"data.signals.reference_model": str(ref), "data.output_dir": str(tmp / "out2")}),
                log=_quiet)["he_news"]
    ppl = pq.read_table(_split(tmp / "out2", m, "train") + ".signals.parquet").column("perplexity").to_numpy()
    assert np.isfinite(ppl).all() and (ppl > 1).all()
    assert 200 < np.median(ppl) < 1000  # an untrained model is near-uniform over its 400 tokens


def test_lone_surrogate_fails_located_in_prepare_and_dry_run(corpus):
    from hebatron_nemo.errors import DataError

    tmp, sources = corpus
    bad = tmp / "raw" / "he.jsonl"
    with open(bad, "a", encoding="utf-8") as f:
        f.write('{"id": "bad", "text": "' + HEBREW[0] + ' \\ud800"}\n')
    for dry in (True, False):
        with pytest.raises(DataError, match=rf"{bad}:121 \[field 'text'\]: lone UTF-16 surrogate \\ud800"):
            prepare(prepare_config(tmp, sources, dry_run=dry), log=_quiet)
    assert not (tmp / "out").exists()


def test_every_source_is_read_before_any_work(corpus):
    """A bad line in the last source fails the run before the tokenizer is trained or the first
    source is tokenized (the help promises failure before any work)."""
    from hebatron_nemo.errors import DataError

    tmp, sources = corpus
    with open(tmp / "raw" / "en.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "bad", "text": "ab\\u0000cd"}\n')
    with pytest.raises(DataError, match=r"en.jsonl:81 \[field 'text'\]: NUL character"):
        prepare(prepare_config(tmp, sources), log=_quiet)
    assert not (tmp / "tok").exists() and not (tmp / "out").exists()


def test_minhash_memory_is_bounded_on_one_huge_document(tmp_path):
    """A multi-megabyte single document: the signature is taken over blocks of shingles (datatrove's
    own step materializes shingles x hashes x 8 bytes: ~140 MB here, 0.7 GB for a million words) and
    equals datatrove's one-shot signature."""
    import random
    import tracemalloc

    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    from hebatron_nemo.data import prepare_graph as g

    g.make_steps()
    rng = random.Random(0)
    text = " ".join(rng.choice(HEBREW) for _ in range(20000))  # ~1.1M characters, ~190k shingles
    config = MinhashConfig(n_grams=5, num_buckets=9, hashes_per_bucket=10, hash_config=HashConfig(hash_fc="sha1"))
    ours = g.BoundedMinhashSignature(str(tmp_path / "a"), config=config, language=g.WhitespaceWords("xx"))
    theirs = MinhashDedupSignature(str(tmp_path / "b"), config=config, language=g.WhitespaceWords("xx"))
    shingles = ours.get_shingles(text)
    tracemalloc.start()
    try:
        sig = ours.get_signature(shingles)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sig == theirs.get_signature(shingles)
    assert len(shingles) > 150_000 and peak < 16 * 2**20, f"MinHash peak {peak / 2**20:.0f} MiB"


def test_a_prepared_folder_plans_and_trains_from_a_copy(tmp_path):
    """Data folders, manifests, plans and index caches refer to their own files relatively: a
    prepared folder copied elsewhere (the original deleted) plans and trains from the copy, and a plan
    and caches made against the original read the copy through the run's data.output_dir."""
    import shutil

    from corpus import train_config

    from hebatron_nemo.backends.local import cpt
    from hebatron_nemo.curriculum.mixture import CurriculumDataset, build_caches, ensure_caches
    from hebatron_nemo.curriculum.plan import build_plan
    from hebatron_nemo.data.registry import with_data_root

    raw = tmp_path / "raw"
    write_jsonl(raw / "he.jsonl", make_docs(HEBREW, 150, seed=1, prefix="he"))
    write_jsonl(raw / "en.jsonl", make_docs(ENGLISH, 150, seed=2, prefix="en"))
    sources = {"he_a": source("he.jsonl"), "en_x": source("en.jsonl", language="en", role="anchor")}
    orig, moved = tmp_path / "orig", tmp_path / "moved"
    prepare(prepare_config(tmp_path, sources, **{"data.output_dir": str(orig / "data")}), log=_quiet)

    segs = [{"name": "s1", "seq_length": 32, "global_batch_size": 4, "micro_batch_size": 2, "data_parallel_size": 1}]
    phases = [{"name": "p", "segment": "s1", "tokens": 640, "sources": {"he_a": 1.0}}]
    anchor = {"share": 0.25, "sources": {"en_x": 1.0}}

    def config(root):
        cfg = train_config(root, ["he_a", "en_x"], phases, segs, anchor, base_sources={"en_x": 1.0},
                           **{"base.tokens": 512, "base.global_batch_size": 4, "base.micro_batch_size": 2,
                              "eval.eval_interval": 0, "checkpoint.save_interval": 100})
        cfg.tokenizer.path = str(tmp_path / "tok")
        return cfg

    before = build_plan(config(orig), log=_quiet)
    before["caches"] = build_caches(before, str(orig / "cache"))
    shutil.copytree(orig / "data", moved / "data")
    shutil.copytree(orig / "cache", moved / "cache")
    shutil.rmtree(orig)
    for f in (moved / "data").rglob("*.json"):
        assert str(orig) not in f.read_text(encoding="utf-8"), f
    # the copy is up to date for prepare too, with the raw corpus moved as well: nothing is redone
    shutil.copytree(raw, moved / "raw")
    bins = {f: f.stat().st_mtime_ns for f in (moved / "data").rglob("*.bin")}
    said = []
    prepare(prepare_config(tmp_path, sources, **{"data.output_dir": str(moved / "data"),
                                                 "data.raw_dir": str(moved / "raw")}), log=said.append)
    assert sum("up to date" in line for line in said) == len(sources), said
    assert {f: f.stat().st_mtime_ns for f in (moved / "data").rglob("*.bin")} == bins

    # the plan made against the original reads the copy once given the run's data root, with its caches
    with_data_root(before, str(moved / "data"))
    stamps = {f: f.stat().st_mtime_ns for f in (moved / "cache").rglob("*.npy")}
    ensure_caches(before, str(moved / "cache"))
    assert stamps and {f: f.stat().st_mtime_ns for f in (moved / "cache").rglob("*.npy")} == stamps  # not rebuilt
    ds = CurriculumDataset(before, 0, str(moved / "cache"))
    assert ds[0]["tokens"].shape[0] == 32

    # a plan made from the copy means the same and trains there
    cfg = config(moved)
    state = cpt.run_cpt(cfg, log=_quiet)
    plan = json.loads((moved / "run" / "plan.json").read_text())
    assert plan["fingerprint"] == before["fingerprint"]
    assert plan["data_root"] == str(moved / "data")
    assert all(not Path(s["prefix"]).is_absolute() for s in plan["streams"])
    assert all(not Path(c["dir"]).is_absolute() for c in plan["caches"].values())
    assert state["consumed_samples"] == plan["totals"]["samples"] > 0
    assert (moved / "run" / "model" / "COMPLETE").exists()
