"""Arabic text normalization and the Arabic-script letter ratio (language code ``ar``).

An :class:`ArabicNormalizer` runs the steps of :mod:`hebatron_nemo.data.normalize` with the
Arabic fields of :class:`~hebatron_nemo.data.normalize.NormalizeConfig`: tatweel, harakat and
Quranic marks deleted, alef and yeh variants folded, each by its own switch; the invisible
controls, typographic quotes and whitespace as for every language. Hebrew-only fields
(``strip_niqqud``, ``strip_cantillation``, ``paseq_sof_pasuq``) are ignored.

Arabic presentation forms (U+FB50-U+FDFF, U+FE70-U+FEFF: text pasted from PDFs) are compatibility
characters: only ``unicode_form="NFKC"`` turns them into letters and marks, which the switches
then apply to; under ``NFC`` they are left as they are (and count as Arabic letters in
:func:`arabic_letter_ratio`). Arabic-Indic digits (U+0660-U+0669, U+06F0-U+06F9) are never touched.
"""

from __future__ import annotations

import re

from hebatron_nemo.data.normalize import (SHARED_FIELDS, NormalizeConfig, RuleNormalizer, char_class,
                                          generic_quote_map, invisible_controls, letter_ratio)

__all__ = [
    "ALEF_VARIANTS",
    "ARABIC_NORMALIZER_VERSION",
    "HAMZA_MARKS",
    "HARAKAT",
    "QURANIC_MARKS",
    "TATWEEL",
    "YEH_VARIANTS",
    "ArabicNormalizer",
    "arabic_letter_ratio",
]

ARABIC_NORMALIZER_VERSION = 1
"""Version of :class:`ArabicNormalizer`'s behaviour; bumped whenever the same config can give a different output."""

TATWEEL = "\u0640"
"""Tatweel (kashida), the stretching of a joined letter."""

HAMZA_MARKS: frozenset[int] = frozenset([0x0653, 0x0654, 0x0655])
"""Combining maddah above, hamza above and hamza below: part of a letter's spelling, never harakat."""

HARAKAT: frozenset[int] = frozenset([*range(0x064B, 0x0660), 0x0670]) - HAMZA_MARKS
"""The vowel and pronunciation marks: tanwin, fatha, damma, kasra, shadda, sukun and the further marks
up to U+065F, and the superscript (dagger) alef U+0670; not the hamza and maddah marks."""

QURANIC_MARKS: frozenset[int] = frozenset(range(0x06D6, 0x06EE))
"""The Quranic annotation signs U+06D6-U+06ED: small high ligatures (pause marks), small high and low
letters, end of ayah, rub el hizb, place of sajdah."""

ALEF = "\u0627"
ALEF_VARIANTS = "\u0622\u0623\u0625\u0671"
"""آ أ إ ٱ: alef with maddah, hamza above, hamza below; alef wasla. ``fold_alef`` writes them as ا."""

YEH = "\u064a"
YEH_VARIANTS = "\u0649\u06cc"
"""ى (alef maqsura) and the Farsi yeh: ``fold_yeh`` writes them as ي."""

_MARKS = re.escape("".join(chr(cp) for cp in sorted(HARAKAT | HAMZA_MARKS | QURANIC_MARKS)))
_HAMZA = re.escape("".join(chr(cp) for cp in sorted(HAMZA_MARKS)))
# An alef variant, or a bare alef that carries a maddah or hamza mark, with the marks that follow it.
# NFC composes alef + maddah/hamza into آ أ إ but leaves a second such mark uncomposed (it is
# blocked); folding only the precomposed letters would let the next NFC compose the bare alef with
# that mark again, so the fold rewrites the whole cluster: bare alef, its marks less maddah and hamza.
# A bare alef without one (nearly every alef) is not matched, so the fold costs one regex scan.
_ALEF_CLUSTER_RE = re.compile(f"(?:[{ALEF_VARIANTS}]|{ALEF}(?=[{_MARKS}]*[{_HAMZA}]))[{_MARKS}]*")
_HAMZA_MARKS_RE = re.compile(char_class(map(chr, HAMZA_MARKS)))

_ARABIC_BLOCKS = [(0x0600, 0x0700), (0x0750, 0x0780), (0x0870, 0x0900), (0xFB50, 0xFE00), (0xFE70, 0xFF00)]
_ARABIC_LETTERS = "".join(chr(cp) for lo, hi in _ARABIC_BLOCKS for cp in range(lo, hi) if chr(cp).isalpha())
_ARABIC_LETTER_RUNS_RE = re.compile(f"[{re.escape(_ARABIC_LETTERS)}]+")


def _fold_alef_cluster(match: re.Match) -> str:
    return ALEF + _HAMZA_MARKS_RE.sub("", match.group()[1:])


class ArabicNormalizer(RuleNormalizer):
    """A callable that normalizes Arabic (and mixed) text according to a :class:`NormalizeConfig`.

    Reads the shared fields and ``strip_tatweel``, ``strip_harakat``, ``strip_quranic_marks``,
    ``fold_alef``, ``fold_yeh``; the Hebrew-only fields are ignored. Idempotent.
    """

    NAME = "hebatron_nemo.ArabicNormalizer"
    VERSION = ARABIC_NORMALIZER_VERSION
    FIELDS = (*SHARED_FIELDS, "strip_tatweel", "strip_harakat", "strip_quranic_marks", "fold_alef", "fold_yeh")

    def __init__(self, config: NormalizeConfig | None = None):
        super().__init__(config)
        self._fold_alef = self.config.fold_alef

    def _rules(self, cfg: NormalizeConfig) -> tuple[frozenset[str], dict[str, str]]:
        deleted = invisible_controls(cfg)
        if cfg.strip_tatweel:
            deleted.add(ord(TATWEEL))
        if cfg.strip_harakat:
            deleted |= HARAKAT
        if cfg.strip_quranic_marks:
            deleted |= QURANIC_MARKS
        mapping = generic_quote_map(cfg)
        if cfg.fold_yeh:
            # before the second Unicode normalization: yeh + hamza above composes to ئ there
            mapping.update(dict.fromkeys(YEH_VARIANTS, YEH))
        return frozenset(map(chr, deleted)), mapping

    def _context(self, text: str) -> str:
        if self._fold_alef:
            text = _ALEF_CLUSTER_RE.sub(_fold_alef_cluster, text)
        return text


def arabic_letter_ratio(text: str) -> float:
    """The share of alphabetic characters (``str.isalpha``) in ``text`` that are Arabic-script letters.

    Arabic-script letters are the alphabetic characters of the Arabic blocks (U+0600-U+06FF,
    Supplement U+0750-U+077F, Extended-A/B U+0870-U+08FF, presentation forms U+FB50-U+FDFF and
    U+FE70-U+FEFF), tatweel included. Harakat, digits (Arabic-Indic too) and punctuation count
    neither way. 0.0 when ``text`` has no letters.
    """
    return letter_ratio(text, _ARABIC_LETTER_RUNS_RE)
