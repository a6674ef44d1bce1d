"""The scoring rules lm-evaluation-harness has no equivalent of, as pure functions of predictions and
golds (no model in sight). The task YAMLs (``lmeval``) call them through ``process_results``; lm-eval
itself scores multiple choice (``acc``, ``acc_norm`` per character) and translation (corpus BLEU and
chrF, sacrebleu's defaults).

Generative exact match: ``exact_match = mean_i max_{a in golds_i} [norm(pred_i) == norm(a)]`` where
``norm`` is ``normalize_answer`` (SQuAD's normalization made to work for Hebrew: lm-eval's removes
neither niqqud nor maqaf), or, for GSM8K-style tasks, ``extract_gsm8k`` (a prediction without a
number scores 0).

Span F1 (SQuAD): over the tokens of ``normalize_answer``, with ``common`` the multiset intersection,
``P = |common| / |pred|``, ``R = |common| / |gold|``, ``F1 = 2PR / (P + R)`` (0 when nothing is
shared; 1 when both are empty, 0 when only one is); a row scores the max over its golds; the task
reports the mean over rows.

Exact match and F1 are fractions in [0, 1].
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

__all__ = [
    "exact_match",
    "extract_gsm8k",
    "mean",
    "normalize_answer",
    "normalize_number",
    "token_f1",
]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ENGLISH_ARTICLES = frozenset({"a", "an", "the"})


def mean(xs: Sequence[float]) -> float:
    """The arithmetic mean; an empty sequence is an error (a metric over no rows means nothing)."""
    if not xs:
        raise ValueError("mean of no values")
    return float(sum(xs)) / len(xs)


# --------------------------------------------------------------------------- answer extraction


def normalize_number(text: str) -> str | None:
    """A number's canonical spelling: commas and ``$`` dropped, no trailing zeros after the point,
    no exponent (``"1,234.50"`` -> ``"1234.5"``, ``"42.0"`` -> ``"42"``, ``"-0"`` -> ``"0"``);
    None if it is not a number. Commas are read as thousands separators, never as decimal points."""
    s = text.strip().replace(",", "").replace("$", "")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def extract_gsm8k(text: str) -> str | None:
    """The final answer of a GSM8K-style solution or generation, normalized by ``normalize_number``:
    the first number after the last ``####`` if the text has that marker, else the last number in
    the text; None if there is no number."""
    if "####" in text:
        found = _NUMBER.findall(text.rsplit("####", 1)[1])
        pick = found[0] if found else None
    else:
        found = _NUMBER.findall(text)
        pick = found[-1] if found else None
    return normalize_number(pick) if pick is not None else None


def _is_hebrew_point(ch: str) -> bool:
    # Niqqud and cantillation marks: the nonspacing marks of the Hebrew block (U+0591-U+05C7).
    # Maqaf, paseq, sof pasuq and nun hafukha in the same range are punctuation, handled below.
    return "\u0591" <= ch <= "\u05c7" and unicodedata.category(ch) == "Mn"


def normalize_answer(text: str) -> str:
    """SQuAD-style answer normalization, made to work for Hebrew.

    1. Hebrew points (niqqud, cantillation) are removed: pointed and unpointed spellings compare equal.
    2. Punctuation and symbols (Unicode categories P* and S*: maqaf, geresh and gershayim included)
       become spaces. SQuAD deletes them instead; a space keeps maqaf-joined words (``על-ידי``)
       apart. The same rule applies to prediction and gold, so acronyms (``צה"ל``) still match.
    3. Case folded; the English articles a/an/the dropped (as SQuAD does); whitespace collapsed.

    Hebrew prefixes (the article ה, prepositions ב/כ/ל/מ, the conjunction ו) are left alone: stripping
    them needs morphology, and a wrong strip would merge distinct words.
    """
    chars = []
    for ch in unicodedata.normalize("NFC", text):
        if _is_hebrew_point(ch):
            continue
        cat = unicodedata.category(ch)
        chars.append(" " if cat[0] in "PS" else ch)
    tokens = "".join(chars).casefold().split()
    return " ".join(t for t in tokens if t not in _ENGLISH_ARTICLES)


def exact_match(prediction: str, golds: Sequence[str], extraction: str = "none") -> float:
    """1.0 if the prediction equals any gold, else 0.0. ``extraction="gsm8k"``: the prediction's
    ``extract_gsm8k`` number against golds that are already extracted numbers; ``"none"``: the
    ``normalize_answer`` forms of prediction and golds."""
    if extraction == "gsm8k":
        pred = extract_gsm8k(prediction)
        if pred is None:
            return 0.0
        return float(any(pred == normalize_number(g) for g in golds))
    if extraction != "none":
        raise ValueError(f"unknown extraction {extraction!r}")
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1 of the prediction against its best gold (see the module docstring)."""
    if not golds:
        raise ValueError("no gold answers")
    pred = normalize_answer(prediction).split()
    best = 0.0
    for g in golds:
        gold = normalize_answer(g).split()
        if not pred or not gold:
            f1 = float(pred == gold)
        else:
            same = sum((Counter(pred) & Counter(gold)).values())
            if same == 0:
                f1 = 0.0
            else:
                p, r = same / len(pred), same / len(gold)
                f1 = 2 * p * r / (p + r)
        best = max(best, f1)
    return best
