"""Document filters: length, Hebrew-letter ratio, exact and near duplicates, eval decontamination.

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

from hebatron_nemo.data.normalize import count_words, hebrew_letter_ratio
from hebatron_nemo.errors import ConfigError, DataError

# Reasons a document can be removed, in the order the filters run; reports list them in this order.
REASONS = ("empty", "min_chars", "min_words", "max_chars", "min_hebrew_ratio", "decontaminated",
           "exact_dup_in_source", "exact_dup_across_sources", "near_dup", "external_dup_list")


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
        r.removed_docs.update(d["removed_docs"])
        r.removed_chars.update(d["removed_chars"])
        return r


class DocumentFilter:
    """The per-document filters of `data.filters` (with a source's overrides) for one source."""

    def __init__(self, min_chars: int, min_words: int, min_hebrew_ratio: float, max_chars: int | None,
                 language: str):
        if min_chars < 0 or min_words < 0:
            raise ConfigError("data.filters.min_chars / min_words must be >= 0")
        if not 0.0 <= min_hebrew_ratio <= 1.0:
            raise ConfigError(f"data.filters.min_hebrew_ratio must be in [0, 1], got {min_hebrew_ratio}")
        self.min_chars, self.min_words, self.max_chars = min_chars, min_words, max_chars
        # The Hebrew-letter ratio only means something for Hebrew text: English anchors skip it.
        self.min_hebrew_ratio = min_hebrew_ratio if language == "he" else 0.0

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
        if self.min_hebrew_ratio and hebrew_letter_ratio(text) < self.min_hebrew_ratio:
            return "min_hebrew_ratio"
        return None


def text_hash(text: str) -> int:
    """A 64-bit hash of a normalized document (blake2b), the key of exact deduplication."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


# ---------------------------------------------------------------------------------------------
# Decontamination

MINHASH_SCHEME = "affine32"  # datasketch >= 2 needs the scheme named when rebuilding from stored values
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


# ---------------------------------------------------------------------------------------------
# Near duplicates (MinHash + LSH through datasketch)


class MinHasher:
    """MinHash signatures of word shingles, computed per document while a shard streams."""

    def __init__(self, num_perm: int, shingle_words: int, seed: int):
        from datasketch import MinHash

        if num_perm < 8 or shingle_words < 1:
            raise ConfigError("data.near_dedup.num_perm must be >= 8 and shingle_words >= 1")
        self.num_perm, self.shingle_words, self.seed = num_perm, shingle_words, seed
        self._template = MinHash(num_perm=num_perm, seed=seed, scheme=MINHASH_SCHEME)

    # Shingles hashed per update_batch call. datasketch builds a (num_perm x batch) uint64 matrix and
    # temporaries of that size for each call, so one call on a whole multi-megabyte document took
    # gigabytes; the signature is a running minimum, so batching gives the identical result.
    SHINGLE_BATCH = 4096

    def signature(self, text: str) -> np.ndarray:
        words = text.split()
        k = self.shingle_words
        m = self._template.copy()
        total = max(1, len(words) - k + 1)
        for start in range(0, total, self.SHINGLE_BATCH):
            m.update_batch([" ".join(words[i:i + k]).encode("utf-8")
                            for i in range(start, min(total, start + self.SHINGLE_BATCH))])
        return m.hashvalues.astype(np.uint64)


def near_duplicates(signatures: np.ndarray, threshold: float, seed: int) -> np.ndarray:
    """Boolean mask: True for each row that near-duplicates an earlier kept row (first one wins)."""
    from datasketch import MinHash, MinHashLSH

    n, num_perm = signatures.shape
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    dup = np.zeros(n, dtype=bool)
    for i in range(n):
        m = MinHash(num_perm=num_perm, seed=seed, hashvalues=signatures[i], scheme=MINHASH_SCHEME)
        if lsh.query(m):
            dup[i] = True
        else:
            lsh.insert(i, m)
    return dup


def load_remove_ids(path: str) -> set[str]:
    """Duplicate ids from an external tool (NeMo Curator / datatrove): a Parquet or JSONL file with an
    `id` column, or a text file with one id per line."""
    p = Path(path)
    if not p.exists():
        raise DataError("duplicate-id list not found (data.near_dedup.remove_ids_file)", path=path)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        if "id" not in table.column_names:
            raise DataError(f"no 'id' column (columns: {table.column_names})", path=path, field="id")
        return {str(x) for x in table.column("id").to_pylist()}
    ids = set()
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if p.suffix in (".jsonl", ".json"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"malformed JSON: {e.msg}", path=path, line=lineno) from None
                if not isinstance(row, dict) or "id" not in row:
                    raise DataError("row has no 'id'", path=path, line=lineno, field="id")
                ids.add(str(row["id"]))
            else:
                ids.add(line)
    return ids
