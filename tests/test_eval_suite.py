"""The eval suite: scoring rules against hand-computed values, task files that fail with file:line,
schema remapping without code, `recipes/evaluate.py` through lm-evaluation-harness on a tiny model over
the demo tasks against numbers computed from transformers alone, the paper average's flag, the vLLM
arguments, COMET's clean skip and the long-context task."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import yaml

from corpus import ENGLISH, HEBREW, write_jsonl

from hebatron_nemo.errors import ConfigError, DataError
from hebatron_nemo.eval import scorers
from hebatron_nemo.demo.tasks import DEMO_TASKS, write_demo_tasks
from hebatron_nemo.eval.tasks import (
    PAPER_AVERAGES,
    available_tasks,
    format_prompt,
    load_schema,
    load_task,
    schema_from_dict,
)

ALL_TASKS = ["arc_heb", "copa_heb", "hellaswag_heb", "mmlu_heb", "gsm8k_heb", "winograd_heb", "hebnli",
             "hebrew_sentiment", "hebrew_qa", "ted_heb", "israeli_trivia", "psychometric_heb",
             "arc_en", "hellaswag_en", "mmlu_en", "gsm8k_en", "ted_en_heb", "psychometric_en", "hebrew_needle"]


# --------------------------------------------------------------------------- scorers


@pytest.mark.parametrize("text, expected", [
    ("So 3 + 4 = 7 apples.\n#### 7", "7"),
    ("The answer is 1,234.", "1234"),
    ("#### $1,000.50", "1000.5"),
    ("first 5, then 42.0", "42"),
    ("#### 12 apples, not 3", "12"),    # the first number after the marker, not the last overall
    ("it drops to -3", "-3"),
    ("#### 100", "100"),                # no exponent form ("1E+2")
    ("no digits here", None),
])
def test_gsm8k_extraction(text, expected):
    assert scorers.extract_gsm8k(text) == expected


def test_exact_match_and_normalization():
    assert scorers.exact_match("I think #### 18", ["18"], "gsm8k") == 1.0
    assert scorers.exact_match("18.0 shekels", ["18"], "gsm8k") == 1.0
    assert scorers.exact_match("19", ["18"], "gsm8k") == 0.0
    assert scorers.exact_match("no idea", ["18"], "gsm8k") == 0.0
    assert scorers.exact_match("  The Cat! ", ["cat"]) == 1.0          # case, punctuation, English article
    assert scorers.exact_match("שָׁלוֹם", ["שלום"]) == 1.0              # niqqud removed
    assert scorers.exact_match("שלום", ["עולם", "שלום."]) == 1.0       # any gold counts
    assert scorers.normalize_answer('צה"ל') == "צה ל"
    assert scorers.normalize_answer("על-ידי") == scorers.normalize_answer("על\u05beידי") == "על ידי"  # hyphen, maqaf
    assert scorers.normalize_answer("בְּרֵאשִׁית בָּרָא") == "בראשית ברא"


def test_token_f1_hand_computed():
    # pred tokens {big, red, house} (article dropped), gold {red, house, in, town}: 2 shared,
    # P = 2/3, R = 2/4, F1 = 2PR/(P+R) = 4/7; the better of two golds counts
    assert scorers.token_f1("the big red house", ["nothing", "red house in town"]) == pytest.approx(4 / 7)
    assert scorers.token_f1("העיר ירושלים", ["ירושלים"]) == pytest.approx(2 / 3)   # P = 1/2, R = 1
    assert scorers.token_f1("בירושלים", ["ירושלים"]) == 0.0    # prefixes are not stripped (documented)
    assert scorers.token_f1("", ["ירושלים"]) == 0.0
    assert scorers.token_f1("!!!", ["?"]) == 1.0                # both normalize to nothing


def test_lm_eval_bleu_and_chrf_hand_computed():
    # lm-eval's corpus aggregations over (reference, prediction) items, the ones translation tasks use:
    # every n-gram precision is 1, brevity penalty exp(1 - 8/4)
    from lm_eval.api.metrics import bleu, chrf

    assert bleu([("a b c d e f g h", "a b c d")]) == pytest.approx(100 * math.exp(-1), abs=1e-6)
    assert bleu([("same words here ok", "same words here ok")]) == pytest.approx(100.0)
    # "abcdef" vs "abcdefgh": precision 1 at every order n = 1..6, recall (7 - n) / (9 - n); beta 2
    r = sum((7 - n) / (9 - n) for n in range(1, 7)) / 6
    assert chrf([("abcdefgh", "abcdef")]) == pytest.approx(100 * 5 * r / (4 + r), abs=1e-6)
    assert chrf([("abc", "xyz")]) == 0.0


# --------------------------------------------------------------------------- schemas and task files


def test_shipped_schemas_cover_the_tasks_and_the_paper_average():
    assert sorted(available_tasks()) == sorted(ALL_TASKS)
    schemas = {t: load_schema(t) for t in ALL_TASKS}
    paper = {t for t, s in schemas.items() if "hebrew_reasoning_paper" in s.averages}
    assert paper == set(PAPER_AVERAGES["hebrew_reasoning_paper"])
    assert {t for t, s in schemas.items() if s.language == "en"} == {"arc_en", "hellaswag_en", "mmlu_en", "gsm8k_en",
                                                                               "psychometric_en"}
    assert {s.type for s in schemas.values()} == {"multiple_choice", "generative_exact", "span_f1", "translation"}


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown keys ['bogus']"),
    ({"prompt": "{premise}"}, "uses ['premise']"),
    ({"choice_fields": None}, "needs exactly one of choices_field, choice_fields, choices"),
    ({"answer_type": "roman"}, "'roman' is not one of index, letter, text"),
    ({"averages": ["mystery_average"]}, "unknown averages"),
    ({"value_maps": {"nothing": {"a": "b"}}}, "maps fields ['nothing']"),
])
def test_schema_errors_name_the_key(change, message):
    raw = yaml.safe_load(Path(load_schema("copa_heb").path).read_text(encoding="utf-8"))
    with pytest.raises(ConfigError, match=None) as e:
        schema_from_dict({**raw, **change}, where="copa_heb.yaml")
    assert message in str(e.value) and "copa_heb.yaml" in str(e.value)


def _copa_row(**over):
    row = {"idx": 0, "premise": "הילד בכה.", "choice1": "הוא נפל.", "choice2": "הוא צחק.", "question": "cause",
           "label": 0}
    return {**row, **over}


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("task, bad_line, field, message", [
    ("copa_heb", '{"idx": 1, "premise": "x",', None, "malformed JSON"),
    ("copa_heb", json.dumps({k: v for k, v in _copa_row(idx=1).items() if k != "choice2"}), "choice2", "missing field"),
    ("copa_heb", json.dumps(_copa_row(idx=1, label=2)), "label", "answer index 2 out of range: 2 choices"),
    ("copa_heb", json.dumps(_copa_row(idx=1, label=-1)), "label", "out of range"),
    ("copa_heb", json.dumps(_copa_row(idx=1, label="zero")), "label", "expected an integer index"),
    ("copa_heb", json.dumps(_copa_row(idx=1, premise=7)), "premise", "expected a string, got an integer"),
    ("copa_heb", json.dumps(_copa_row(idx=1, question="reason")), "question", "not in value_maps.relation"),
    ("copa_heb", json.dumps(_copa_row(idx=0)), "idx", "duplicate id '0' (first on line 1)"),
    ("copa_heb", json.dumps([1, 2]), None, "expected a JSON object, got a list"),
    ("arc_heb", json.dumps({"id": "q2", "question": "?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                            "answerKey": "E"}), "answerKey", "letter 'E' not among the choices' labels"),
    ("hellaswag_heb", json.dumps({"ind": 2, "ctx": "x", "endings": "not a list", "label": "0"}), "endings",
     "expected a list of strings, got a string"),
    ("gsm8k_heb", json.dumps({"question": "כמה?", "answer": "אין מספר"}), "answer", "no number in the answer"),
])
def test_malformed_rows_fail_with_file_line_and_field(tmp_path, task, bad_line, field, message):
    good = {
        "copa_heb": json.dumps(_copa_row(), ensure_ascii=False),
        "arc_heb": json.dumps({"id": "q1", "question": "?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                               "answerKey": "B"}),
        "hellaswag_heb": json.dumps({"ind": 1, "ctx": "x", "endings": ["a", "b"], "label": "1"}),
        "gsm8k_heb": json.dumps({"question": "1+1?", "answer": "#### 2"}),
    }[task]
    path = _write_lines(tmp_path / task / "test.jsonl", [good, "", bad_line])  # blank line 2 is skipped
    with pytest.raises(DataError) as e:
        load_task(tmp_path / task, load_schema(task))
    err = e.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert str(err).startswith(f"{path}:3") and message in str(err)


def test_empty_and_missing_task_files(tmp_path):
    schema = load_schema("copa_heb")
    _write_lines(tmp_path / "empty" / "test.jsonl", ["", "  "])
    with pytest.raises(DataError, match="empty task file"):
        load_task(tmp_path / "empty", schema)
    with pytest.raises(DataError, match="does not exist"):
        load_task(tmp_path / "nowhere", schema)


def _put(obj: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for p in parents:
        obj = obj.setdefault(p, {})
    obj[last] = value


def synthetic_raw(schema, i: int = 0) -> dict:
    """A valid raw row for any schema, built from its mapping only."""
    raw: dict = {}
    if schema.id_field:
        _put(raw, schema.id_field, f"r{i}")
    for col in (schema.question_field, schema.context_field, schema.source_field, schema.target_field):
        if col:
            _put(raw, col, f"טקסט {col} {i} {{x}}")  # braces must stay literal in both template languages
    for name, col in schema.extra_fields.items():
        _put(raw, col, next(iter(schema.value_maps[name])) if name in schema.value_maps else f"{name} {i}")
    if schema.type == "multiple_choice":
        choices = list(schema.choices or [f"תשובה {j}" for j in range(4)])
        if schema.choices_field:
            _put(raw, schema.choices_field, choices)
        for j, col in enumerate(schema.choice_fields or ()):
            _put(raw, col, f"אפשרות {j}")
            choices = [f"אפשרות {j}" for j in range(len(schema.choice_fields))]
        if schema.labels_field:
            _put(raw, schema.labels_field, ["A", "B", "C", "D"][:len(choices)])
        answer = {"index": schema.index_base + 1, "letter": "B", "text": choices[1]}[schema.answer_type]
        _put(raw, schema.answer_field, answer)
    elif schema.type != "translation":
        gsm = schema.answer_extraction == "gsm8k"
        _put(raw, schema.answer_field, "12 ועוד 30 הם 42 #### 42" if gsm else ["תל אביב"])
    return raw


@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_schema_loads_rows_and_its_lmeval_jinja_renders_the_same_prompt(tmp_path, task):
    from lm_eval.utils import apply_template

    from hebatron_nemo.eval.lmeval import task_config

    schema = load_schema(task)
    raws = [synthetic_raw(schema, i) for i in range(2)]
    write_jsonl(tmp_path / task / "test.jsonl", raws)
    rows = load_task(tmp_path / task, schema)
    cfg = task_config(schema, tmp_path / task, n_shot=0)
    for raw, row in zip(raws, rows):
        assert apply_template(cfg["doc_to_text"], raw) == format_prompt(schema, row.fields)
        if schema.type == "multiple_choice":
            assert row.gold == 1
            choice = cfg["doc_to_choice"]
            rendered = choice if isinstance(choice, list) else ast.literal_eval(apply_template(choice, raw))
            expected = list(row.letters) if schema.score_choices == "letter" else list(row.choices)
            assert rendered == expected
            assert int(apply_template(cfg["doc_to_target"], raw)) == row.gold
        else:
            assert apply_template(cfg["doc_to_target"], raw) == row.target_text


def test_renamed_columns_map_through_the_schema_alone(tmp_path):
    """A release with other column names (and 1-based labels) loads by editing YAML only."""
    base = load_schema("copa_heb")
    original = [_copa_row(idx=0), _copa_row(idx=1, question="effect", label=1, choice1="הלכנו.", choice2="נשארנו.")]
    renamed = [{"uid": f"u{r['idx']}", "sentence": r["premise"],
                "alternatives": {"first": r["choice1"], "second": r["choice2"]},
                "asks_for": r["question"], "correct": r["label"] + 1} for r in original]
    write_jsonl(tmp_path / "orig" / "copa_heb" / "test.jsonl", original)
    write_jsonl(tmp_path / "renamed" / "copa_heb" / "test.jsonl", renamed)
    raw = yaml.safe_load(Path(base.path).read_text(encoding="utf-8"))
    raw.update({"id_field": "uid", "question_field": "sentence",
                "choice_fields": ["alternatives.first", "alternatives.second"],
                "answer_field": "correct", "index_base": 1, "extra_fields": {"relation": "asks_for"}})
    schema_dir = tmp_path / "schemas"
    schema_dir.mkdir()
    (schema_dir / "copa_heb.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    remapped = load_schema("copa_heb", schema_dir)
    a = load_task(tmp_path / "orig" / "copa_heb", base)
    b = load_task(tmp_path / "renamed" / "copa_heb", remapped)
    def view(rows):
        return [(r.fields, r.choices, r.gold, r.target_text) for r in rows]

    assert view(a) == view(b)
    # the same remap passed as overrides, without writing a file
    c = load_task(tmp_path / "renamed" / "copa_heb", load_schema("copa_heb", overrides={k: raw[k] for k in (
        "id_field", "question_field", "choice_fields", "answer_field", "index_base", "extra_fields")}))
    assert [r.gold for r in c] == [0, 1]


def test_letters_compare_case_insensitively_in_both_tools(tmp_path):
    from lm_eval.utils import apply_template

    from hebatron_nemo.eval.lmeval import task_config

    schema = load_schema("arc_heb", overrides={"labels_field": None})  # letters from the schema's A-J
    raw = {"id": "q", "question": "?", "choices": {"text": ["a", "b", "c"]}, "answerKey": " b "}
    write_jsonl(tmp_path / "arc_heb" / "test.jsonl", [raw])
    assert load_task(tmp_path / "arc_heb", schema)[0].gold == 1
    assert apply_template(task_config(schema, tmp_path / "arc_heb")["doc_to_target"], raw) == "1"
    write_jsonl(tmp_path / "arc_heb" / "test.jsonl", [{**raw, "answerKey": "D"}])
    with pytest.raises(DataError, match="letter 'D' not among choices A-C"):
        load_task(tmp_path / "arc_heb", schema)


def _pairs(n: int) -> list[dict]:
    return [{"id": f"v{i}", "he": HEBREW[i % len(HEBREW)], "en": ENGLISH[i % len(ENGLISH)]} for i in range(n)]


def test_demo_tasks_are_deterministic_and_valid(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "pairs_test.jsonl", _pairs(40))
    a = write_demo_tasks(tmp_path / "a", corpus_dir=corpus, seed=3)
    b = write_demo_tasks(tmp_path / "b", corpus_dir=corpus, seed=3)
    assert set(a) == set(DEMO_TASKS)
    for task, path in a.items():
        assert path.read_bytes() == b[task].read_bytes()
        rows = load_task(path, load_schema(task))
        assert 20 <= len(rows) <= 40
    assert write_demo_tasks(tmp_path / "c", seed=4)["gsm8k_heb"].read_bytes() != a["gsm8k_heb"].read_bytes()
    assert "ted_heb" not in write_demo_tasks(tmp_path / "d")  # no corpus, no translation task
    golds = [r.gold for r in load_task(a["gsm8k_heb"], load_schema("gsm8k_heb"))]
    assert all(g[0].isdigit() for g in golds)


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # a micro model gains nothing from threads, and on a shared 2-core machine two threads fighting
    # other jobs make each forward ~30x slower
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A micro Nemotron-H exported as an HF folder, and the demo tasks."""
    from hebatron_nemo.backends.local.cpt import export_model
    from hebatron_nemo.data.tokenizer import train_byte_level_bpe
    from hebatron_nemo.models.nemotron_h import build_model, load_model_config

    tmp = tmp_path_factory.mktemp("eval")
    train_byte_level_bpe(HEBREW * 5 + ENGLISH * 5, str(tmp / "tok"), 400, 1, {"test": 1})
    from hebatron_nemo.export.hf import export_hf

    model = build_model(load_model_config("micro"), 400, seed=0)
    export_model(model, {"tokenizer": {"path": str(tmp / "tok")}, "fingerprint": "tiny"}, tmp / "trained")
    export_hf(tmp / "trained", tmp / "model", compat_dirs=[])  # what evaluation loads: a verified export
    corpus = tmp / "corpus"
    write_jsonl(corpus / "pairs_test.jsonl", _pairs(24))
    write_demo_tasks(tmp / "tasks", corpus_dir=corpus, seed=0)
    import shutil

    shutil.copytree(tmp / "tasks" / "ted_heb", tmp / "tasks" / "ted_en_heb")  # as the evaluate stage does
    return tmp


def test_chat_prompts_and_batched_loglikelihoods(tiny, tmp_path):
    """SFT models: lm-eval applies the tokenizer's chat template with thinking off (the template's empty
    think block) and scores choices without the delimiter; log-likelihoods do not depend on the batch."""
    from hebatron_nemo.eval.harness import evaluate_model
    from hebatron_nemo.sft.template import render

    import shutil

    from transformers import AutoTokenizer

    from hebatron_nemo.sft.template import CHAT_TEMPLATE

    one = evaluate_model(tiny / "model", ["arc_heb"], tiny / "tasks", n_shot=0, limit=2, out_dir=tmp_path / "b1",
                         batch_size=1, log=lambda *_: None)
    with pytest.raises(ConfigError, match="no chat template"):
        evaluate_model(tiny / "model", ["arc_heb"], tiny / "tasks", n_shot=0, limit=2, out_dir=tmp_path / "x",
                       chat=True, log=lambda *_: None)
    sft = tmp_path / "sft"  # the same weights with the template an SFT export carries
    shutil.copytree(tiny / "model", sft)
    tok = AutoTokenizer.from_pretrained(str(sft))
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(sft))
    five = evaluate_model(sft, ["arc_heb"], tiny / "tasks", n_shot=0, limit=2, out_dir=tmp_path / "b5",
                          batch_size=5, chat=True, log=lambda *_: None)
    plain = [json.loads(x) for x in (tmp_path / "b1" / "arc_heb.samples.jsonl").read_text().splitlines()]
    chat = [json.loads(x) for x in (tmp_path / "b5" / "arc_heb.samples.jsonl").read_text().splitlines()]
    schema = load_schema("arc_heb")
    rows = load_task(tiny / "tasks" / "arc_heb", schema)
    for p, c, row in zip(sorted(plain, key=lambda r: r["doc_id"]), sorted(chat, key=lambda r: r["doc_id"]), rows):
        prompt = format_prompt(schema, row.fields)
        assert [a[0] for a in p["arguments"]] == [prompt] * len(row.choices)
        assert [a[1] for a in p["arguments"]] == [" " + t for t in row.choices]
        want = render([{"role": "user", "content": prompt}], add_generation_prompt=True, enable_thinking=False)
        assert c["arguments"][0][0] == want and want.endswith("<|im_start|>assistant\n<think></think>")
        assert [a[1] for a in c["arguments"]] == list(row.choices)  # no delimiter after the template
    assert one["settings"]["chat"] is False and five["settings"]["chat"] is True
    b1 = evaluate_model(tiny / "model", ["arc_heb"], tiny / "tasks", n_shot=0, limit=2, out_dir=tmp_path / "c5",
                        batch_size=5, log=lambda *_: None)
    batched = [json.loads(x) for x in (tmp_path / "c5" / "arc_heb.samples.jsonl").read_text().splitlines()]
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(batched, key=lambda r: r["doc_id"])]
    ref = [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(plain, key=lambda r: r["doc_id"])]
    assert [x for r in lls for x in r] == pytest.approx([x for r in ref for x in r], abs=1e-4)
    assert b1["tasks"]["arc_heb"]["metrics"] == one["tasks"]["arc_heb"]["metrics"]


def _paper_tasks(root: Path) -> tuple[Path, Path]:
    """Two synthetic rows for each of the paper's six tasks, and schemas whose GSM8K generates 2 tokens
    (a shorter schema, not a cap: a capped run is not comparable)."""
    schema_dir = root / "schemas"
    schema_dir.mkdir(parents=True)
    for task in PAPER_AVERAGES["hebrew_reasoning_paper"]:
        schema = load_schema(task)
        write_jsonl(root / "tasks" / task / "test.jsonl", [synthetic_raw(schema, i) for i in range(2)])
        raw = yaml.safe_load(Path(schema.path).read_text(encoding="utf-8"))
        raw["max_new_tokens"] = min(raw.get("max_new_tokens", 64), 2)
        (schema_dir / f"{task}.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return root / "tasks", schema_dir


def test_paper_average_is_comparable_only_with_all_six_in_full(tiny, tmp_path):
    from hebatron_nemo.eval.harness import evaluate_model, summarize

    root, schema_dir = _paper_tasks(tmp_path)
    six = list(PAPER_AVERAGES["hebrew_reasoning_paper"])
    summary = evaluate_model(tiny / "model", ["hebrew_reasoning_paper"], root, n_shot=0, schema_dir=schema_dir,
                             out_dir=tmp_path / "out", log=lambda *_: None)
    paper = summary["averages"]["hebrew_reasoning_paper"]
    assert paper["paper_comparable"] is True and paper["missing"] == [] and paper["tasks"] == six
    assert paper["label"] == f"hebrew_reasoning_paper ({', '.join(six)})"

    schemas = {t: load_schema(t) for t in six}
    results = {t: {"score": 50.0} for t in six}
    assert summarize(results, schemas, limit=None)["hebrew_reasoning_paper"]["paper_comparable"] is True
    assert summarize(results, schemas, limit=10)["hebrew_reasoning_paper"]["paper_comparable"] is False
    assert summarize(results, schemas, max_new_tokens=8)["hebrew_reasoning_paper"]["paper_comparable"] is False
    five = {t: v for t, v in results.items() if t != "psychometric_heb"}
    partial = summarize(five, schemas, limit=None)["hebrew_reasoning_paper"]
    assert partial["paper_comparable"] is False and partial["missing"] == ["psychometric_heb"]
    assert partial["label"] == "hebrew_reasoning_paper (copa_heb, arc_heb, hellaswag_heb, mmlu_heb, gsm8k_heb)"


def test_every_task_file_is_validated_before_a_model_is_loaded(tmp_path):
    from hebatron_nemo.eval.harness import evaluate_model

    _write_lines(tmp_path / "tasks" / "copa_heb" / "test.jsonl", [json.dumps(_copa_row()), "{oops"])
    with pytest.raises(DataError, match=r"copa_heb/test\.jsonl:2: malformed JSON"):
        evaluate_model(tmp_path / "no-model-here", ["copa_heb"], tmp_path / "tasks")
    with pytest.raises(ConfigError, match="no schema for task 'nonesuch'"):
        evaluate_model(tmp_path / "no-model-here", ["nonesuch"], tmp_path / "tasks")


# --------------------------------------------------------------------------- damaged model folders


def _damaged(tiny: Path, dst: Path, how: str, keep_manifest: bool = True) -> Path:
    """A copy of the tiny export with its weight file damaged as a disk, a copy or a hand edit damages it."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny / "model", dst)
    f = dst / "model.safetensors"
    data = bytearray(f.read_bytes())
    if how == "zeroed":  # 4 KiB of zeros inside the tensor data
        data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
        f.write_bytes(bytes(data))
    elif how == "tensor_removed":  # transformers would log "newly initialized" and go on
        tensors = load_file(str(f))
        del tensors["backbone.layers.0.mixer.A_log"]
        save_file(tensors, str(f), metadata={"format": "pt"})
    elif how == "truncated":
        f.write_bytes(bytes(data[: len(data) // 2]))
    if not keep_manifest:
        (dst / "hebatron_export.json").unlink()
    return dst


@pytest.mark.parametrize("how", ["zeroed", *(pytest.param(h, marks=pytest.mark.slow) for h in ("tensor_removed", "truncated"))])  # an evaluate subprocess each
def test_evaluate_refuses_a_damaged_model_in_one_line(tiny, tmp_path, how):
    """recipes/evaluate.py on a damaged export: exit 2 and one line naming the folder and the weight file
    whose sha256 differs from the manifest's, before anything is scored (no traceback, no summary)."""
    import os
    import subprocess
    import sys

    model = _damaged(tiny, tmp_path / how, how)
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "recipes" / "evaluate.py"), "experiment=tiny_cpu", f"paths.work={tmp_path / 'work'}",
           f"evaluate.model_dir={model}", f"evaluate.task_root={tiny / 'tasks'}", "evaluate.tasks=[copa_heb]",
           "evaluate.limit=1", "threads=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HEBATRON_TRACEBACK": ""})
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(model) in errors[0] and "model.safetensors sha256" in errors[0] and "hebatron_export.json" in errors[0]
    assert not list((tmp_path / "work").rglob("summary.json"))


def test_scoring_loader_without_a_manifest_still_checks_keys_and_files(tiny, tmp_path):
    """Without a manifest (sha256 unknown) the strict key check and the file check still hold."""
    from hebatron_nemo.eval.harness import load_scoring_model
    from hebatron_nemo.export.hf import ExportError, ExportKeyError

    with pytest.raises(ExportKeyError, match=r"missing: backbone\.layers\.0\.mixer\.A_log"):
        load_scoring_model(_damaged(tiny, tmp_path / "removed", "tensor_removed", keep_manifest=False))
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        load_scoring_model(_damaged(tiny, tmp_path / "cut", "truncated", keep_manifest=False))
    with pytest.raises(ConfigError, match="not a verified export"):
        load_scoring_model(tiny / "trained")  # the local backend's own folder: export it first


# --------------------------------------------------------------------------- lm-evaluation-harness


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads a written task YAML, its ``!function`` references as plain strings."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def test_written_lmeval_tasks_hold_few_shot_rows_out_and_remove_stale_files(tiny, tmp_path):
    from hebatron_nemo.eval.lmeval import write_lmeval_tasks

    include = tmp_path / "lmeval"
    names = write_lmeval_tasks(tiny / "tasks", include)
    assert sorted(names) == sorted([*DEMO_TASKS, "ted_en_heb"])
    assert (include / "copa_heb.yaml").is_file() and (include / "hebatron_lmeval_utils.py").is_file()
    assert write_lmeval_tasks(tiny / "tasks", include, ["copa_heb"], n_shot=2, max_new_tokens=5) == ["copa_heb"]
    assert sorted(p.stem for p in include.glob("*.yaml")) == ["copa_heb"]  # its own stale files are removed
    cfg = yaml.load((include / "copa_heb.yaml").read_text(encoding="utf-8"), Loader=_TaskYamlLoader)
    lines = (tiny / "tasks" / "copa_heb" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    # copa has no dev/train file: its first 2 test rows are the examples and are never scored
    assert cfg["fewshot_split"] == "fewshot" and cfg["num_fewshot"] == 2
    assert Path(cfg["dataset_kwargs"]["data_files"]["fewshot"]).read_text(encoding="utf-8").splitlines() == lines[:2]
    assert Path(cfg["dataset_kwargs"]["data_files"]["test"]).read_text(encoding="utf-8").splitlines() == lines[2:]
    write_lmeval_tasks(tiny / "tasks", include, ["gsm8k_heb", "ted_heb"], max_new_tokens=5)
    gsm = yaml.load((include / "gsm8k_heb.yaml").read_text(encoding="utf-8"), Loader=_TaskYamlLoader)
    assert gsm["fewshot_split"] == "dev" and gsm["num_fewshot"] == load_schema("gsm8k_heb").num_fewshot
    assert gsm["generation_kwargs"]["max_gen_toks"] == 5  # the cap, below the schema's length
    ted = yaml.load((include / "ted_heb.yaml").read_text(encoding="utf-8"), Loader=_TaskYamlLoader)
    assert ted["generation_kwargs"]["max_gen_toks"] == 5
    write_lmeval_tasks(tiny / "tasks", include, ["gsm8k_heb"], max_new_tokens=10_000)
    gsm = yaml.load((include / "gsm8k_heb.yaml").read_text(encoding="utf-8"), Loader=_TaskYamlLoader)
    assert gsm["generation_kwargs"]["max_gen_toks"] == load_schema("gsm8k_heb").max_new_tokens


# ---------------------------------------------------------------------------- expected numbers, from transformers alone


def _expected_numbers(model_dir: Path, task_root: Path, task: str, n_shot: int, limit: int, cap: int) -> dict:
    """``{"metrics", "ids", "rows"}`` of a task (``ids``: each scored row's fields and gold; ``rows``: each
    row's choice log-likelihoods, or its
    generation cut at the stop strings), computed here from the model's own log-probabilities and greedy tokens
    (transformers only), by the documented rules: k-shot examples from dev.jsonl, else the first k test
    rows held out; contexts ``shots + prompt`` joined by the schema's delimiters; log-likelihood of
    ``target_delimiter + choice`` with the context's trailing whitespace moved to the continuation;
    greedy generation of min(cap, schema) tokens cut at the stop strings; the scorers' metrics."""
    import sacrebleu
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    schema = load_schema(task)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    rows = load_task(task_root / task, schema)
    dev = next((task_root / task / f"{s}.jsonl" for s in ("dev", "train") if (task_root / task / f"{s}.jsonl").is_file()), None)
    if dev is not None:
        shots = load_task(dev, schema)[:n_shot]
    else:
        shots, rows = rows[:n_shot], rows[n_shot:]
    rows = rows[:limit]

    def context(row):
        parts = [format_prompt(schema, s.fields) + schema.target_delimiter + s.target_text for s in shots]
        return schema.fewshot_delimiter.join(parts + [format_prompt(schema, row.fields)])

    def enc(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    def loglik(ctx, cont):
        n = len(ctx) - len(ctx.rstrip())
        if n:
            ctx, cont = ctx[:-n], ctx[-n:] + cont
        whole, c = enc(ctx + cont), enc(ctx)
        x = whole[len(c):]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([whole[:-1]])).logits[0]
        lp = logits[len(whole) - 1 - len(x):].log_softmax(-1)
        return float(lp.gather(-1, torch.tensor(x)[:, None]).sum())

    ids = [(r.fields, r.gold) for r in rows]
    if schema.type == "multiple_choice":
        acc, acc_norm, lls = [], [], []
        for row in rows:
            texts = list(row.letters) if schema.score_choices == "letter" else list(row.choices)
            ll = [loglik(context(row), schema.target_delimiter + t) for t in texts]
            norm = [v / len(t) for v, t in zip(ll, texts)]
            acc.append(float(ll.index(max(ll)) == row.gold))
            acc_norm.append(float(norm.index(max(norm)) == row.gold))
            lls.append(ll)
        return {"metrics": {"acc": sum(acc) / len(acc), "acc_norm": sum(acc_norm) / len(acc_norm)}, "ids": ids,
                "rows": lls}

    budget = min(cap, schema.max_new_tokens)
    stops = (*schema.stop, "<|im_end|>")
    preds = []
    for row in rows:
        x = torch.tensor([enc(context(row))])
        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=budget, do_sample=False,
                                 num_beams=1, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        new = out[0, x.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        text = tok.decode(new, skip_special_tokens=True)
        preds.append(text[:min((text.find(s) for s in stops if s in text), default=len(text))])
    if schema.type == "translation":
        refs = [r.gold[0] for r in rows]
        metrics = {"chrf": sacrebleu.corpus_chrf(preds, [refs]).score, "bleu": sacrebleu.corpus_bleu(preds, [refs]).score}
    elif schema.type == "span_f1":
        metrics = {"f1": sum(scorers.token_f1(p.strip(), r.gold) for p, r in zip(preds, rows)) / len(rows),
                   "exact_match": sum(scorers.exact_match(p.strip(), r.gold) for p, r in zip(preds, rows)) / len(rows)}
    else:
        metrics = {"exact_match": sum(scorers.exact_match(p.strip(), r.gold, schema.answer_extraction)
                                      for p, r in zip(preds, rows)) / len(rows)}
    return {"metrics": metrics, "ids": ids, "rows": preds}


PARITY = {"n_shot": 1, "limit": 3, "cap": 3}
PARITY_TASKS = [*DEMO_TASKS, "ted_en_heb"]


@pytest.mark.slow  # recipes/evaluate.py as a subprocess over nine tasks (~10 s): the fast tier's largest
def test_recipe_scores_through_lm_eval_equal_the_numbers_computed_from_transformers(tiny, tmp_path):
    """Done-when of issue 15: `recipes/evaluate.py` (lm-eval's HF backend) gives, on every demo task, the
    numbers computed from the model's own log-probabilities and greedy tokens with transformers alone
    (`_expected_numbers`, the rules the project's former engine applied; its numbers equalled these on
    the same rows before it was removed): same rows, same few-shot examples, same generations."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / "work"
    cmd = [sys.executable, str(repo / "recipes" / "evaluate.py"), "experiment=tiny_cpu", f"paths.work={work}",
           f"evaluate.model_dir={tiny / 'model'}", f"evaluate.task_root={tiny / 'tasks'}",
           f"evaluate.tasks=[{','.join(PARITY_TASKS)},mmlu_heb]", f"evaluate.n_shot={PARITY['n_shot']}",
           f"evaluate.limit={PARITY['limit']}", f"evaluate.max_new_tokens={PARITY['cap']}",
           "evaluate.write_demo_tasks=false", "threads=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "HEBATRON_TRACEBACK": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = next(work.rglob("eval/model/summary.json")).parent
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert set(summary["tasks"]) == set(PARITY_TASKS) and summary["settings"]["backend"] == "hf"
    assert summary["skipped"] == {"mmlu_heb": f"no {tiny / 'tasks' / 'mmlu_heb' / 'test.jsonl'}"}
    assert summary["model_fingerprint"] == "tiny"
    assert summary["results_file"] == str(out / "results.json") and results["lm_eval_version"]
    for task in PARITY_TASKS:
        want = _expected_numbers(tiny / "model", tiny / "tasks", task, **PARITY)
        entry = summary["tasks"][task]
        assert entry["metrics"] == pytest.approx(want["metrics"], abs=1e-6), task
        assert entry["n_scored"] == PARITY["limit"] and entry["n_shot"] == PARITY["n_shot"], task
        samples = sorted((json.loads(x) for x in (out / f"{task}.samples.jsonl").read_text().splitlines()),
                         key=lambda r: r["doc_id"])
        schema = load_schema(task)
        from hebatron_nemo.eval.tasks import parse_row

        docs = [parse_row(schema, r["doc"], "lm-eval doc", 0) for r in samples]
        assert [(d.fields, d.gold) for d in docs] == want["ids"], task  # the same rows
        if schema.type == "multiple_choice":
            got = [[float(c[0]) for c in r["filtered_resps"]] for r in samples]
            assert [x for row in got for x in row] == pytest.approx([x for row in want["rows"] for x in row], abs=1e-4)
        else:
            assert [r["filtered_resps"][0] for r in samples] == want["rows"], task
    # the few-shot rule: dev.jsonl when present, else the first test rows held out and never scored
    assert summary["tasks"]["gsm8k_heb"]["fewshot_source"] == "dev.jsonl"
    assert summary["tasks"]["copa_heb"]["fewshot_source"].startswith("test.jsonl (first 1 rows")
    he = [t for t in PARITY_TASKS if load_schema(t).language == "he"]
    avg = summary["averages"]["hebrew_average"]
    assert avg["label"] == f"hebrew_average ({', '.join(he)})"
    assert avg["value"] == pytest.approx(sum(summary["tasks"][t]["score"] for t in he) / len(he))
    assert avg["missing"] == ["mmlu_heb"] and summary["tasks"]["arc_heb"]["primary_metric"] == "acc_norm"
    paper = summary["averages"]["hebrew_reasoning_paper"]
    assert paper["paper_comparable"] is False and paper["missing"] == ["hellaswag_heb", "mmlu_heb", "psychometric_heb"]


# --------------------------------------------------------------------------- vLLM, COMET


def test_vllm_backend_composes_lm_eval_arguments(tmp_path, monkeypatch):
    """evaluate.backend=vllm: lm-eval's `vllm` model with the config's tensor-parallel size (vLLM itself
    is not installed on CPU machines: the arguments handed to lm-eval are what is checked)."""
    from hebatron_nemo.eval import harness
    from hebatron_nemo.eval.harness import evaluate_model, vllm_model_args

    assert vllm_model_args("/m", 4) == {"pretrained": "/m", "tokenizer": "/m", "tensor_parallel_size": 4,
                                        "dtype": "bfloat16", "gpu_memory_utilization": 0.9, "seed": 0}
    assert vllm_model_args("/m", 2, chat=True)["enable_thinking"] is False
    with pytest.raises(ConfigError, match="tensor_parallel_size must be >= 1"):
        vllm_model_args("/m", 0)
    with pytest.raises(ConfigError, match="evaluate.backend must be one of hf, vllm"):
        evaluate_model("/m", ["copa_heb"], tmp_path, backend="tgi")

    _write_lines(tmp_path / "tasks" / "copa_heb" / "test.jsonl", [json.dumps(_copa_row(idx=i)) for i in range(3)])
    calls = []

    def fake(lm, names, include, limit, chat, **kw):
        calls.append({"lm": lm, "names": names, "include": include, "limit": limit, "chat": chat, **kw})
        raise RuntimeError("stop here")

    monkeypatch.setattr(harness, "_simple_evaluate", fake)
    with pytest.raises(RuntimeError, match="stop here"):
        evaluate_model(tmp_path / "model", ["copa_heb"], tmp_path / "tasks", limit=2, out_dir=tmp_path / "out",
                       backend="vllm", tensor_parallel_size=8, chat=True)
    (call,) = calls
    assert call["lm"] == "vllm" and call["names"] == ["copa_heb"] and call["limit"] == 2 and call["chat"] is True
    assert call["batch_size"] == "auto"
    assert call["model_args"] == vllm_model_args(tmp_path / "model", 8, chat=True)
    assert call["model_args"]["tensor_parallel_size"] == 8
    assert (call["include"] / "copa_heb.yaml").is_file()

    # the config key composes and reaches the series' call
    from hydra import compose, initialize_config_dir

    from hebatron_nemo.config import register_configs

    register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("evaluate", overrides=["experiment=tiny_cpu", "evaluate.backend=vllm",
                                             "evaluate.tensor_parallel_size=2"])
    assert cfg.evaluate.backend == "vllm" and cfg.evaluate.tensor_parallel_size == 2
    from hebatron_nemo.eval.series import check_evaluate_config

    check_evaluate_config(cfg.evaluate)
    for key, value, message in (("backend", "tgi", "evaluate.backend: 'tgi' is not one of hf, vllm"),
                                ("tensor_parallel_size", 0, "evaluate.tensor_parallel_size: must be >= 1"),
                                ("comet_model", str(tmp_path), "holds no checkpoints/model.ckpt")):
        bad = cfg.evaluate.copy()
        bad[key] = value
        with pytest.raises(ConfigError, match=message):
            check_evaluate_config(bad)


def test_comet_is_skipped_with_a_message_when_unset_or_missing(tmp_path, monkeypatch):
    import builtins

    from hebatron_nemo.eval.harness import comet_score

    schema = load_schema("ted_en_heb")
    rows = [{"doc": {"id": "a", "en": "hello", "he": "שלום"}, "filtered_resps": ["שלום"]}]
    said = []
    assert comet_score(rows, schema, None, said.append) is None
    assert said == ["ted_en_heb: COMET skipped (evaluate.comet_model is not set)"]
    real_import = builtins.__import__

    def no_comet(name, *a, **kw):
        if name == "comet" or name.startswith("comet."):
            raise ImportError("No module named 'comet'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_comet)
    said.clear()
    assert comet_score(rows, schema, str(tmp_path), said.append) is None
    assert said and "comet package is not installed" in said[0]


# --------------------------------------------------------------------------- long context


def _prepared_hebrew(tmp_path: Path, tok_dir: Path) -> Path:
    """A prepared `valid` split (megatron .bin/.idx, written by the writer recipes/prepare_data.py uses) of
    Hebrew documents."""
    import numpy as np
    from transformers import AutoTokenizer

    from hebatron_nemo.data.indexed import AtomicIndexedWriter

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    prepared = tmp_path / "prepared"
    writer = AtomicIndexedWriter(str(prepared / "he_long" / "valid"), np.uint16)
    for i in range(12):
        writer.add(tok(" ".join(HEBREW[(i + j) % len(HEBREW)] for j in range(8)), add_special_tokens=False)["input_ids"])
    writer.commit()
    return prepared


def test_long_context_task_is_generated_and_scored_at_two_lengths(tiny, tmp_path):
    from transformers import AutoTokenizer

    from hebatron_nemo.eval.harness import evaluate_model
    from hebatron_nemo.eval.long_context import GENERATOR_CONFIG, load_generator_config, write_needle_task

    shipped = load_generator_config()
    assert min(shipped["lengths"]) == 4096 and max(shipped["lengths"]) == 65536 and GENERATOR_CONFIG.is_file()
    prepared = _prepared_hebrew(tmp_path, tiny / "tok")
    config = load_generator_config(lengths=[256, 512]) | {"depths": [0.1, 0.9], "rows_per_cell": 1, "sources": ["he_long"]}
    path = write_needle_task(tmp_path / "tasks", prepared, tiny / "tok", config)
    again = write_needle_task(tmp_path / "again", prepared, tiny / "tok", config)
    assert path.read_bytes() == again.read_bytes()  # deterministic
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [(r["needle_length"], r["needle_depth"]) for r in rows] == [(256, 0.1), (256, 0.9), (512, 0.1), (512, 0.9)]
    tok = AutoTokenizer.from_pretrained(str(tiny / "tok"))
    schema = load_schema("hebrew_needle")
    for r in rows:
        needle = f"המספר הסודי של {r['question'].split('של ')[1].rstrip('?')} הוא {r['answer']}."
        at = r["context"].index(needle)
        assert abs(at / len(r["context"]) - r["needle_depth"]) < 0.15  # planted at its depth
        n = len(tok(format_prompt(schema, {"context": r["context"], "question": r["question"]}),
                    add_special_tokens=False)["input_ids"])
        assert n == r["prompt_tokens"] and r["needle_length"] // 2 < n <= r["needle_length"] - schema.max_new_tokens
    summary = evaluate_model(tiny / "model", ["hebrew_needle"], tmp_path / "tasks", out_dir=tmp_path / "out",
                             log=lambda *_: None)
    entry = summary["tasks"]["hebrew_needle"]
    assert entry["n_scored"] == 4 and set(entry["by_length"]) == {"256", "512"}
    samples = [json.loads(x) for x in (tmp_path / "out" / "hebrew_needle.samples.jsonl").read_text().splitlines()]
    for length in (256, 512):
        mine = [s["exact_match"] for s in samples if s["doc"]["needle_length"] == length]
        assert entry["by_length"][str(length)] == pytest.approx(sum(mine) / len(mine))
    with pytest.raises(ConfigError, match="key 'lengths'"):
        load_generator_config(lengths=[10])


def test_report_shows_the_long_context_row(tmp_path):
    from hebatron_nemo.eval.report import write_report

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    series = {"models": [{"name": "base", "tokens": 0, "scores": {"copa_heb": 50.0, "hebrew_needle": 0.0},
                          "long_context": {"512": 0.0}},
                         {"name": "step-40", "tokens": 1000, "scores": {"copa_heb": 55.0, "hebrew_needle": 50.0},
                          "long_context": {"512": 50.0}}]}
    (run / "eval" / "series.json").write_text(json.dumps(series))
    report = write_report(run).read_text(encoding="utf-8")
    assert "### Long-context retrieval (hebrew_needle)" in report
    assert "| model | 512 tokens |" in report and "| step-40 | 50.0 |" in report


def test_series_rescores_a_model_when_the_evaluate_settings_change(tiny, tmp_path):
    """A rerun of the evaluate stage after `evaluate.limit` (or the tasks) changed scores again rather than
    reusing the summary written with the old settings."""
    from hydra import compose, initialize_config_dir

    from hebatron_nemo.config import register_configs
    from hebatron_nemo.eval.series import evaluate_series

    register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    models = [{"name": "model", "tokens": 0, "dir": str(tiny / "model")}]
    seen = []
    for limit, tasks in ((2, "[copa_heb]"), (3, "[copa_heb]"), (3, "[copa_heb,arc_en]")):
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("evaluate", overrides=["experiment=tiny_cpu", f"paths.work={tmp_path}", "threads=1",
                                                 f"evaluate.task_root={tiny / 'tasks'}", f"evaluate.limit={limit}",
                                                 f"evaluate.tasks={tasks}", "evaluate.max_new_tokens=2"])
        series = evaluate_series(cfg, tmp_path / "run", models, log=lambda *_: None)
        summary = json.loads((tmp_path / "run" / "eval" / "model" / "summary.json").read_text())
        seen.append((summary["tasks"]["copa_heb"]["n_scored"], sorted(series["models"][0]["scores"])))
    assert seen == [(2, ["copa_heb"]), (3, ["copa_heb"]), (3, ["arc_en", "copa_heb"])]


def test_the_evaluate_stage_writes_the_reverse_translation_and_the_long_context_task_at_the_demo_length(tiny, tmp_path):
    import shutil

    from hydra import compose, initialize_config_dir

    from hebatron_nemo.config import register_configs
    from hebatron_nemo.eval.long_context import load_generator_config
    from hebatron_nemo.eval.series import write_demo_tasks_if_missing

    register_configs()
    tasks = tmp_path / "tasks"
    shutil.copytree(tiny / "tasks" / "ted_heb", tasks / "ted_heb")
    prepared = _prepared_hebrew(tmp_path, tiny / "tok")
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("evaluate", overrides=["experiment=tiny_cpu", f"paths.work={tmp_path}", f"evaluate.task_root={tasks}",
                                             f"data.output_dir={prepared}", f"tokenizer.path={tiny / 'tok'}"])
    write_demo_tasks_if_missing(cfg, log=lambda *_: None)
    assert (tasks / "ted_en_heb" / "test.jsonl").read_bytes() == (tasks / "ted_heb" / "test.jsonl").read_bytes()
    rows = [json.loads(x) for x in (tasks / "hebrew_needle" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    demo_length = max(int(s.seq_length) for s in cfg.curriculum.segments)
    assert demo_length == 512 and {r["needle_length"] for r in rows} == {demo_length}
    assert sorted(r["needle_depth"] for r in rows) == sorted(float(d) for d in load_generator_config()["depths"])
