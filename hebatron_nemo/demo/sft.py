"""The demo's SFT sources, derived from the demo corpora for the SFT registry `conf/sft_data/demo.yaml`.

`derive_demo_sft` (the registry's `derive` hook) writes, under ``<sft_data.raw_dir>/sft_derived/``:

* ``en_kjv_chats.jsonl``, ``en_jps_chats.jsonl`` (kind ``messages``, role ``anchor``): English chats
  whose answers are verbatim spans of the English Bible chapters (``sft.data.anchor_conversations``);
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
from pathlib import Path

from hebatron_nemo.data.demo_corpora import write_jsonl_rows

ANCHOR_SOURCES = ("en_kjv", "en_jps")
HEBREW_SOURCE = "he_mishnah"
MAX_DOCUMENTS = 150  # chapters per corpus: the CPU budget of `make demo`
DERIVED = "sft_derived"

_MORPH_SLASH = re.compile(r"(?<=[\u05d0-\u05ea])/(?=[\u05d0-\u05ea])")
_MAQAF = re.compile(r"\s*[-\u05be]\s*")
_PARAGRAPH_MARK = re.compile(r"(?:(?<=\s)|^)[\u05e1\u05e4](?=\s|$)")
_NUN_HAFUKHA = "\u05c6"


def clean_verse(text: str) -> str:
    """The demo pairs' Hebrew as plain unpointed text.

    The demo's Hebrew verses come in a morphologically segmented form: ``/`` between a word's
    morphemes (``ו/יהיו``), the maqaf written `` - `` (``בני - נח``), the paragraph markers ``ס`` and
    ``פ`` as words of their own, and inverted nun ``׆``. Morphemes are joined, maqaf becomes a space (as
    unpointed modern text writes it), markers are dropped and spaces collapsed. Meant for that source
    only: in modern text it would also turn a spaced dash into a space and drop a lone ס or פ."""
    text = _MORPH_SLASH.sub("", text.replace(_NUN_HAFUKHA, ""))
    text = _MAQAF.sub(" ", text)
    text = _PARAGRAPH_MARK.sub("", text)
    return " ".join(text.split())


_HE_SENTENCE_END = re.compile(r"(?<=[.:!?])\s+")
_HE_PROMPTS = ["המשך את הקטע הבא במשפט הבא שלו:\n\n{passage}",
               "{passage}\n\nמה המשפט שבא אחרי זה?",
               "הנה תחילתו של קטע. כתוב את המשפט הבא:\n\n{passage}"]


def hebrew_instructions(documents, min_sentences: int = 3) -> list[dict]:
    """Instruction rows ``{"id", "prompt", "response"}``: a window of sentences and its next sentence."""
    from hebatron_nemo.sft.sources import _hash

    rows = []
    for doc in documents:
        sentences = [s.strip() for s in _HE_SENTENCE_END.split(doc.text) if s.strip()]
        for start in range(0, len(sentences) - min_sentences, min_sentences + 1):
            window = sentences[start:start + min_sentences]
            key = f"{doc.doc_id}#{start}"
            prompt = _HE_PROMPTS[_hash("demo-he-instruction", key) % len(_HE_PROMPTS)]
            rows.append({"id": key, "prompt": prompt.format(passage=" ".join(window)),
                         "response": sentences[start + min_sentences]})
    return rows


def derive_demo_sft(cfg, log=print) -> dict:
    """Writes the derived demo SFT sources (see the module docstring); returns rows per file. Rerun
    only when an input changed (a stamp of input sizes and times is kept beside them)."""
    from hebatron_nemo.data.readers import iter_documents
    from hebatron_nemo.sft.data import anchor_conversations

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
        written[f"{name}_chats"] = write_jsonl_rows(out / f"{name}_chats.jsonl",
                                                ({"id": c["id"], "messages": c["messages"]} for c in chats))
    docs = itertools.islice(iter_documents(raw / f"{HEBREW_SOURCE}.jsonl", "jsonl", id_field="id"), MAX_DOCUMENTS)
    written["he_instructions"] = write_jsonl_rows(out / "he_instructions.jsonl", hebrew_instructions(docs))
    stamp_file.write_text(json.dumps(stamp))
    log(f"demo SFT sources derived in {out}: {written}")
    return written
