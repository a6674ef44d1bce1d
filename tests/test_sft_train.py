"""SFT on the local backend, end to end on a small written corpus through the demo's SFT registry
(`conf/sft_data/demo.yaml`, composed as `recipes/sft.py` composes it: derived sources, the prepared
dataset): assistant-only loss, the anchor's share of the samples, resume, and an exported model that
carries the chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from corpus import ENGLISH, HEBREW, make_docs, write_jsonl

from hebatron_nemo.backends.local.cpt import export_model
from hebatron_nemo.backends.local.sft import run_sft
from hebatron_nemo.config import register_configs
from hebatron_nemo.data.tokenizer import train_byte_level_bpe
from hebatron_nemo.models.nemotron_h import build_model, load_model_config
from hebatron_nemo.sft.prepare import prepare_sft

REPO = Path(__file__).resolve().parents[1]

# anchor text distinct from the held-out pairs (which the SFT preparation decontaminates against)
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
HELD_OUT = "The tailor in the harbour town sewed blue sails for every fishing boat that spring morning."


def write_demo_like_corpus(corpus: Path) -> None:
    """The files the demo SFT registry reads, in the demo corpora's formats (verse-style segmented Hebrew)."""
    pairs = [{"id": f"Book {c}:{v}", "he": "ו/" + HEBREW[(c * 7 + v) % len(HEBREW)] + f" {c} {v}",
              "en": ENGLISH[(c * 3 + v) % len(ENGLISH)] + f" ({c}:{v})"} for c in range(1, 30) for v in range(1, 6)]
    write_jsonl(corpus / "pairs_train.jsonl", pairs)
    write_jsonl(corpus / "pairs_test.jsonl", [{"id": "Test 1:1", "he": HEBREW[0], "en": HELD_OUT}])
    for name, seed in (("en_kjv", 1), ("en_jps", 2)):
        write_jsonl(corpus / f"{name}.jsonl", make_docs(ANCHOR_TEXT, 40, seed=seed, min_sent=8, max_sent=16, prefix=name))
    write_jsonl(corpus / "he_mishnah.jsonl", make_docs(HEBREW, 40, seed=3, min_sent=6, max_sent=12, prefix="mishnah"))


def compose_sft(tmp: Path, overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="sft", overrides=[f"paths.work={tmp}", *overrides])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    corpus = tmp / "corpus"
    write_demo_like_corpus(corpus)
    tok = tmp / "tok"
    train_byte_level_bpe(HEBREW * 20 + ENGLISH * 20 + ANCHOR_TEXT * 20, str(tok), 600, 1, {"test": 1})
    cfg = compose_sft(tmp, [f"data.raw_dir={corpus}", f"tokenizer.path={tok}", "tokenizer.name=test", "model=micro",
                            "sft_data=demo", "sft_data.total=240", "sft_data.max_length=320",
                            "sft_data.sources.pairs_train.keep_fraction=1.0",
                            f"sft.init_from={tmp / 'cpt' / 'model'}", f"sft.run_dir={tmp / 'sft'}",
                            "sft.global_batch_size=8", "sft.micro_batch_size=4", "sft.eval_interval=10",
                            "sft.eval_conversations=16", "logging.progress=false", "threads=1",
                            "checkpoint.save_interval=10"])
    model = build_model(load_model_config("micro"), 600, seed=0)
    export_model(model, {"tokenizer": {"path": str(tok)}, "fingerprint": "test"}, tmp / "cpt" / "model")
    prepare_sft(cfg, log=lambda *a: None)
    return tmp, cfg  # (tests/test_preemption.py reuses this fixture)


@pytest.fixture(scope="module")
def manifest(setup):
    _, cfg = setup
    return json.loads((Path(cfg.sft_data.output_dir) / "manifest.json").read_text())


def test_demo_registry_prepares_through_the_general_path(setup, manifest):
    (tmp, cfg), m = setup, manifest
    assert m["samples"] == 240 and m["registry"] == "demo"
    assert {k: v["samples"] for k, v in m["sources"].items()} == {
        "pairs_train": 156, "he_instructions": 24, "en_kjv_chats": 30, "en_jps_chats": 30}
    assert m["roles"]["anchor"]["samples"] == 60
    assert (tmp / "corpus" / "sft_derived" / "en_kjv_chats.jsonl").exists()
    lines = [json.loads(x) for x in (Path(cfg.sft_data.output_dir) / "training.jsonl").read_text().splitlines()]
    pairs = [r for r in lines if r["source"] == "pairs_train"]
    # the verse clean-up ran on that source (its transform) and nowhere else; prompts name no verse
    assert all("ו/" not in json.dumps(r, ensure_ascii=False) for r in pairs)
    assert all("verse" not in r["messages"][-2]["content"] for r in pairs)
    assert {r["role"] for r in lines if r["source"].startswith("en_")} == {"anchor"}


@pytest.mark.slow  # trains the micro model (30 SFT steps)
def test_sft_trains_exports_and_resumes(setup, manifest):
    tmp, cfg = setup
    state = run_sft(cfg, log=lambda *a: None)
    hebrew, anchor = state["counts"]
    # steps = epochs x samples / global batch: every prepared conversation trained once, by its role
    assert state["step"] == 240 // 8 and hebrew[0] == 180 and anchor[0] == 60
    assert anchor[1] == manifest["roles"]["anchor"]["loss_tokens"] and hebrew[1] == manifest["roles"]["target"]["loss_tokens"]
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
