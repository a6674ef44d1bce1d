"""Tests of hebatron_nemo.data.normalize on real Hebrew strings, one step at a time (Arabic, English and
the language seam: tests/test_languages.py)."""

from __future__ import annotations

import dataclasses
import json
import pickle
import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st

from hebatron_nemo.data.normalize import (
    CANTILLATION,
    NIQQUD,
    NORMALIZER_VERSION,
    HebrewNormalizer,
    NormalizeConfig,
    count_words,
    hebrew_letter_ratio,
)
from hebatron_nemo.errors import ConfigError

# Genesis 1:1, pointed, with cantillation and a sof pasuq.
GENESIS_1_1 = "בְּרֵאשִׁ֖ית בָּרָ֣א אֱלֹהִ֑ים אֵ֥ת הַשָּׁמַ֖יִם וְאֵ֥ת הָאָֽרֶץ׃"
GENESIS_1_1_POINTED = "בְּרֵאשִׁית בָּרָא אֱלֹהִים אֵת הַשָּׁמַיִם וְאֵת הָאָֽרֶץ׃"
BEIT, HAMIQDASH = "בֵּית", "הַמִּקְדָּשׁ"
# Genesis 1:5 opening: a paseq between two words.
GENESIS_1_5 = "וַיִּקְרָ֨א אֱלֹהִ֤ים ׀ לָאוֹר֙ י֔וֹם"

RLM, LRM, ALM = "\u200f", "\u200e", "\u061c"
RLE, PDF, RLI, PDI = "\u202b", "\u202c", "\u2067", "\u2069"
ZWJ, ZWNJ, ZWSP, WJ, BOM = "\u200d", "\u200c", "\u200b", "\u2060", "\ufeff"
NBSP, THIN_SPACE, NARROW_NBSP = "\u00a0", "\u2009", "\u202f"
SHIN, SHIN_DOT, DAGESH = "\u05e9", "\u05c1", "\u05bc"

# Only the step under test is on; every other step is off.
BARE = NormalizeConfig(
    unicode_form="none", strip_niqqud=False, strip_cantillation=False, strip_bidi_controls=False,
    strip_zero_width=False, punctuation="keep", paseq_sof_pasuq="keep", collapse_whitespace=False,
)


def only(**changes) -> HebrewNormalizer:
    return HebrewNormalizer(dataclasses.replace(BARE, **changes))


def codepoints(text: str) -> set[int]:
    return {ord(c) for c in text}


# --------------------------------------------------------------------------- test data sanity

def test_genesis_sample_really_has_niqqud_cantillation_and_meteg():
    cps = codepoints(GENESIS_1_1)
    assert cps & CANTILLATION
    assert cps & NIQQUD
    assert 0x05BD in cps  # meteg in הָאָֽרֶץ


# --------------------------------------------------------------------------- whole pipeline

def test_genesis_fully_stripped_with_ascii_sof_pasuq():
    n = HebrewNormalizer(NormalizeConfig(strip_niqqud=True, strip_cantillation=True, paseq_sof_pasuq="ascii"))
    assert n(GENESIS_1_1) == "בראשית ברא אלהים את השמים ואת הארץ:"


def test_default_config_leaves_pointing_and_sof_pasuq():
    assert HebrewNormalizer()(GENESIS_1_1) == unicodedata.normalize("NFC", GENESIS_1_1)


def test_modern_web_text_with_defaults():
    text = f"{RLM}צה״ל{LRM} ו־ארה״ב:{NBSP}ד״ר כהן{ZWJ} ראה ג׳ירפה  ב“גן”\r\n\r\n\r\nסוף"
    assert HebrewNormalizer()(text) == 'צה"ל ו-ארה"ב: ד"ר כהן ראה ג\'ירפה ב"גן"\n\nסוף'


# --------------------------------------------------------------------------- marks

def test_strip_cantillation_only_keeps_niqqud_and_meteg():
    out = only(strip_cantillation=True)(GENESIS_1_1)
    assert out == GENESIS_1_1_POINTED
    assert 0x05BD in codepoints(out)


def test_strip_cantillation_off_keeps_cantillation():
    assert only()(GENESIS_1_1) == GENESIS_1_1


def test_strip_niqqud_only_keeps_cantillation():
    out = only(strip_niqqud=True)(GENESIS_1_1)
    assert not codepoints(out) & NIQQUD
    assert [c for c in out if ord(c) in CANTILLATION] == [c for c in GENESIS_1_1 if ord(c) in CANTILLATION]
    assert "".join(c for c in out if ord(c) not in CANTILLATION) == "בראשית ברא אלהים את השמים ואת הארץ׃"


def test_strip_niqqud_modern_pointed_word_and_rafe_qamats_qatan():
    # כׇּל־הַיּוֹם (qamats qatan) and a bet with rafe
    text = "\u05db\u05c7\u05bc\u05dc\u05be\u05d4\u05b7\u05d9\u05bc\u05d5\u05b9\u05dd \u05d1\u05bf"
    assert only(strip_niqqud=True)(text) == "כל־היום ב"


def test_strip_niqqud_inside_presentation_forms_without_unicode_normalization():
    # U+FB2A shin+shin dot, U+FB35 vav+dagesh, U+FB4B vav+holam, U+FB1D yod+hiriq.
    text = "\ufb2aל\ufb4bם \ufb35\ufb1dן"
    assert only(strip_niqqud=True)(text) == "שלום וין"
    assert only()(text) == text


def test_marks_stripped_the_same_whichever_order_or_composition():
    composed_order = SHIN + DAGESH + SHIN_DOT + "\u05b8"
    other_order = SHIN + SHIN_DOT + "\u05b8" + DAGESH
    presentation = "\ufb2c\u05b8"  # shin with dagesh and shin dot, then qamats
    for form in ("NFC", "NFKC", "none"):
        n = only(unicode_form=form, strip_niqqud=True)
        assert {n(composed_order), n(other_order), n(presentation)} == {SHIN}


# --------------------------------------------------------------------------- unicode form

def test_nfc_puts_hebrew_marks_in_canonical_order():
    assert only(unicode_form="NFC")(SHIN + SHIN_DOT + DAGESH) == SHIN + DAGESH + SHIN_DOT


def test_unicode_form_none_keeps_mark_order_and_presentation_forms():
    assert only()(SHIN + SHIN_DOT + DAGESH) == SHIN + SHIN_DOT + DAGESH
    assert only()("\ufb2a") == "\ufb2a"


def test_nfc_decomposes_pointed_presentation_form_but_keeps_compatibility_ligature():
    assert only(unicode_form="NFC")("\ufb2a\ufb4f") == SHIN + SHIN_DOT + "\ufb4f"


def test_nfkc_folds_ligature_and_wide_letter():
    assert only(unicode_form="NFKC")("\ufb4f\ufb21") == "אלא"


def test_deleting_a_joiner_does_not_leave_text_unnormalized():
    # e + ZWJ + combining acute: NFC cannot compose across the ZWJ, but can once it is gone.
    out = only(unicode_form="NFC", strip_zero_width=True)("e\u200d\u0301")
    assert out == "\u00e9"


# --------------------------------------------------------------------------- invisible controls

WEB_SNIPPET = f"{RLM}שלום{LRM} world{RLM}, {RLI}ירושלים{PDI} {RLE}תל אביב{PDF} {ALM}"


def test_strip_bidi_controls_on():
    assert only(strip_bidi_controls=True)(WEB_SNIPPET) == "שלום world, ירושלים תל אביב "


def test_strip_bidi_controls_off():
    assert only()(WEB_SNIPPET) == WEB_SNIPPET


def test_strip_zero_width_on():
    text = f"{BOM}בית{ZWJ}ספר{ZWNJ} של{ZWSP}נו{WJ}!"
    assert only(strip_zero_width=True)(text) == "ביתספר שלנו!"


def test_strip_zero_width_off():
    text = f"{BOM}בית{ZWJ}ספר"
    assert only()(text) == text


def test_bidi_and_zero_width_are_independent():
    text = f"א{RLM}ב{ZWJ}ג"
    assert only(strip_bidi_controls=True)(text) == f"אב{ZWJ}ג"
    assert only(strip_zero_width=True)(text) == f"א{RLM}בג"


# --------------------------------------------------------------------------- punctuation

def test_punctuation_ascii():
    text = f"צה״ל, ארה״ב, ד״ר, ג׳ירפה, {BEIT}־{HAMIQDASH}, ג’ירפה ‘ציטוט’ “מרכאות” `x"
    assert only(punctuation="ascii")(text) == (
        f'צה"ל, ארה"ב, ד"ר, ג\'ירפה, {BEIT}-{HAMIQDASH}, ג\'ירפה \'ציטוט\' "מרכאות" \'x'
    )


def test_maqaf_with_niqqud_stripped():
    n = only(strip_niqqud=True, punctuation="ascii")
    assert n(f"{BEIT}־{HAMIQDASH}") == "בית-המקדש"


@pytest.mark.parametrize(
    "text, expected",
    [
        ('צה"ל', "צה״ל"),
        ('ארה"ב', "ארה״ב"),
        ("ד”ר", "ד״ר"),
        ("ג'ירפה", "ג׳ירפה"),
        ("ג’ירפה", "ג׳ירפה"),
        ("צִ'יפְּס", "צִ׳יפְּס"),
        ("ש' 5", "ש׳ 5"),
        ("מס'", "מס׳"),
        ("מס'.", "מס׳."),
        ('צה"ל.', "צה״ל."),
        # pointed acronym: the quote follows a mark, not directly a letter
        ('תַּנַ"ךְ', "תַּנַ״ךְ"),
    ],
)
def test_punctuation_hebrew_converts_in_hebrew_context(text, expected):
    assert only(punctuation="hebrew")(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "don't",
        'he said "hi"',
        'הוא אמר "שלום" והלך',   # quotation marks around a Hebrew word stay quotation marks
        "ש'a",                   # followed by a Latin letter
        "'שלום",                 # not after a Hebrew letter
        'ב-2024 "נאמר"',
        "בית-ספר",               # hyphen is not turned into maqaf
    ],
)
def test_punctuation_hebrew_leaves_other_quotes(text):
    assert only(punctuation="hebrew")(text) == text


def test_punctuation_hebrew_inside_quotation():
    assert only(punctuation="hebrew")('"צה"ל"') == '"צה״ל"'


def test_punctuation_hebrew_leaves_existing_hebrew_marks_and_maqaf():
    text = "צה״ל ג׳ירפה בית־ספר"
    assert only(punctuation="hebrew")(text) == text


def test_punctuation_keep():
    text = 'צה״ל צה"ל ג’ירפה בית־ספר “x”'
    assert only(punctuation="keep")(text) == text


# --------------------------------------------------------------------------- paseq / sof pasuq

def test_paseq_sof_pasuq_keep():
    assert only(paseq_sof_pasuq="keep")(GENESIS_1_5 + "׃") == GENESIS_1_5 + "׃"


def test_paseq_sof_pasuq_strip():
    n = only(paseq_sof_pasuq="strip", strip_niqqud=True, strip_cantillation=True, collapse_whitespace=True)
    assert n(GENESIS_1_5 + "׃") == "ויקרא אלהים לאור יום"


def test_paseq_sof_pasuq_ascii():
    n = only(paseq_sof_pasuq="ascii", strip_niqqud=True, strip_cantillation=True, collapse_whitespace=True)
    assert n(GENESIS_1_5 + "׃") == "ויקרא אלהים לאור יום:"


def test_nun_hafukha_is_never_touched():
    text = "\u05c6 פסוק"
    assert HebrewNormalizer(NormalizeConfig(paseq_sof_pasuq="strip", strip_cantillation=True))(text) == text


# --------------------------------------------------------------------------- whitespace

def test_collapse_whitespace_on():
    text = (
        f"  שלום{NBSP}{NBSP}עולם\t\tמה{THIN_SPACE}נשמע{NARROW_NBSP}היום  \r\n"
        "   \n\n\n\n"
        "  שורה  שנייה \u2028שורה\u00a0שלישית\n\n "
    )
    assert only(collapse_whitespace=True)(text) == "שלום עולם מה נשמע היום\n\nשורה שנייה\nשורה שלישית"


def test_collapse_whitespace_keeps_one_blank_line():
    assert only(collapse_whitespace=True)("א\n\nב\nג") == "א\n\nב\nג"


def test_collapse_whitespace_off():
    text = f" א{NBSP}{NBSP}ב\t\n\n\n\nג "
    assert only()(text) == text


def test_empty_and_blank_text():
    n = HebrewNormalizer()
    assert n("") == ""
    assert n(f" \n\t{NBSP}{RLM}\n") == ""


# --------------------------------------------------------------------------- API

def test_normalize_batch_matches_call_in_order():
    n = HebrewNormalizer()
    texts = ['צה"ל', "  א  ב ", GENESIS_1_1, ""]
    assert n.normalize_batch(texts) == [n(t) for t in texts]
    assert n.normalize_batch(texts)[1] == "א ב"


def test_non_str_input_is_rejected():
    with pytest.raises(TypeError):
        HebrewNormalizer()(b"\xd7\xa9")


def test_normalizer_is_unaffected_by_later_config_mutation():
    cfg = NormalizeConfig(strip_niqqud=True)
    n = HebrewNormalizer(cfg)
    before = n.identity()
    cfg.strip_niqqud = False
    assert n("שָׁלוֹם") == "שלום"
    assert n.identity() == before


def test_normalizer_pickles():
    n = HebrewNormalizer(NormalizeConfig(strip_niqqud=True, punctuation="hebrew"))
    clone = pickle.loads(pickle.dumps(n))
    assert clone('שָׁלוֹם צה"ל') == "שלום צה״ל"
    assert clone.identity() == n.identity()


# --------------------------------------------------------------------------- identity

def test_identity_fields_and_stability():
    a = HebrewNormalizer(NormalizeConfig(strip_niqqud=True)).identity()
    b = HebrewNormalizer(NormalizeConfig(strip_niqqud=True)).identity()
    assert a == b
    assert set(a) == {"name", "version", "config", "hash"}
    assert a["name"] == "hebatron_nemo.HebrewNormalizer"
    assert a["version"] == NORMALIZER_VERSION and isinstance(a["version"], int)
    assert a["config"] == {k: v for k, v in dataclasses.asdict(NormalizeConfig(strip_niqqud=True)).items()
                           if k in HebrewNormalizer.FIELDS}
    assert len(a["hash"]) == 16 and set(a["hash"]) <= set("0123456789abcdef")
    assert json.loads(json.dumps(a)) == a


def test_identity_hash_changes_with_every_hebrew_field():
    alternatives = {
        "unicode_form": "NFKC", "strip_niqqud": True, "strip_cantillation": True,
        "strip_bidi_controls": False, "strip_zero_width": False, "punctuation": "hebrew",
        "paseq_sof_pasuq": "ascii", "collapse_whitespace": False,
    }
    assert set(alternatives) == set(HebrewNormalizer.FIELDS)
    hashes = {HebrewNormalizer().identity()["hash"]}
    for name, value in alternatives.items():
        hashes.add(HebrewNormalizer(NormalizeConfig(**{name: value})).identity()["hash"])
    assert len(hashes) == 1 + len(alternatives)


ARABIC_ONLY = {"strip_tatweel": False, "strip_harakat": True, "strip_quranic_marks": True, "fold_alef": True,
               "fold_yeh": True}


def test_fields_of_other_languages_change_neither_hebrew_output_nor_identity():
    assert set(ARABIC_ONLY) == {f.name for f in dataclasses.fields(NormalizeConfig)} - set(HebrewNormalizer.FIELDS)
    text = "שָׁלוֹם \u0623\u0640\u064e\u0649 ى"  # Hebrew with Arabic letters, tatweel, a fatha, alef maqsura
    base = HebrewNormalizer()
    other = HebrewNormalizer(NormalizeConfig(**ARABIC_ONLY))
    assert other(text) == base(text) == unicodedata.normalize("NFC", text)
    assert other.identity() == base.identity()


GOLDEN = json.loads((Path(__file__).parent / "data" / "normalize_golden.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(GOLDEN["configs"]))
def test_hebrew_output_and_identity_are_byte_identical_to_before_the_language_seam(name):
    """tests/data/normalize_golden.json was written by the normalizer before the seam existed."""
    n = HebrewNormalizer(NormalizeConfig(**GOLDEN["configs"][name]))
    assert n.identity()["hash"] == GOLDEN["identities"][name]
    for case in GOLDEN["cases"]:
        assert n(case["text"]) == case["out"][name], case["text"]


def test_identity_hash_is_pinned():
    # A changed hash for the default config means old corpora no longer match:
    # bump NORMALIZER_VERSION on purpose, then update this value.
    assert HebrewNormalizer().identity()["hash"] == "771f9b96d3ed64e6"


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("unicode_form", "nfc", "'NFC', 'NFKC', 'none'"),
        ("unicode_form", "NFD", "'NFC', 'NFKC', 'none'"),
        ("punctuation", "unicode", "'ascii', 'hebrew', 'keep'"),
        ("paseq_sof_pasuq", "remove", "'keep', 'strip', 'ascii'"),
        ("paseq_sof_pasuq", None, "'keep', 'strip', 'ascii'"),
    ],
)
def test_bad_choice_raises_config_error_naming_field_and_choices(field, value, allowed):
    with pytest.raises(ConfigError) as info:
        NormalizeConfig(**{field: value})
    assert field in str(info.value)
    assert allowed in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("field", ["strip_niqqud", "strip_cantillation", "strip_bidi_controls",
                                   "strip_zero_width", "collapse_whitespace"])
def test_non_bool_flag_raises_config_error(field):
    with pytest.raises(ConfigError, match=field):
        NormalizeConfig(**{field: "yes"})


def test_normalizer_revalidates_a_mutated_config():
    cfg = NormalizeConfig()
    cfg.punctuation = "latin"
    with pytest.raises(ConfigError, match="punctuation"):
        HebrewNormalizer(cfg)


def test_normalizer_rejects_a_non_config():
    with pytest.raises(ConfigError):
        HebrewNormalizer({"unicode_form": "NFC"})


# --------------------------------------------------------------------------- helpers

def test_mark_sets():
    assert not NIQQUD & CANTILLATION
    assert {0x05B0, 0x05BC, 0x05BD, 0x05BF, 0x05C1, 0x05C2, 0x05C4, 0x05C5, 0x05C7} <= NIQQUD
    assert {0x0591, 0x05A5, 0x05AF} <= CANTILLATION and len(CANTILLATION) == 31
    assert not (NIQQUD | CANTILLATION) & {0x05BE, 0x05C0, 0x05C3, 0x05C6, *range(0x05D0, 0x05EB)}
    assert all(unicodedata.category(chr(cp)) == "Mn" for cp in NIQQUD | CANTILLATION)


def test_hebrew_letter_ratio_mixed_text():
    assert hebrew_letter_ratio("שלום world") == pytest.approx(4 / 9)
    assert hebrew_letter_ratio("ה-GPU של NVIDIA, 2024!") == pytest.approx(3 / 12)


def test_hebrew_letter_ratio_ignores_marks_digits_and_counts_presentation_forms():
    assert hebrew_letter_ratio(GENESIS_1_1) == 1.0
    assert hebrew_letter_ratio("\ufb2aa") == pytest.approx(1 / 2)
    assert hebrew_letter_ratio("abc") == 0.0


@pytest.mark.parametrize("text", ["", "123 456", "!?׃ ״", GENESIS_1_1[1:3]])
def test_hebrew_letter_ratio_without_letters_is_zero(text):
    assert hebrew_letter_ratio(text) == 0.0


def test_count_words():
    assert count_words("בראשית ברא\tאלהים\n\nאת  השמים") == 5
    assert count_words(f"צה״ל{NBSP}ארה״ב") == 2
    assert count_words("   ") == 0


# --------------------------------------------------------------------------- properties

# Built from chunks of each kind so that the rare neighbourhoods that matter
# (space, invisible, space; letter, invisible, quote, letter) come up often.
hebrew_text = st.lists(
    st.one_of(
        st.sampled_from([chr(cp) for cp in range(0x05D0, 0x05EB)] + ["a", "e"]),
        st.sampled_from([chr(cp) for cp in sorted(NIQQUD | CANTILLATION)] + ["\u0301"]),
        st.sampled_from(list("\u05be\u05c0\u05c3\u05c6\u05f3\u05f4'\"‘’“”`-.:,")),
        st.sampled_from([" ", "\t", "\n", "\r", NBSP, THIN_SPACE, "\u2028"]),
        st.sampled_from([RLM, LRM, ZWJ, ZWSP, BOM, RLI]),
        st.sampled_from(["\ufb2a", "\ufb2c", "\ufb35", "\ufb4f", "\ufb21"]),
    ),
    max_size=40,
).map("".join)

CONFIGS = [
    NormalizeConfig(),
    NormalizeConfig(strip_niqqud=True, strip_cantillation=True, paseq_sof_pasuq="ascii"),
    NormalizeConfig(unicode_form="NFKC", punctuation="hebrew", paseq_sof_pasuq="strip"),
    dataclasses.replace(BARE, strip_niqqud=True, punctuation="hebrew"),
    dataclasses.replace(BARE, strip_cantillation=True, strip_zero_width=True, punctuation="ascii"),
]
NORMALIZERS = [HebrewNormalizer(c) for c in CONFIGS]


@settings(max_examples=200, deadline=None)
@given(text=hebrew_text)
@example(text="א \u200b ב")
@example(text='א\u200f"ב')
@example(text="e\u200d\u0301")
def test_normalizing_twice_equals_once(text):
    for n in NORMALIZERS:
        once = n(text)
        assert n(once) == once, n.config


STRIP_BY_FORM = [
    HebrewNormalizer(NormalizeConfig(unicode_form=form, strip_niqqud=True, strip_cantillation=True))
    for form in ("NFC", "none")
]


@settings(max_examples=200, deadline=None)
@given(text=hebrew_text)
def test_stripping_marks_does_not_depend_on_unicode_form(text):
    outs = [n(text) for n in STRIP_BY_FORM]
    assert not codepoints(outs[0]) & (NIQQUD | CANTILLATION)
    assert not codepoints(outs[1]) & (NIQQUD | CANTILLATION)
    # Only U+0301 can recompose under NFC; without it both forms must agree.
    if "\u0301" not in text:
        assert outs[0] == outs[1]
