"""The language seam: what a source's ``language`` code selects.

A language entry (:class:`LanguageProfile`) says which normalizer a source of that language gets
(a :class:`~hebatron_nemo.data.normalize.RuleNormalizer` subclass, built from the shared
``data.normalize`` options with the source's overrides) and which letters the script filter
(``data.filters.min_script_ratio``) counts, or that the language has no script filter. Adding a
language is one entry in :data:`PROFILES` (and its normalizer): ``docs/data.md``, "Adding a language".

    normalizer = build_normalizer(src.language, options)   # options: NormalizeConfig fields (a dict)
    normalizer(text); normalizer.normalize_batch(texts); normalizer.identity()
    script_ratio(src.language, text)                        # None: the language has no script filter
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from hebatron_nemo.data.arabic import ArabicNormalizer, arabic_letter_ratio
from hebatron_nemo.data.normalize import (HebrewNormalizer, LightNormalizer, NormalizeConfig, RuleNormalizer,
                                          hebrew_letter_ratio)
from hebatron_nemo.errors import ConfigError

__all__ = ["LANGUAGES", "PROFILES", "LanguageProfile", "build_normalizer", "profile", "script_ratio"]


@dataclass(frozen=True)
class LanguageProfile:
    """What one ``language`` code means to data preparation."""

    code: str  # the value of a source's `language`
    description: str  # one line for docs and error messages
    normalizer: type[RuleNormalizer]  # built with the source's NormalizeConfig
    script_ratio: Callable[[str], float] | None  # script letters / all letters; None: no script filter

    def build_normalizer(self, options: Mapping | NormalizeConfig | None = None) -> RuleNormalizer:
        """This language's normalizer, configured by ``options`` (NormalizeConfig fields)."""
        return self.normalizer(_normalize_config(options, self.code))


PROFILES: dict[str, LanguageProfile] = {
    p.code: p for p in (
        LanguageProfile("he", "Hebrew", HebrewNormalizer, hebrew_letter_ratio),
        LanguageProfile("en", "English (and the English anchors)", LightNormalizer, None),
        # aligned pairs: the Hebrew side is normalized as Hebrew, and the mixed text has no script filter
        LanguageProfile("he-en", "aligned Hebrew-English pairs", HebrewNormalizer, None),
        LanguageProfile("ar", "Arabic", ArabicNormalizer, arabic_letter_ratio),
    )
}
"""Every language a source may declare, by code."""

LANGUAGES = tuple(PROFILES)
"""The language codes a source's ``language`` may take."""


def profile(language: str) -> LanguageProfile:
    """The entry of ``language``; a ConfigError naming it and the known codes when there is none."""
    try:
        return PROFILES[language]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown language {language!r}: known languages are {', '.join(LANGUAGES)} "
                          "(hebatron_nemo/data/languages.py; docs/data.md, 'Adding a language')") from None


def build_normalizer(language: str, options: Mapping | NormalizeConfig | None = None) -> RuleNormalizer:
    """The normalizer of a source in ``language``, configured by ``options``.

    ``options`` holds :class:`NormalizeConfig` fields (``data.normalize`` with the source's
    overrides, as a plain dict or an OmegaConf node); fields that do not apply to the language are
    ignored by its normalizer. The result has ``__call__(text)``, ``normalize_batch(texts)`` and
    ``identity()`` (a JSON-able dict for manifests and fingerprints).
    """
    return profile(language).build_normalizer(options)


def script_ratio(language: str, text: str) -> float | None:
    """Letters of ``language``'s script / all letters of ``text``; None when the language has no script filter."""
    fn = profile(language).script_ratio
    return None if fn is None else fn(text)


def _normalize_config(options, language: str) -> NormalizeConfig:
    if options is None:
        return NormalizeConfig()
    if isinstance(options, NormalizeConfig):
        return options
    if not isinstance(options, Mapping):  # an OmegaConf DictConfig is a Mapping
        raise ConfigError(f"normalize options for language {language!r} must be a mapping of NormalizeConfig "
                          f"fields; got {type(options).__name__}")
    known = NormalizeConfig.__dataclass_fields__
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ConfigError(f"normalize.{unknown[0]} is not a normalization option; the options are "
                          f"{', '.join(known)}")
    return NormalizeConfig(**dict(options))
