"""SFT examples: English anchor chats derived from documents, tokenized conversations, and
length-bucketed batches (no packing) for the local backend.

The SFT data itself is prepared from a registry (``sft.prepare``, ``conf/sft_data/``); this module
holds what the preparation and the local trainer share: ``anchor_conversations`` (English chats whose
answers are verbatim spans of a document, for registries that derive anchor chats from text),
``read_pairs`` (the validating reader of aligned-pair files), ``tokenize_conversations``, ``collate``
and ``bucket_indices``.

Why no packing on the local backend: transformers' Nemotron-H passes no document boundaries to its
Mamba-2 layers (no ``seq_idx``/``cu_seqlens``), so a packed row would carry recurrent state from one
conversation into the next. Each row is one conversation; similar lengths are batched together to
keep padding low.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hebatron_nemo.errors import ConfigError, DataError
from hebatron_nemo.sft.template import ConversationTooLong, encode_conversations, fit_length

SALT = "hebatron-sft-v1"
IGNORE_INDEX = -100  # transformers' cross-entropy ignore_index


# ------------------------------------------------------------------------------------------ hashing


def _hash(*parts: object) -> int:
    """A 64-bit hash of the parts (blake2b): stable across processes, unlike Python's hash()."""
    key = "\x1f".join(map(str, parts)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _unit(*parts: object) -> float:
    """A number in [0, 1) fixed by the parts."""
    return _hash(*parts) / 2.0**64


def _pick(options: Sequence, *parts: object):
    return options[_hash(*parts) % len(options)]


# ------------------------------------------------------------------------------------------ pairs


@dataclass(frozen=True, slots=True)
class TranslationPair:
    """One aligned Hebrew-English pair and where it was read (file, 1-based line)."""

    id: str
    he: str
    en: str
    path: str = ""
    line: int = 0


def read_pairs(path: str | Path, clean_hebrew: bool = False) -> list[TranslationPair]:
    """The pairs of a JSONL file (or directory of them) with rows ``{"id", "he", "en"}``.

    Read through ``iter_documents`` (one stream per field, in step), so a malformed line, a missing
    field or a non-string value is a DataError naming the file, line and field; so are an empty or
    blank ``id``/``he``/``en`` and an ``id`` seen before. ``clean_hebrew`` applies
    ``demo.sft.clean_verse`` (the demo's verses need it; an ``he`` empty after cleaning is an error too).
    Texts are otherwise kept as written, stripped of surrounding whitespace."""
    from hebatron_nemo.data.readers import iter_documents, resolve_files
    from hebatron_nemo.demo.sft import clean_verse  # the demo pairs' own marks; only on request

    pairs: list[TranslationPair] = []
    seen: dict[str, tuple[str, int]] = {}
    for file in resolve_files(path, "jsonl"):
        streams = [iter_documents(file, "jsonl", text_field=f) for f in ("id", "he", "en")]
        for ids, he, en in zip(*streams, strict=True):
            line = int(ids.doc_id.rsplit(":", 1)[1])  # "<file name>:<line>" when no id_field is set
            where = {"path": str(file), "line": line}
            for name, doc in (("id", ids), ("he", he), ("en", en)):
                if not doc.text.strip():
                    raise DataError("empty text", field=name, **where)
            text_he = clean_verse(he.text) if clean_hebrew else he.text.strip()
            if not text_he:
                raise DataError("no Hebrew left after removing the source's marks", field="he", **where)
            pid = ids.text.strip()
            if pid in seen:
                first = seen[pid]
                raise DataError(f"duplicate id {pid!r} (first at {first[0]}:{first[1]})", field="id", **where)
            seen[pid] = (str(file), line)
            pairs.append(TranslationPair(pid, text_he, en.text.strip(), str(file), line))
    return pairs


# ------------------------------------------------------------------------------------------ anchor

# A sentence ends at . ! ? (and a closing quote, if one follows) before whitespace and a capital letter
# or an opening quote. Approximate for Bible prose, but every answer is a verbatim span either way.
_SENTENCE_END = re.compile(r"(?<=[.!?])(['\u2019\"\u201d]?)\s+(?=[A-Z'\u2018\"\u201c(])")
_WORD = re.compile(r"[A-Za-z]+")


def split_sentences(text: str) -> list[str]:
    """The sentences of an English text, in order, whitespace-trimmed, empty ones dropped."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.start() + len(m.group(1))].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


_NUMBER_WORDS = {1: ("sentence", "one"), 2: ("sentences", "two")}
_ANCHOR_PROMPTS = {
    "continue": [
        "Continue the passage below with its next {count} {noun}.\n\n{passage}",
        "Here is the beginning of a passage. Carry it on for {count} more {noun}.\n\n{passage}",
        "{passage}\n\nWhat comes next? Give the following {count} {noun}.",
    ],
    "first": [
        "Quote the first sentence of this passage word for word.\n\n{passage}",
        "{passage}\n\nWhat is the opening sentence of the text above? Copy it exactly.",
        "Repeat only the first sentence of the following text:\n\n{passage}",
    ],
    "last": [
        "Quote the last sentence of this passage word for word.\n\n{passage}",
        "{passage}\n\nCopy out the final sentence of the text above, unchanged.",
        "Which sentence closes the following text? Repeat it exactly.\n\n{passage}",
    ],
    "word": [
        "Which sentence of the passage below contains the word \"{word}\"? Quote it exactly.\n\n{passage}",
        "{passage}\n\nCopy the one sentence above that uses the word \"{word}\".",
        "Find the sentence with \"{word}\" in this text and repeat it word for word:\n\n{passage}",
    ],
}
_ANCHOR_SYSTEM = ["Answer using only the text you are given.",
                  "You are a helpful assistant. Quote the given text exactly when asked to."]
# (task, cumulative probability): continuation is the main task, the extractive ones keep variety.
_ANCHOR_TASKS = (("continue", 0.5), ("first", 0.65), ("last", 0.8), ("word", 1.0))


@dataclass
class AnchorStats:
    """What `anchor_conversations` made and left out."""

    documents: int = 0
    windows: int = 0
    conversations: int = 0
    contaminated: int = 0
    tasks: dict = field(default_factory=dict)


def _unique_word(window: list[str], key: str) -> str | None:
    """A word (letters only, 5+ long, case-folded match) found in exactly one sentence of the window."""
    where: dict[str, set[int]] = {}
    first_form: dict[str, str] = {}
    for i, sentence in enumerate(window):
        for w in _WORD.findall(sentence):
            if len(w) >= 5:
                k = w.casefold()
                where.setdefault(k, set()).add(i)
                first_form.setdefault(k, w)
    candidates = sorted(k for k, s in where.items() if len(s) == 1)
    return first_form[_pick(candidates, key)] if candidates else None


def _anchor_task(window: list[str], key: str, source: str, system_fraction: float, decontaminator, salt: str,
                 stats: AnchorStats) -> dict | None:
    """The chat for one window of sentences, or None when the window is contaminated."""
    stats.windows += 1
    if decontaminator is not None and decontaminator.is_contaminated(" ".join(window)):
        stats.contaminated += 1
        return None
    u = _unit(salt, "task", key)
    task = next(t for t, p in _ANCHOR_TASKS if u < p)
    word = _unique_word(window, f"{salt}|word|{key}") if task == "word" else None
    if task == "word" and word is None:
        task = "continue"
    template = _pick(_ANCHOR_PROMPTS[task], salt, "prompt", key)
    if task == "continue":
        k = 1 if len(window) < 4 else 1 + _hash(salt, "continue", key) % 2
        noun, count = _NUMBER_WORDS[k][0], _NUMBER_WORDS[k][1]
        prompt = template.format(passage=" ".join(window[:-k]), count=count, noun=noun)
        answer = " ".join(window[-k:])
    else:
        prompt = template.format(passage=" ".join(window), word=word)
        if task == "first":
            answer = window[0]
        elif task == "last":
            answer = window[-1]
        else:
            answer = next(s for s in window if word.casefold() in map(str.casefold, _WORD.findall(s)))
    messages = []
    if _unit(salt, "anchor-system", key) < system_fraction:
        messages.append({"role": "system", "content": _pick(_ANCHOR_SYSTEM, salt, "anchor-system-text", key)})
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    stats.tasks[task] = stats.tasks.get(task, 0) + 1
    stats.conversations += 1
    return {"id": key, "source": source, "messages": messages}


def anchor_conversations(documents: Iterable, source: str, min_sentences: int = 3, max_sentences: int = 7,
                         tilings: int = 2, system_fraction: float = 0.2, decontaminator=None, salt: str = SALT,
                         stats: AnchorStats | None = None) -> list[dict]:
    """English chats whose answers are verbatim spans of the given documents (``Document``-like: ``text``,
    ``doc_id``).

    Each document is cut into consecutive windows of `min_sentences`..`max_sentences` sentences (size
    fixed by a hash), `tilings` times over with different boundaries (the first tiling starts at the
    first sentence, the others a hashed 1..min_sentences-1 sentences in), so each sentence serves in
    up to `tilings` tasks. Each window becomes one task, chosen by a hash: continue the passage (the answer
    is its next one or two sentences, which the prompt leaves out), or quote its first sentence, its
    last sentence, or the one sentence containing a given word. Nothing is paraphrased or summarized,
    so no answer states anything the text does not. Windows sharing an n-gram with evaluation texts
    (`decontaminator`, a ``data.filters.Decontaminator``) are left out and counted in `stats`."""
    if not 2 <= min_sentences <= max_sentences:
        raise ConfigError(f"anchor windows need 2 <= min_sentences <= max_sentences, "
                          f"got {min_sentences}, {max_sentences}")
    if tilings < 1:
        raise ConfigError(f"anchor tilings must be >= 1, got {tilings}")
    stats = stats if stats is not None else AnchorStats()
    out = []
    for doc in documents:
        stats.documents += 1
        sentences = split_sentences(doc.text)
        for view in range(tilings):
            i = 0 if view == 0 else 1 + _hash(salt, "offset", source, doc.doc_id, view) % (min_sentences - 1)
            while len(sentences) - i >= 2:
                key = f"{source}|{doc.doc_id}|{view}|{i}"
                n = min_sentences + _hash(salt, "window", key) % (max_sentences - min_sentences + 1)
                window = sentences[i:i + n]
                i += n
                conv = _anchor_task(window, key, source, system_fraction, decontaminator, salt, stats)
                if conv is not None:
                    out.append(conv)
    return out


# ------------------------------------------------------------------------------------------ tokenized


@dataclass(frozen=True, slots=True, eq=False)
class SFTExample:
    """One tokenized conversation: ``input_ids`` (int32) and ``loss_mask`` (uint8, 1 = trained token),
    equal lengths."""

    id: str
    source: str
    input_ids: np.ndarray
    loss_mask: np.ndarray
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss(self) -> int:
        """Tokens the loss is computed on."""
        return int(self.loss_mask.sum())


OVERFLOW = ("drop", "truncate", "error")


def tokenize_conversations(conversations: Sequence[Mapping], tokenizer, max_length: int,
                           overflow: str = "drop", batch: int = 4096) -> tuple[list[SFTExample], dict]:
    """Tokenizes chats (``{"id", "source", "messages"}``) into SFTExamples, and counts what happened.

    Over `max_length`: ``drop`` skips the chat, ``truncate`` cuts its tail (skipping it if no loss
    token is left), ``error`` raises ConversationTooLong naming it. The counts are
    ``{"conversations", "kept", "truncated", "dropped_too_long", "dropped_no_loss"}``."""
    if overflow not in OVERFLOW:
        raise ConfigError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
    counts = {"conversations": len(conversations), "kept": 0, "truncated": 0, "dropped_too_long": 0,
              "dropped_no_loss": 0}
    out = []
    for start in range(0, len(conversations), batch):
        chunk = conversations[start:start + batch]
        encoded = encode_conversations([c["messages"] for c in chunk], tokenizer)
        for conv, (ids, mask) in zip(chunk, encoded):
            too_long = len(ids) > max_length
            try:
                ids, mask, truncated = fit_length(ids, mask, max_length, overflow == "truncate",
                                                  what=f"conversation {conv['id']!r}")
            except ConversationTooLong:
                if overflow == "error":
                    raise
                # "drop" skips what is too long; any mode skips what would train on nothing
                counts["dropped_too_long" if too_long and overflow == "drop" else "dropped_no_loss"] += 1
                continue
            counts["truncated"] += truncated
            out.append(SFTExample(conv["id"], conv.get("source", ""), np.asarray(ids, np.int32),
                                  np.asarray(mask, np.uint8), truncated))
    counts["kept"] = len(out)
    return out, counts


# ------------------------------------------------------------------------------------------ batches


def collate(examples: Sequence[SFTExample], pad_id: int = 0, pad_to_multiple_of: int | None = None) -> dict:
    """Right-padded LongTensors ``input_ids``, ``labels``, ``attention_mask``, ``loss_mask`` [batch, length].

    Label alignment: ``labels[b, t] = input_ids[b, t]`` where ``loss_mask[b, t] == 1``, else -100 (padding
    included). Labels are *not* shifted here: transformers' causal-LM loss (``ForCausalLMLoss``) shifts
    internally, scoring ``logits[:, t - 1]`` against ``labels[:, t]``, so passing ``labels`` to the model
    trains exactly "predict token t from tokens < t" for the masked t. A loop computing the loss itself
    uses ``cross_entropy(logits[:, :-1], input_ids[:, 1:])`` weighted by ``loss_mask[:, 1:]``. Position 0
    is never a target (no prefix); in rendered chats it is ``<|im_start|>``, mask 0.

    Padding is on the right and gets ``pad_id``, attention 0, loss mask 0: every pad comes after all
    real tokens of its row, so neither causal attention nor the Mamba scan carries it into them."""
    import torch

    if not examples:
        raise ConfigError("collate needs at least one example")
    width = max(len(e) for e in examples)
    if pad_to_multiple_of:
        width = math.ceil(width / pad_to_multiple_of) * pad_to_multiple_of
    ids = np.full((len(examples), width), pad_id, np.int64)
    mask = np.zeros((len(examples), width), np.int64)
    attn = np.zeros((len(examples), width), np.int64)
    for b, e in enumerate(examples):
        n = len(e)
        ids[b, :n] = e.input_ids
        mask[b, :n] = e.loss_mask
        attn[b, :n] = 1
    labels = np.where(mask == 1, ids, IGNORE_INDEX)
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(attn), "loss_mask": torch.from_numpy(mask)}


def bucket_indices(lengths: Sequence[int], batch_size: int, seed: int, window: int | None = None) -> list[list[int]]:
    """Batches of example indices, each of similar lengths; together every index exactly once.

    Indices are sorted by length (ties broken by a seeded shuffle, so equal lengths mix sources), cut
    into consecutive batches of `batch_size` (the last one of each sorting range may be smaller), and
    the batch order is shuffled by `seed`. With `window` (batches), sorting and shuffling happen within
    consecutive ranges of ``window * batch_size`` indices in input order, keeping the mixture's
    interleaving at that scale; without it, over the whole epoch (least padding)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if window is not None and window < 1:
        raise ConfigError(f"window must be >= 1 batches, got {window}")
    lengths = np.asarray(lengths, np.int64)
    n = len(lengths)
    rng = np.random.default_rng(seed)
    span = n if window is None else window * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, max(span, 1)):
        idx = np.arange(start, min(start + span, n))
        tie = rng.permutation(len(idx))
        order = idx[np.lexsort((tie, lengths[idx]))]
        group = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        batches += [group[j] for j in rng.permutation(len(group))]
    return batches


def length_bucketed_batches(examples: Sequence[SFTExample], batch_size: int, seed: int, window: int | None = None,
                            pad_id: int = 0, pad_to_multiple_of: int | None = None) -> Iterator[dict]:
    """One epoch of collated batches (see ``collate``) in ``bucket_indices`` order; each batch also has
    ``index``, the positions of its examples in `examples`. Use a different seed per epoch."""
    for batch in bucket_indices([len(e) for e in examples], batch_size, seed, window):
        out = collate([examples[i] for i in batch], pad_id, pad_to_multiple_of)
        out["index"] = batch
        yield out
