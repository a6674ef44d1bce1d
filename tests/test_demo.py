"""The demo corpora and `make demo`'s prepare step, on the real packaged text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hebatron_nemo.data.demo_corpora import install_demo_corpora

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
    from hebatron_nemo.data.demo_corpora import unsegment_verse

    seg = "וְ/יָוָ֣ן וּ/מֶ֖שֶׁךְ ׃ ס בְּנֵ֣י - נֹ֔חַ ׆ וַ/יֵּ֖שֶׁב ׃ פ"
    assert unsegment_verse(seg) == "וְיָוָ֣ן וּמֶ֖שֶׁךְ ׃ בְּנֵ֣י־נֹ֔חַ וַיֵּ֖שֶׁב ׃"
    assert unsegment_verse("ספר פרק") == "ספר פרק"  # words starting with ס/פ are untouched
