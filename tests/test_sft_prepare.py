"""The SFT registry preparation (hebatron_nemo/sft/prepare.py): a mixture from a `messages` JSONL
(multi-turn, system prompts, reasoning), an `instruction` Parquet and a `pairs` JSONL, checked against
transformers' apply_chat_template with the Nemotron-3 template (tokens and assistant masks), the
per-source counts, dedup and decontamination counts, file:line errors for each malformed case, the
seeded mixture, and the folder written aside then renamed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from corpus import ENGLISH, HEBREW, write_jsonl

from hebatron_nemo.config import RunConfig
from hebatron_nemo.data.tokenizer import LocalTokenizer, train_byte_level_bpe
from hebatron_nemo.errors import ConfigError, DataError
from hebatron_nemo.sft.prepare import TRAIN_FILE, VALID_FILE, dry_run, iter_prepared, open_prepared, prepare_sft
from hebatron_nemo.sft.template import CHAT_TEMPLATE, tokenize_conversation

EVAL_SENTENCE = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
SYSTEM = "You are a helpful bilingual assistant."


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "bpe"
    texts = HEBREW * 4 + ENGLISH * 4 + [EVAL_SENTENCE, SYSTEM, "user\n system\n assistant\n"] * 4
    train_byte_level_bpe(texts, str(out), vocab_size=700, min_frequency=1, fingerprint={"test": "sftprep"})
    return out


def _messages_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        he, en = HEBREW[i % len(HEBREW)], ENGLISH[i % len(ENGLISH)]
        msgs = []
        if i % 3 == 0:
            msgs.append({"role": "system", "content": SYSTEM})
        msgs += [{"role": "user", "content": f"שאלה {i}: {he}"},
                 {"role": "assistant", "content": f"תשובה {i}: {en}",
                  **({"reasoning_content": f"reasoning {i}: {he}"} if i % 2 == 0 else {})}]
        if i % 4 == 1:  # multi-turn
            msgs += [{"role": "user", "content": f"ועוד {i}"}, {"role": "assistant", "content": f"more {i}"}]
        rows.append({"id": f"m{i}", "messages": msgs})
    return rows


def _write_sources(root: Path, n_msg: int = 60, n_ins: int = 50, n_pairs: int = 40) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _messages_rows(n_msg)
    dup = json.loads(json.dumps(rows[5]))
    dup["id"] = "dup-exact"
    # the same conversation with niqqud and doubled spaces: a duplicate once normalized
    near = json.loads(json.dumps(rows[7]))
    near["id"] = "dup-normalized"
    near["messages"][-1]["content"] = near["messages"][-1]["content"].replace(" ", "  ")
    near["messages"][0]["content"] = near["messages"][0]["content"].replace("ש", "שׁ", 1)
    contaminated = {"id": "contaminated", "messages": [{"role": "user", "content": "quote something"},
                                                       {"role": "assistant", "content": EVAL_SENTENCE}]}
    too_long = {"id": "long", "messages": [{"role": "user", "content": " ".join(ENGLISH * 20)},
                                           {"role": "assistant", "content": "ok"}]}
    write_jsonl(root / "chat.jsonl", rows + [dup, near, contaminated, too_long])
    table = pa.table({
        "question": [f"הוראה {i}: {HEBREW[(i + 3) % len(HEBREW)]}" for i in range(n_ins)],
        "answer": [f"answer {i}: {ENGLISH[(i + 2) % len(ENGLISH)]}" for i in range(n_ins)],
        "sys": [SYSTEM if i % 2 else None for i in range(n_ins)],
        "why": [f"because {i}" if i % 5 == 0 else None for i in range(n_ins)],
    })
    pq.write_table(table, root / "instructions.parquet", row_group_size=16)
    pairs = [{"id": f"p{i}", "he": HEBREW[i % len(HEBREW)] + f" {i}", "en": ENGLISH[(i + 1) % len(ENGLISH)] + f" {i}"}
             for i in range(n_pairs)]
    write_jsonl(root / "pairs.jsonl", pairs)
    write_jsonl(root / "eval.jsonl", [{"question": EVAL_SENTENCE, "answer": "x"}])
    anchor = [{"id": f"a{i}", "messages": [{"role": "user", "content": f"Repeat sentence {i}."},
                                           {"role": "assistant", "content": ENGLISH[i % len(ENGLISH)]}]}
              for i in range(30)]
    write_jsonl(root / "anchor.jsonl", anchor + [{"id": "cross", "messages": rows[0]["messages"]}])
    return {"chat": n_msg, "ins": n_ins, "pairs": n_pairs}


def _cfg(tmp: Path, tok_dir: Path, **sd) -> "OmegaConf":
    cfg = OmegaConf.structured(RunConfig)
    cfg.tokenizer.path, cfg.tokenizer.name = str(tok_dir), "bpe"
    conf = {
        "name": "test", "raw_dir": str(tmp / "raw"), "output_dir": str(tmp / "out" / "prepared"), "total": 200,
        "seed": 7, "max_length": 200, "valid_fraction": 0.05, "max_valid": 3,
        "decontamination": {"enabled": True, "ngram": 8, "min_overlap": 1, "eval_tasks": [],
                            "eval_files": [{"path": "eval.jsonl", "format": "jsonl", "fields": ["question"]}]},
        "sources": {
            "chat": {"kind": "messages", "path": "chat.jsonl", "id_field": "id", "weight": 0.5,
                     "normalize": {"strip_niqqud": True}},
            "ins": {"kind": "instruction", "format": "parquet", "path": "instructions.parquet", "weight": 0.25,
                    "prompt_field": "question", "response_field": "answer", "system_field": "sys",
                    "reasoning_field": "why"},
            "pairs": {"kind": "pairs", "path": "pairs.jsonl", "id_field": "id", "language": "he-en", "role": "target",
                      "samples": 20, "system_fraction": 0.5},
            "anchor": {"kind": "messages", "path": "anchor.jsonl", "id_field": "id", "role": "anchor", "language": "en",
                       "weight": 0.25},
        },
    }
    conf.update(sd)
    cfg.sft_data = OmegaConf.merge(cfg.sft_data, conf)
    return cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tok_dir):
    tmp = tmp_path_factory.mktemp("prep")
    _write_sources(tmp / "raw")
    cfg = _cfg(tmp, tok_dir, allow_repeat=True)
    manifest = prepare_sft(cfg, log=lambda *a: None)
    return tmp, cfg, manifest


def test_rendered_tokens_and_masks_equal_transformers_apply_chat_template(prepared, tok_dir):
    """Every prepared conversation, rendered by transformers' apply_chat_template with the Nemotron-3
    template, has exactly our ids and assistant mask; the manifest's token counts are those."""
    from transformers import PreTrainedTokenizerFast

    _, cfg, manifest = prepared
    hf = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    hf.chat_template = CHAT_TEMPLATE
    tok = LocalTokenizer(str(tok_dir))
    folder = Path(cfg.sft_data.output_dir)
    tokens = loss = 0
    seen = {"system": 0, "reasoning": 0, "multi": 0}
    for rec in iter_prepared(folder / TRAIN_FILE):
        out = hf.apply_chat_template(rec["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ours = tokenize_conversation(rec["messages"], tok, cfg.sft_data.max_length)
        assert list(out["input_ids"]) == ours["input_ids"], rec["id"]
        assert list(out["assistant_masks"]) == ours["loss_mask"], rec["id"]
        tokens += len(ours["input_ids"])
        loss += sum(ours["loss_mask"])
        seen["system"] += rec["messages"][0]["role"] == "system"
        seen["reasoning"] += any(m.get("reasoning_content") for m in rec["messages"])
        seen["multi"] += sum(m["role"] == "assistant" for m in rec["messages"]) > 1
    assert tokens == manifest["tokens"] and loss == manifest["loss_tokens"]
    assert min(seen.values()) > 0, seen


def test_per_source_counts_dedup_and_decontamination(prepared):
    _, cfg, m = prepared
    s = m["sources"]
    # targets: pairs 20 fixed, the remaining 180 by weight 0.5 / 0.25 / 0.25
    assert {k: v["target"] for k, v in s.items()} == {"chat": 90, "ins": 45, "pairs": 20, "anchor": 45}
    assert {k: v["samples"] for k, v in s.items()} == {"chat": 90, "ins": 45, "pairs": 20, "anchor": 45}
    assert m["samples"] == 200 and m["roles"]["anchor"]["samples"] == 45 and m["roles"]["target"]["samples"] == 155
    assert s["chat"]["read"] == 64 and s["chat"]["dropped"] == {"duplicate": 2, "contaminated": 1, "too_long": 1}
    # dedup is across sources: the anchor file repeats one chat conversation
    assert s["anchor"]["read"] == 31 and s["anchor"]["dropped"]["duplicate"] == 1
    assert s["pairs"]["read"] == 80  # both directions of 40 pairs
    assert m["dropped"]["contaminated"] >= 1 and m["dropped"]["duplicate"] >= 2
    assert s["chat"]["passes"] == 2  # 90 asked of fewer than 90 kept: repeated (allow_repeat)
    lines = [json.loads(x) for x in (Path(cfg.sft_data.output_dir) / TRAIN_FILE).read_text().splitlines()]
    assert [r["source"] for r in lines].count("ins") == 45
    assert all(EVAL_SENTENCE not in json.dumps(r, ensure_ascii=False) for r in lines)
    assert all(r["id"] not in ("dup-exact", "dup-normalized") for r in lines)
    assert not any("\u05c1" in json.dumps(r, ensure_ascii=False) for r in lines if r["source"] == "chat")
    valid = (Path(cfg.sft_data.output_dir) / VALID_FILE).read_text().splitlines()
    assert len(valid) == m["validation_samples"] and 0 < len(valid) <= 3 * 4
    assert not {json.loads(v)["id"] for v in valid} & {r["id"] for r in lines}
    # validation interleaves the sources: an eval of its first rows sees each of them
    first = [json.loads(v)["source"] for v in valid[:len(m["sources"])]]
    assert len(set(first)) == len([k for k, v in s.items() if v["validation"]])


def test_keep_fraction_reads_a_hashed_share_of_the_rows(prepared, tmp_path, tok_dir):
    tmp, _, _ = prepared
    cfg = _cfg(tmp, tok_dir, allow_repeat=True, output_dir=str(tmp_path / "kept"))
    cfg.sft_data.sources.pairs.keep_fraction = 0.5
    m = prepare_sft(cfg, log=lambda *a: None)
    assert 2 * 10 <= m["sources"]["pairs"]["read"] <= 2 * 30  # about half of 40 pairs, both directions each
    cfg.sft_data.output_dir = str(tmp_path / "kept2")
    again = prepare_sft(cfg, log=lambda *a: None)  # the same rows: the choice is a hash of the row id
    assert again["sources"]["pairs"]["read"] == m["sources"]["pairs"]["read"]
    assert (tmp_path / "kept" / TRAIN_FILE).read_bytes() == (tmp_path / "kept2" / TRAIN_FILE).read_bytes()


def test_rerun_keeps_matching_output_and_same_seed_gives_same_file(prepared, tmp_path, tok_dir):
    tmp, cfg, m = prepared
    folder = Path(cfg.sft_data.output_dir)
    before = (folder / TRAIN_FILE).read_bytes()
    logs = []
    assert prepare_sft(cfg, log=logs.append)["fingerprint"] == m["fingerprint"] and "kept" in logs[-1]
    other = _cfg(tmp, tok_dir, allow_repeat=True, output_dir=str(tmp_path / "again"))
    prepare_sft(other, log=lambda *a: None)
    assert (tmp_path / "again" / TRAIN_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp folder left
    reseeded = _cfg(tmp, tok_dir, allow_repeat=True, output_dir=str(tmp_path / "seed8"), seed=8)
    prepare_sft(reseeded, log=lambda *a: None)
    assert (tmp_path / "seed8" / TRAIN_FILE).read_bytes() != before


def test_shortage_is_an_error_unless_repeats_are_allowed(prepared, tmp_path, tok_dir):
    tmp, _, _ = prepared
    cfg = _cfg(tmp, tok_dir, output_dir=str(tmp_path / "short"))
    with pytest.raises(ConfigError, match=r"sft_data.sources.chat: asked for 90 .*allow_repeat"):
        prepare_sft(cfg, log=lambda *a: None)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_open_prepared_refuses_missing_or_mismatched(prepared, tmp_path, tok_dir):
    tmp, cfg, _ = prepared
    missing = _cfg(tmp, tok_dir, output_dir=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="no prepared SFT dataset .* recipes/prepare_sft.py sft_data=test"):
        open_prepared(missing)
    other = _cfg(tmp, tok_dir, max_length=100)
    with pytest.raises(ConfigError, match="max_length=200"):
        open_prepared(other)


def test_dry_run_prints_the_plan_and_names_missing_paths(prepared, tok_dir, tmp_path):
    tmp, cfg, _ = prepared
    lines = dry_run(cfg, log=lambda *a: None)
    assert "4 sources -> 200 training conversations" in lines[0] and len(lines) == 5
    bad = _cfg(tmp, tok_dir)
    bad.sft_data.sources.pairs.path = "nowhere.jsonl"
    with pytest.raises(ConfigError, match="sft_data.sources.pairs.path"):
        dry_run(bad, log=lambda *a: None)
    bad.sft_data.sources.pairs.weight = 1.0
    with pytest.raises(ConfigError, match="exactly one of weight and samples"):
        dry_run(bad, log=lambda *a: None)


GOOD = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize("kind, row, field, message", [
    ("messages", {"messages": [{"role": "robot", "content": "x"}, GOOD[1]]}, "messages[0].role", "unknown role"),
    ("messages", {"messages": [GOOD[0], {"role": "assistant", "content": "  "}]}, "messages[1].content",
     "empty assistant turn"),
    ("messages", {"messages": [GOOD[0]]}, "messages[0]", "missing assistant turn"),
    ("messages", {"messages": [GOOD[0], GOOD[0], GOOD[1]]}, "messages[1].role", "alternate"),
    ("messages", {"messages": [GOOD[1], GOOD[0]]}, "messages[0].role", "alternate"),
    ("messages", {"messages": [GOOD[0], {"role": "assistant", "content": 5}]}, "messages[1].content", "string"),
    ("messages", {"messages": "hi"}, "messages", "list of messages"),
    ("messages", {"text": "hi"}, "messages", "missing column"),
    ("messages", {"messages": [GOOD[0], GOOD[1], {"role": "system", "content": "late"}]}, "messages[2].role",
     "only come first"),
    ("instruction", {"prompt": "p"}, "response", "missing column"),
    ("instruction", {"prompt": "p", "response": ""}, "response", "empty response"),
    ("instruction", {"prompt": 3, "response": "r"}, "prompt", "string"),
    ("pairs", {"he": ["x"], "en": "y"}, "he", "string"),
    ("pairs", {"he": "שלום", "en": " "}, "en", "empty English"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, tok_dir, kind, row, field, message):
    raw = tmp_path / "raw"
    good = {"messages": {"messages": GOOD}, "instruction": {"prompt": "p", "response": "r"},
            "pairs": {"he": "שלום", "en": "hi"}}[kind]
    f = raw / "src.jsonl"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(good) + "\n\n" + json.dumps(good) + "\n" + json.dumps(row, ensure_ascii=False) + "\n")
    cfg = _cfg(tmp_path, tok_dir, total=None, decontamination={"enabled": False},
               sources={"src": {"kind": kind, "path": "src.jsonl", "samples": 1}})
    with pytest.raises(DataError) as err:
        prepare_sft(cfg, log=lambda *a: None)
    assert (err.value.path, err.value.line, err.value.field) == (str(f), 4, field), str(err.value)
    assert message in str(err.value) and f"{f}:4" in str(err.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_parquet_row_errors_name_the_row(tmp_path, tok_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "response": ["x", None, "z"]}), raw / "i.parquet",
                   row_group_size=1)
    cfg = _cfg(tmp_path, tok_dir, total=None, decontamination={"enabled": False},
               sources={"src": {"kind": "instruction", "format": "parquet", "path": "i.parquet", "samples": 1}})
    with pytest.raises(DataError) as err:
        prepare_sft(cfg, log=lambda *a: None)
    assert (err.value.path, err.value.line, err.value.field) == (str(raw / "i.parquet"), 2, "response")


def test_memory_grows_by_a_few_numpy_bytes_per_conversation(tmp_path, tok_dir, monkeypatch):
    """Peak traced memory (tracemalloc: Python objects and numpy buffers) of prepare_sft at 1,000 and
    4,000 conversations: the growth per extra conversation is the few fixed-size records the module
    docstring lists (~32 bytes), not a Python object per conversation (a set of digests: ~90 bytes;
    a tokenizer memo that keeps every new word: hundreds). The fixed buffers (the dedup set of
    newest keys, the tokenizer memo's cap, the reader's read size) are set small here so that a few thousand conversations
    are well past them; each conversation has a number of its own, a word the memo has not seen."""
    import tracemalloc

    from hebatron_nemo.data import readers
    from hebatron_nemo.sft import prepare as prep

    monkeypatch.setattr(readers, "_CHUNK", 1 << 14)  # the JSONL reader's read size (1 MiB: the whole file here)
    monkeypatch.setattr(prep, "DEDUP_BUFFER", 256, raising=False)
    monkeypatch.setattr(prep, "MEMO_CHUNKS", 512, raising=False)
    peaks = {}
    for n in (1000, 4000):
        raw = tmp_path / f"raw{n}"
        rows = [{"messages": [{"role": "user", "content": f"שאלה {i}: {HEBREW[i % len(HEBREW)]}"},
                              {"role": "assistant", "content": f"answer {i * 7 + 3}: {ENGLISH[i % len(ENGLISH)]}"}]}
                for i in range(n)]
        write_jsonl(raw / "chat.jsonl", rows + rows[:n // 50])  # 2% exact duplicates
        cfg = _cfg(tmp_path, tok_dir, raw_dir=str(raw), output_dir=str(tmp_path / f"out{n}"), total=n,
                   valid_fraction=0.01, max_valid=5, allow_repeat=True, decontamination={"enabled": False},
                   sources={"chat": {"kind": "messages", "path": "chat.jsonl", "weight": 1.0}})
        tok = LocalTokenizer(str(tok_dir))
        tracemalloc.start()
        try:
            m = prepare_sft(cfg, tokenizer=tok, log=lambda *a: None)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert m["samples"] == n and m["dropped"]["duplicate"] == n // 50
    per = (peaks[4000] - peaks[1000]) / 3000
    assert per < 64, f"peak traced memory grows {per:.0f} bytes per conversation ({peaks})"


def test_keyset_answers_like_a_set_across_merges():
    """The dedup structure (sorted uint64 array + a small set of the newest keys) says "new" exactly
    when a Python set would, across many merges, for keys spanning the whole 64-bit range."""
    import random

    from hebatron_nemo.sft.prepare import KeySet

    rng = random.Random(5)
    pool = [rng.getrandbits(64) for _ in range(3000)] + [0, 2**64 - 1, 2**63]
    keys, ref = KeySet(buffer=64), set()
    for _ in range(12000):
        k = rng.choice(pool)
        assert keys.add(k) == (k not in ref), k
        ref.add(k)
    assert len(keys) == len(ref) and keys.nbytes() >= 8 * (len(ref) - 64)
