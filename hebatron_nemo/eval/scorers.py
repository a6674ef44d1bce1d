"""Scoring rules, as pure functions of predictions and golds (no model in sight).

Multiple choice (log-likelihood), for row i with choices c_i0..c_ik, gold g_i and
``ll_ij = sum_t log p(token_t | prompt, earlier tokens of the continuation j)``:

* ``acc      = mean_i [argmax_j ll_ij == g_i]``
* ``acc_norm = mean_i [argmax_j ll_ij / len(c_ij) == g_i]``, ``len`` counting the choice's characters
  (without the delimiter before it), as lm-evaluation-harness does.

``argmax`` breaks ties towards the lower index (numpy's rule), so a model that assigns every choice
the same score always answers the first one.

Generative exact match: ``exact_match = mean_i max_{a in golds_i} [norm(pred_i) == norm(a)]`` where
``norm`` is ``normalize_answer``, or, for GSM8K-style tasks, ``extract_gsm8k`` (a prediction without a
number scores 0).

Span F1 (SQuAD): over the tokens of ``normalize_answer``, with ``common`` the multiset intersection,
``P = |common| / |pred|``, ``R = |common| / |gold|``, ``F1 = 2PR / (P + R)`` (0 when nothing is
shared; 1 when both are empty, 0 when only one is); a row scores the max over its golds; the task
reports the mean over rows.

Translation, corpus-level, sacrebleu's defaults, 0-100:

* BLEU: ``100 * BP * exp(mean_{n=1..4} log p_n)``, ``p_n`` the clipped n-gram precision pooled over
  all sentences (13a tokenization, exponential smoothing of zero counts), ``BP = min(1, exp(1 - r/c))``
  with ``r``, ``c`` the total reference and hypothesis lengths.
* chrF: whitespace removed, character n-grams for n = 1..6; ``P`` and ``R`` are the mean over the
  orders that both sides have of the pooled n-gram precision and recall;
  ``chrF = 100 * (1 + b^2) * P * R / (b^2 * P + R)`` with ``b = 2`` (recall weighs more).

Accuracy, exact match and F1 are fractions in [0, 1]; BLEU and chrF are on sacrebleu's 0-100.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

__all__ = [
    "choose",
    "corpus_bleu",
    "corpus_chrf",
    "exact_match",
    "extract_gsm8k",
    "mc_accuracy",
    "mean",
    "normalize_answer",
    "normalize_number",
    "sentence_chrf",
    "token_f1",
]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ENGLISH_ARTICLES = frozenset({"a", "an", "the"})


def mean(xs: Sequence[float]) -> float:
    """The arithmetic mean; an empty sequence is an error (a metric over no rows means nothing)."""
    if not xs:
        raise ValueError("mean of no values")
    return float(sum(xs)) / len(xs)


# --------------------------------------------------------------------------- multiple choice


def choose(logprobs: Sequence[float], lengths: Sequence[int] | None = None) -> int:
    """The chosen choice: argmax of the log-likelihoods (divided by ``lengths`` when given), the
    lowest index on ties."""
    if not logprobs:
        raise ValueError("no choices")
    scores = list(logprobs) if lengths is None else [ll / max(1, n) for ll, n in zip(logprobs, lengths, strict=True)]
    best = 0
    for j, s in enumerate(scores):
        if s > scores[best]:
            best = j
    return best


def mc_accuracy(logprobs: Sequence[Sequence[float]], golds: Sequence[int],
                choices: Sequence[Sequence[str]]) -> dict[str, float]:
    """``acc`` and ``acc_norm`` (see the module docstring) over rows of per-choice log-likelihoods."""
    if not (len(logprobs) == len(golds) == len(choices)):
        raise ValueError("logprobs, golds and choices must have one entry per row")
    acc = [float(choose(ll) == g) for ll, g in zip(logprobs, golds)]
    acc_norm = [float(choose(ll, [len(c) for c in cs]) == g) for ll, g, cs in zip(logprobs, golds, choices)]
    return {"acc": mean(acc), "acc_norm": mean(acc_norm)}


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


# --------------------------------------------------------------------------- translation


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise ValueError("no sentences")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults, 0-100), one reference per hypothesis."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: char 6-grams, beta 2; 0-100), one reference per hypothesis."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)


def sentence_chrf(hypothesis: str, reference: str) -> float:
    """chrF of one sentence (sacrebleu defaults, 0-100): for reading rows, not for the task score
    (corpus chrF pools statistics over sentences, it is not the mean of these)."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(hypothesis, [reference]).score)
