"""Near-duplicate removal by the prepare graph's MinHash stages, measured against planted duplicates.

Two Hebrew sources of distinct random documents; into them go copies of some documents: edited
(a few words replaced, a sentence added) or with their paragraphs reordered, placed in another task of
the same source or in the other source. The graph runs with 3 tasks per source. Every planted group
must keep exactly one document; nothing else may be removed. Recall and precision are printed
(`pytest -s`) and asserted.
"""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest

from corpus import prepare_config, source, write_jsonl

from hebatron_nemo.data.prepare import SPLITS, prepare

LETTERS = "אבגדהוזחטיכלמנסעפצקרשת"


def _vocabulary(rng: random.Random, n: int = 4000) -> list[str]:
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 7))))
    return sorted(words)


def _document(rng: random.Random, vocab: list[str], paragraphs: int = 6, words: int = 60) -> list[str]:
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(paragraphs)]


def _edited(rng: random.Random, vocab: list[str], paras: list[str]) -> list[str]:
    """Four words replaced and one sentence added: Jaccard similarity of 5-gram shingles ~0.85."""
    words = " \n ".join(paras).split(" ")
    for i in rng.sample([i for i, w in enumerate(words) if w != "\n"], 4):
        words[i] = rng.choice(vocab)
    text = " ".join(words).replace(" \n ", "\n\n")
    return text.split("\n\n") + [" ".join(rng.choice(vocab) for _ in range(8))]


def _reordered(rng: random.Random, paras: list[str]) -> list[str]:
    order = list(range(len(paras)))
    while order == sorted(order):
        rng.shuffle(order)
    return [paras[i] for i in order]


@pytest.mark.slow  # the whole graph on 156 documents, 3 tasks per source (~12 s)
def test_planted_near_duplicates_are_removed_across_tasks_and_sources(tmp_path):
    rng = random.Random(7)
    vocab = _vocabulary(rng)
    sources = {"he_a": [], "he_b": []}
    groups: list[set[str]] = []
    n_base = 60
    for name in sources:
        for i in range(n_base):
            sources[name].append({"id": f"{name}-{i}", "paras": _document(rng, vocab)})
    # 36 groups: 12 edited copies into the other source, 12 reordered into the other source, 12 edited or
    # reordered into the same source (appended: another ordinal mod 3, most often another task)
    for g in range(36):
        src = "he_a" if g % 2 == 0 else "he_b"
        other = "he_b" if src == "he_a" else "he_a"
        orig = sources[src][g]
        dest = other if g < 24 else src
        kind = "edited" if (g // 2) % 2 == 0 else "reordered"
        paras = _edited(rng, vocab, orig["paras"]) if kind == "edited" else _reordered(rng, orig["paras"])
        copy_id = f"{dest}-copy{g}-{kind}"
        sources[dest].append({"id": copy_id, "paras": paras})
        groups.append({orig["id"], copy_id})
    for name, docs in sources.items():
        rng.shuffle(docs)
        write_jsonl(tmp_path / "raw" / f"{name}.jsonl", [{"id": d["id"], "text": "\n\n".join(d["paras"])} for d in docs])
    cfg = prepare_config(tmp_path, {n: source(f"{n}.jsonl") for n in sources},
                         **{"tasks": 3, "data.decontamination.enabled": False})
    manifests = prepare(cfg, log=lambda *a: None)

    kept = set()
    for name, m in manifests.items():
        for split in SPLITS:
            kept |= set(pq.read_table(tmp_path / "out" / name / f"{split}.signals.parquet").column("doc_id").to_pylist())
    everything = {d["id"] for docs in sources.values() for d in docs}
    removed = everything - kept
    in_groups = set().union(*groups)
    caught = sum(min(len(g - kept), len(g) - 1) for g in groups)  # at most all but one per group
    wanted = sum(len(g) - 1 for g in groups)
    recall = caught / wanted
    precision = caught / max(1, len(removed))
    wiped = [sorted(g) for g in groups if not g & kept]
    print(f"\nplanted near-duplicates: {wanted} to remove, {caught} removed; {len(removed)} removed in all; "
          f"recall {recall:.3f}, precision {precision:.3f}")
    assert not wiped, f"groups with no document left: {wiped}"
    assert removed <= in_groups, f"removed outside the planted groups: {sorted(removed - in_groups)}"
    assert precision == 1.0
    assert recall >= 0.85, f"recall {recall:.3f}: missed {[sorted(g) for g in groups if g <= kept]}"
    reports = {n: m["report"]["removed_docs"]["near_dup"] for n, m in manifests.items()}
    assert sum(reports.values()) == len(removed), reports
