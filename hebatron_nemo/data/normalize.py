"""Hebrew-aware text normalization for pretraining and fine-tuning corpora.

A :class:`HebrewNormalizer` applies, in this order:

1. Unicode normalization (``NFC``/``NFKC``), which also decomposes the pointed
   Hebrew presentation forms (U+FB1D-U+FB4E) into letter + marks.
2. Deletion of the selected marks and invisible controls, and the
   character-for-character punctuation mappings.
3. Unicode normalization again (cheap quick-check on already-normal text),
   because deleting a character can unblock a composition.
4. The context rule for ``punctuation="hebrew"``.
5. Whitespace collapsing.

The result is idempotent: normalizing a normalized text returns it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, fields, replace

from hebatron_nemo.errors import ConfigError

__all__ = [
    "CANTILLATION",
    "NIQQUD",
    "NORMALIZER_VERSION",
    "HebrewNormalizer",
    "NormalizeConfig",
    "count_words",
    "hebrew_letter_ratio",
]

NORMALIZER_VERSION = 1
"""Version of the normalization behaviour; bumped whenever the same config can give a different output."""

CANTILLATION: frozenset[int] = frozenset(range(0x0591, 0x05B0))
"""Code points of the Hebrew cantillation marks (te'amim), U+0591-U+05AF."""

NIQQUD: frozenset[int] = frozenset(
    [*range(0x05B0, 0x05BE),  # sheva .. dagesh, and meteg (U+05BD)
     0x05BF,                  # rafe
     0x05C1, 0x05C2,          # shin dot, sin dot
     0x05C4, 0x05C5,          # upper and lower dot
     0x05C7,                  # qamats qatan
     0xFB1E]                  # varika, a point that lives in the presentation-forms block
)
"""Code points of the Hebrew vowel points and other pointing marks (niqqud), meteg included."""

MAQAF, PASEQ, SOF_PASUQ, GERESH, GERSHAYIM = "\u05be", "\u05c0", "\u05c3", "\u05f3", "\u05f4"

BIDI_CONTROLS: frozenset[int] = frozenset(
    [0x200E, 0x200F, 0x061C, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)
"""Code points of the invisible bidirectional marks, embeddings, overrides and isolates."""

ZERO_WIDTH: frozenset[int] = frozenset([0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF])
"""Code points of the zero-width space, (non-)joiners, word joiner and BOM."""

_APOSTROPHES = "'\u2018\u2019`"   # ' ‘ ’ `
_QUOTES = '"\u201c\u201d'         # " “ ”

_UNICODE_FORMS = ("NFC", "NFKC", "none")
_PUNCTUATION_MODES = ("ascii", "hebrew", "keep")
_PASEQ_MODES = ("keep", "strip", "ascii")

_HEBREW_LETTERS = "".join(
    chr(cp) for cp in [*range(0x05D0, 0x05EB), *range(0xFB1D, 0xFB50)] if chr(cp).isalpha()
)
_HEBREW_MARKS = "".join(chr(cp) for cp in sorted(NIQQUD | CANTILLATION))
_LETTER_CLASS = re.escape(_HEBREW_LETTERS)
_LETTER_OR_MARK_CLASS = _LETTER_CLASS + re.escape(_HEBREW_MARKS)

# The pattern starts with the quote itself (not a lookbehind) so the regex
# engine can skip ahead to candidate characters instead of trying every position.
# A geresh may end a word (abbreviations such as ש'), so "end of word" means
# "not followed by a word character other than a Hebrew letter"; a gershayim only
# ever sits before the last letter of an acronym, and a quote that ends a Hebrew
# word is far more often a closing quotation mark, so it needs a letter after it.
_GERESH_RE = re.compile(
    rf"[{re.escape(_APOSTROPHES)}](?<=[{_LETTER_OR_MARK_CLASS}].)(?![^\W{_LETTER_CLASS}])"
)
_GERSHAYIM_RE = re.compile(
    rf"[{re.escape(_QUOTES)}](?<=[{_LETTER_OR_MARK_CLASS}].)(?=[{_LETTER_CLASS}])"
)

_HEBREW_LETTER_RUNS_RE = re.compile(f"[{_LETTER_CLASS}]+")


@dataclass
class NormalizeConfig:
    """Which normalization steps a :class:`HebrewNormalizer` applies.

    Attributes:
        unicode_form: Unicode normalization form: ``"NFC"`` (canonical composition; also
            puts Hebrew marks in canonical order and decomposes pointed presentation
            forms), ``"NFKC"`` (additionally folds compatibility characters such as wide
            letters and the alef-lamed ligature), or ``"none"``.
        strip_niqqud: Delete vowel points and pointing marks (:data:`NIQQUD`: U+05B0-U+05BD
            including meteg, rafe U+05BF, shin/sin dots U+05C1-U+05C2, upper/lower dots
            U+05C4-U+05C5, qamats qatan U+05C7, varika U+FB1E), also from inside pointed
            presentation forms.
        strip_cantillation: Delete the cantillation marks (:data:`CANTILLATION`, U+0591-U+05AF).
        strip_bidi_controls: Delete invisible bidirectional controls (LRM, RLM, ALM,
            embeddings/overrides U+202A-U+202E, isolates U+2066-U+2069).
        strip_zero_width: Delete zero-width characters (U+200B, ZWNJ, ZWJ, word joiner, BOM).
        punctuation: ``"ascii"`` maps maqaf to ``-``, geresh and ``’ ‘ ``` to ``'``, and
            gershayim and ``“ ”`` to ``"`` everywhere; ``"hebrew"`` maps ``' ’ ‘ ``` to
            geresh (U+05F3) when it follows a Hebrew letter and precedes a Hebrew letter or
            ends the word, and ``" “ ”`` to gershayim (U+05F4) when it follows a Hebrew
            letter and precedes a Hebrew letter; ``"keep"`` leaves punctuation untouched.
        paseq_sof_pasuq: Biblical verse punctuation: ``"keep"``, ``"strip"`` (delete paseq
            U+05C0 and sof pasuq U+05C3) or ``"ascii"`` (delete paseq, map sof pasuq to ``:``).
        collapse_whitespace: Turn every line break into ``\\n``, every run of other
            whitespace (tabs, NBSP, thin spaces, ...) into one space, strip each line,
            keep at most one blank line in a row, and strip the whole text.
    """

    unicode_form: str = "NFC"
    strip_niqqud: bool = False
    strip_cantillation: bool = False
    strip_bidi_controls: bool = True
    strip_zero_width: bool = True
    punctuation: str = "ascii"
    paseq_sof_pasuq: str = "keep"
    collapse_whitespace: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field whose value is not allowed."""
        choices = {
            "unicode_form": _UNICODE_FORMS,
            "punctuation": _PUNCTUATION_MODES,
            "paseq_sof_pasuq": _PASEQ_MODES,
        }
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in choices:
                allowed = choices[f.name]
                if not isinstance(value, str) or value not in allowed:
                    raise ConfigError(
                        f"normalize.{f.name} must be one of "
                        f"{', '.join(repr(a) for a in allowed)}; got {value!r}"
                    )
            elif not isinstance(value, bool):
                raise ConfigError(f"normalize.{f.name} must be true or false; got {value!r}")


def _character_rules(cfg: NormalizeConfig) -> tuple[frozenset[str], dict[str, str]]:
    """The per-character part of ``cfg``: the characters to delete and the characters to replace."""
    deleted: set[int] = set()
    if cfg.strip_niqqud:
        deleted |= NIQQUD
    if cfg.strip_cantillation:
        deleted |= CANTILLATION
    if cfg.strip_bidi_controls:
        deleted |= BIDI_CONTROLS
    if cfg.strip_zero_width:
        deleted |= ZERO_WIDTH
    if cfg.paseq_sof_pasuq in ("strip", "ascii"):
        deleted.add(ord(PASEQ))
    if cfg.paseq_sof_pasuq == "strip":
        deleted.add(ord(SOF_PASUQ))
    mapping: dict[str, str] = {}
    if cfg.paseq_sof_pasuq == "ascii":
        mapping[SOF_PASUQ] = ":"
    if cfg.punctuation == "ascii":
        mapping[MAQAF] = "-"
        mapping.update(dict.fromkeys(GERESH + _APOSTROPHES[1:], "'"))
        mapping.update(dict.fromkeys(GERSHAYIM + _QUOTES[1:], '"'))
    # With unicode_form="none" nothing decomposes a pointed presentation form
    # such as U+FB2A (shin with shin dot), so its marks would survive stripping.
    for cp in range(0xFB1D, 0xFB50):
        decomposed = unicodedata.normalize("NFD", chr(cp))
        kept = "".join(c for c in decomposed if ord(c) not in deleted)
        if kept != decomposed:
            mapping[chr(cp)] = kept
    return frozenset(map(chr, deleted)), mapping


def _char_class(chars) -> str:
    """A regex character class that matches exactly the characters in ``chars``."""
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


class HebrewNormalizer:
    """A callable that normalizes Hebrew (and mixed) text according to a :class:`NormalizeConfig`."""

    def __init__(self, config: NormalizeConfig | None = None):
        if config is None:
            config = NormalizeConfig()
        elif not isinstance(config, NormalizeConfig):
            raise ConfigError(f"normalize config must be a NormalizeConfig; got {type(config).__name__}")
        config.validate()
        # A private copy keeps the compiled rules, the behaviour and identity() in step
        # even if the caller later mutates the object it passed in.
        self.config = replace(config)
        self._form = None if config.unicode_form == "none" else config.unicode_form
        # Two regex substitutions (delete runs, then replace the rare mapped
        # characters) measured about 5x faster than str.translate with a dict
        # table on both modern and fully pointed Hebrew: translate looks every
        # character up in the dict, the regex engine scans a bitmap in C.
        deleted, self._mapping = _character_rules(config)
        self._delete_re = re.compile(_char_class(deleted) + "+") if deleted else None
        self._map_re = re.compile(_char_class(self._mapping)) if self._mapping else None
        self._hebrew_punct = config.punctuation == "hebrew"
        self._collapse = config.collapse_whitespace

    def __repr__(self) -> str:
        return f"HebrewNormalizer({self.config!r})"

    def __call__(self, text: str) -> str:
        """Return the normalized form of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"HebrewNormalizer expects str, got {type(text).__name__}")
        form = self._form
        if form is not None:
            text = unicodedata.normalize(form, text)
        if self._delete_re is not None or self._map_re is not None:
            if self._delete_re is not None:
                text = self._delete_re.sub("", text)
            if self._map_re is not None:
                text = self._map_re.sub(self._mapped, text)
            if form is not None:
                # Deleting a character (a ZWJ, a mark) can leave a pair that composes.
                text = unicodedata.normalize(form, text)
        if self._hebrew_punct:
            text = _GERESH_RE.sub(GERESH, text)
            text = _GERSHAYIM_RE.sub(GERSHAYIM, text)
        if self._collapse:
            text = _collapse_whitespace(text)
        return text

    def _mapped(self, match: re.Match) -> str:
        return self._mapping[match.group()]

    def normalize_batch(self, texts: list[str]) -> list[str]:
        """Normalize each text of ``texts``, in order."""
        return [self(t) for t in texts]

    def identity(self) -> dict:
        """What produced a normalized corpus: name, behaviour version, config, and a short hash of those three.

        The hash is the first 16 hex digits of the SHA-256 of their canonical JSON, so two
        corpora normalized with equal hashes were normalized the same way.
        """
        ident = {
            "name": "hebatron_nemo.HebrewNormalizer",
            "version": NORMALIZER_VERSION,
            "config": asdict(self.config),
        }
        canonical = json.dumps(ident, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        ident["hash"] = hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]
        return ident


def _collapse_whitespace(text: str) -> str:
    """Apply the ``collapse_whitespace`` step of :class:`NormalizeConfig` to ``text``."""
    # splitlines() and split() break on exactly the characters str.isspace()
    # calls line breaks and whitespace, and run in C: about 3x faster than
    # the equivalent chain of regex substitutions.
    lines: list[str] = []
    previous_blank = True  # drops leading blank lines
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            lines.append(line)
            previous_blank = False
        elif not previous_blank:
            lines.append("")
            previous_blank = True
    if lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def hebrew_letter_ratio(text: str) -> float:
    """The share of alphabetic characters (``str.isalpha``) in ``text`` that are Hebrew letters.

    Hebrew letters are U+05D0-U+05EA and the alphabetic presentation forms in U+FB1D-U+FB4F.
    Marks, digits and punctuation count neither way. 0.0 when ``text`` has no letters.
    """
    alpha = sum(map(str.isalpha, text))
    if not alpha:
        return 0.0
    hebrew = sum(map(len, _HEBREW_LETTER_RUNS_RE.findall(text)))
    return hebrew / alpha


def count_words(text: str) -> int:
    """The number of whitespace-separated tokens in ``text``."""
    return len(text.split())
