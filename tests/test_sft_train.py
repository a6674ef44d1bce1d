"""SFT on the local backend, end to end on a small written corpus: assistant-only loss, the anchor's
share of loss tokens, resume, and an exported model that carries the chat template."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from corpus import ENGLISH, HEBREW, make_docs, write_jsonl

from hebatron_nemo.backends.local.cpt import export_model
from hebatron_nemo.backends.local.sft import run_sft
from hebatron_nemo.config import SFTRunConfig
from hebatron_nemo.data.tokenizer import train_byte_level_bpe
from hebatron_nemo.models.nemotron_h import build_model, load_model_config


# anchor text distinct from the pairs' English (which the SFT builder decontaminates against)
ANCHOR_TEXT = [
    "The old lighthouse keeper counted the ships that passed each evening.",
    "A narrow path led from the village to the orchard on the hill.",
    "Children gathered around the fountain when the music began.",
    "The carpenter measured the beam twice before he cut it.",
    "Snow covered the mountain roads for most of the winter.",
    "Her letters arrived every month, always written in green ink.",
    "The market opened early so farmers could sell before the heat.",
    "He kept a notebook of every bird he saw along the river.",
    "The bells rang at noon and the square filled with people.",
    "Fresh paint made the small station look almost new again.",
    "They planted olive trees along the edge of the field.",
    "The ferry crossed the bay twice a day in calm weather.",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    corpus = tmp / "corpus"
    pairs = [{"id": f"Book {c}:{v}", "he": HEBREW[(c * 7 + v) % len(HEBREW)], "en": ENGLISH[(c * 3 + v) % len(ENGLISH)]}
             for c in range(1, 30) for v in range(1, 6)]
    write_jsonl(corpus / "pairs_train.jsonl", pairs[:120])
    write_jsonl(corpus / "pairs_valid.jsonl", pairs[120:])
    for name, seed in (("en_kjv", 1), ("en_jps", 2)):
        write_jsonl(corpus / f"{name}.jsonl", make_docs(ANCHOR_TEXT, 150, seed=seed, min_sent=8, max_sent=16, prefix=name))
    tok = tmp / "tok"
    train_byte_level_bpe(HEBREW * 20 + ENGLISH * 20 + ANCHOR_TEXT * 20, str(tok), 600, 1, {"test": 1})
    cfg = OmegaConf.structured(SFTRunConfig)
    cfg.model = load_model_config("micro")
    cfg.tokenizer.path, cfg.tokenizer.name = str(tok), "test"
    model = build_model(cfg.model, 600, seed=0)
    export_model(model, {"tokenizer": {"path": str(tok)}, "fingerprint": "test"}, tmp / "cpt" / "model")
    cfg.sft.init_from, cfg.sft.corpus_dir, cfg.sft.run_dir = str(tmp / "cpt" / "model"), str(corpus), str(tmp / "sft")
    cfg.sft.max_pairs, cfg.sft.max_length, cfg.sft.global_batch, cfg.sft.micro_batch = None, 128, 8, 4
    cfg.sft.eval_every_steps, cfg.sft.eval_conversations = 10, 16
    cfg.logging.progress = False  # wandb stays on, offline: the run below proves it works without an account
    cfg.threads = 1
    cfg.checkpoint.every_steps = 10
    return tmp, cfg


def test_sft_trains_exports_and_resumes(setup):
    tmp, cfg = setup
    state = run_sft(cfg, log=lambda *a: None)
    hebrew, anchor = state["counts"]
    assert anchor[1] / (hebrew[1] + anchor[1]) == pytest.approx(0.25, abs=0.05)  # anchor share of loss tokens
    lines = [json.loads(x) for x in (tmp / "sft" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x["kind"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == state["step"]
    assert evals[-1]["values"]["eval/sft_loss/hebrew"] < evals[0]["values"]["eval/sft_loss/hebrew"]
    conf = json.loads((tmp / "sft" / "model" / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in conf["chat_template"]
    assert list((tmp / "sft" / "wandb").glob("offline-run-*")), "wandb should log offline"
    assert list((tmp / "sft" / "tensorboard").glob("events.out.tfevents.*"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp / "sft" / "model"))
    text = tok.apply_chat_template([{"role": "user", "content": "שלום"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    # rerunning finds the finished run and does nothing more
    again = run_sft(cfg, log=lambda *a: None)
    assert again["step"] == state["step"]


def test_loss_is_assistant_only(setup):
    """Changing a user turn's tokens changes nothing the loss counts except through context; the
    loss mask covers exactly the assistant content and its end marker."""
    from hebatron_nemo.data.tokenizer import LocalTokenizer
    from hebatron_nemo.sft.template import tokenize_conversation

    tmp, cfg = setup
    tok = LocalTokenizer(cfg.tokenizer.path)
    conv = [{"role": "user", "content": "תרגם לאנגלית: שלום"}, {"role": "assistant", "content": "Hello"}]
    ex = tokenize_conversation(conv, tok, 128)
    masked = [i for i, m in zip(ex["input_ids"], ex["loss_mask"]) if m]
    assert tok.tok.decode(masked, skip_special_tokens=False).replace(" ", "").endswith("Hello<|im_end|>")
    assert sum(ex["loss_mask"]) == len(masked) < len(ex["input_ids"]) // 2
