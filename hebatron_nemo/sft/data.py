"""The bilingual SFT data of the demo: translation chats from aligned pairs, English anchor chats, their
mixture measured in loss tokens, and length-bucketed batches (no packing).

Pipeline::

    read_pairs -> translation_conversations --+
                                              +-> tokenize_conversations -> SFTMixture.build
    iter_documents(en_*) -> anchor_conversations                              -> length_bucketed_batches

Every choice (phrasing, system prompt, reasoning, anchor task, window size) is a function of a hash of
the item's id, so the data is the same on every machine and run; only the mixture's order and the
batches depend on a seed. Instructions are written for this project in Hebrew and English.

Why no packing: transformers' Nemotron-H passes no document boundaries to its Mamba-2 layers (no
``seq_idx``/``cu_seqlens``), so a packed row would carry recurrent state from one conversation into the
next. Each row is one conversation; similar lengths are batched together to keep padding low.
"""

from __future__ import annotations

import hashlib
import itertools
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
DIRECTIONS = ("he-en", "en-he")


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


_MORPH_SLASH = re.compile(r"(?<=[\u05d0-\u05ea])/(?=[\u05d0-\u05ea])")
_MAQAF = re.compile(r"\s*[-\u05be]\s*")
_PARAGRAPH_MARK = re.compile(r"(?:(?<=\s)|^)[\u05e1\u05e4](?=\s|$)")
_NUN_HAFUKHA = "\u05c6"


def clean_hebrew_verse(text: str) -> str:
    """The demo pairs' Hebrew as plain unpointed text.

    The demo's Hebrew verses come in a morphologically segmented form: ``/`` between a word's
    morphemes (``ו/יהיו``), the maqaf written `` - `` (``בני - נח``), the paragraph markers ``ס`` and
    ``פ`` as words of their own, and inverted nun ``׆``. A chat model should read and write plain
    Hebrew, so morphemes are joined, maqaf becomes a space (as unpointed modern text writes it),
    markers are dropped and spaces collapsed. Meant for that source only: in modern text it would also
    turn a spaced dash into a space and drop a lone ס or פ."""
    text = _MORPH_SLASH.sub("", text.replace(_NUN_HAFUKHA, ""))
    text = _MAQAF.sub(" ", text)
    text = _PARAGRAPH_MARK.sub("", text)
    return " ".join(text.split())


def read_pairs(path: str | Path, clean_hebrew: bool = False) -> list[TranslationPair]:
    """The pairs of a JSONL file (or directory of them) with rows ``{"id", "he", "en"}``.

    Read through ``iter_documents`` (one stream per field, in step), so a malformed line, a missing
    field or a non-string value is a DataError naming the file, line and field; so are an empty or
    blank ``id``/``he``/``en`` and an ``id`` seen before. ``clean_hebrew`` applies
    ``clean_hebrew_verse`` (the demo's verses need it; an ``he`` empty after cleaning is an error too).
    Texts are otherwise kept as written, stripped of surrounding whitespace."""
    from hebatron_nemo.data.readers import iter_documents, resolve_files

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
            text_he = clean_hebrew_verse(he.text) if clean_hebrew else he.text.strip()
            if not text_he:
                raise DataError("no Hebrew left after removing the source's marks", field="he", **where)
            pid = ids.text.strip()
            if pid in seen:
                first = seen[pid]
                raise DataError(f"duplicate id {pid!r} (first at {first[0]}:{first[1]})", field="id", **where)
            seen[pid] = (str(file), line)
            pairs.append(TranslationPair(pid, text_he, en.text.strip(), str(file), line))
    return pairs


# Instructions: (language, template); {src} is the text to translate. Written for this project.
_INSTRUCTIONS = {
    "he-en": [
        ("he", "נא לתרגם לאנגלית את הפסוק הבא:\n\n{src}"),
        ("he", "מה התרגום לאנגלית של הטקסט הזה?\n\n{src}"),
        ("he", "{src}\n\nאיך אומרים את זה באנגלית?"),
        ("he", "תרגום לאנגלית, בבקשה:\n{src}"),
        ("en", "Translate this Hebrew verse into English:\n\n{src}"),
        ("en", "What does the following Hebrew text say in English?\n\n{src}"),
        ("en", "{src}\n\nPlease put the Hebrew above into English."),
        ("en", "English translation, please:\n{src}"),
    ],
    "en-he": [
        ("he", "נא לתרגם לעברית את הפסוק הבא:\n\n{src}"),
        ("he", "איך כותבים את זה בעברית?\n\n{src}"),
        ("he", "{src}\n\nמה התרגום של הטקסט הזה לעברית?"),
        ("he", "תרגום לעברית, בבקשה:\n{src}"),
        ("en", "Translate the following verse into Hebrew:\n\n{src}"),
        ("en", "How would this read in Hebrew?\n\n{src}"),
        ("en", "{src}\n\nGive me the Hebrew version of the text above."),
        ("en", "Hebrew translation, please:\n{src}"),
    ],
}
_TRANSLATION_SYSTEM = {
    "he": ["תפקידך: תרגום נאמן בין עברית לאנגלית. יש להשיב בתרגום בלבד.",
           "התשובות כאן הן תרגומים מדויקים, בלי הסברים נוספים."],
    "en": ["You translate faithfully between Hebrew and English. Reply with the translation only.",
           "You are a careful Hebrew-English translator."],
}
_LANGUAGE_NAME = {"he": {"he": "עברית", "en": "אנגלית"}, "en": {"he": "Hebrew", "en": "English"}}
# Reasoning states only what is true of every such example: the direction, the source's word count
# (computed), and that the answer is the translation alone.
_TRANSLATION_REASONING = {
    "he": ["המשימה: תרגום מ{src_lang} ל{tgt_lang}. במקור {words} מילים. אחזיר את התרגום בלבד, בלי הערות.",
           "צריך לתרגם טקסט של {words} מילים מ{src_lang} ל{tgt_lang} ולהשיב רק בתרגום."],
    "en": ["The task is to translate from {src_lang} into {tgt_lang}. The source has {words} words. "
           "I will give only the translation, with no commentary.",
           "A {words}-word text to put from {src_lang} into {tgt_lang}; the answer is the translation alone."],
}


def translation_conversations(pairs: Iterable[TranslationPair], directions: Sequence[str] = DIRECTIONS,
                              system_fraction: float = 0.3, reasoning_fraction: float = 0.2,
                              salt: str = SALT) -> list[dict]:
    """Translation chats from pairs, one per pair and direction (``he-en``, ``en-he``).

    Each is ``{"id": "<pair id>|<direction>", "source": "translation", "messages": [...]}``. The
    instruction (Hebrew or English, several phrasings), whether a system prompt is present (about
    `system_fraction` of chats) and whether the assistant turn carries a short reasoning trace (about
    `reasoning_fraction`) are each fixed by a hash of the id. The answer is the pair's other side."""
    for d in directions:
        if d not in _INSTRUCTIONS:
            raise ConfigError(f"translation direction {d!r} is not one of {sorted(_INSTRUCTIONS)}")
    out = []
    for pair in pairs:
        for d in directions:
            cid = f"{pair.id}|{d}"
            src_lang, tgt_lang = d.split("-")
            src, tgt = (pair.he, pair.en) if src_lang == "he" else (pair.en, pair.he)
            lang, template = _pick(_INSTRUCTIONS[d], salt, "instruction", cid)
            messages = []
            if _unit(salt, "system", cid) < system_fraction:
                system = _pick(_TRANSLATION_SYSTEM[lang], salt, "system-text", cid)
                messages.append({"role": "system", "content": system})
            messages.append({"role": "user", "content": template.format(src=src)})
            answer = {"role": "assistant", "content": tgt}
            if _unit(salt, "reasoning", cid) < reasoning_fraction:
                names = _LANGUAGE_NAME[lang]
                answer["reasoning_content"] = _pick(_TRANSLATION_REASONING[lang], salt, "reasoning-text", cid).format(
                    src_lang=names[src_lang], tgt_lang=names[tgt_lang], words=len(src.split()))
            messages.append(answer)
            out.append({"id": cid, "source": "translation", "messages": messages})
    return out


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


# ------------------------------------------------------------------------------------------ mixture


def _permutation(n: int, seed: int, name: str) -> np.ndarray:
    return np.random.default_rng([seed, _hash("stream", name) & 0xFFFFFFFF]).permutation(n)


def _nearest_prefix(lengths: np.ndarray, target: float) -> int:
    """The k whose prefix sum lengths[:k].sum() is nearest to target (the smaller k on ties)."""
    cum = np.concatenate(([0], np.cumsum(lengths)))
    return int(np.argmin(np.abs(cum - target)))


@dataclass
class SFTMixture:
    """Hebrew chat examples and anchor chat examples, the anchor's share measured in loss tokens.

    ``examples`` is one epoch: every Hebrew example once, plus the anchor examples chosen so that
    anchor loss tokens / all loss tokens is as near `anchor_share` as whole examples allow (within one
    anchor example's loss tokens). Order: Hebrew examples shuffled by seed, each anchor stream shuffled
    by seed, the streams interleaved by ``chairman_order`` on their example counts (every prefix holds
    each stream's count share within one example). ``report`` has the nominal and effective shares."""

    examples: list[SFTExample]
    report: dict

    @classmethod
    def build(cls, hebrew: Sequence[SFTExample], anchor: Sequence[SFTExample] | Mapping[str, Sequence[SFTExample]],
              anchor_share: float, seed: int = 0, anchor_weights: Mapping[str, float] | None = None,
              allow_repeat: bool = False) -> "SFTMixture":
        """`anchor` is one stream or ``{name: examples}``; `anchor_weights` splits the anchor's loss
        tokens between streams (default: in proportion to what each holds). Not enough anchor text for
        the share is a ConfigError unless `allow_repeat`, which reuses a stream in further reshuffled
        passes (reported as ``anchor_passes``)."""
        from hebatron_nemo.curriculum.apportion import chairman_order, largest_remainder

        if not 0.0 <= anchor_share < 1.0:
            raise ConfigError(f"anchor_share must be in [0, 1), got {anchor_share}")
        if not hebrew:
            raise ConfigError("the SFT mixture needs Hebrew examples")
        streams = dict(anchor) if isinstance(anchor, Mapping) else {"anchor": list(anchor)}
        if "hebrew" in streams:
            raise ConfigError("'hebrew' is the name of the Hebrew stream; rename that anchor stream")
        available = {name: int(sum(e.n_loss for e in ex)) for name, ex in streams.items()}
        if anchor_weights is None:
            anchor_weights = {n: float(a) for n, a in available.items()}
        unknown = set(anchor_weights) - set(streams)
        if unknown:
            raise ConfigError(f"anchor_weights name streams that are not given: {sorted(unknown)}")
        hebrew_tokens = int(sum(e.n_loss for e in hebrew))
        # The total if the anchor met its share exactly; its integer split between the Hebrew stream
        # and the anchor streams comes from largest_remainder, so the targets sum to it exactly.
        nominal_total = round(hebrew_tokens / (1.0 - anchor_share))
        weights = {"hebrew": 1.0 - anchor_share}
        weight_sum = sum(anchor_weights.values())
        if anchor_share > 0 and (not streams or weight_sum <= 0):
            raise ConfigError(f"anchor_share={anchor_share} needs anchor examples with positive weight")
        for name in streams:
            w = anchor_weights.get(name, 0.0)
            weights[name] = anchor_share * w / weight_sum if anchor_share > 0 else 0.0
        targets = largest_remainder(weights, nominal_total) if anchor_share > 0 else \
            {"hebrew": hebrew_tokens, **{n: 0 for n in streams}}

        chosen: dict[str, list[SFTExample]] = {}
        passes: dict[str, int] = {}
        carry = 0.0  # loss tokens the earlier anchor streams fell short of their targets (negative: over)
        for name, ex in streams.items():
            target = targets[name] + carry
            longest = max((e.n_loss for e in ex), default=0)
            if available[name] < target - longest and not allow_repeat:
                raise ConfigError(
                    f"anchor stream {name!r} holds {available[name]} loss tokens, short of its target "
                    f"{target:.0f} for anchor_share={anchor_share}; lower the share, add anchor text or "
                    f"set allow_repeat")
            picked: list[SFTExample] = []
            got = 0
            passes[name] = 0
            while ex and target - got > 0 and (allow_repeat or passes[name] == 0):
                order = _permutation(len(ex), seed + passes[name], name)
                lengths = np.fromiter((ex[j].n_loss for j in order), np.int64, count=len(order))
                k = _nearest_prefix(lengths, target - got)
                picked += [ex[j] for j in order[:k]]
                got += int(lengths[:k].sum())
                passes[name] += 1
                if k < len(order):  # the target fell inside this pass
                    break
            chosen[name] = picked
            carry = target - got

        hebrew_order = [hebrew[j] for j in _permutation(len(hebrew), seed, "hebrew")]
        names = ["hebrew", *streams]
        lists = [hebrew_order, *(chosen[n] for n in streams)]
        ids, cursor = chairman_order([len(x) for x in lists])
        examples = [lists[s][c] for s, c in zip(ids.tolist(), cursor.tolist())]

        anchor_tokens = int(sum(e.n_loss for n in streams for e in chosen[n]))
        total = hebrew_tokens + anchor_tokens
        max_anchor = max((e.n_loss for n in streams for e in streams[n]), default=0)
        report = {
            "nominal_anchor_share": anchor_share,
            "effective_anchor_share": anchor_tokens / total if total else 0.0,
            "loss_tokens": {"hebrew": hebrew_tokens, **{n: int(sum(e.n_loss for e in chosen[n])) for n in streams}},
            "loss_token_targets": {n: int(targets[n]) for n in names},
            "examples": {n: len(x) for n, x in zip(names, lists)},
            "input_tokens": int(sum(len(e) for e in examples)),
            # anchor tokens minus what the nominal share of the realized total asks for
            "deviation_loss_tokens": anchor_tokens - anchor_share * total,
            "max_anchor_example_loss_tokens": int(max_anchor),
            "anchor_available_loss_tokens": available,  # the share is capped near sum/(hebrew + sum)
            "anchor_passes": passes,
        }
        return cls(examples, report)


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


# ------------------------------------------------------------------------------------------ demo


def build_demo_sft(corpus_dir: str | Path, tokenizer, max_length: int = 512, anchor_share: float = 0.25,
                   seed: int = 0, split: str = "train", overflow: str = "drop",
                   anchor_sources: Sequence[str] = ("en_kjv", "en_jps"), decontam_ngram: int = 13,
                   max_pairs: int | None = None, max_anchor_documents: int | None = None,
                   messages: dict | None = None) -> SFTMixture:
    """The demo's SFT mixture for one split of ``pairs_{split}.jsonl`` in `corpus_dir`.

    Translation chats in both directions, plus anchor chats from the English sources (``en_kjv.jsonl``,
    ``en_jps.jsonl``; JSONL ``{"id", "text"}``) at `anchor_share` of the loss tokens (0 for none).
    Anchor windows that share a `decontam_ngram`-gram with the English of the valid or test pairs are
    left out: the JPS text *is* the pairs' English, so without this the anchor would teach the eval
    references. The report adds tokenization and anchor counts. When `messages` is a dict, it receives
    every tokenized chat's messages by id (to write the mixture as chat JSONL for Megatron-Bridge)."""
    from hebatron_nemo.data.filters import Decontaminator
    from hebatron_nemo.data.readers import iter_documents

    corpus = Path(corpus_dir)
    pairs = read_pairs(corpus / f"pairs_{split}.jsonl", clean_hebrew=True)
    if max_pairs is not None and len(pairs) > max_pairs:  # a seeded subset: small CPU budgets
        pairs = [pairs[i] for i in sorted(_permutation(len(pairs), seed, f"pairs-{split}")[:max_pairs])]
    convs = translation_conversations(pairs)
    if messages is not None:
        messages.update({c["id"]: c["messages"] for c in convs})
    hebrew, tok_report = tokenize_conversations(convs, tokenizer, max_length, overflow)
    anchor: dict[str, list[SFTExample]] = {}
    anchor_report: dict = {}
    if anchor_share > 0:
        held_out = [p.en for s in ("valid", "test") if (corpus / f"pairs_{s}.jsonl").exists()
                    for p in read_pairs(corpus / f"pairs_{s}.jsonl", clean_hebrew=False)]
        decontaminator = Decontaminator(held_out, decontam_ngram)
        for name in anchor_sources:
            stats = AnchorStats()
            docs = iter_documents(corpus / f"{name}.jsonl", "jsonl", id_field="id")
            if max_anchor_documents is not None:
                docs = itertools.islice(docs, max_anchor_documents)
            convs = anchor_conversations(docs, name, decontaminator=decontaminator, stats=stats)
            if messages is not None:
                convs = list(convs)
                messages.update({c["id"]: c["messages"] for c in convs})
            anchor[name], counts = tokenize_conversations(convs, tokenizer, max_length, overflow)
            anchor_report[name] = {"windows": stats.windows, "contaminated": stats.contaminated,
                                   "tasks": stats.tasks, "tokenization": counts}
    mixture = SFTMixture.build(hebrew, anchor, anchor_share, seed)
    mixture.report.update({"split": split, "pairs": len(pairs), "tokenization": {"translation": tok_report},
                           "anchor_sources": anchor_report, "max_length": max_length})
    return mixture
