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


@pytest.mark.slow
def test_demo_install_and_prepare_end_to_end(tmp_path):
    env = {**os.environ, "HEBATRON_WORK": str(tmp_path)}
    for cmd in (["recipes/install_demo_corpora.py"], ["recipes/prepare_data.py", "data=demo", "progress=false"]):
        proc = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "data" / "demo" / "prepare_summary.json").read_text())
    tokenized = {n: m for n, m in summary.items() if m["kind"] == "source"}
    assert set(tokenized) == {"he_tanakh", "he_mishnah", "he_modern", "he_long", "en_kjv", "en_jps"}
    for name, m in tokenized.items():
        assert m["splits"]["train"]["tokens"] > 50_000, name
        assert m["splits"]["valid"]["documents"] >= 1 and m["splits"]["test"]["documents"] >= 1, name
    # the held-out verse pairs' chapters were removed from the Bible sources
    assert tokenized["he_tanakh"]["report"]["removed_docs"]["decontaminated"] >= 20
    assert tokenized["en_jps"]["report"]["removed_docs"]["decontaminated"] >= 20
    # long documents really are long: most of he_long's tokens come from documents over 512 tokens
    hist = tokenized["he_long"]["splits"]["train"]["length_histogram"]
    long_tokens = sum(t for edge, t in zip(hist["bin_lower_edges"], hist["tokens"]) if edge >= 512)
    assert long_tokens > 0.9 * tokenized["he_long"]["splits"]["train"]["tokens"]
    assert summary["pairs_train"]["documents"] > 10_000
    # the tiny CPT plan over the prepared demo: two segments, three phases, 25% anchor, caches built
    proc = subprocess.run([sys.executable, "recipes/plan.py", "experiment=tiny_cpu"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(next((tmp_path / "runs").glob("tiny-easy_to_hard-*/plan.json")).read_text())
    assert [p["name"] for p in plan["phases"]] == ["formal", "colloquial", "long_context"]
    assert {s["anchor_share_effective"] for s in plan["segments"]} == {0.25} and not plan["warnings"]
    assert set(plan["caches"]) == {s["key"] for s in plan["streams"]}
    # a second run finds everything up to date
    proc = subprocess.run([sys.executable, "recipes/prepare_data.py", "data=demo", "progress=false"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and proc.stdout.count("up to date") >= 6


def test_segmented_verses_become_written_hebrew():
    from hebatron_nemo.data.demo_corpora import unsegment_verse

    seg = "וְ/יָוָ֣ן וּ/מֶ֖שֶׁךְ ׃ ס בְּנֵ֣י - נֹ֔חַ ׆ וַ/יֵּ֖שֶׁב ׃ פ"
    assert unsegment_verse(seg) == "וְיָוָ֣ן וּמֶ֖שֶׁךְ ׃ בְּנֵ֣י־נֹ֔חַ וַיֵּ֖שֶׁב ׃"
    assert unsegment_verse("ספר פרק") == "ספר פרק"  # words starting with ס/פ are untouched
