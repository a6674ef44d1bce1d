"""Tokenizers from a local folder (HF `tokenizers`), their identity, and the demo's byte-level BPE."""

from __future__ import annotations

import hashlib
import json
import os
import re
from itertools import chain, repeat
from pathlib import Path
from typing import Iterable

import numpy as np

from hebatron_nemo.errors import ConfigError

# Nemotron's special-token layout (pad 0, bos 1, eos 2), then the chat markers its template uses.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


class LocalTokenizer:
    """A `tokenizers.Tokenizer` loaded from `<path>/tokenizer.json`, with the EOD id resolved."""

    def __init__(self, path: str, eod_token: str = "</s>", add_bos: bool = False, append_eod: bool = True,
                 bos_token: str = "<s>"):
        from tokenizers import Tokenizer

        file = Path(path) / "tokenizer.json"
        if not file.exists():
            raise ConfigError(f"tokenizer.path: no tokenizer.json in {path!r} (a local folder; hub ids are not used)")
        self.path = str(path)
        self.tok = Tokenizer.from_file(str(file))
        self.eod = self.tok.token_to_id(eod_token)
        if self.eod is None:
            raise ConfigError(f"tokenizer.eod_token {eod_token!r} is not in the vocabulary of {file}")
        self.bos = self.tok.token_to_id(bos_token) if add_bos else None
        if add_bos and self.bos is None:
            raise ConfigError(f"tokenizer.add_bos is set but {bos_token!r} is not in the vocabulary of {file}")
        self.append_eod = append_eod
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        raw = file.read_bytes()
        self._sha = hashlib.sha256(raw).hexdigest()
        self._memo = ChunkMemoEncoder(self.tok) if ChunkMemoEncoder.supports(json.loads(raw)) else None

    def encode_documents(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each document as Megatron's preprocessing writes them (optional BOS, EOD).

        The ids are exactly `self.tok.encode(text, add_special_tokens=False).ids` (what Megatron's
        `tools/preprocess_data.py` gets from the same tokenizer.json); GPT-2 style byte-level BPEs take
        the memoized path of `ChunkMemoEncoder`, others HF's batch encoder without offsets."""
        ids, lens = self.encode_flat(texts)
        ends = np.cumsum(lens).tolist()
        flat = ids.tolist()
        return [flat[a:b] for a, b in zip([0] + ends[:-1], ends)]

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_documents` as arrays: all ids back to back (int32) and the number of each document's
        (BOS and EOD included), without a Python list per document."""
        if self._memo is not None:
            ids, lens = self._memo.encode_flat(texts)
        else:
            ids, lens = _flatten([enc.ids for enc in _encode_batch(self.tok, texts)])
        extra = (self.bos is not None) + bool(self.append_eod)
        if not extra:
            return ids, lens
        out_lens = lens + extra
        ends = np.cumsum(out_lens)
        out = np.empty(int(ends[-1]) if len(ends) else 0, np.int32)
        keep = np.ones(len(out), bool)
        if self.bos is not None:
            out[ends - out_lens] = self.bos
            keep[ends - out_lens] = False
        if self.append_eod:
            out[ends - 1] = self.eod
            keep[ends - 1] = False
        out[keep] = ids
        return out, out_lens

    def extra_tokens(self) -> int:
        """Tokens `encode_documents` adds to each document (BOS, EOD)."""
        return (self.bos is not None) + bool(self.append_eod)

    def identity(self) -> dict:
        return {"path": self.path, "tokenizer_json_sha256": self._sha, "vocab_size": self.vocab_size,
                "eod": self.eod, "bos": self.bos, "append_eod": self.append_eod}


def _encode_batch(tok, texts: list[str]) -> list:
    """HF `encode_batch` without special tokens; the variant that skips character offsets (which
    nothing here reads, and which cost about a third of the time) where the installed version has it."""
    fast = getattr(tok, "encode_batch_fast", None)
    return (fast or tok.encode_batch)(texts, add_special_tokens=False)


# GPT-2's pre-tokenizer regex, the one `pre_tokenizers.ByteLevel(use_regex=True)` applies (with Oniguruma).
GPT2_PRETOKENIZE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Split points of a text into chunks that the GPT-2 pre-tokenizer never spans: before a space that is
# followed by an ASCII letter or digit or a Hebrew letter (all \p{L} or \p{N} in every Unicode version).
# There the alternative ` ?\p{L}+` / ` ?\p{N}+` starts a new pre-token at the space: no earlier
# pre-token can end with that space (letter, digit, punctuation and contraction runs do not take
# spaces; `\s+(?!\S)` may not end right before a non-space; `\s+` is only tried for a single
# whitespace character that `\s+(?!\S)` refused, i.e. one followed by a non-space). The only
# lookahead, `(?!\S)`, holds at the end of a chunk both in place (a space follows) and alone (end of
# text), so each chunk pre-tokenizes, alone, into exactly the pre-tokens it has inside the text.
_CHUNK_SPLIT = re.compile(r"(?= [0-9A-Za-z\u05d0-\u05ea])")
_CHUNK_START = re.compile(r" [0-9A-Za-z\u05d0-\u05ea]")

# Probes that tell apart, for one character, the four classes the GPT-2 regex distinguishes
# (whitespace, \p{L}, \p{N}, other): the three "x{c}x" forms give one pre-token for exactly one class.
_PROBES = ("a{c}a", "1{c}1", "!{c}!", " {c}a", "a{c} ", "{c}{c}", "'{c}", "{c}'s", "\n{c}", " {c}")


class _IdTable:
    """Memoized ids of strings: a dict from string to row, and the ids of all rows back to back."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.starts = np.zeros(0, np.int64)  # row -> first id in `flat`
        self.lens = np.zeros(0, np.int64)  # row -> number of ids
        self.flat = np.zeros(1 << 16, np.int32)
        self.used = 0

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, keys: list[str], encode) -> np.ndarray:
        """The row of each key; keys not seen yet are encoded (`encode(list) -> (flat ids, lens)`) first."""
        index = self.index
        rows = np.fromiter(map(index.get, keys, repeat(-1)), np.int64, count=len(keys))
        miss = np.flatnonzero(rows < 0)
        if len(miss):
            missing = list(map(keys.__getitem__, miss.tolist()))
            new = list(dict.fromkeys(missing))
            self.add(new, *encode(new))
            rows[miss] = np.fromiter(map(index.__getitem__, missing), np.int64, count=len(missing))
        return rows

    def add(self, keys: list[str], flat: np.ndarray, lens: np.ndarray) -> None:
        need = self.used + len(flat)
        if need > len(self.flat):
            grown = np.zeros(max(need, 2 * len(self.flat)), np.int32)
            grown[: self.used] = self.flat[: self.used]
            self.flat = grown
        self.flat[self.used: need] = flat
        self.starts = np.concatenate((self.starts, self.used + np.cumsum(lens) - lens))
        self.lens = np.concatenate((self.lens, lens))
        self.used = need
        base = len(self.index)
        self.index.update(zip(keys, range(base, base + len(keys))))

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids of the rows one after another, and the number of ids of each."""
        lens = self.lens[rows]
        return self.flat[_ranges(self.starts[rows], lens)], lens


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """`concatenate([arange(s, s + n) for s, n in zip(starts, lens)])`, vectorized."""
    ends = np.cumsum(lens)
    total = int(ends[-1]) if len(ends) else 0
    return np.repeat(starts - (ends - lens), lens) + np.arange(total)


def _flatten(encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """All lists back to back (int32), and the length of each."""
    lens = np.fromiter(map(len, encoded), np.int64, count=len(encoded))
    return np.fromiter(chain.from_iterable(encoded), np.int32, count=int(lens.sum())), lens


class ChunkMemoEncoder:
    """Exact, memoized token ids for GPT-2 style byte-level BPE tokenizers (no normalizer, a
    `ByteLevel(use_regex=True)` pre-tokenizer, BPE without dropout, no padding or truncation).

    BPE never merges across pre-tokens, so a document's ids are the concatenation of the ids of its
    pre-tokens, each encoded alone. Natural text repeats words, so most of them have been seen:

    1. each document is cut into chunks (`_CHUNK_SPLIT`: " word" pieces) whose ids are memoized;
    2. a chunk not seen yet is cut into pre-tokens with the GPT-2 regex (the `regex` module), whose ids
       are memoized too; only never-seen pre-tokens go through the HF tokenizer.

    Step 2 relies on `regex` and Oniguruma classifying each character the same way (whitespace,
    letter, number, other): every character met is first checked against the tokenizer's own
    pre-tokenizer (`_PROBES`); a chunk with a character that fails, or any text when `regex` is not
    installed, is encoded by the tokenizer as a whole (still exact by step 1). A document containing
    the text of an added (special) token is encoded by the tokenizer as a whole, since those are
    split out before pre-tokenization. Memory is bounded: the memo is cleared once it holds more than
    `max_chunks` chunks and pre-tokens (a few hundred MB at the default).
    """

    def __init__(self, tok, max_chunks: int = 2_000_000):
        self.tok = tok
        self.max_chunks = max_chunks
        added = [t.content for t in tok.get_added_tokens_decoder().values()]
        self._added = re.compile("|".join(re.escape(a) for a in sorted(added, key=len, reverse=True))) \
            if added else None
        try:
            import regex
        except ImportError:  # step 2 off: chunks are encoded by the tokenizer
            regex = None
        self._pretok = regex.compile(GPT2_PRETOKENIZE) if regex else None
        self._safe: set[str] = set()  # characters checked against the tokenizer's pre-tokenizer
        self._unsafe: set[str] = set()
        self._known = re.compile("[^\\s\\S]")  # matches characters in either set (none yet)
        self._fast = None  # `_fast_pretokenizer(self._safe)`, rebuilt as characters are added
        self._leads: set[str] = set()
        self._reset()

    @staticmethod
    def supports(spec: dict) -> bool:
        """Whether a tokenizer.json (parsed) has the structure this encoder is exact for."""
        pre = spec.get("pre_tokenizer") or {}
        model = spec.get("model") or {}
        return (spec.get("normalizer") is None and spec.get("truncation") is None
                and spec.get("padding") is None
                and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                and not pre.get("add_prefix_space", False)
                and model.get("type") == "BPE" and not model.get("dropout"))

    def _reset(self) -> None:
        self._chunks = _IdTable()
        self._pieces = _IdTable()

    def encode(self, texts: list[str]) -> list[list[int]]:
        ids, lens = self.encode_flat(texts)
        ends = np.cumsum(lens).tolist()
        flat = ids.tolist()
        return [flat[a:b] for a, b in zip([0] + ends[:-1], ends)]

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of all texts back to back (int32), and the number of each text's."""
        if not texts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        whole, docs, chunked = [], [], []
        added = self._added
        for i, text in enumerate(texts):
            if added is not None and added.search(text):
                whole.append(i)
            else:
                docs.append(i)
                chunked.append(_CHUNK_SPLIT.split(text))
        if docs:
            if len(self._chunks) + len(self._pieces) > self.max_chunks:
                self._reset()
            # every chunk but a document's first starts at a split point
            self._leads = {ch[0] for ch in chunked if not _CHUNK_START.match(ch[0])}
            rows = self._chunks.rows(list(chain.from_iterable(chunked)), self._encode_chunks)
            ids, chunk_lens = self._chunks.gather(rows)
            n_chunks = np.fromiter(map(len, chunked), np.int64, count=len(chunked))
            cum = np.concatenate(([0], np.cumsum(chunk_lens)))
            lens = np.diff(cum[np.concatenate(([0], np.cumsum(n_chunks)))])
        if not whole:
            return ids, lens
        ids_w, lens_w = self._encode_tokenizer([texts[i] for i in whole])
        if not docs:
            return ids_w, lens_w
        # back to the order of `texts`
        order = np.asarray(docs + whole, np.int64)
        all_ids, all_lens = np.concatenate((ids, ids_w)), np.concatenate((lens, lens_w))
        inv = np.empty(len(order), np.int64)
        inv[order] = np.arange(len(order))
        starts = np.cumsum(all_lens) - all_lens
        return all_ids[_ranges(starts[inv], all_lens[inv])], all_lens[inv]

    def _encode_tokenizer(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return _flatten([enc.ids for enc in _encode_batch(self.tok, texts)])

    def _encode_chunks(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of the chunks, each encoded alone, one after another, and their number per chunk."""
        if self._pretok is None:
            return self._encode_tokenizer(chunks)
        unknown = set(self._known.sub("", "".join(chunks)))
        if unknown:
            for c in unknown:
                (self._safe if self._same_pretokens(c) else self._unsafe).add(c)
            self._known = re.compile("[" + "".join(map(re.escape, sorted(self._safe | self._unsafe))) + "]+")
            self._fast = _fast_pretokenizer(self._safe, self._pretok)
        unsafe = self._unsafe
        whole = [j for j, ch in enumerate(chunks) if not unsafe.isdisjoint(ch)] if unsafe else []
        # A chunk that starts at a split point (" " + letter or digit) may follow any other: those are
        # pre-tokenized together in one pass; the others (a document's first chunk) one by one.
        skip = set(whole)
        leads = self._leads
        lead = [j for j, ch in enumerate(chunks) if ch in leads and j not in skip] if leads else []
        skip.update(lead)
        rest = [j for j in range(len(chunks)) if j not in skip] if skip else list(range(len(chunks)))
        rest_chunks = [chunks[j] for j in rest] if skip else chunks
        findall = self._fast.findall if self._fast is not None else self._pretok.findall
        lead_pieces = [findall(chunks[j]) for j in lead]
        rest_pieces = findall("".join(rest_chunks))
        pieces = list(chain.from_iterable(lead_pieces))
        pieces += rest_pieces
        # pieces per chunk (order lead + rest); for the rest, by matching cumulative lengths
        piece_end = np.cumsum(np.fromiter(map(len, rest_pieces), np.int64, count=len(rest_pieces)))
        chunk_end = np.cumsum(np.fromiter(map(len, rest_chunks), np.int64, count=len(rest_chunks)))
        n_pieces = np.concatenate((np.fromiter(map(len, lead_pieces), np.int64, count=len(lead_pieces)),
                                   np.diff(np.searchsorted(piece_end, chunk_end, side="right"), prepend=0)))
        flat, piece_lens = self._pieces.gather(self._pieces.rows(pieces, self._encode_tokenizer))
        cum = np.concatenate(([0], np.cumsum(piece_lens)))
        lens = np.diff(cum[np.concatenate(([0], np.cumsum(n_pieces)))])
        order = lead + rest
        if whole:
            flat_w, lens_w = self._encode_tokenizer([chunks[j] for j in whole])
            order += whole
            flat, lens = np.concatenate((flat, flat_w)), np.concatenate((lens, lens_w))
        if not skip:
            return flat, lens
        # back to the order of `chunks`
        inv = np.empty(len(order), np.int64)
        inv[np.asarray(order, np.int64)] = np.arange(len(order))
        starts = np.cumsum(lens) - lens
        return flat[_ranges(starts[inv], lens[inv])], lens[inv]

    def _same_pretokens(self, c: str) -> bool:
        """Whether the regex and the tokenizer's pre-tokenizer split every probe around `c` alike."""
        pre = self.tok.pre_tokenizer
        for probe in _PROBES:
            text = probe.format(c=c)
            ours = [m.span() for m in self._pretok.finditer(text)]
            theirs = [span for _, span in pre.pre_tokenize_str(text)]
            if ours != theirs:
                return False
        return True


def _fast_pretokenizer(chars: set[str], pretok) -> re.Pattern | None:
    """The GPT-2 pattern for text made only of `chars`, in Python's `re` (about a third faster than
    the `regex` module here): `\\p{L}`, `\\p{N}` and `\\s` become explicit classes of the characters of
    `chars` that `regex` puts in each (the same classes as the tokenizer's for every character of `chars`:
    those passed `_same_pretokens`). Only valid on text whose characters are all in `chars`; None
    when `pretok` is not the GPT-2 pattern (a test swaps it) or `chars` is empty."""
    import regex

    if pretok is None or pretok.pattern != GPT2_PRETOKENIZE or not chars:
        return None
    classes = {"L": [], "N": [], "S": []}
    for c in sorted(chars):
        for k, probe in (("L", r"\p{L}"), ("N", r"\p{N}"), ("S", r"\s")):
            if regex.fullmatch(probe, c):
                classes[k].append(re.escape(c))
                break
    # an empty class would be `[]` (invalid): `(?!x)x` never matches
    L, N, S = ("[" + "".join(v) + "]" if v else "(?!x)x" for v in classes.values())
    lns = classes["L"] + classes["N"] + classes["S"]
    other = "[^" + "".join(lns) + "]" if lns else "[\\s\\S]"
    no_s = "[^" + "".join(classes["S"]) + "]" if classes["S"] else "[\\s\\S]"
    return re.compile(f"'s|'t|'re|'ve|'m|'ll|'d| ?{L}+| ?{N}+| ?{other}+|{S}+(?!{no_s})|{S}+")


def set_tokenizer_threads(workers: int) -> None:
    """HF tokenizers runs encode_batch on a Rayon pool sized at first use: set it before that."""
    os.environ["RAYON_NUM_THREADS"] = str(max(1, workers))
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if workers > 1 else "false"


def train_byte_level_bpe(texts: Iterable[str], out_dir: str, vocab_size: int, min_frequency: int,
                         fingerprint: dict) -> None:
    """Trains a byte-level BPE on `texts` and saves it (tokenizer.json + transformers files) atomically.

    `fingerprint` is stored as `train_fingerprint.json` so a changed corpus or setting retrains."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=SPECIAL_TOKENS[4:])
    fast.save_pretrained(str(tmp))
    (tmp / "train_fingerprint.json").write_text(json.dumps(fingerprint, indent=2, sort_keys=True))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)


def read_train_fingerprint(out_dir: str) -> dict | None:
    f = Path(out_dir) / "train_fingerprint.json"
    return json.loads(f.read_text()) if f.exists() else None


class MegatronTokenizerView:
    """What megatron-core's datasets read from a tokenizer (`GPTDatasetConfig.tokenizer`): the vocabulary
    size (token dtype), EOD (document boundaries), pad and eos, and an identity for cache names.

    A duck type rather than a `MegatronTokenizerBase` subclass: that class moved between megatron-core
    0.16 and 0.19, and the datasets only read these attributes."""

    def __init__(self, vocab_size: int, eod: int, pad: int, tokenizer_json_sha256: str):
        self.vocab_size, self.eod, self.eos, self.pad = vocab_size, eod, eod, pad
        self.unique_identifiers = {"class": "hebatron_nemo.LocalTokenizer", "tokenizer_json_sha256": tokenizer_json_sha256}

    @classmethod
    def from_tokenizer(cls, tokenizer: LocalTokenizer, pad_token: str = "<pad>") -> "MegatronTokenizerView":
        pad = tokenizer.tok.token_to_id(pad_token)
        if pad is None or pad == tokenizer.eod:
            raise ConfigError(f"tokenizer at {tokenizer.path!r} needs a pad token {pad_token!r} distinct from EOD")
        return cls(tokenizer.vocab_size, tokenizer.eod, pad, tokenizer.identity()["tokenizer_json_sha256"])

    @classmethod
    def from_plan(cls, info: dict) -> "MegatronTokenizerView":
        """From a plan's `tokenizer` record (training ranks need no tokenizer file)."""
        return cls(info["vocab_size"], info["eod"], info["pad"], info["tokenizer_json_sha256"])
