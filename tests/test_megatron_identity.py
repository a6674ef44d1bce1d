"""Byte identity with Megatron-LM's `tools/preprocess_data.py`, and exactness of the fast tokenizer path.

CI cannot fetch Megatron-LM, so the identity is pinned by a recorded hash: `benchmarks/bench_prepare.py
--record` ran Megatron's tool once on the sample below (with the tokenizer trained below) and wrote the
sha256 of its `.bin` and `.idx` to `tests/data/megatron_preprocess_sha256.json`, with the Megatron-LM
commit and the sample's parameters. Here `prepare`, with every step that drops, edits or moves a
document turned off, must write byte-identical files.

The second half checks `ChunkMemoEncoder` (the memoized path `LocalTokenizer.encode_documents` takes for
GPT-2 style byte-level BPEs) against the HF tokenizer itself on awkward text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from corpus import ENGLISH, HEBREW, make_docs, prepare_config, source, write_jsonl

RECORD = Path(__file__).resolve().parent / "data" / "megatron_preprocess_sha256.json"

# Documents that stress tokenization and the writer: marks, whitespace runs, contractions, digits,
# added-token text, invisible controls, a whitespace-only document. (Empty documents are not in the
# sample: Megatron's tool writes them as zero-length documents, `prepare` drops them.)
EDGE_DOCS = [
    "בְּרֵאשִׁ֖ית בָּרָ֣א אֱלֹהִ֑ים\nאֵ֥ת הַשָּׁמַ֖יִם",
    "line one\n\n\nline two\t\ttabbed   spaced  ",
    "don't we'll they're I'm it's 'quoted' rock'n'roll",
    "מספר 1234 ו-56.7% ב־2024, 3.14159 ו־٣ ו־５",
    "   ",
    "special <s> and </s> and <|im_start|>user\n<think>x</think>",
    "emoji 🙂 👍🏽 and \u200fRTL\u200e marks\u200b zero\u200dwidth \ufeffBOM",
    "“quotes” ‘single’ — dash … ellipsis ״גרשיים״ ג׳ ש\"ס צ'יפס",
    "\n\nleading newlines and trailing ones\n\n",
    " leading space, then   \u00a0non-breaking\u3000ideographic\u2028line-separator",
]

SAMPLE = {"hebrew_docs": 300, "hebrew_seed": 19, "english_docs": 60, "english_seed": 20,
          "edge_docs": len(EDGE_DOCS), "vocab_size": 400, "min_frequency": 1}

# `prepare` settings under which nothing is normalized, filtered, deduplicated or held out.
IDENTITY_OVERRIDES = {
    "data.normalize.unicode_form": "none", "data.normalize.strip_bidi_controls": False,
    "data.normalize.strip_zero_width": False, "data.normalize.punctuation": "keep",
    "data.normalize.collapse_whitespace": False,
    "data.filters.min_chars": 1, "data.filters.min_words": 0, "data.filters.min_script_ratio": 0.0,
    "data.exact_dedup.enabled": False, "data.near_dedup.enabled": False,
    "data.decontamination.enabled": False,
}


def sample_docs() -> list[dict]:
    """The sample, in file order: Hebrew documents, English documents, then the edge cases."""
    docs = make_docs(HEBREW, SAMPLE["hebrew_docs"], seed=SAMPLE["hebrew_seed"], prefix="he")
    docs += make_docs(ENGLISH, SAMPLE["english_docs"], seed=SAMPLE["english_seed"], prefix="en")
    docs += [{"id": f"edge-{i}", "text": t} for i, t in enumerate(EDGE_DOCS)]
    return docs


def write_sample(raw_dir: Path) -> Path:
    return write_jsonl(Path(raw_dir) / "sample.jsonl", sample_docs())


def train_sample_tokenizer(out_dir: Path) -> Path:
    """A small byte-level BPE trained on the sample (training is deterministic: same bytes every run)."""
    from hebatron_nemo.data.tokenizer import train_byte_level_bpe

    train_byte_level_bpe((d["text"] for d in sample_docs()), str(out_dir), SAMPLE["vocab_size"],
                         SAMPLE["min_frequency"], {"sample": SAMPLE})
    return Path(out_dir)


def identity_config(tmp: Path, tokenizer_dir: Path, source_path: str = "sample.jsonl", **overrides):
    """A `prepare` config for one source `sample` under `tmp/raw` whose output is Megatron's."""
    src = source(source_path, holdout={"valid": 0, "test": 0})
    return prepare_config(tmp, {"sample": src}, tokenizer_dir, **{**IDENTITY_OVERRIDES, **overrides})


def sha256(path: Path) -> str:
    from hebatron_nemo.utils.hashing import sha256_file

    return sha256_file(path)


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_tokenizer(tmp_path_factory) -> Path:
    return train_sample_tokenizer(tmp_path_factory.mktemp("tok") / "sample_bpe")


@pytest.fixture(scope="module")
def record() -> dict:
    if not RECORD.exists():
        pytest.fail(f"{RECORD} is missing: run benchmarks/bench_prepare.py --megatron-lm DIR --record")
    rec = json.loads(RECORD.read_text())
    assert rec["sample"] == SAMPLE, ("the recorded sample differs from this module's SAMPLE: re-record with "
                                     "benchmarks/bench_prepare.py --record")
    return rec


def _prepare(tmp: Path, tokenizer_dir: Path, **overrides) -> Path:
    from hebatron_nemo.data.prepare import prepare

    write_sample(tmp / "raw")
    prepare(identity_config(tmp, tokenizer_dir, **overrides), log=lambda *a, **k: None)
    return tmp / "out" / "sample" / "train"


def test_sample_tokenizer_is_the_recorded_one(sample_tokenizer, record):
    assert sha256(sample_tokenizer / "tokenizer.json") == record["tokenizer_json_sha256"], (
        "training the sample tokenizer gave a different tokenizer.json than when the Megatron hashes were "
        "recorded (a `tokenizers` upgrade?): re-record with benchmarks/bench_prepare.py --record")


def test_prepare_is_byte_identical_to_megatron_preprocess_data(tmp_path, sample_tokenizer, record):
    prefix = _prepare(tmp_path, sample_tokenizer)
    manifest = json.loads((tmp_path / "out" / "sample" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] == record["documents"] == len(sample_docs())
    assert manifest["splits"]["train"]["tokens"] == record["tokens"]
    assert sha256(Path(f"{prefix}.idx")) == record["idx_sha256"]
    assert sha256(Path(f"{prefix}.bin")) == record["bin_sha256"]


def test_the_pin_catches_a_missing_eod(tmp_path, sample_tokenizer, record):
    """Without EOD the files differ from Megatron's (`--append-eod`): the comparison above can fail."""
    prefix = _prepare(tmp_path, sample_tokenizer, **{"tokenizer.append_eod": False})
    assert sha256(Path(f"{prefix}.bin")) != record["bin_sha256"]
    assert sha256(Path(f"{prefix}.idx")) != record["idx_sha256"]


# ---------------------------------------------------------------------------------------------
# The memoized encoder against the tokenizer itself.

ATOMS = (list(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2028\u202f\u3000\u200b\u200d\ufeff")
         + list("aAzZsStTdDmMlLrReEvV019٣５") + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'", "’"]
         + list("שלוםאבגדהוזחטיכךמםנןסעפףצץקרת")
         + ["\u05b8", "\u05bc", "\u05c1", "\u0591", "\u05be", "\u05c3", "\u05f3"]
         + list(".,;:!?-_()[]{}\"/\\@#$%^&*+=<>|~`")
         + ["😀", "👍🏽", "中", "ß", "e\u0301", "ǅ", "ⅷ", "²", "\ufb2a"]
         + ["<s>", "</s>", "<|im_start|>", "<pad", "</think>"] + ["  ", " \n ", "\n\n", " a", " ש", " 1"])
WORDS = [" ", " ש", " שלום", " הַשָּׁמַיִם", " the", " a", "\n", " 12", ".", " it's"]


def _fuzz_docs(seed: int, n: int = 600) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ATOMS) if rng.random() < 0.6 else rng.choice(WORDS)
                    for _ in range(rng.randint(0, 80))) for _ in range(n)]


def _reference(tok, texts: list[str]) -> list[list[int]]:
    return [enc.ids + [tok.eod] for enc in tok.tok.encode_batch(texts, add_special_tokens=False)]


def _encode_in_batches(tok, texts: list[str], size: int = 61) -> list[list[int]]:
    out = []
    for i in range(0, len(texts), size):
        out += tok.encode_documents(texts[i:i + size])
    return out


def test_memoized_encoder_matches_the_tokenizer(sample_tokenizer):
    from hebatron_nemo.data.tokenizer import LocalTokenizer

    tok = LocalTokenizer(str(sample_tokenizer))
    assert tok._memo is not None  # a byte-level BPE from train_byte_level_bpe takes the fast path
    tok._memo.max_chunks = 300  # clear the memo every few batches too
    texts = _fuzz_docs(1) + [d["text"] for d in sample_docs()]
    assert _encode_in_batches(tok, texts) == _reference(tok, texts)
    assert not tok._memo._unsafe  # `regex` and Oniguruma agree on every character here


def test_memoized_encoder_is_exact_when_characters_fail_the_check(sample_tokenizer):
    """Characters the probe check rejects (forced here) send their chunks to the tokenizer whole."""
    from hebatron_nemo.data.tokenizer import LocalTokenizer

    tok = LocalTokenizer(str(sample_tokenizer))
    rejected = set("שלוםa'\u05b8 \n")
    tok._memo._same_pretokens = lambda c: c not in rejected
    texts = _fuzz_docs(2)
    assert _encode_in_batches(tok, texts) == _reference(tok, texts)
    assert tok._memo._unsafe and tok._memo._unsafe <= rejected


def test_probe_check_rejects_a_regex_that_classifies_differently(sample_tokenizer):
    """If the regex disagreed with Oniguruma about a character class, the probes would see it."""
    import regex

    from hebatron_nemo.data.tokenizer import LocalTokenizer

    tok = LocalTokenizer(str(sample_tokenizer))
    memo = tok._memo
    assert all(memo._same_pretokens(c) for c in "aש1 \n'.\u05b8😀")
    memo._pretok = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[a-z]+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    assert memo._same_pretokens("a") and not memo._same_pretokens("ש") and not memo._same_pretokens("A")
    texts = _fuzz_docs(3, 200)
    assert _encode_in_batches(tok, texts) == _reference(tok, texts)


def test_without_regex_module_chunks_go_to_the_tokenizer(sample_tokenizer):
    from hebatron_nemo.data.tokenizer import LocalTokenizer

    tok = LocalTokenizer(str(sample_tokenizer))
    tok._memo._pretok = None
    texts = _fuzz_docs(4, 300)
    assert _encode_in_batches(tok, texts) == _reference(tok, texts)


def test_other_tokenizer_structures_use_the_plain_path(sample_tokenizer, tmp_path):
    from tokenizers import Tokenizer, normalizers

    from hebatron_nemo.data.tokenizer import LocalTokenizer

    tok = Tokenizer.from_file(str(sample_tokenizer / "tokenizer.json"))
    tok.normalizer = normalizers.NFKC()
    (tmp_path / "nfkc").mkdir()
    tok.save(str(tmp_path / "nfkc" / "tokenizer.json"))
    other = LocalTokenizer(str(tmp_path / "nfkc"))
    assert other._memo is None
    texts = _fuzz_docs(5, 100)
    assert other.encode_documents(texts) == _reference(other, texts)


def test_fast_pretokenizer_splits_like_the_regex_module(sample_tokenizer):
    """The `re` form of the GPT-2 pattern (explicit classes of the checked characters) that the memoized
    encoder uses on new chunks finds the same pre-tokens as the `regex` form, on every fuzz text."""
    import regex

    from hebatron_nemo.data.tokenizer import GPT2_PRETOKENIZE, LocalTokenizer, _fast_pretokenizer

    tok = LocalTokenizer(str(sample_tokenizer))
    texts = _fuzz_docs(6, 400)
    tok.encode_documents(texts)
    assert tok._memo._fast is not None  # the encoder took the fast path
    slow = regex.compile(GPT2_PRETOKENIZE)
    fast = _fast_pretokenizer(set("".join(texts)), slow)
    assert [fast.findall(t) for t in texts] == [slow.findall(t) for t in texts]
    assert _fast_pretokenizer(set("abc"), regex.compile("x")) is None
    assert _fast_pretokenizer({"\u05d0", " "}, slow).findall("\u05d0 \u05d0  ") == ["\u05d0", " \u05d0", "  "]
