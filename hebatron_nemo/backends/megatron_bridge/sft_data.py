"""The SFT mixture written as chat JSONL for Megatron-Bridge's `GPTSFTDatasetConfig`.

The mixture is chosen exactly as the local backend chooses it (`sft.data.build_demo_sft`: Hebrew
chats plus English anchor chats at `sft.anchor_share` of the loss tokens, measured with the model's
tokenizer and template), then written in its order as `training.jsonl` / `validation.jsonl` lines
`{"messages": [...]}`; MB renders them with the tokenizer's chat template, masks all but assistant
tokens (`loss_mode="assistant"`) and packs offline. The folder is written aside and renamed, with a
`mixture.json` report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hebatron_nemo.data.indexed import write_json_atomic


def write_chat_jsonl(path: Path, examples, messages: dict) -> int:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"messages": messages[ex.id]}, ensure_ascii=False) + "\n")
    return len(examples)


def materialize_sft_mixture(cfg, out_dir: str | Path, log=print) -> dict:
    from hebatron_nemo.data.tokenizer import LocalTokenizer
    from hebatron_nemo.sft.data import build_demo_sft

    s = cfg.sft
    out = Path(out_dir)
    tok = LocalTokenizer(str(cfg.tokenizer.path))
    messages: dict = {}
    train = build_demo_sft(s.corpus_dir, tok, s.max_length, s.anchor_share, seed=cfg.seed, split="train",
                           max_pairs=s.max_pairs, max_anchor_documents=s.max_anchor_documents, messages=messages)
    valid = build_demo_sft(s.corpus_dir, tok, s.max_length, s.anchor_share, seed=cfg.seed, split="valid",
                           max_pairs=s.eval_conversations, max_anchor_documents=20, messages=messages)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n_train = write_chat_jsonl(tmp / "training.jsonl", train.examples, messages)
    n_valid = write_chat_jsonl(tmp / "validation.jsonl", valid.examples[: s.eval_conversations], messages)
    report = {**train.report, "examples_by_stream": train.report["examples"], "examples": n_train,
              "validation_examples": n_valid}
    write_json_atomic(tmp / "mixture.json", report)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return report
