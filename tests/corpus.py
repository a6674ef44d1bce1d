"""Small synthetic-but-real-language corpora for tests, and a config builder for `prepare`.

The sentences are written for this project (no third-party text); documents are drawn from them
with a seeded RNG so every test sees the same corpus.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from omegaconf import OmegaConf

HEBREW = [
    "הרכבת לירושלים יצאה באיחור של עשר דקות בגלל עבודות על המסילה.",
    "בבוקר שתינו קפה במרפסת והסתכלנו על הים שהיה שקט במיוחד.",
    "המורה ביקשה מהתלמידים לכתוב חיבור קצר על הטיול השנתי לגליל.",
    "ועדת הכספים של הכנסת דנה היום בהצעת התקציב לשנה הבאה.",
    "בית המשפט העליון קבע כי יש לפרסם את נימוקי ההחלטה במלואם.",
    "החוקרים מצאו שהשינוי באקלים משפיע על נדידת הציפורים מעל הארץ.",
    "אחרי הגשם הראשון כל השבילים בפארק התמלאו בשלוליות ובעלים.",
    "הספרייה העירונית פתחה אגף חדש לספרי ילדים ולקריאה משפחתית.",
    "סבתא שלי מכינה מרק עוף עם קניידלך בכל ערב שבת.",
    "המהנדסת הציגה תוכנית לשיפור מערכת המים בשכונות הצפוניות.",
    "הקבוצה ניצחה במשחק האחרון של העונה והעפילה לגמר הגביע.",
    "לפי התחזית צפוי מזג אוויר חם ויבש עד סוף השבוע.",
    "צה\"ל הודיע על תרגיל גדול בצפון שיימשך שלושה ימים.",
    "הוא קנה ג'ינס חדש בקניון ושכח את הקבלה בקופה.",
    "ההרצאה עסקה בתולדות השפה העברית מימי המקרא ועד ימינו.",
    "בשוק מחנה יהודה אפשר למצוא תבלינים מכל קצוות העולם.",
]

ENGLISH = [
    "The morning train to the coast was crowded with students and tourists.",
    "She wrote the report in a single afternoon and sent it before dinner.",
    "Rain fell all night, and by dawn the river had risen over its banks.",
    "The committee postponed its decision until the budget figures were final.",
    "A small bakery on the corner sells bread that is still warm at seven.",
    "Engineers tested the bridge with heavy trucks before opening it to traffic.",
    "The library keeps old maps in a cool room away from the sunlight.",
    "He learned to play the violin from his grandmother when he was nine.",
    "Scientists measured the temperature of the lake every week for a year.",
    "The museum opened a new wing dedicated to ancient glass and pottery.",
]


def make_docs(sentences: list[str], n_docs: int, seed: int, min_sent: int = 2, max_sent: int = 6,
              prefix: str = "doc") -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"{prefix}-{i}", "text": " ".join(rng.choice(sentences) for _ in range(rng.randint(min_sent, max_sent)))}
            for i in range(n_docs)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def prepare_config(tmp: Path, source_map: dict, tokenizer_dir: Path | None = None, **overrides):
    """A validated PrepareConfig (the same schema Hydra composes) for sources written under `tmp/raw`."""
    from hebatron_nemo.config import PrepareConfig

    base = OmegaConf.structured(PrepareConfig)
    cfg = {
        "paths": {"work": str(tmp)},
        # no evaluation task folders here: decontamination reads only the eval_files a test configures
        "data": {"name": "test", "raw_dir": str(tmp / "raw"), "output_dir": str(tmp / "out"), "sources": source_map,
                 "decontamination": {"eval_tasks": []}},
        "tokenizer": {"name": "test_bpe", "path": str(tokenizer_dir or tmp / "tok"),
                      "train": {"enabled": tokenizer_dir is None, "vocab_size": 400, "min_frequency": 1}},
        "progress": False,
    }
    merged = OmegaConf.merge(base, cfg)
    for key, value in overrides.items():
        OmegaConf.update(merged, key, value, merge=True)
    return merged


def source(path: str, language: str = "he", role: str = "pretrain", **kw) -> dict:
    return {"language": language, "register": "test", "role": role, "path": path, "id_field": "id",
            "licence": "test text written for this project", **kw}


def synthetic_prepared(out_dir: Path, docs_per_source: dict[str, int], seed: int = 0, vocab: int = 1000,
                       mean_len: int = 120) -> None:
    """Writes prepared sources as `prepare` would (train .bin/.idx, signals, manifest) from random
    token documents: fast fixtures for the plan and mixture tests."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hebatron_nemo.data.indexed import AtomicIndexedWriter
    from hebatron_nemo.utils.io import write_json_atomic

    rng = np.random.default_rng(seed)
    for name, n in docs_per_source.items():
        d = Path(out_dir) / name
        splits = {}
        for split, count in (("valid", max(2, n // 20)), ("test", max(4, n // 20)), ("train", n)):
            w = AtomicIndexedWriter(str(d / split), np.uint16)
            lengths = rng.integers(max(2, mean_len // 4), mean_len * 2, size=count)
            for L in lengths:
                ids = rng.integers(10, vocab, size=int(L)).astype(np.uint16)
                ids[-1] = 2  # EOD
                w.add(ids)
            w.commit()
            splits[split] = {"prefix": str(d / split), "documents": int(count), "tokens": int(lengths.sum())}
        pq.write_table(pa.table({
            "ordinal": np.arange(n), "doc_id": [f"{name}-{i}" for i in range(n)],
            "n_tokens": lengths - 1, "compression_ratio": rng.random(n) * 3 + 1,
            "n_chars": lengths * 3}), d / "train.signals.parquet")
        write_json_atomic(d / "manifest.json", {
            "kind": "source", "source": name, "fingerprint": f"fp-{name}-{seed}",
            "splits": splits,
            "tokenizer": {"path": "/nonexistent", "tokenizer_json_sha256": "synthetic", "vocab_size": vocab,
                          "eod": 2, "bos": None, "append_eod": True}})


def plan_config(tmp: Path, sources: list[str], phases: list[dict], segments: list[dict], anchor: dict | None = None,
                schema=None, **curriculum):
    """A validated PlanConfig (or `schema`) over synthetic sources registered as pretrain (he_*) or anchor (en_*)."""
    from hebatron_nemo.config import PlanConfig

    reg = {s: {"language": "en" if s.startswith("en") else "he", "register": "test",
               "role": "anchor" if s.startswith("en") else "pretrain", "path": f"{s}.jsonl", "licence": "test"}
           for s in sources}
    cfg = OmegaConf.merge(OmegaConf.structured(schema or PlanConfig), {
        "paths": {"work": str(tmp)},
        "data": {"name": "synthetic", "raw_dir": str(tmp / "raw"), "output_dir": str(tmp / "data"), "sources": reg},
        "curriculum": {"name": "test", "segments": segments, "phases": phases, **curriculum},
        "anchor": anchor or {"share": 0.0, "sources": {}},
        "run_dir": str(tmp / "run"), "cache_dir": str(tmp / "cache"),
    })
    return cfg


def train_config(tmp: Path, sources: list[str], phases: list[dict], segments: list[dict], anchor: dict | None = None,
                 base_sources: dict | None = None, **overrides):
    """A TrainConfig for the local backend on synthetic sources: micro model, no wandb/progress."""
    from hebatron_nemo.config import TrainConfig
    from hebatron_nemo.models.nemotron_h import load_model_config

    cfg = plan_config(tmp, sources, phases, segments, anchor, schema=TrainConfig)
    cfg.model = load_model_config("micro")
    cfg.base.dir = str(tmp / "base")
    cfg.base.sources = base_sources or {"en_x": 1.0}
    cfg.base.tokens, cfg.base.seq_length, cfg.base.global_batch_size, cfg.base.micro_batch_size = 3000, 32, 8, 4
    cfg.logging.wandb = False
    cfg.logging.progress = False
    cfg.eval.samples_per_set, cfg.eval.mc_questions, cfg.eval.seq_length = 4, 6, 32
    cfg.eval.mc_context_tokens, cfg.eval.mc_continuation_tokens = 16, 8
    cfg.threads = 1
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=True)
    return cfg
