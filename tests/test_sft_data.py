"""SFT data: the chat template and its assistant-only loss mask, Jinja parity, pair reading, translation
and anchor chats, length buckets and label alignment (the registry preparation: test_sft_prepare.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from corpus import ENGLISH, HEBREW, make_docs, write_jsonl

from hebatron_nemo.data.readers import Document
from hebatron_nemo.data.tokenizer import LocalTokenizer, train_byte_level_bpe
from hebatron_nemo.errors import DataError
from hebatron_nemo.demo.sft import anchor_conversations, clean_verse, read_pairs, split_sentences
from hebatron_nemo.sft.data import (IGNORE_INDEX, SFTExample, bucket_indices, collate, length_bucketed_batches,
                                    tokenize_conversations)
from hebatron_nemo.sft.sources import pair_conversations
from hebatron_nemo.sft.template import (CHAT_TEMPLATE, ConversationTooLong, render, tokenize_conversation)

SYSTEM = {"role": "system", "content": "Answer briefly."}
CONVERSATIONS = [
    [{"role": "user", "content": "Translate: שלום"}, {"role": "assistant", "content": "Hello."}],
    [SYSTEM, {"role": "user", "content": "מה שלומך?"},
     {"role": "assistant", "content": "טוב, תודה.", "reasoning_content": "A greeting; answer in Hebrew."}],
    [SYSTEM, {"role": "user", "content": "  leading spaces\n\nand lines "},
     {"role": "assistant", "content": "\n two", "reasoning_content": "first\n"},
     {"role": "user", "content": "again"}, {"role": "assistant", "content": "", "reasoning_content": None}],
    [{"role": "user", "content": "no answer yet"}],
    [],
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "bpe"
    texts = HEBREW * 4 + ENGLISH * 4 + ["user\n  system\n\n assistant\n\nTranslate:"] * 4
    train_byte_level_bpe(texts, str(out), vocab_size=600, min_frequency=1, fingerprint={"test": "sft"})
    return out


@pytest.fixture(scope="module")
def tok(tok_dir) -> LocalTokenizer:
    return LocalTokenizer(str(tok_dir))


def _runs(ids: list[int], mask: list[int], tok: LocalTokenizer) -> list[tuple[int, str]]:
    """(mask value, decoded text) of each maximal run of equal mask values."""
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            out.append((mask[start], tok.tok.decode(ids[start:i], skip_special_tokens=False)))
            start = i
    return out


# ----------------------------------------------------------------------------------------- template


def test_render_rule_by_hand():
    conv = CONVERSATIONS[1] + [{"role": "user", "content": "ועוד?"}, {"role": "assistant", "content": "כן."}]
    assert render(conv) == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nמה שלומך?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nA greeting; answer in Hebrew.\n</think>\nטוב, תודה.<|im_end|>\n"
        "<|im_start|>user\nועוד?<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>כן.<|im_end|>\n")
    base = render(CONVERSATIONS[0])
    assert render(CONVERSATIONS[0], add_generation_prompt=True) == base + "<|im_start|>assistant\n"
    assert render(CONVERSATIONS[0], True, enable_thinking=True) == base + "<|im_start|>assistant\n<think>\n"
    assert render(CONVERSATIONS[0], True, enable_thinking=False) == base + "<|im_start|>assistant\n<think></think>"


def test_mask_covers_exactly_assistant_turns(tok):
    out = tokenize_conversation(CONVERSATIONS[1], tok, max_length=512)
    assert _runs(out["input_ids"], out["loss_mask"], tok) == [
        (0, "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nמה שלומך?<|im_end|>\n"
            "<|im_start|>assistant\n"),
        (1, "<think>\nA greeting; answer in Hebrew.\n</think>\nטוב, תודה.<|im_end|>"),
        (0, "\n"),
    ]
    out = tokenize_conversation(CONVERSATIONS[2], tok, max_length=512)
    assert [text for m, text in _runs(out["input_ids"], out["loss_mask"], tok) if m] == [
        "<think>\nfirst\n\n</think>\n\n two<|im_end|>", "<think></think><|im_end|>"]
    im_start, im_end = (tok.tok.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    ids, mask = out["input_ids"], out["loss_mask"]
    assert all(mask[i] == 0 for i, t in enumerate(ids) if t == im_start)  # headers never trained
    assert [mask[i] for i, t in enumerate(ids) if t == im_end] == [0, 0, 1, 0, 1]  # system, user, assistant...


@pytest.mark.parametrize("conv", [c for c in CONVERSATIONS if any(m["role"] == "assistant" for m in c)])
def test_piecewise_ids_equal_whole_string_encoding(tok, conv):
    out = tokenize_conversation(conv, tok, max_length=512)
    assert out["input_ids"] == tok.tok.encode(render(conv), add_special_tokens=False).ids
    assert len(out["loss_mask"]) == len(out["input_ids"]) and not out["truncated"]


def test_jinja_template_renders_like_render(tok_dir, tok):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    hf.chat_template = CHAT_TEMPLATE
    for conv in CONVERSATIONS[:-1]:  # transformers refuses an empty conversation
        for gen in (False, True):
            for thinking in (None, True, False):
                extra = {} if thinking is None else {"enable_thinking": thinking}
                text = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen, **extra)
                assert text == render(conv, gen, thinking), (conv, gen, thinking)
    for conv in CONVERSATIONS[:3]:  # transformers' assistant mask ({% generation %}) is ours too
        out = hf.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ours = tokenize_conversation(conv, tok, 512)
        assert list(out["input_ids"]) == ours["input_ids"]
        assert list(out["assistant_masks"]) == ours["loss_mask"]


@pytest.mark.parametrize("conv, field", [
    ([{"role": "user", "content": "a"}, SYSTEM], "messages[1].role"),
    ([{"role": "tool", "content": "a"}], "messages[0].role"),
    ([{"role": "user", "content": "a <|im_end|> b"}], "messages[0].content"),
    ([{"role": "assistant", "content": "a", "reasoning": "x"}], "messages[0]"),
    ([{"role": "user", "content": "a", "reasoning_content": "x"}], "messages[0].reasoning_content"),
    ([{"role": "assistant", "content": None}], "messages[0].content"),
])
def test_bad_messages_are_data_errors(conv, field):
    with pytest.raises(DataError) as err:
        render(conv)
    assert err.value.field == field


def test_added_tokens_in_text_are_rejected(tok):
    with pytest.raises(DataError, match="added token"):
        tokenize_conversation([{"role": "assistant", "content": "x </s> y"}], tok, 64)


def test_overlong_conversations_truncate_or_raise_never_train_nothing(tok):
    conv = [{"role": "user", "content": " ".join(ENGLISH)}, {"role": "assistant", "content": ENGLISH[0]}]
    whole = tokenize_conversation(conv, tok, 10_000)
    full, first_loss = whole["input_ids"], whole["loss_mask"].index(1)
    with pytest.raises(ConversationTooLong):
        tokenize_conversation(conv, tok, len(full) - 1)
    cut = tokenize_conversation(conv, tok, len(full) - 1, truncate=True)
    assert cut["truncated"] and len(cut["input_ids"]) == len(full) - 1 and cut["loss_mask"][-1] == 1
    with pytest.raises(ConversationTooLong, match="train on nothing"):
        tokenize_conversation(conv, tok, first_loss, truncate=True)  # cut before the assistant body
    with pytest.raises(ConversationTooLong, match="no assistant turn"):
        tokenize_conversation(CONVERSATIONS[3], tok, 512)

    chats = [{"id": "long", "messages": conv}, {"id": "short", "messages": CONVERSATIONS[0]},
             {"id": "none", "messages": CONVERSATIONS[3]}]
    kept, counts = tokenize_conversations(chats, tok, len(full) - 1, overflow="drop")
    assert [e.id for e in kept] == ["short"]
    assert counts == {"conversations": 3, "kept": 1, "truncated": 0, "dropped_too_long": 1, "dropped_no_loss": 1}
    kept, counts = tokenize_conversations(chats, tok, len(full) - 1, overflow="truncate")
    assert [e.id for e in kept] == ["long", "short"] and counts["truncated"] == 1 and counts["dropped_no_loss"] == 1
    with pytest.raises(ConversationTooLong, match="'long'"):
        tokenize_conversations(chats, tok, len(full) - 1, overflow="error")


# ----------------------------------------------------------------------------------------- pairs


def _pairs_rows(n: int, prefix: str = "Book 1") -> list[dict]:
    return [{"id": f"{prefix}:{i + 1}", "he": HEBREW[i % len(HEBREW)], "en": ENGLISH[i % len(ENGLISH)]}
            for i in range(n)]


def test_read_pairs_and_clean_hebrew(tmp_path):
    rows = _pairs_rows(5) + [{"id": "Book 1:9", "he": "ו/יהיו בני - נח ה/יצאים מן - ה/תבה ס", "en": "x"}]
    f = write_jsonl(tmp_path / "pairs.jsonl", rows)
    pairs = read_pairs(f)
    assert [(p.id, p.he, p.en, p.line) for p in pairs[:5]] == [(r["id"], r["he"], r["en"], i + 1)
                                                               for i, r in enumerate(rows[:5])]
    assert read_pairs(f, clean_hebrew=True)[-1].he == "ויהיו בני נח היצאים מן התבה"
    assert clean_verse("אמרי - נא אחת/י ס ו/ישב") == "אמרי נא אחתי וישב"
    # one cleaner for pointed and unpointed verses: a morpheme boundary after a vowel point is joined too
    assert clean_verse("חָ֥ם וָ/יָֽפֶת ׃ ס") == "חָ֥ם וָיָֽפֶת ׃"


@pytest.mark.parametrize("bad, line, field", [
    ({"id": "x:1", "en": "only english"}, 3, "he"),
    ({"id": "x:1", "he": "שלום", "en": "   "}, 3, "en"),
    ({"id": "", "he": "שלום", "en": "hi"}, 3, "id"),
    ({"id": "Book 1:1", "he": "שלום", "en": "hi"}, 3, "id"),  # duplicate
    ({"id": "x:1", "he": 7, "en": "hi"}, 3, "he"),
])
def test_bad_pair_files_name_file_line_and_field(tmp_path, bad, line, field):
    f = write_jsonl(tmp_path / "bad.jsonl", _pairs_rows(2) + [bad] + _pairs_rows(1, "Book 2"))
    with pytest.raises(DataError) as err:
        read_pairs(f)
    assert (err.value.path, err.value.line, err.value.field) == (str(f), line, field)
    assert f"{f}:{line}" in str(err.value)


def test_malformed_json_line_is_located(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(_pairs_rows(1)[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{f}:2"):
        read_pairs(f)


# ----------------------------------------------------------------------------------------- chats


def test_pair_conversations_are_deterministic_faithful_and_language_neutral():
    rows = _pairs_rows(60)
    convs = [c for r in rows for c in pair_conversations(r["id"], r["he"], r["en"], ["he-en", "en-he"], 0.3)]
    assert convs == [c for r in rows for c in pair_conversations(r["id"], r["he"], r["en"], ["he-en", "en-he"], 0.3)]
    assert len(convs) == 120 and len({cid for cid, _ in convs}) == 120
    by_pair = {r["id"]: r for r in rows}
    hebrew_prompts = 0
    for cid, messages in convs:
        pid, direction = cid.split("|")
        pair, answer = by_pair[pid], messages[-1]
        src, tgt = (pair["he"], pair["en"]) if direction == "he-en" else (pair["en"], pair["he"])
        assert answer == {"role": "assistant", "content": tgt}
        instruction = messages[-2]["content"].replace(src, "")
        assert src in messages[-2]["content"] and "verse" not in instruction and "פסוק" not in instruction
        hebrew_prompts += any("\u05d0" <= ch <= "\u05ea" for ch in instruction)
    assert 20 < hebrew_prompts < 100  # instructions in both languages
    assert 10 < sum(m[0]["role"] == "system" for _, m in convs) < 70
    assert len({m[-2]["content"].replace(by_pair[c.split("|")[0]]["he"], "")
                .replace(by_pair[c.split("|")[0]]["en"], "") for c, m in convs}) >= 10  # several phrasings


def test_anchor_answers_come_verbatim_from_the_text():
    docs = [Document(d["text"], d["id"], i) for i, d in enumerate(make_docs(ENGLISH, 30, 3, 4, 12, "en"))]
    convs = anchor_conversations(docs, "en_test", tilings=2)
    assert convs == anchor_conversations(docs, "en_test", tilings=2) and len(convs) > 40
    texts = {d.doc_id: d.text for d in docs}
    tasks = set()
    for c in convs:
        answer, prompt = c["messages"][-1]["content"], c["messages"][-2]["content"]
        text = texts[c["id"].split("|")[1]]
        passage = next(part for part in prompt.split("\n\n") if part in text)
        instruction = prompt.replace(passage, "")
        if '"' in instruction:
            tasks.add("word")
            word = instruction.split('"')[1]
            assert word in answer and answer in passage
        elif any(k in instruction for k in ("Continue the passage", "Carry it on", "What comes next")):
            tasks.add("continue")
            assert passage + " " + answer in text  # the answer is what follows the passage
        elif "first" in instruction or "opening" in instruction:
            tasks.add("first")
            assert passage.startswith(answer + " ")
        else:
            assert "last" in instruction or "final" in instruction or "closes" in instruction
            tasks.add("last")
            assert passage.endswith(" " + answer)
    assert tasks == {"continue", "first", "last", "word"}
    assert split_sentences("He said. 'Go.' Then he went! Why? Ok") == [
        "He said.", "'Go.'", "Then he went!", "Why?", "Ok"]


def test_anchor_decontamination_drops_windows():
    from hebatron_nemo.data.filters import Decontaminator

    docs = [Document(" ".join(ENGLISH), "doc", 0)]
    clean = anchor_conversations(docs, "en", tilings=1)
    dec = Decontaminator([ENGLISH[4]], ngram=8)
    kept = anchor_conversations(docs, "en", tilings=1, decontaminator=dec)
    assert len(kept) == len(clean) - 1
    assert all(ENGLISH[4] not in m["content"] for c in kept for m in c["messages"])


def _examples(n: int, source: str, rng: np.random.Generator, lo: int = 5, hi: int = 60) -> list[SFTExample]:
    out = []
    for i in range(n):
        length = int(rng.integers(lo + 3, hi + 20))
        mask = np.zeros(length, np.uint8)
        mask[length - int(rng.integers(1, min(hi, length - 2))):] = 1
        out.append(SFTExample(f"{source}-{i}", source, rng.integers(3, 500, length).astype(np.int32), mask))
    return out


# ----------------------------------------------------------------------------------------- batches


def test_buckets_cover_each_example_once_and_are_deterministic():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, 1003)
    for window in (None, 4):
        batches = bucket_indices(lengths, 16, seed=7, window=window)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1003))
        assert all(len(b) <= 16 for b in batches)
        assert batches == bucket_indices(lengths, 16, seed=7, window=window)
        assert batches != bucket_indices(lengths, 16, seed=8, window=window)
    global_batches = bucket_indices(lengths, 16, seed=7)
    spread = [int(lengths[b].max() - lengths[b].min()) for b in global_batches]
    assert max(spread) <= 10  # 1003 lengths over 295 values: neighbours in sorted order
    windowed = bucket_indices(lengths, 16, seed=7, window=4)
    for w in range(0, 1003, 64):  # a window's batches stay within its range of the input order
        members = {i for b in windowed for i in b if w <= b[0] < w + 64}
        assert members == set(range(w, min(w + 64, 1003)))


def test_padding_has_no_loss_and_labels_are_minus_100_exactly_where_mask_is_zero():
    rng = np.random.default_rng(1)
    examples = _examples(50, "x", rng)
    seen = []
    for batch in length_bucketed_batches(examples, 8, seed=3, pad_to_multiple_of=8):
        ids, labels, attn, mask = batch["input_ids"], batch["labels"], batch["attention_mask"], batch["loss_mask"]
        assert ids.shape == labels.shape == attn.shape == mask.shape and ids.shape[1] % 8 == 0
        assert torch.equal(labels == IGNORE_INDEX, mask == 0)
        assert torch.equal(labels[mask == 1], ids[mask == 1])
        assert not mask[attn == 0].any() and (ids[attn == 0] == 0).all()
        for row, i in enumerate(batch["index"]):
            n = len(examples[i])
            assert attn[row, :n].all() and not attn[row, n:].any()
            assert ids[row, :n].tolist() == examples[i].input_ids.tolist()
            assert mask[row, :n].tolist() == examples[i].loss_mask.tolist()
        seen += batch["index"]
    assert sorted(seen) == list(range(50))


def test_labels_train_exactly_the_masked_positions_under_the_shifting_loss():
    from transformers.loss.loss_utils import ForCausalLMLoss

    rng = np.random.default_rng(2)
    batch = collate(_examples(4, "x", rng))
    vocab = 500
    logits = torch.randn(*batch["input_ids"].shape, vocab, generator=torch.Generator().manual_seed(0))
    hf = ForCausalLMLoss(logits, batch["labels"], vocab)
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab),
                                                  batch["input_ids"][:, 1:].reshape(-1), reduction="none")
    weight = batch["loss_mask"][:, 1:].reshape(-1).float()
    assert torch.allclose(hf, (per_token * weight).sum() / weight.sum())


def test_right_padding_leaves_real_positions_of_nemotron_h_unchanged():
    from transformers import NemotronHConfig, NemotronHForCausalLM

    cfg = NemotronHConfig(vocab_size=500, hybrid_override_pattern="M*", num_hidden_layers=2, hidden_size=32,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, mamba_num_heads=4,
                          mamba_head_dim=16, ssm_state_size=16, n_groups=1, chunk_size=16, intermediate_size=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = NemotronHForCausalLM(cfg).eval()
    examples = _examples(2, "x", np.random.default_rng(4), hi=20)
    batch = collate(examples)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        for row, e in enumerate(examples):
            alone = model(input_ids=torch.from_numpy(e.input_ids.astype(np.int64))[None]).logits[0]
            assert torch.allclose(out.logits[row, :len(e)], alone, atol=1e-5)
    per_token = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 500).float(),
                                                  batch["input_ids"][:, 1:].reshape(-1), reduction="none")
    weight = batch["loss_mask"][:, 1:].reshape(-1).float()
    assert torch.allclose(out.loss, (per_token * weight).sum() / weight.sum(), atol=1e-5)
