"""The language seam (hebatron_nemo/data/languages.py): Arabic normalization on real Arabic strings, the
English light normalizer against today's output, the script filter by language, and the config errors."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st
from omegaconf import OmegaConf

from hebatron_nemo.data.arabic import (ALEF_VARIANTS, HAMZA_MARKS, HARAKAT, QURANIC_MARKS, TATWEEL,
                                       ArabicNormalizer, arabic_letter_ratio)
from hebatron_nemo.data.filters import DocumentFilter, FilterReport
from hebatron_nemo.data.languages import LANGUAGES, PROFILES, build_normalizer, profile, script_ratio
from hebatron_nemo.data.normalize import SHARED_FIELDS, HebrewNormalizer, LightNormalizer, NormalizeConfig
from hebatron_nemo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

RLM, LRM, ALM, ZWNJ, ZWJ, NBSP = "\u200f", "\u200e", "\u061c", "\u200c", "\u200d", "\u00a0"

# Al-Fatiha 1:1 in Quranic typography: harakat, shadda, alef wasla (ٱ), a tatweel carrying the
# superscript alef (ـٰ), then the end-of-ayah sign (U+06DD) before the verse number.
QURAN = "بِسْمِ ٱللَّهِ ٱلرَّحْمَـٰنِ ٱلرَّحِيمِ ۝١"
# News prose: hamza on alef above and below (أ إ), alef maddah (آ), hamza on waw (ؤ, never folded),
# alef maqsura (على, مستشفى), tanwin fath (ً), Arabic-Indic digits and the Arabic comma.
NEWS = "أعلنت وزارة الصحة إصابة ٣٢ شخصاً في الإسكندرية، وقال مسؤول إن آلاف المرضى وصلوا إلى المستشفى."
# A mixed line as scraped from the web: RLM/LRM, curly quotes, NBSP, an English tail.
MIXED = f"{RLM}قال المدير “سنطلق GPT-5 قريباً”{NBSP}في دبي{LRM} — it’s official"
# Farsi yeh (U+06CC) typed for Arabic yeh on a Persian keyboard.
FARSI_YEH = "\u06ccوم الجمعة ف\u06cc القاهرة"
DIGITS = "١٢٣٤٥٦٧٨٩٠ و۱۲۳۴ و2024"


def arabic(**changes) -> ArabicNormalizer:
    return ArabicNormalizer(NormalizeConfig(**changes))


def codepoints(text: str) -> set[int]:
    return {ord(c) for c in text}


# --------------------------------------------------------------------------- test data sanity

def test_samples_really_have_what_they_are_named_for():
    q = codepoints(QURAN)
    assert q & HARAKAT and 0x0670 in q and 0x0671 in q and ord(TATWEEL) in q and 0x06DD in q
    n = codepoints(NEWS)
    assert {0x0623, 0x0625, 0x0622, 0x0624, 0x0649, 0x064B, 0x060C} <= n
    assert 0x06CC in codepoints(FARSI_YEH)


# --------------------------------------------------------------------------- the Arabic normalizer

def test_quran_defaults_strip_only_the_tatweel():
    assert arabic()(QURAN) == "بِسْمِ ٱللَّهِ ٱلرَّحْمَٰنِ ٱلرَّحِيمِ ۝١"


def test_quran_without_harakat_and_quranic_marks():
    n = arabic(strip_harakat=True, strip_quranic_marks=True)
    assert n(QURAN) == "بسم ٱلله ٱلرحمن ٱلرحيم ١"
    assert arabic(strip_harakat=True, strip_quranic_marks=True, fold_alef=True)(QURAN) == "بسم الله الرحمن الرحيم ١"


def test_tatweel_kept_when_asked():
    n = arabic(strip_tatweel=False, strip_harakat=True)
    assert n(QURAN) == "بسم ٱلله ٱلرحمـن ٱلرحيم ۝١"
    assert arabic()("العـــربية") == "العربية"


def test_news_folds_alef_and_yeh_each_by_its_switch():
    assert arabic()(NEWS) == NEWS
    assert arabic(fold_alef=True)(NEWS) == (
        "اعلنت وزارة الصحة اصابة ٣٢ شخصاً في الاسكندرية، وقال مسؤول ان الاف المرضى وصلوا الى المستشفى.")
    assert arabic(fold_yeh=True)(NEWS) == (
        "أعلنت وزارة الصحة إصابة ٣٢ شخصاً في الإسكندرية، وقال مسؤول إن آلاف المرضي وصلوا إلي المستشفي.")
    assert arabic(strip_harakat=True, fold_alef=True, fold_yeh=True)(NEWS) == (
        "اعلنت وزارة الصحة اصابة ٣٢ شخصا في الاسكندرية، وقال مسؤول ان الاف المرضي وصلوا الي المستشفي.")


def test_farsi_yeh_folds_to_arabic_yeh():
    assert arabic(fold_yeh=True)(FARSI_YEH) == "يوم الجمعة في القاهرة"
    assert arabic()(FARSI_YEH) == FARSI_YEH


def test_mixed_arabic_english_line():
    assert arabic()(MIXED) == 'قال المدير "سنطلق GPT-5 قريباً" في دبي — it\'s official'
    assert arabic(punctuation="keep")(MIXED) == "قال المدير “سنطلق GPT-5 قريباً” في دبي — it’s official"


def test_arabic_indic_and_persian_digits_are_left_alone():
    everything = arabic(unicode_form="NFKC", strip_harakat=True, strip_quranic_marks=True, fold_alef=True,
                        fold_yeh=True)
    assert everything(DIGITS) == DIGITS
    assert everything("٣٫١٤ ٪٥٠") == "٣٫١٤ ٪٥٠"  # Arabic decimal separator and percent sign


def test_hijri_abbreviation_loses_its_tatweel():
    # هـ (hijri year) is written with a tatweel; stripping it leaves the bare letter, as in most corpora
    assert arabic()("١٤٤٥ هـ") == "١٤٤٥ ه"
    assert arabic(strip_tatweel=False)("١٤٤٥ هـ") == "١٤٤٥ هـ"


def test_zero_width_choice_zwnj_and_zwj_are_deleted_for_arabic():
    # Arabic letters join by default, so ZWNJ/ZWJ carry no spelling in Arabic and are deleted with the
    # other zero-width characters; a Persian profile would have to keep ZWNJ (می‌خواهم).
    text = f"ال{ZWJ}كتاب ال{ZWNJ}عربي"
    assert arabic()(text) == "الكتاب العربي"
    assert arabic(strip_zero_width=False)(text) == text


def test_bidi_controls_including_the_arabic_letter_mark():
    assert arabic()(f"{ALM}مرحبا{RLM} 123{LRM}") == "مرحبا 123"
    assert arabic(strip_bidi_controls=False)(f"{ALM}مرحبا") == f"{ALM}مرحبا"


def test_whitespace_collapses_as_in_hebrew():
    assert arabic()(f"  مرحبا{NBSP}{NBSP}بكم\t\tفي\u2009دبي \r\n\r\n\r\n\nسطر ثان  ") == "مرحبا بكم في دبي\n\nسطر ثان"


def test_presentation_forms_fold_only_under_nfkc():
    pdf = "\ufecb\ufeae\ufe91\ufef2 \ufefb"  # ﻋﺮﺑﻲ ﻻ: presentation forms as extracted from a PDF
    assert arabic()(pdf) == pdf
    assert arabic(unicode_form="NFKC")(pdf) == "عربي لا"
    assert arabic_letter_ratio(pdf) == 1.0


def test_decomposed_hamza_composes_and_folds_the_same_as_precomposed():
    decomposed = "\u0627\u0654\u0645\u0644"  # ا + hamza above + مل
    assert arabic()(decomposed) == "أمل"
    assert arabic(fold_alef=True)(decomposed) == arabic(fold_alef=True)("أمل") == "امل"
    # without Unicode normalization the fold still drops the mark from the alef
    assert arabic(unicode_form="none", fold_alef=True)(decomposed) == "امل"
    # a second hamza mark NFC cannot compose (it is blocked) goes with the fold too
    assert arabic(fold_alef=True)("\u0627\u0654\u0654") == "ا"
    # hamza marks on other letters are spelling and stay: ؤ ئ
    assert arabic(fold_alef=True, strip_harakat=True)("مسؤول \u064a\u0654") == "مسؤول ئ"


def test_yeh_fold_before_composition():
    # alef maqsura + hamza above: folded to yeh, which then composes with the hamza into ئ
    assert arabic(fold_yeh=True)("\u0649\u0654") == "ئ"


def test_harakat_set_spares_hamza_and_maddah():
    assert not HARAKAT & HAMZA_MARKS
    assert {0x064B, 0x064E, 0x0650, 0x0651, 0x0652, 0x0670} <= HARAKAT
    assert all(unicodedata.category(chr(cp)) == "Mn" for cp in HARAKAT | HAMZA_MARKS)
    assert QURANIC_MARKS == set(range(0x06D6, 0x06EE))


def test_normalizer_api_identity_and_pickling():
    n = arabic(strip_harakat=True)
    assert n.normalize_batch([QURAN, "", " ا "]) == [n(QURAN), "", "ا"]
    ident = n.identity()
    assert ident["name"] == "hebatron_nemo.ArabicNormalizer" and isinstance(ident["version"], int)
    assert json.loads(json.dumps(ident)) == ident and len(ident["hash"]) == 16
    assert set(ident["config"]) == set(ArabicNormalizer.FIELDS)
    clone = pickle.loads(pickle.dumps(n))
    assert clone(QURAN) == n(QURAN) and clone.identity() == ident
    with pytest.raises(TypeError, match="ArabicNormalizer"):
        n(b"\xd8\xa7")


def test_identity_hash_changes_with_every_arabic_field_and_ignores_hebrew_ones():
    alternatives = {"unicode_form": "NFKC", "strip_bidi_controls": False, "strip_zero_width": False,
                    "punctuation": "keep", "collapse_whitespace": False, "strip_tatweel": False,
                    "strip_harakat": True, "strip_quranic_marks": True, "fold_alef": True, "fold_yeh": True}
    assert set(alternatives) == set(ArabicNormalizer.FIELDS)
    hashes = {arabic().identity()["hash"]} | {arabic(**{k: v}).identity()["hash"] for k, v in alternatives.items()}
    assert len(hashes) == 1 + len(alternatives)
    hebrew_only = arabic(strip_niqqud=True, strip_cantillation=True, paseq_sof_pasuq="strip")
    assert hebrew_only.identity() == arabic().identity()
    text = QURAN + " שָׁלוֹם׃ ׀"
    assert hebrew_only(text) == arabic()(text)


def test_punctuation_hebrew_means_keep_outside_hebrew():
    assert arabic(punctuation="hebrew")(MIXED) == arabic(punctuation="keep")(MIXED)
    assert LightNormalizer(NormalizeConfig(punctuation="hebrew"))("it’s “x”") == "it’s “x”"


# Chunks of each kind, so the neighbourhoods that matter (alef + marks + hamza, a mark after a deleted
# control, presentation forms under NFKC) come up often.
arabic_text = st.lists(
    st.one_of(
        st.sampled_from([chr(cp) for cp in range(0x0600, 0x0700)]),
        st.sampled_from(["\u0627", "\u0649", "\u064a", "\u0648", *ALEF_VARIANTS, "\u06cc"]),
        st.sampled_from([chr(cp) for cp in sorted(HARAKAT | HAMZA_MARKS | QURANIC_MARKS)]),
        st.sampled_from([chr(cp) for cp in [*range(0x0750, 0x0780), *range(0x08A0, 0x0900)]]),
        st.sampled_from([chr(cp) for cp in [*range(0xFB50, 0xFB60), *range(0xFC5E, 0xFC64), *range(0xFE70, 0xFF00)]]),
        st.sampled_from([" ", "\t", "\n", NBSP, "\u2009", "a", "'", "’", "“", "-"]),
        st.sampled_from([RLM, LRM, ALM, ZWJ, ZWNJ, "\ufeff", TATWEEL]),
    ),
    max_size=30,
).map("".join)

ARABIC_CONFIGS = [
    NormalizeConfig(),
    NormalizeConfig(strip_harakat=True, strip_quranic_marks=True, fold_alef=True, fold_yeh=True),
    NormalizeConfig(unicode_form="NFKC", strip_harakat=True, fold_alef=True, fold_yeh=True),
    NormalizeConfig(unicode_form="none", strip_tatweel=False, fold_alef=True, fold_yeh=True,
                    strip_bidi_controls=False, collapse_whitespace=False),
    NormalizeConfig(unicode_form="NFKC", strip_zero_width=False, punctuation="keep", fold_alef=True),
]
ARABIC_NORMALIZERS = [ArabicNormalizer(c) for c in ARABIC_CONFIGS]


@settings(max_examples=200, deadline=None)
@given(text=arabic_text)
@example(text="\u0627\u0654\u0654")
@example(text="\u0627\u200d\u0654")
@example(text="\u0649\u0654")
@example(text="\ufe83\u0654")
def test_arabic_normalizing_twice_equals_once(text):
    for n in ARABIC_NORMALIZERS:
        once = n(text)
        assert n(once) == once, n.config


@settings(max_examples=200, deadline=None)
@given(text=arabic_text)
def test_what_the_switches_remove_is_gone(text):
    for form in ("NFC", "NFKC", "none"):
        out = arabic(unicode_form=form, strip_harakat=True, strip_quranic_marks=True, fold_alef=True,
                     fold_yeh=True)(text)
        assert not codepoints(out) & (HARAKAT | QURANIC_MARKS | {ord(TATWEEL), 0x0649, 0x06CC}), form
        assert not set(out) & set(ALEF_VARIANTS), form
        assert not any(a == "\u0627" and ord(b) in HAMZA_MARKS for a, b in zip(out, out[1:])), form


# --------------------------------------------------------------------------- the script ratio

def test_arabic_letter_ratio_on_mixed_text():
    assert arabic_letter_ratio("مرحبا world") == pytest.approx(5 / 10)
    # G P U + في + القاهرة: 12 letters, 9 Arabic; digits (Arabic-Indic too) count neither way
    assert arabic_letter_ratio("GPU في القاهرة ٢٠٢٤ 2024!") == pytest.approx(9 / 12)
    assert arabic_letter_ratio(QURAN) == 1.0  # harakat and Quranic signs are not letters
    assert arabic_letter_ratio("שלום עולם") == 0.0
    assert arabic_letter_ratio("١٢٣ ، ؟") == 0.0


def test_script_ratio_by_language():
    assert script_ratio("ar", "مرحبا world") == pytest.approx(0.5)
    assert script_ratio("he", "שלום world") == pytest.approx(4 / 9)
    assert script_ratio("he", "مرحبا") == 0.0 and script_ratio("ar", "שלום") == 0.0
    assert script_ratio("en", "anything") is None and script_ratio("he-en", "שלום") is None


def test_document_filter_takes_its_script_from_the_language():
    filters = {"min_chars": 5, "min_words": 2, "min_script_ratio": 0.6, "max_chars": None}
    ar, en, he = (DocumentFilter(language=lang, **filters) for lang in ("ar", "en", "he"))
    english = "This line is English text only."
    assert ar.reason(NEWS) is None and ar.reason(english) == "min_script_ratio"
    assert ar.reason("שלום עולם ומלואו") == "min_script_ratio"
    assert he.reason(NEWS) == "min_script_ratio" and he.reason("שלום עולם ומלואו") is None
    assert en.reason(english) is None and en.reason(NEWS) is None  # English has no script filter
    assert DocumentFilter(language="he-en", **filters).reason(english) is None
    with pytest.raises(ConfigError, match="min_script_ratio must be in"):
        DocumentFilter(language="ar", **{**filters, "min_script_ratio": 1.5})


def test_a_report_from_before_the_rename_reads_under_the_new_reason():
    old = {"seen_docs": 5, "seen_chars": 50, "kept_docs": 3, "kept_chars": 30,
           "removed_docs": {"min_hebrew_ratio": 2}, "removed_chars": {"min_hebrew_ratio": 20}}
    r = FilterReport.from_dict(old)
    assert r.removed_docs["min_script_ratio"] == 2 and r.removed_chars["min_script_ratio"] == 20
    assert "min_hebrew_ratio" not in r.to_dict()["removed_docs"]


# --------------------------------------------------------------------------- the seam

def test_each_language_gets_its_normalizer():
    assert set(LANGUAGES) == {"he", "en", "he-en", "ar"} and LANGUAGES == tuple(PROFILES)
    assert type(build_normalizer("he", {})) is HebrewNormalizer
    assert type(build_normalizer("he-en", {})) is HebrewNormalizer
    assert type(build_normalizer("en", {})) is LightNormalizer
    assert type(build_normalizer("ar", {})) is ArabicNormalizer
    assert profile("ar").script_ratio is arabic_letter_ratio


def test_hebrew_through_the_seam_is_what_prepare_builds_today():
    options = {"strip_niqqud": True, "strip_cantillation": True, "paseq_sof_pasuq": "strip"}
    today = HebrewNormalizer(NormalizeConfig(**options))
    for node in (options, OmegaConf.create(options), NormalizeConfig(**options)):
        n = build_normalizer("he", node)
        assert n.identity() == today.identity()
        assert n("בְּרֵאשִׁ֖ית בָּרָ֣א ׀ אֱלֹהִ֑ים׃") == today("בְּרֵאשִׁ֖ית בָּרָ֣א ׀ אֱלֹהִ֑ים׃") == "בראשית ברא אלהים"


def test_unknown_language_and_unknown_option_are_config_errors_naming_them():
    with pytest.raises(ConfigError, match=r"unknown language 'xx'.*he, en, he-en, ar"):
        build_normalizer("xx", {})
    with pytest.raises(ConfigError, match="'xx'"):
        DocumentFilter(language="xx", min_chars=1, min_words=0, min_script_ratio=0.5, max_chars=None)
    with pytest.raises(ConfigError, match="strip_harakaat"):
        build_normalizer("ar", {"strip_harakaat": True})
    with pytest.raises(ConfigError, match="fold_alef must be true or false"):
        build_normalizer("ar", {"fold_alef": "yes"})


# --------------------------------------------------------------------------- English: the light normalizer

def test_light_normalizer_does_only_the_language_neutral_steps():
    text = f"{RLM}He said{NBSP}“it’s fine”{LRM}\u2009— ‘ok’ `x`{ZWJ}\r\n\r\n\r\nThe end\ufeff"
    assert LightNormalizer()(text) == 'He said "it\'s fine" — \'ok\' \'x\'\n\nThe end'
    # Hebrew punctuation and marks are not its business
    assert LightNormalizer()("בית־ספר צה״ל שָׁלוֹם׃") == "בית־ספר צה״ל שָׁלוֹם׃"
    assert set(LightNormalizer().identity()["config"]) == set(SHARED_FIELDS)


def test_light_normalizer_equals_todays_output_on_english_strings():
    # Before the seam an English source went through HebrewNormalizer with the same options; that
    # normalizer's output is pinned by tests/data/normalize_golden.json (tests/test_normalize.py).
    strings = ["In the beginning God created the heaven and the earth.",
               f"“Don’t,” she said.{NBSP}{NBSP}It’s 5\u202fpm — ‘late’.\t\n\n\n\nNext {RLM}line{LRM}\ufeff",
               "caf\u0065\u0301 ﬁne ｗｉｄｅ ①", "  \r\n\u2028 tabs\tand\u00a0spaces  "]
    for options in ({}, {"unicode_form": "NFKC"}, {"punctuation": "keep"}, {"strip_zero_width": False}):
        for s in strings:
            assert LightNormalizer(NormalizeConfig(**options))(s) == HebrewNormalizer(NormalizeConfig(**options))(s)


LIGHT_NORMALIZERS = [LightNormalizer(NormalizeConfig(unicode_form=form, punctuation=p))
                     for form in ("NFC", "NFKC", "none") for p in ("ascii", "keep")]


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ae\u0301\u00e9'’‘“”`\" \t\n\r-") + [NBSP, "\u2028", "\ufb01", "\uff57",
                                                                                   RLM, LRM, ZWJ, ZWNJ, "\ufeff"]),
               max_size=30))
@example(text="e\u200d\u0301")
def test_light_normalizing_twice_equals_once(text):
    for n in LIGHT_NORMALIZERS:
        once = n(text)
        assert n(once) == once, n.config


def test_light_normalizer_equals_todays_output_on_the_demo_english_corpora():
    """en_kjv and en_jps as `recipes/install_demo_corpora.py` writes them (2,110 chapters)."""
    from hebatron_nemo.demo.corpora import _by_chapter, _kjv_chapters, _tanakh_verses

    docs = [d["text"] for d in _kjv_chapters() + _by_chapter(_tanakh_verses(), 4)]
    assert len(docs) > 2000
    light, today = build_normalizer("en", {}), HebrewNormalizer(NormalizeConfig())
    assert [light(t) for t in docs] == [today(t) for t in docs]


# --------------------------------------------------------------------------- config errors

def _registry(sources: dict, tmp_path: Path):
    from hebatron_nemo.config import DataConfig

    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    return OmegaConf.merge(OmegaConf.structured(DataConfig), {
        "name": "t", "raw_dir": str(tmp_path), "output_dir": str(tmp_path / "out"),
        "decontamination": {"eval_tasks": []},  # no evaluation task folders here
        "sources": {name: {"register": "test", "path": "a.jsonl", "licence": "test", **src}
                    for name, src in sources.items()}})


def test_registry_validation_accepts_arabic_and_rejects_an_unknown_language(tmp_path):
    from hebatron_nemo.data.registry import validate_registry

    validate_registry(_registry({"ar_news": {"language": "ar", "normalize": {"fold_yeh": True},
                                             "filters": {"min_script_ratio": 0.7}}}, tmp_path))
    with pytest.raises(ConfigError, match=r"data\.sources\.xx_web\.language must be one of .*'ar'.*got 'xx'"):
        validate_registry(_registry({"xx_web": {"language": "xx"}}, tmp_path))


def test_registry_validation_names_a_bad_normalize_option_of_a_source(tmp_path):
    from hebatron_nemo.data.registry import validate_registry

    with pytest.raises(ConfigError, match=r"data\.sources\.ar_news: normalize\.unicode_form must be one of"):
        validate_registry(_registry({"ar_news": {"language": "ar", "normalize": {"unicode_form": "NFD"}}}, tmp_path))


def test_unknown_language_stops_prepare_before_any_output(tmp_path):
    from corpus import prepare_config, source, write_jsonl
    from hebatron_nemo.data.prepare import prepare

    write_jsonl(tmp_path / "raw" / "xx.jsonl", [{"id": "1", "text": "some text here"}])
    cfg = prepare_config(tmp_path, {"xx_web": source("xx.jsonl", language="xx")})
    with pytest.raises(ConfigError, match=r"data\.sources\.xx_web\.language.*'xx'"):
        prepare(cfg, log=lambda *a, **k: None)
    assert not (tmp_path / "out").exists() and not (tmp_path / "tok").exists()


def test_the_old_ratio_key_names_its_new_key_in_a_source_registry(tmp_path):
    from hebatron_nemo.data.registry import validate_registry

    with pytest.raises(ConfigError, match=r"data\.sources\.he_web\.filters\.min_hebrew_ratio was renamed: use "
                                          r"data\.sources\.\*\.filters\.min_script_ratio"):
        validate_registry(_registry({"he_web": {"language": "he", "filters": {"min_hebrew_ratio": 0.6}}}, tmp_path))


def test_the_old_ratio_key_names_its_new_key_when_composed():
    from hebatron_nemo.config import renamed_key_errors
    from hebatron_nemo.launch.compose import check_stage

    with pytest.raises(ConfigError, match=r"data\.filters\.min_hebrew_ratio was renamed: use data\.filters\.min_script_ratio"):
        check_stage("prepare_data", ["data.filters.min_hebrew_ratio=0.6"])
    text = "Key 'min_hebrew_ratio' not in 'FilterConfig'\n    full_key: data.filters.min_hebrew_ratio\n"
    assert renamed_key_errors([], text) == ["data.filters.min_hebrew_ratio was renamed: use "
                                            "data.filters.min_script_ratio (docs/config_migration.md)"]


def test_the_old_ratio_key_on_the_command_line_exits_2_naming_the_new_key(tmp_path):
    proc = subprocess.run([sys.executable, "recipes/prepare_data.py", f"paths.work={tmp_path}",
                           "data.filters.min_hebrew_ratio=0.6"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data.filters.min_hebrew_ratio was renamed: use data.filters.min_script_ratio" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_every_config_field_is_documented_for_its_languages():
    doc = NormalizeConfig.__doc__
    for f in dataclasses.fields(NormalizeConfig):
        assert f"{f.name}:" in doc, f.name
