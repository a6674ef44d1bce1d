"""Decontamination against the configured evaluation tasks (hebatron_nemo/data/decontam.py): every data
file of every selected task is read through the eval package's loader, training documents holding a test
(or few-shot) row verbatim or lightly edited are dropped by the real prepare stage, a missing task file
stops prepare before any work naming the task, the path and the opt-out, and data=hebatron composes with
decontamination on against every task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from corpus import HEBREW, make_docs, prepare_config, source, write_jsonl

from hebatron_nemo.config import DecontamConfig, register_configs
from hebatron_nemo.data import decontam
from hebatron_nemo.data.prepare import SPLITS, prepare
from hebatron_nemo.errors import ConfigError
from hebatron_nemo.eval.tasks import PAPER_AVERAGES, available_tasks, load_schema

REPO = Path(__file__).resolve().parents[1]

# Items written for this test (no benchmark text). The GSM8K-style question is long enough for the
# default 13-word n-grams with 3 hits; the ARC-style one is caught with its choices.
GSM_Q = ("בחנות הספרים של רחל היו בתחילת השבוע מאה ועשרים ספרים על המדפים הארוכים. ביום שני היא מכרה "
         "שלושים ושניים ספרים ללקוחות קבועים, וביום שלישי הגיע משלוח חדש של ארבעים וחמישה ספרים מהספק "
         "הוותיק שלה בעיר. כמה ספרים היו בחנות בסוף יום שלישי?")
GSM_Q_EDITED = ("בַּחֲנוּת הספרים של רחל היו בתחילת השבוע מאה ועשרים ספרים על המדפים הארוכים ביום שני היא מכרה "
                "שלושים ושניים ספרים ללקוחות חדשים וביום שלישי הגיע משלוח חדש של ארבעים וחמישה ספרים מהספק "
                "הוותיק שלה בעיר -- כמה ספרים היו בחנות בסוף יום שלישי")  # marks, punctuation, one word changed
GSM_DEV_Q = ("דני רץ כל בוקר שלושה קילומטרים סביב הפארק הגדול שליד ביתו, ובסוף השבוע הוא רץ פעמיים יותר "
             "מבכל בוקר רגיל של השבוע. כמה קילומטרים רץ דני בשבוע שלם אם הוא רץ חמישה בקרים ועוד שני ימי "
             "סוף שבוע?")
ARC_Q = "איזה מהחומרים הבאים מוליך חשמל בצורה הטובה ביותר כאשר מחברים אותו למעגל חשמלי פשוט עם סוללה ונורה?"
ARC_CHOICES = ["חוט נחושת דק ומבריק", "מקל עץ יבש מהחצר", "רצועת גומי אדומה", "כוס פלסטיק שקופה"]


def _write_task(root: Path, task: str, rows: list[dict], split: str = "test") -> Path:
    return write_jsonl(root / task / f"{split}.jsonl", rows)


def _dc(**kw) -> "OmegaConf":
    return OmegaConf.merge(OmegaConf.structured(DecontamConfig), kw)


def _gsm_rows() -> list[dict]:
    return [{"question": GSM_Q, "answer": "120 - 32 + 45 = 133\n#### 133"},
            {"question": "כמה הם שתיים ועוד שלוש?", "answer": "#### 5"}]


def _arc_rows() -> list[dict]:
    return [{"id": "a1", "question": ARC_Q, "choices": {"text": ARC_CHOICES, "label": list("ABCD")}, "answerKey": "A"}]


# ------------------------------------------------------------------------------------- every schema


def _put(obj: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for p in parents:
        obj = obj.setdefault(p, {})
    obj[last] = value


def _row_for(schema, task_no: int) -> tuple[dict, list[str]]:
    """A valid row for any schema, and the texts its mapped columns hold (each 16 words, unique)."""
    texts: list[str] = []

    def phrase() -> str:
        words = [f"t{task_no}c{len(texts)}w{j}" for j in range(16)]
        texts.append(" ".join(words))
        return texts[-1]

    obj: dict = {}
    if schema.id_field:
        _put(obj, schema.id_field, f"row-{task_no}")
    for col in (schema.question_field, schema.context_field):
        if col:
            _put(obj, col, phrase())
    for name, col in schema.extra_fields.items():
        vmap = schema.value_maps.get(name)
        _put(obj, col, next(iter(vmap)) if vmap else phrase())
    if schema.type == "multiple_choice":
        if schema.choices_field:
            choices = [phrase() for _ in range(4)]
            _put(obj, schema.choices_field, choices)
        elif schema.choice_fields:
            choices = [phrase() for _ in schema.choice_fields]
            for col, c in zip(schema.choice_fields, choices):
                _put(obj, col, c)
        else:
            choices = list(schema.choices)
        if schema.labels_field:
            _put(obj, schema.labels_field, list("ABCD"[:len(choices)]))
        gold = {"index": schema.index_base, "letter": "A", "text": choices[0]}[schema.answer_type]
        _put(obj, schema.answer_field, gold)
    elif schema.type == "translation":
        _put(obj, schema.source_field, phrase())
        _put(obj, schema.target_field, phrase())
    else:
        answer = phrase() + (" #### 42" if schema.answer_extraction == "gsm8k" else "")
        _put(obj, schema.answer_field, [answer] if schema.type == "span_f1" else answer)
    return obj, texts


def test_all_selects_every_schema_but_the_generated_long_context_task():
    names = decontam.task_names(_dc(eval_tasks=["all"]))
    assert "hebrew_needle" in available_tasks() and len(available_tasks()) >= 19
    assert names == [t for t in available_tasks() if t != "hebrew_needle"]
    assert decontam.task_names(_dc(eval_tasks=["hebrew_reasoning_paper", "copa_heb"])) == \
        list(PAPER_AVERAGES["hebrew_reasoning_paper"])
    with pytest.raises(ConfigError, match=r"eval_tasks: 'hebrew_needle' is generated"):
        decontam.task_names(_dc(eval_tasks=["hebrew_needle"]))
    with pytest.raises(ConfigError, match=r"no schema for task 'mmlu_hebb'.*known tasks: arc_en"):
        decontam.task_names(_dc(eval_tasks=["mmlu_hebb"]))


def test_every_shipped_schema_is_read_with_every_mapped_column(tmp_path):
    """`[all]` over a task root holding one row per shipped schema: each task's test file (and, for one
    task, its dev, train and validation files) is read, and a document holding any one mapped column's
    text is contaminated."""
    root = tmp_path / "tasks"
    names = decontam.task_names(_dc(eval_tasks=["all"]))
    column_texts = {}
    for i, name in enumerate(names):
        row, texts = _row_for(load_schema(name), i)
        _write_task(root, name, [row])
        column_texts[name] = texts
    other_splits = ("dev", "train", "validation")
    for k, split in enumerate(other_splits):
        row, texts = _row_for(load_schema("arc_heb"), 90 + k)
        _write_task(root, "arc_heb", [row], split=split)
        column_texts[f"arc_heb {split}"] = texts
    dec = decontam.build_decontaminator(_dc(eval_tasks=["all"], task_root=str(root)), str(tmp_path))
    ident = dec.identity()
    files = [f["file"] for f in ident["files"]]
    at = names.index("arc_heb") + 1
    assert files == [f"{n}/test.jsonl" for n in names[:at]] + [f"arc_heb/{s}.jsonl" for s in other_splits] + \
        [f"{n}/test.jsonl" for n in names[at:]]
    assert dec.eval_texts == len(names) + len(other_splits)
    assert all(len(f["sha256"]) == 64 for f in ident["files"])
    filler = " ".join(HEBREW[:3])
    for name, texts in column_texts.items():
        assert texts, name
        for text in texts:
            assert dec.is_contaminated(f"{filler} {text} {filler}"), (name, text)
    assert not dec.is_contaminated(" ".join(HEBREW))


def test_row_text_is_the_rows_own_text_and_bad_task_rows_name_file_line_and_field(tmp_path):
    from hebatron_nemo.errors import DataError
    from hebatron_nemo.eval.tasks import load_task

    copa = load_schema("copa_heb")
    row = {"idx": 0, "premise": "הרצפה הייתה רטובה.", "choice1": "מישהו שפך מים.", "choice2": "השמש זרחה.",
           "question": "cause", "label": 0}
    (parsed,) = load_task(_write_task(tmp_path, "copa_heb", [row]), copa)
    assert decontam.row_text(copa, parsed) == "הרצפה הייתה רטובה.\nמישהו שפך מים.\nהשמש זרחה."  # no template text
    gsm = load_schema("gsm8k_heb")
    (parsed,) = load_task(_write_task(tmp_path, "gsm8k_heb", _gsm_rows()[:1]), gsm)
    assert decontam.row_text(gsm, parsed) == GSM_Q + "\n120 - 32 + 45 = 133\n#### 133"  # the working too
    _write_task(tmp_path, "arc_heb", [*_arc_rows(), {"id": "a2", "question": ARC_Q, "answerKey": "A"}])
    dc = _dc(eval_tasks=["arc_heb"], task_root=str(tmp_path))
    with pytest.raises(DataError, match=r"arc_heb/test.jsonl:2 \[field 'choices.text'\]: missing field"):
        decontam.build_decontaminator(dc, str(tmp_path))


# ------------------------------------------------------------------------------ prepare end to end


def test_prepare_drops_documents_holding_test_rows_and_records_the_task_files(tmp_path):
    tasks = tmp_path / "eval_tasks"
    _write_task(tasks, "gsm8k_heb", _gsm_rows())
    _write_task(tasks, "gsm8k_heb", [{"question": GSM_DEV_Q, "answer": "#### 19"}], split="dev")
    _write_task(tasks, "arc_heb", _arc_rows())
    base = make_docs(HEBREW, 40, seed=5, min_sent=3, max_sent=5, prefix="he")
    quiz = ARC_Q + " " + " ".join(f"{a}. {c}" for a, c in zip("אבגד", ARC_CHOICES))
    planted = {
        "verbatim": base[0]["text"] + " " + GSM_Q,
        "edited": GSM_Q_EDITED + " " + base[1]["text"],
        "fewshot": base[2]["text"] + "\n" + GSM_DEV_Q,
        "quiz": "שאלה לתרגול: " + quiz + " " + base[3]["text"],
    }
    kept_anyway = {"fragment": base[4]["text"] + " " + " ".join(GSM_Q.split()[:10])}  # 10 words: under one 13-gram
    rows = base + [{"id": k, "text": v} for k, v in {**planted, **kept_anyway}.items()]
    write_jsonl(tmp_path / "raw" / "he.jsonl", rows)
    cfg = prepare_config(tmp_path, {"he_news": source("he.jsonl")}, **{
        "data.exact_dedup.enabled": False, "data.near_dedup.enabled": False,
        "data.decontamination.eval_tasks": ["gsm8k_heb", "arc_heb"], "data.decontamination.task_root": str(tasks)})
    m = prepare(cfg, log=lambda *a, **k: None)["he_news"]
    assert m["report"]["removed_docs"]["decontaminated"] == len(planted)
    import pyarrow.parquet as pq

    from hebatron_nemo.data.registry import split_prefix

    kept = set()
    for split in SPLITS:
        prefix = split_prefix(tmp_path / "out" / "he_news", m["splits"][split]["prefix"])
        if prefix:
            kept |= set(pq.read_table(prefix + ".signals.parquet").column("doc_id").to_pylist())
    assert not kept & set(planted)
    assert kept == {r["id"] for r in base} | set(kept_anyway)
    files = m["decontamination"]["files"]
    assert [(f["task"], f["file"]) for f in files] == [("gsm8k_heb", "gsm8k_heb/test.jsonl"),
                                                       ("gsm8k_heb", "gsm8k_heb/dev.jsonl"),
                                                       ("arc_heb", "arc_heb/test.jsonl")]
    assert m["decontamination"]["eval_texts"] == 4


def test_identity_changes_when_a_task_is_added_or_a_task_file_changes(tmp_path):
    tasks = tmp_path / "tasks"
    _write_task(tasks, "gsm8k_heb", _gsm_rows())
    one = decontam.build_decontaminator(_dc(eval_tasks=["gsm8k_heb"], task_root=str(tasks)), str(tmp_path)).identity()
    _write_task(tasks, "arc_heb", _arc_rows())
    two = decontam.build_decontaminator(_dc(eval_tasks=["gsm8k_heb", "arc_heb"], task_root=str(tasks)),
                                        str(tmp_path)).identity()
    assert [f["file"] for f in two["files"]] == ["gsm8k_heb/test.jsonl", "arc_heb/test.jsonl"]
    assert two["files"][0] == one["files"][0] and two["hash"] != one["hash"]
    # same n-grams, another file content (a row id added): still a new identity, so prepare reruns
    rows = _arc_rows()
    rows[0]["id"] = "a2"
    _write_task(tasks, "arc_heb", rows)
    three = decontam.build_decontaminator(_dc(eval_tasks=["gsm8k_heb", "arc_heb"], task_root=str(tasks)),
                                          str(tmp_path)).identity()
    assert three["hash"] == two["hash"] and three != two


# ------------------------------------------------------------------------------ missing, opt-out


def test_missing_task_file_fails_before_any_work_naming_task_path_and_opt_out(tmp_path):
    tasks = tmp_path / "tasks"
    _write_task(tasks, "gsm8k_heb", _gsm_rows())
    (tasks / "hebnli").mkdir()
    (tasks / "hebnli" / "dev.jsonl").write_text("{}\n")  # a dev file without its test file
    write_jsonl(tmp_path / "raw" / "he.jsonl", make_docs(HEBREW, 10, seed=1, prefix="he"))
    cfg = prepare_config(tmp_path, {"he_news": source("he.jsonl")}, **{
        "data.decontamination.eval_tasks": ["gsm8k_heb", "hebnli", "copa_heb"],
        "data.decontamination.task_root": str(tasks)})
    with pytest.raises(ConfigError) as e:
        prepare(cfg, log=lambda *a, **k: None)
    msg = str(e.value)
    assert f"hebnli (expected {tasks / 'hebnli' / 'test.jsonl'})" in msg
    assert f"copa_heb (expected {tasks / 'copa_heb' / 'test.jsonl'})" in msg and "gsm8k_heb (" not in msg
    assert "data.decontamination.eval_tasks=[" in msg and "data.decontamination.enabled=false" in msg
    assert not (tmp_path / "out").exists() and not (tmp_path / "tok").exists()  # nothing written, no tokenizer
    # the default selects every task, and then the root must be set
    cfg = prepare_config(tmp_path, {"he_news": source("he.jsonl")}, **{"data.decontamination.eval_tasks": ["all"]})
    with pytest.raises(ConfigError, match=r"data.decontamination.task_root is not set.*eval_tasks=\[<the tasks"):
        prepare(cfg, log=lambda *a, **k: None)
    assert not (tmp_path / "out").exists()


def test_opting_out(tmp_path):
    nowhere = str(tmp_path / "nowhere")
    assert decontam.build_decontaminator(_dc(eval_tasks=[], task_root=nowhere), str(tmp_path)) is None
    assert decontam.build_decontaminator(_dc(enabled=False, task_root=nowhere), str(tmp_path)) is None
    decontam.check_inputs(_dc(eval_tasks=[]), str(tmp_path))
    decontam.check_inputs(_dc(enabled=False), str(tmp_path))
    with pytest.raises(ConfigError, match="eval_files\\[0\\].path: .*missing.jsonl does not exist"):
        decontam.check_inputs(_dc(eval_tasks=[], eval_files=[{"path": "missing.jsonl", "fields": ["q"]}]), str(tmp_path))
    # eval_files add to the tasks; with no tasks they are all there is
    write_jsonl(tmp_path / "eval.jsonl", [{"q": GSM_DEV_Q}])
    dec = decontam.build_decontaminator(_dc(eval_tasks=[], eval_files=[{"path": "eval.jsonl", "fields": ["q"]}]),
                                        str(tmp_path))
    assert dec.eval_texts == 1 and dec.identity()["files"][0]["eval_file"] == "eval.jsonl"
    assert dec.is_contaminated(GSM_DEV_Q)


# ------------------------------------------------------------------------------ the registries


@pytest.fixture
def hydra_conf():
    register_configs()

    def _compose(name: str, overrides: list[str]):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(config_name=name, overrides=overrides)
    return _compose


def test_hebatron_registry_decontaminates_against_every_task(hydra_conf, tmp_path, monkeypatch):
    monkeypatch.setenv("HEBATRON_EVAL_TASKS", str(tmp_path / "eval_tasks"))
    cfg = hydra_conf("prepare", ["data=hebatron", f"paths.work={tmp_path}"])
    dc = cfg.data.decontamination
    assert dc.enabled and list(dc.eval_tasks) == ["all"] and dc.task_root == str(tmp_path / "eval_tasks")
    with pytest.raises(ConfigError) as e:
        decontam.check_inputs(dc, str(cfg.data.raw_dir))
    for name in decontam.task_names(dc):
        assert f"{name} (expected {tmp_path / 'eval_tasks' / name / 'test.jsonl'})" in str(e.value)
    sft = hydra_conf("prepare_sft", ["sft_data=hebatron", f"paths.work={tmp_path}"]).sft_data.decontamination
    assert list(sft.eval_tasks) == ["all"] and sft.task_root == str(tmp_path / "eval_tasks")
    with pytest.raises(ConfigError, match=rf"^sft_data.decontamination: {len(decontam.task_names(sft))} evaluation task"):
        decontam.check_inputs(sft, "/nowhere", where="sft_data.decontamination")
    # the demo's tasks are written by evaluate, after prepare: it keeps its held-out pairs file only
    demo = hydra_conf("prepare", [f"paths.work={tmp_path}"]).data.decontamination
    assert demo.enabled and list(demo.eval_tasks) == [] and demo.task_root == str(tmp_path / "eval_tasks" / "demo")
    assert [f.path for f in demo.eval_files] == ["pairs_test.jsonl"]
    assert json.dumps(OmegaConf.to_container(demo, resolve=True))  # nothing left unresolved


def test_a_new_task_file_reruns_the_pipelines_prepare_stage(hydra_conf, tmp_path, monkeypatch):
    from hebatron_nemo.pipeline.stages import fingerprints

    monkeypatch.setenv("HEBATRON_WORK", str(tmp_path))
    tasks = tmp_path / "tasks"
    _write_task(tasks, "gsm8k_heb", _gsm_rows())
    over = ["experiment=tiny_cpu", "data.decontamination.eval_tasks=[gsm8k_heb,arc_heb]",
            f"data.decontamination.task_root={tasks}"]
    before = fingerprints(hydra_conf("pipeline", over))
    _write_task(tasks, "arc_heb", _arc_rows())
    after = fingerprints(hydra_conf("pipeline", over))
    changed = {s for s in before if before[s]["fingerprint"] != after[s]["fingerprint"]}
    assert "prepare" in changed and "corpora" not in changed


def test_sft_preparation_reads_the_same_tasks(tmp_path):
    from hebatron_nemo.config import SFTDataConfig
    from hebatron_nemo.sft.prepare import build_decontaminator, plan_lines

    tasks = tmp_path / "tasks"
    _write_task(tasks, "gsm8k_heb", _gsm_rows())
    sd = OmegaConf.merge(OmegaConf.structured(SFTDataConfig), {
        "name": "t", "raw_dir": str(tmp_path), "output_dir": str(tmp_path / "out"), "total": 1,
        "decontamination": {"eval_tasks": ["gsm8k_heb"], "task_root": str(tasks)},
        "sources": {"chat": {"kind": "messages", "path": "chat.jsonl", "samples": 1}}})
    assert "decontamination on" in plan_lines(sd)[0]
    dec = build_decontaminator(sd)
    assert [f["file"] for f in dec.identity()["files"]] == ["gsm8k_heb/test.jsonl"]
    assert dec.is_contaminated("המשתמש שאל: " + GSM_Q)
    sd.decontamination.task_root = str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"^sft_data.decontamination: 1 evaluation task.*sft_data.decontamination.enabled=false"):
        build_decontaminator(sd)
