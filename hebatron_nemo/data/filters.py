"""Document filters: length, script-letter ratio, exact and near duplicates, eval decontamination.

Per-document filters run while a shard streams; decisions that need the whole source (duplicates
across shards and sources, near duplicates) run when the shards are merged, from the per-shard hash
and MinHash files, so a shard never needs another shard's text.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from hebatron_nemo.data.languages import profile
from hebatron_nemo.data.normalize import count_words
from hebatron_nemo.errors import ConfigError, DataError

# Reasons a document can be removed, in the order the filters run; reports list them in this order.
# exact_dup_in_source: an earlier copy in the same task of the clean stage; near_dup: removed by the
# MinHash stages (copies in other tasks or sources included)
REASONS = ("empty", "min_chars", "min_words", "max_chars", "min_script_ratio", "decontaminated",
           "exact_dup_in_source", "near_dup")
# A reason's earlier name (in manifests written before the rename) -> its name now.
RENAMED_REASONS = {"min_hebrew_ratio": "min_script_ratio"}


@dataclass
class FilterReport:
    """How many documents and characters each filter removed, and how many were kept."""

    seen_docs: int = 0
    seen_chars: int = 0
    kept_docs: int = 0
    kept_chars: int = 0
    removed_docs: dict = field(default_factory=lambda: {r: 0 for r in REASONS})
    removed_chars: dict = field(default_factory=lambda: {r: 0 for r in REASONS})

    def remove(self, reason: str, chars: int, docs: int = 1) -> None:
        self.removed_docs[reason] += docs
        self.removed_chars[reason] += chars

    def merge(self, other: "FilterReport") -> None:
        self.seen_docs += other.seen_docs
        self.seen_chars += other.seen_chars
        self.kept_docs += other.kept_docs
        self.kept_chars += other.kept_chars
        for r in REASONS:
            self.removed_docs[r] += other.removed_docs.get(r, 0)
            self.removed_chars[r] += other.removed_chars.get(r, 0)

    def to_dict(self) -> dict:
        return {"seen_docs": self.seen_docs, "seen_chars": self.seen_chars, "kept_docs": self.kept_docs,
                "kept_chars": self.kept_chars, "removed_docs": dict(self.removed_docs),
                "removed_chars": dict(self.removed_chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "FilterReport":
        r = cls(d["seen_docs"], d["seen_chars"], d["kept_docs"], d["kept_chars"])
        for ours, theirs in ((r.removed_docs, d["removed_docs"]), (r.removed_chars, d["removed_chars"])):
            for reason, n in theirs.items():
                reason = RENAMED_REASONS.get(reason, reason)
                ours[reason] = ours.get(reason, 0) + n
        return r


class DocumentFilter:
    """The per-document filters of `data.filters` (with a source's overrides) for one source.

    Built as `DocumentFilter(language=src.language, **filters)` from the `FilterConfig` fields. The
    script filter counts the letters of the language's script (`hebatron_nemo.data.languages`);
    a language without one (en, he-en) skips it whatever `min_script_ratio` says.
    """

    def __init__(self, min_chars: int, min_words: int, min_script_ratio: float, max_chars: int | None,
                 language: str):
        if min_chars < 0 or min_words < 0:
            raise ConfigError("data.filters.min_chars / min_words must be >= 0")
        if not 0.0 <= min_script_ratio <= 1.0:
            raise ConfigError(f"data.filters.min_script_ratio must be in [0, 1], got {min_script_ratio}")
        self.min_chars, self.min_words, self.max_chars = min_chars, min_words, max_chars
        self.script_ratio = profile(language).script_ratio
        self.min_script_ratio = min_script_ratio if self.script_ratio is not None else 0.0

    def reason(self, text: str) -> str | None:
        """The first filter that rejects `text`, or None when it is kept."""
        if not text:
            return "empty"
        if len(text) < self.min_chars:
            return "min_chars"
        if self.min_words and count_words(text) < self.min_words:
            return "min_words"
        if self.max_chars is not None and len(text) > self.max_chars:
            return "max_chars"
        if self.min_script_ratio and self.script_ratio(text) < self.min_script_ratio:
            return "min_script_ratio"
        return None


def text_hash(text: str) -> int:
    """A 64-bit hash of a normalized document (blake2b), the key of exact deduplication."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


# ---------------------------------------------------------------------------------------------
# Decontamination

_NON_WORD = re.compile(r"[^\w\s]+")


def matching_words(text: str) -> list[str]:
    """Words as compared for contamination: marks and punctuation removed, case folded, so a pointed
    eval verse matches its unpointed training copy."""
    decomposed = unicodedata.normalize("NFD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_WORD.sub(" ", stripped.casefold().replace("\u05be", " ")).split()


def _ngram_keys(words: list[str], n: int) -> Iterable[int]:
    for i in range(len(words) - n + 1):
        yield text_hash(" ".join(words[i:i + n]))


class Decontaminator:
    """Finds training documents sharing word n-grams with evaluation texts.

    `sources` names where the texts came from (each task file or eval file with its sha256;
    `hebatron_nemo.data.decontam.build_decontaminator`); `identity()` records it in manifests."""

    def __init__(self, eval_texts: Iterable[str], ngram: int, min_overlap: int = 1,
                 sources: list[dict] | None = None):
        if ngram < 1 or min_overlap < 1:
            raise ConfigError("data.decontamination.ngram and min_overlap must be >= 1")
        self.ngram, self.min_overlap = ngram, min_overlap
        self.sources = list(sources or [])
        self.keys: set[int] = set()
        self.eval_texts = 0
        for text in eval_texts:
            self.eval_texts += 1
            self.keys.update(_ngram_keys(matching_words(text), ngram))

    def is_contaminated(self, text: str) -> bool:
        if not self.keys:
            return False
        hits = 0
        for key in _ngram_keys(matching_words(text), self.ngram):
            if key in self.keys:
                hits += 1
                if hits >= self.min_overlap:
                    return True
        return False

    def identity(self) -> dict:
        digest = hashlib.sha256(np.array(sorted(self.keys), dtype=np.uint64).tobytes()).hexdigest()[:16]
        return {"ngram": self.ngram, "min_overlap": self.min_overlap, "eval_texts": self.eval_texts,
                "ngrams": len(self.keys), "hash": digest, "files": self.sources}


def load_eval_texts(eval_files: list, raw_dir: str) -> Iterable[str]:
    """Texts of the configured eval files (`{path, format, fields}`), every listed field."""
    from hebatron_nemo.data.readers import iter_documents

    for i, spec in enumerate(eval_files):
        for key in ("path", "fields"):
            if key not in spec:
                raise ConfigError(f"data.decontamination.eval_files[{i}] needs {key!r}")
        path = resolve_path(spec["path"], raw_dir)
        for fld in spec["fields"]:
            for doc in iter_documents(path, spec.get("format", "jsonl"), text_field=fld):
                yield doc.text


def resolve_path(path: str, base: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(base) / p)
