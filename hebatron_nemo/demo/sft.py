"""The demo's SFT sources, derived from the demo corpora for the SFT registry `conf/sft_data/demo.yaml`.

`derive_demo_sft` (the registry's `derive` hook) writes, under ``<sft_data.raw_dir>/sft_derived/``:

* ``en_kjv_chats.jsonl``, ``en_jps_chats.jsonl`` (kind ``messages``, role ``anchor``): English chats
  whose answers are verbatim spans of the English Bible chapters (``anchor_conversations``);
* ``he_instructions.jsonl`` (kind ``instruction``): Hebrew "continue the passage" exchanges from the
  Mishnah chapters, the answer being the passage's next sentence as written.

The aligned verse pairs are read as they are (kind ``pairs``), with `clean_verse` as their source's
`transform`: only that source's Hebrew carries the segmentation marks it removes. Everything else
(validation, dedup, decontamination, the length filter, the mixture) is the general preparation.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hebatron_nemo.demo.corpora import unsegment_verse
from hebatron_nemo.errors import ConfigError, DataError
from hebatron_nemo.utils.hashing import hash64, unit_hash
from hebatron_nemo.utils.io import write_jsonl_atomic

SALT = "hebatron-sft-v1"

ANCHOR_SOURCES = ("en_kjv", "en_jps")
HEBREW_SOURCE = "he_mishnah"
MAX_DOCUMENTS = 150  # chapters per corpus: the CPU budget of `make demo`
DERIVED = "sft_derived"

_MAQAF = re.compile(r"\s*[-\u05be]\s*")


def clean_verse(text: str) -> str:
    """The demo pairs' Hebrew as plain unpointed text: `unsegment_verse` (the one cleaner of the
    source's segmentation marks) with every maqaf or hyphen, spaced or not, written as a space (as
    unpointed modern text writes it). Meant for that source only: in modern text it would also turn
    a hyphenated word into two and drop a lone ס or פ."""
    return unsegment_verse(_MAQAF.sub(" ", text))


_HE_SENTENCE_END = re.compile(r"(?<=[.:!?])\s+")
_HE_PROMPTS = ["המשך את הקטע הבא במשפט הבא שלו:\n\n{passage}",
               "{passage}\n\nמה המשפט שבא אחרי זה?",
               "הנה תחילתו של קטע. כתוב את המשפט הבא:\n\n{passage}"]


def hebrew_instructions(documents, min_sentences: int = 3) -> list[dict]:
    """Instruction rows ``{"id", "prompt", "response"}``: a window of sentences and its next sentence."""
    rows = []
    for doc in documents:
        sentences = [s.strip() for s in _HE_SENTENCE_END.split(doc.text) if s.strip()]
        for start in range(0, len(sentences) - min_sentences, min_sentences + 1):
            window = sentences[start:start + min_sentences]
            key = f"{doc.doc_id}#{start}"
            prompt = _HE_PROMPTS[hash64("demo-he-instruction", key) % len(_HE_PROMPTS)]
            rows.append({"id": key, "prompt": prompt.format(passage=" ".join(window)),
                         "response": sentences[start + min_sentences]})
    return rows


def derive_demo_sft(cfg, log=print) -> dict:
    """Writes the derived demo SFT sources (see the module docstring); returns rows per file. Rerun
    only when an input changed (a stamp of input sizes and times is kept beside them)."""
    from hebatron_nemo.data.readers import iter_documents

    raw = Path(str(cfg.sft_data.raw_dir))
    out = raw / DERIVED
    inputs = [raw / f"{n}.jsonl" for n in (*ANCHOR_SOURCES, HEBREW_SOURCE)]
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in inputs if p.exists()] + [MAX_DOCUMENTS, 1]
    stamp_file = out / "stamp.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ANCHOR_SOURCES:
        docs = itertools.islice(iter_documents(raw / f"{name}.jsonl", "jsonl", id_field="id"), MAX_DOCUMENTS)
        chats = anchor_conversations(docs, name)
        written[f"{name}_chats"] = write_jsonl_atomic(out / f"{name}_chats.jsonl",
                                                ({"id": c["id"], "messages": c["messages"]} for c in chats))
    docs = itertools.islice(iter_documents(raw / f"{HEBREW_SOURCE}.jsonl", "jsonl", id_field="id"), MAX_DOCUMENTS)
    written["he_instructions"] = write_jsonl_atomic(out / "he_instructions.jsonl", hebrew_instructions(docs))
    stamp_file.write_text(json.dumps(stamp))
    log(f"demo SFT sources derived in {out}: {written}")
    return written


# ------------------------------------------------------------------------------------------ hashing


def _pick(options: Sequence, *parts: object):
    return options[hash64(*parts) % len(options)]


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
    ``clean_verse`` (the demo's verses need it; an ``he`` empty after cleaning is an error too).
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
    u = unit_hash(salt, "task", key)
    task = next(t for t, p in _ANCHOR_TASKS if u < p)
    word = _unique_word(window, f"{salt}|word|{key}") if task == "word" else None
    if task == "word" and word is None:
        task = "continue"
    template = _pick(_ANCHOR_PROMPTS[task], salt, "prompt", key)
    if task == "continue":
        k = 1 if len(window) < 4 else 1 + hash64(salt, "continue", key) % 2
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
    if unit_hash(salt, "anchor-system", key) < system_fraction:
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
            i = 0 if view == 0 else 1 + hash64(salt, "offset", source, doc.doc_id, view) % (min_sentences - 1)
            while len(sentences) - i >= 2:
                key = f"{source}|{doc.doc_id}|{view}|{i}"
                n = min_sentences + hash64(salt, "window", key) % (max_sentences - min_sentences + 1)
                window = sentences[i:i + n]
                i += n
                conv = _anchor_task(window, key, source, system_fraction, decontaminator, salt, stats)
                if conv is not None:
                    out.append(conv)
    return out
