"""Text normalization for pretraining and fine-tuning corpora: Hebrew, and the shared machinery.

Every normalizer (:class:`HebrewNormalizer`, :class:`LightNormalizer` here,
``ArabicNormalizer`` in :mod:`hebatron_nemo.data.arabic`) reads one :class:`NormalizeConfig`
and applies, in this order:

1. Unicode normalization (``NFC``/``NFKC``), which also decomposes the pointed
   Hebrew presentation forms (U+FB1D-U+FB4E) into letter + marks.
2. Deletion of the selected marks and invisible controls, and the
   character-for-character mappings (punctuation, letter folds).
3. Unicode normalization again (cheap quick-check on already-normal text),
   because deleting a character can unblock a composition.
4. The language's context rules (Hebrew: ``punctuation="hebrew"``; Arabic: alef folding).
5. Whitespace collapsing.

The result is idempotent: normalizing a normalized text returns it unchanged. Which normalizer a
source gets is decided by its ``language`` (:mod:`hebatron_nemo.data.languages`).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, fields, replace

from hebatron_nemo.errors import ConfigError

__all__ = [
    "CANTILLATION",
    "NIQQUD",
    "LIGHT_NORMALIZER_VERSION",
    "NORMALIZER_VERSION",
    "SHARED_FIELDS",
    "HebrewNormalizer",
    "LightNormalizer",
    "NormalizeConfig",
    "RuleNormalizer",
    "count_words",
    "hebrew_letter_ratio",
    "letter_ratio",
]

NORMALIZER_VERSION = 1
"""Version of :class:`HebrewNormalizer`'s behaviour; bumped whenever the same config can give a different output."""

LIGHT_NORMALIZER_VERSION = 1
"""Version of :class:`LightNormalizer`'s behaviour; bumped whenever the same config can give a different output."""

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
    """Which normalization steps a source's normalizer applies (``data.normalize``, a source's ``normalize``).

    One config serves every language. Each normalizer reads only the fields that apply to its
    language and ignores the others (they change neither its output nor its ``identity()``):

    * ``he`` and ``he-en`` (:class:`HebrewNormalizer`): ``unicode_form``, ``strip_niqqud``,
      ``strip_cantillation``, ``strip_bidi_controls``, ``strip_zero_width``, ``punctuation``,
      ``paseq_sof_pasuq``, ``collapse_whitespace``.
    * ``en`` (:class:`LightNormalizer`): ``unicode_form``, ``strip_bidi_controls``,
      ``strip_zero_width``, ``punctuation``, ``collapse_whitespace``.
    * ``ar`` (``ArabicNormalizer``): the light fields, plus ``strip_tatweel``, ``strip_harakat``,
      ``strip_quranic_marks``, ``fold_alef``, ``fold_yeh``.

    Attributes:
        unicode_form: Unicode normalization form: ``"NFC"`` (canonical composition; also
            puts Hebrew and Arabic marks in canonical order and decomposes pointed Hebrew
            presentation forms), ``"NFKC"`` (additionally folds compatibility characters such
            as wide letters, the alef-lamed ligature and the Arabic presentation forms
            U+FB50-U+FDFF, U+FE70-U+FEFF), or ``"none"``. All languages.
        strip_niqqud: Hebrew. Delete vowel points and pointing marks (:data:`NIQQUD`: U+05B0-U+05BD
            including meteg, rafe U+05BF, shin/sin dots U+05C1-U+05C2, upper/lower dots
            U+05C4-U+05C5, qamats qatan U+05C7, varika U+FB1E), also from inside pointed
            presentation forms.
        strip_cantillation: Hebrew. Delete the cantillation marks (:data:`CANTILLATION`, U+0591-U+05AF).
        strip_bidi_controls: All languages. Delete invisible bidirectional controls (LRM, RLM, ALM,
            embeddings/overrides U+202A-U+202E, isolates U+2066-U+2069).
        strip_zero_width: All languages. Delete zero-width characters (U+200B, ZWNJ, ZWJ, word
            joiner, BOM). Arabic orthography never needs ZWNJ/ZWJ (letters join by default), so
            ``ar`` deletes them too; a Persian or Urdu profile would have to keep ZWNJ (U+200C),
            which separates morphemes there.
        punctuation: ``"ascii"`` maps ``’ ‘ ``` to ``'`` and ``“ ”`` to ``"`` in every language,
            and in Hebrew also maqaf to ``-``, geresh to ``'`` and gershayim to ``"``;
            ``"hebrew"`` (Hebrew only) maps ``' ’ ‘ ``` to geresh (U+05F3) when it follows a
            Hebrew letter and precedes a Hebrew letter or ends the word, and ``" “ ”`` to
            gershayim (U+05F4) when it follows a Hebrew letter and precedes a Hebrew letter
            (other languages leave punctuation as ``"keep"`` does, which is what the Hebrew rule
            does to text without Hebrew letters); ``"keep"`` leaves punctuation untouched.
            Arabic punctuation (، ؛ ؟ « ») is never mapped.
        paseq_sof_pasuq: Hebrew. Biblical verse punctuation: ``"keep"``, ``"strip"`` (delete paseq
            U+05C0 and sof pasuq U+05C3) or ``"ascii"`` (delete paseq, map sof pasuq to ``:``).
        collapse_whitespace: All languages. Turn every line break into ``\\n``, every run of other
            whitespace (tabs, NBSP, thin spaces, ...) into one space, strip each line,
            keep at most one blank line in a row, and strip the whole text.
        strip_tatweel: Arabic. Delete tatweel (kashida, U+0640), the stretching of a joined
            letter: typography, not spelling. On by default.
        strip_harakat: Arabic. Delete the vowel and pronunciation marks: U+064B-U+065F except the
            combining maddah and hamza U+0653-U+0655 (they spell the hamza: NFC composes them
            with alef, waw and yeh into آ أ إ ؤ ئ), and the superscript (dagger) alef U+0670.
            Off by default, as ``strip_niqqud`` is: a model learns to write what it reads.
        strip_quranic_marks: Arabic. Delete the Quranic annotation signs U+06D6-U+06ED (pause
            marks, small high letters, end of ayah, rub el hizb, sajdah). Off by default, as
            ``strip_cantillation`` is.
        fold_alef: Arabic. Write every alef as bare alef: آ أ إ ٱ (U+0622, U+0623, U+0625,
            U+0671) -> ا (U+0627), and a combining maddah or hamza on an alef is dropped. Off by
            default: the hamza is part of the spelling, and a model trained on folded text
            writes folded text.
        fold_yeh: Arabic. ى (alef maqsura, U+0649) and Farsi yeh (U+06CC) -> ي (U+064A). Off by
            default: على (on) and علي (Ali) are different words.
    """

    unicode_form: str = "NFC"
    strip_niqqud: bool = False
    strip_cantillation: bool = False
    strip_bidi_controls: bool = True
    strip_zero_width: bool = True
    punctuation: str = "ascii"
    paseq_sof_pasuq: str = "keep"
    collapse_whitespace: bool = True
    strip_tatweel: bool = True
    strip_harakat: bool = False
    strip_quranic_marks: bool = False
    fold_alef: bool = False
    fold_yeh: bool = False

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


SHARED_FIELDS = ("unicode_form", "strip_bidi_controls", "strip_zero_width", "punctuation", "collapse_whitespace")
"""The :class:`NormalizeConfig` fields every language's normalizer reads."""


def invisible_controls(cfg: NormalizeConfig) -> set[int]:
    """The invisible controls ``cfg`` deletes, in every language."""
    deleted: set[int] = set()
    if cfg.strip_bidi_controls:
        deleted |= BIDI_CONTROLS
    if cfg.strip_zero_width:
        deleted |= ZERO_WIDTH
    return deleted


def generic_quote_map(cfg: NormalizeConfig) -> dict[str, str]:
    """The language-neutral part of ``punctuation="ascii"``: typographic quotes and apostrophes to ASCII."""
    if cfg.punctuation != "ascii":
        return {}
    return {**dict.fromkeys(_APOSTROPHES[1:], "'"), **dict.fromkeys(_QUOTES[1:], '"')}


def _hebrew_rules(cfg: NormalizeConfig) -> tuple[frozenset[str], dict[str, str]]:
    """The per-character part of ``cfg`` for Hebrew: the characters to delete and the characters to replace."""
    deleted: set[int] = set()
    if cfg.strip_niqqud:
        deleted |= NIQQUD
    if cfg.strip_cantillation:
        deleted |= CANTILLATION
    deleted |= invisible_controls(cfg)
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


def char_class(chars) -> str:
    """A regex character class that matches exactly the characters in ``chars``."""
    return "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"


class RuleNormalizer:
    """A callable that normalizes text by a :class:`NormalizeConfig`: the steps of this module's docstring.

    A language's normalizer is a subclass that says its ``NAME``, ``VERSION`` and ``FIELDS`` (the
    config fields it reads: the only ones its output and ``identity()`` depend on), which
    characters to delete and replace (``_rules``), and any context rule (``_context``).
    """

    NAME = ""
    VERSION = 0
    FIELDS: tuple[str, ...] = ()

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
        deleted, self._mapping = self._rules(self.config)
        self._delete_re = re.compile(char_class(deleted) + "+") if deleted else None
        self._map_re = re.compile(char_class(self._mapping)) if self._mapping else None
        self._collapse = config.collapse_whitespace

    def _rules(self, cfg: NormalizeConfig) -> tuple[frozenset[str], dict[str, str]]:
        """The characters to delete and the character -> text replacements that ``cfg`` asks for."""
        raise NotImplementedError

    def _context(self, text: str) -> str:
        """Rules that look at a character's neighbours, applied to the Unicode-normalized text."""
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def __call__(self, text: str) -> str:
        """Return the normalized form of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"{type(self).__name__} expects str, got {type(text).__name__}")
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
        text = self._context(text)
        if self._collapse:
            text = _collapse_whitespace(text)
        return text

    def _mapped(self, match: re.Match) -> str:
        return self._mapping[match.group()]

    def normalize_batch(self, texts: list[str]) -> list[str]:
        """Normalize each text of ``texts``, in order."""
        return [self(t) for t in texts]

    def identity(self) -> dict:
        """What produced a normalized corpus: name, behaviour version, the config fields this normalizer
        reads, and a short hash of those three.

        The hash is the first 16 hex digits of the SHA-256 of their canonical JSON, so two
        corpora normalized with equal hashes were normalized the same way. Fields that do not
        apply to this language are left out, so adding a field for another language leaves
        every existing identity (and a prepared corpus's fingerprint) as it was.
        """
        ident = {
            "name": self.NAME,
            "version": self.VERSION,
            "config": {name: getattr(self.config, name) for name in self.FIELDS},
        }
        canonical = json.dumps(ident, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        ident["hash"] = hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]
        return ident


class HebrewNormalizer(RuleNormalizer):
    """A callable that normalizes Hebrew (and mixed) text according to a :class:`NormalizeConfig`."""

    NAME = "hebatron_nemo.HebrewNormalizer"
    VERSION = NORMALIZER_VERSION
    FIELDS = ("unicode_form", "strip_niqqud", "strip_cantillation", "strip_bidi_controls", "strip_zero_width",
              "punctuation", "paseq_sof_pasuq", "collapse_whitespace")

    def __init__(self, config: NormalizeConfig | None = None):
        super().__init__(config)
        self._hebrew_punct = self.config.punctuation == "hebrew"

    def _rules(self, cfg: NormalizeConfig) -> tuple[frozenset[str], dict[str, str]]:
        return _hebrew_rules(cfg)

    def _context(self, text: str) -> str:
        if self._hebrew_punct:
            text = _GERESH_RE.sub(GERESH, text)
            text = _GERSHAYIM_RE.sub(GERSHAYIM, text)
        return text


class LightNormalizer(RuleNormalizer):
    """The language-neutral steps only (English and other Latin-script text, the anchors).

    Unicode form, bidi and zero-width controls, typographic quotes and apostrophes to ASCII
    (``punctuation="ascii"``), whitespace: nothing that belongs to one language's script.
    """

    NAME = "hebatron_nemo.LightNormalizer"
    VERSION = LIGHT_NORMALIZER_VERSION
    FIELDS = SHARED_FIELDS

    def _rules(self, cfg: NormalizeConfig) -> tuple[frozenset[str], dict[str, str]]:
        return frozenset(map(chr, invisible_controls(cfg))), generic_quote_map(cfg)


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


def letter_ratio(text: str, letter_runs: re.Pattern) -> float:
    """The share of alphabetic characters (``str.isalpha``) in ``text`` that ``letter_runs`` matches.

    ``letter_runs`` matches runs of one script's letters (``[...]+``). Marks, digits and
    punctuation count neither way. 0.0 when ``text`` has no letters.
    """
    alpha = sum(map(str.isalpha, text))
    if not alpha:
        return 0.0
    return sum(map(len, letter_runs.findall(text))) / alpha


def hebrew_letter_ratio(text: str) -> float:
    """The share of alphabetic characters (``str.isalpha``) in ``text`` that are Hebrew letters.

    Hebrew letters are U+05D0-U+05EA and the alphabetic presentation forms in U+FB1D-U+FB4F.
    Marks, digits and punctuation count neither way. 0.0 when ``text`` has no letters.
    """
    return letter_ratio(text, _HEBREW_LETTER_RUNS_RE)


def count_words(text: str) -> int:
    """The number of whitespace-separated tokens in ``text``."""
    return len(text.split())
