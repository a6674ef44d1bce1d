"""The SFT mixture written for Megatron-Bridge: chat JSONL in the mixture's order, the same
conversations the anchor share was measured on (re-tokenized they give the same ids and loss mask),
written aside and renamed."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from corpus import ENGLISH, HEBREW, make_docs, write_jsonl

from hebatron_nemo.backends.megatron_bridge.sft_data import materialize_sft_mixture
from hebatron_nemo.config import SFTRunConfig
from hebatron_nemo.data.tokenizer import LocalTokenizer, train_byte_level_bpe
from hebatron_nemo.sft.data import build_demo_sft
from hebatron_nemo.sft.template import tokenize_conversation


def test_materialized_mixture_is_the_measured_mixture(tmp_path):
    tok_dir = tmp_path / "bpe"
    train_byte_level_bpe(HEBREW * 4 + ENGLISH * 4 + ["user\n  system\n\n assistant\n\nTranslate:"] * 4, str(tok_dir),
                         vocab_size=600, min_frequency=1, fingerprint={"test": "mbsft"})
    corpus = tmp_path / "sft"
    rows = lambda n, p: [{"id": f"{p}:{i + 1}", "he": HEBREW[i % len(HEBREW)], "en": ENGLISH[i % len(ENGLISH)]}  # noqa: E731
                         for i in range(n)]
    write_jsonl(corpus / "pairs_train.jsonl", rows(30, "Train 1"))
    write_jsonl(corpus / "pairs_valid.jsonl", rows(4, "Valid 1"))
    write_jsonl(corpus / "en_kjv.jsonl", make_docs(ENGLISH, 30, seed=4, min_sent=4, max_sent=10, prefix="kjv"))
    write_jsonl(corpus / "en_jps.jsonl", make_docs(ENGLISH, 30, seed=5, min_sent=4, max_sent=10, prefix="jps"))
    cfg = OmegaConf.structured(SFTRunConfig)
    cfg.tokenizer.path, cfg.seed = str(tok_dir), 3
    cfg.sft.corpus_dir, cfg.sft.max_length, cfg.sft.anchor_share = str(corpus), 256, 0.25
    cfg.sft.max_pairs, cfg.sft.eval_conversations = None, 4
    out = tmp_path / "mb_data"
    report = materialize_sft_mixture(cfg, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mb_data")) == ["mb_data"]  # no temp left
    lines = [json.loads(x) for x in (out / "training.jsonl").read_text(encoding="utf-8").splitlines()]
    tok = LocalTokenizer(str(tok_dir))
    mix = build_demo_sft(corpus, tok, 256, 0.25, seed=3, split="train", max_pairs=None, max_anchor_documents=None)
    assert len(lines) == len(mix.examples) == report["examples"]
    for line, ex in zip(lines, mix.examples):
        t = tokenize_conversation(line["messages"], tok, 256)
        assert t["input_ids"] == ex.input_ids.tolist() and t["loss_mask"] == ex.loss_mask.tolist()
        assert any(m["role"] == "assistant" for m in line["messages"])
    assert abs(report["effective_anchor_share"] - 0.25) < 0.05
    assert json.loads((out / "mixture.json").read_text())["examples"] == len(lines)
    assert len((out / "validation.jsonl").read_text().splitlines()) == report["validation_examples"] > 0
