"""The demo corpora and `make demo`'s prepare step, on the real packaged text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hebatron_nemo.demo.corpora import install_demo_corpora

REPO = Path(__file__).resolve().parents[1]


def test_without_apt_the_demo_says_what_it_substituted(tmp_path):
    summary = install_demo_corpora(tmp_path, use_apt=False, log=lambda *_: None)
    assert any("he_modern" in note and "Bavli" in note for note in summary["substitutions"])
    assert "substitute" in summary["sources"]["he_modern"]["origin"]
    rows = [json.loads(line) for line in open(tmp_path / "he_modern.jsonl", encoding="utf-8")]
    assert len(rows) > 100 and all(r["text"] for r in rows)
    # held-out translation pairs are whole chapters absent from the SFT split
    chapters = {split: {json.loads(l)["id"].rsplit(":", 1)[0] for l in open(tmp_path / f"pairs_{split}.jsonl")}
                for split in ("train", "valid", "test")}
    assert chapters["test"] and not chapters["test"] & chapters["train"] and not chapters["valid"] & chapters["train"]
    pair = json.loads(open(tmp_path / "pairs_test.jsonl").readline())
    assert pair["he"] and pair["en"] and not any("\u0591" <= c <= "\u05c7" for c in pair["he"])  # no niqqud
    again = install_demo_corpora(tmp_path, use_apt=False, log=lambda *_: None)  # idempotent
    assert again == summary


def test_segmented_verses_become_written_hebrew():
    from hebatron_nemo.demo.corpora import unsegment_verse

    seg = "וְ/יָוָ֣ן וּ/מֶ֖שֶׁךְ ׃ ס בְּנֵ֣י - נֹ֔חַ ׆ וַ/יֵּ֖שֶׁב ׃ פ"
    assert unsegment_verse(seg) == "וְיָוָ֣ן וּמֶ֖שֶׁךְ ׃ בְּנֵ֣י־נֹ֔חַ וַיֵּ֖שֶׁב ׃"
    assert unsegment_verse("ספר פרק") == "ספר פרק"  # words starting with ס/פ are untouched


FAKE_APT = """#!/bin/sh
# apt-get stand-in for the Debian archive: serves $FAKE_ARCHIVE/<package>=<version>.deb
echo "$@" >> "$FAKE_APT_LOG"
[ "$1" = download ] || exit 2
for spec in "$@"; do
  [ "$spec" = download ] && continue
  if [ -f "$FAKE_ARCHIVE/$spec.deb" ]; then
    cp "$FAKE_ARCHIVE/$spec.deb" "$(echo "$spec" | tr '=' '_')_all.deb"
  else
    echo "E: Version '${spec#*=}' for '${spec%%=*}' was not found" >&2; exit 100
  fi
done
"""


def _build_deb(tmp: Path, package: str, version: str, strings: list[str]) -> Path:
    """A real .deb (dpkg-deb --build) holding one Firefox-style language pack (.xpi with a .ftl)."""
    import zipfile

    root = tmp / f"build-{package}-{len(strings)}"
    xpi = root / f"usr/lib/firefox-esr/distribution/extensions/langpack-{package}@firefox.xpi"
    xpi.parent.mkdir(parents=True)
    with zipfile.ZipFile(xpi, "w") as z:
        z.writestr(f"localization/he/{package}.ftl", "\n".join(f"k{i} = {s}" for i, s in enumerate(strings)))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
                                         "Maintainer: test <t@example.org>\nDescription: test\n")
    out = tmp / f"{package}-{len(strings)}.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.mark.slow  # builds .debs and installs the demo corpora twice
@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_debian_packages_are_pinned_by_version_and_sha256(tmp_path, monkeypatch):
    from hebatron_nemo.demo import corpora as dc
    from hebatron_nemo.utils.hashing import sha256_file
    from hebatron_nemo.errors import DataError

    archive, bindir = tmp_path / "archive", tmp_path / "bin"
    archive.mkdir()
    bindir.mkdir()
    (bindir / "apt-get").write_text(FAKE_APT)
    (bindir / "apt-get").chmod(0o755)
    log_file = tmp_path / "apt.log"
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ARCHIVE", str(archive))
    monkeypatch.setenv("FAKE_APT_LOG", str(log_file))
    pinned = _build_deb(tmp_path, "l10n-a", "1.0-1", ["שלום עולם", "פתח קובץ"])
    other = _build_deb(tmp_path, "l10n-b", "2.0-1", ["שמור בשם", "סגור חלון", "הדפס"])
    pins = (dc.DebianPin("l10n-a", "1.0-1", sha256_file(pinned)), dc.DebianPin("l10n-b", "2.0-1", sha256_file(other)))
    monkeypatch.setattr(dc, "DEBIAN_PINS", pins)
    shutil.copy(pinned, archive / "l10n-a=1.0-1.deb")
    shutil.copy(other, archive / "l10n-b=2.0-1.deb")

    summary = install_demo_corpora(tmp_path / "ok", log=lambda *_: None)
    assert log_file.read_text().split("\n")[:2] == ["download l10n-a=1.0-1", "download l10n-b=2.0-1"]
    assert not summary["substitutions"]
    assert summary["sources"]["he_modern"]["identity"] == {
        "debian": [{"package": p.package, "version": p.version, "sha256": p.sha256} for p in pins]}
    assert summary["debian_pins"] == summary["sources"]["he_modern"]["identity"]["debian"]
    texts = [json.loads(l)["text"] for l in open(tmp_path / "ok" / "he_modern.jsonl", encoding="utf-8")]
    assert "שלום עולם" in "\n".join(texts) and "הדפס" in "\n".join(texts)
    for name in ("he_tanakh", "en_kjv", "he_mishnah", "he_long"):
        ident = summary["sources"][name]["identity"]
        assert ident["pypi"] and ident["version"] and len(ident["sha256"]) == 64
    written = json.loads((tmp_path / "ok" / "demo_sources.json").read_text())
    assert written["sources"]["he_modern"]["identity"] == summary["sources"]["he_modern"]["identity"]

    # the archive now serves a different file under the pinned version: an error, not a demo
    shutil.copy(_build_deb(tmp_path, "l10n-a", "1.0-1", ["אחר"]), archive / "l10n-a=1.0-1.deb")
    with pytest.raises(DataError, match=r"l10n-a=1.0-1: the downloaded .deb has sha256 [0-9a-f]{64}, the pin says"):
        install_demo_corpora(tmp_path / "tampered", log=lambda *_: None)

    # the pinned version is gone from the index: the documented fallback, saying which and why
    (archive / "l10n-a=1.0-1.deb").unlink()
    summary = install_demo_corpora(tmp_path / "gone", log=lambda *_: None)
    note = " ".join(summary["substitutions"])
    assert "Bavli" in note and "l10n-a=1.0-1" in note and "apt-get update" in note
    assert summary["sources"]["he_modern"]["identity"]["file"] == "json/bavli.json"

    # ... unless that .deb (any name, matched by sha256) was put in <out>/_debian/debs by hand
    (tmp_path / "dropin" / "_debian" / "debs").mkdir(parents=True)
    shutil.copy(pinned, tmp_path / "dropin" / "_debian" / "debs" / "whatever.deb")
    log_file.write_text("")
    summary = install_demo_corpora(tmp_path / "dropin", log=lambda *_: None)
    assert not summary["substitutions"]
    assert log_file.read_text().split("\n")[:1] == ["download l10n-b=2.0-1"]  # only the one not dropped in
