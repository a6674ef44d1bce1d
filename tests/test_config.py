"""The Hydra config tree: it composes, typos fail at compose time naming the key, and the recipes turn
bad input into one clear error line (exit code 2) before any work."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from hebatron_nemo.config import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")


@pytest.fixture(autouse=True)
def _store():
    register_configs()


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="prepare", overrides=overrides)


def test_demo_registry_composes_with_every_field_typed():
    cfg = _compose(["paths.work=/tmp/w"])
    assert cfg.data.name == "demo" and cfg.tokenizer.name == "demo_bpe"
    assert cfg.data.raw_dir == "/tmp/w/corpora/demo"
    roles = {n: s.role for n, s in cfg.data.sources.items()}
    assert {"pretrain", "anchor", "sft", "eval"} <= set(roles.values())
    phases = {s.phase for s in cfg.data.sources.values()}
    assert {"formal", "colloquial", "long_context", "anchor"} <= phases
    for name, src in cfg.data.sources.items():
        assert src.licence and src.language in ("he", "en", "he-en"), name
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # nothing left MISSING


@pytest.mark.parametrize("override, key", [
    ("data.fliters.min_chars=5", "fliters"),
    ("data.sources.he_tanakh.langauge=he", "langauge"),
    ("tokenizer.train.vocab=100", "vocab"),
    ("shards=2/4", "shards"),
])
def test_typo_in_override_fails_at_compose_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as e:
        _compose([override])
    assert key in str(e.value) + str(e.value.__cause__)


def test_wrong_type_fails_at_compose():
    with pytest.raises(ConfigCompositionException) as e:
        _compose(["data.filters.min_chars=many"])
    assert "min_chars" in str(e.value) + str(e.value.__cause__)


def test_unknown_registry_fails_listing_the_choices():
    with pytest.raises(Exception) as e:
        _compose(["data=nonexistent"])
    assert "demo" in str(e.value)


def _run_prepare(tmp_path, registry_yaml: str, *extra):
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "broken.yaml").write_text(textwrap.dedent(registry_yaml), encoding="utf-8")
    return subprocess.run([sys.executable, "recipes/prepare_data.py", "--config-dir", str(tmp_path / "conf"),
                           "data=broken", f"paths.work={tmp_path}", "progress=false", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


REGISTRY = """
    defaults: [data_schema]
    name: broken
    raw_dir: {raw}
    output_dir: {out}
    decontamination: {{eval_tasks: []}}
    sources:
      he_web: {{language: he, register: web, path: he.jsonl, licence: test}}
"""


def test_cli_invalid_utf8_names_file_and_line_and_writes_nothing(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = '{"text": "שורה תקינה בעברית עם מספיק מילים בשביל הסינון"}\n'.encode()
    (raw / "he.jsonl").write_bytes(good + good + b'{"text": "\xd7\x90 broken \xff here"}\n' + good)
    proc = _run_prepare(tmp_path, REGISTRY.format(raw=raw, out=tmp_path / "out"), "dry_run=true")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "he.jsonl:3" in last and "UTF-8" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_missing_field_and_malformed_json(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "he.jsonl").write_text('{"text": "אחת שתיים שלוש ארבע חמש שש"}\n{"body": "x"}\n', encoding="utf-8")
    proc = _run_prepare(tmp_path, REGISTRY.format(raw=raw, out=tmp_path / "out"))
    assert proc.returncode == 2
    assert "he.jsonl:2" in proc.stderr and "'text'" in proc.stderr
    (raw / "he.jsonl").write_text('{"text": "תקין לגמרי"}\n{"text": "חסר סוגר"\n', encoding="utf-8")
    proc = _run_prepare(tmp_path, REGISTRY.format(raw=raw, out=tmp_path / "out2"))
    assert proc.returncode == 2 and "he.jsonl:2" in proc.stderr and "JSON" in proc.stderr
    # every input is read before any output exists: neither run wrote anything
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_cli_empty_file_and_missing_path(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "he.jsonl").write_bytes(b"")
    proc = _run_prepare(tmp_path, REGISTRY.format(raw=raw, out=tmp_path / "out"), "dry_run=true")
    assert proc.returncode == 2 and "he.jsonl" in proc.stderr and "empty" in proc.stderr
    proc = _run_prepare(tmp_path, REGISTRY.format(raw=tmp_path / "nowhere", out=tmp_path / "out"))
    assert proc.returncode == 2 and "data.sources.he_web.path" in proc.stderr and "nowhere" in proc.stderr


def test_cli_bad_override_is_a_hydra_error_naming_the_key(tmp_path):
    proc = subprocess.run([sys.executable, "recipes/prepare_data.py", f"paths.work={tmp_path}",
                           "data.normalize.strip_nikud=true"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "strip_nikud" in proc.stderr


HYDRA_DEFAULT_HELP = "is powered by Hydra"  # the first line of Hydra's own help (hydra/help/default.yaml)


def _hydra_recipes() -> dict[str, str]:
    """{recipe file stem: its config name} for every recipe that is a Hydra app."""
    out = {}
    for path in sorted((REPO / "recipes").glob("*.py")):
        m = re.search(r'@hydra\.main\(.*config_name="(\w+)"', path.read_text())
        if m:
            out[path.stem] = m.group(1)
    return out


def test_help_explains_the_recipe():
    """`--help` prints the recipe's own text (conf/prepare.yaml's hydra.help), not Hydra's default."""
    proc = subprocess.run([sys.executable, "recipes/prepare_data.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    own = OmegaConf.load(REPO / "conf" / "prepare.yaml").hydra.help.template
    intro = own.split("\n\n")[0]  # the paragraph before "Usage:", as written (no interpolation in it)
    assert proc.stdout.startswith(intro), proc.stdout[:300]
    assert HYDRA_DEFAULT_HELP not in proc.stdout
    usage = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("python recipes/")]
    assert any("tasks=" in line for line in usage) and all(line.startswith("python recipes/prepare_data.py")
                                                           for line in usage)
    assert "data: demo" in proc.stdout  # $CONFIG: the composed config follows the text


def test_every_hydra_recipe_has_its_own_help():
    """The README promises `--help` on every recipe: each Hydra recipe's config sets hydra.help to a text
    naming the recipe and showing how to call it, instead of Hydra's generic page."""
    recipes = _hydra_recipes()
    assert {"prepare_data", "plan", "cpt", "sft", "evaluate", "export", "pipeline"} <= set(recipes)
    missing = []
    for recipe, config_name in recipes.items():
        help_ = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / f"{config_name}.yaml"),
                                       resolve=False).get("hydra", {}).get("help", {})
        template = help_.get("template", "")
        if not (help_.get("app_name") == recipe and template.startswith(f"{recipe}: ")
                and f"python recipes/{recipe}.py" in template and HYDRA_DEFAULT_HELP not in template):
            missing.append(f"{recipe} (conf/{config_name}.yaml)")
    assert not missing, f"recipes whose --help is Hydra's generic page: {missing}"


def _compose_plan(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="plan", overrides=overrides)


def test_plan_experiment_composes_and_arms_are_plain_overrides():
    cfg = _compose_plan(["experiment=tiny_cpu", "paths.work=/tmp/w"])
    assert cfg.curriculum.name == "tiny" and cfg.anchor.share == 0.25
    assert [p.name for p in cfg.curriculum.phases] == ["formal", "colloquial", "long_context"]
    assert len({s.seq_length for s in cfg.curriculum.segments}) == 2
    for seg in cfg.curriculum.segments:  # the anchor count of every batch is integral
        assert (cfg.anchor.share * seg.global_batch_size).is_integer()
    arm = _compose_plan(["experiment=tiny_cpu", "curriculum.order=reversed", "anchor=none"])
    assert arm.curriculum.order == "reversed" and arm.anchor.share == 0.0
    assert "reversed" in arm.run_dir and "anchor0.0" in arm.run_dir
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("override, key", [("curriculum.phases.0.tokenz=5", "tokenz"),
                                           ("anchor.shar=0.1", "shar"),
                                           ("curriculum.segments.0.seq_len=64", "seq_len")])
def test_plan_typos_fail_at_compose(override, key):
    with pytest.raises(ConfigCompositionException) as e:
        _compose_plan(["experiment=tiny_cpu", override])
    assert key in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize("old, new", [
    ("checkpoint.every_steps=5", "use checkpoint.save_interval"),
    ("megatron_bridge.segment=1", "use segment (the segment's name"),
    ("parallelism.tensor=2", "use parallelism.tensor_model_parallel_size"),
])
def test_a_renamed_key_names_its_new_key(old, new, tmp_path):
    """An old key (docs/config_migration.md) fails before anything runs, naming the key that replaced it."""
    proc = subprocess.run([sys.executable, "recipes/cpt.py", "experiment=tiny_cpu", f"paths.work={tmp_path}", old],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{old.split('=')[0]} was renamed: {new}" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.iterdir())


def test_a_renamed_key_in_a_yaml_file_names_its_new_key():
    """Composed by the launcher or the pipeline (a YAML file's key reaches us as Hydra's `full_key`)."""
    from hebatron_nemo.config import renamed_key_errors
    from hebatron_nemo.errors import ConfigError
    from hebatron_nemo.launch.compose import check_stage

    with pytest.raises(ConfigError, match=r"optim.beta1 was renamed: use optim.adam_beta1"):
        check_stage("cpt", ["experiment=tiny_cpu", "optim.beta1=0.8"])
    text = "Key 'global_batch' not in 'SegmentConfig'\n    full_key: curriculum.segments[1].global_batch\n"
    assert renamed_key_errors([], text) == ["curriculum.segments[1].global_batch was renamed: use "
                                            "curriculum.segments.*.global_batch_size (docs/config_migration.md)"]
    assert renamed_key_errors(["anchor.share=0.1", "-m", "eval.eval_interval=3"]) == []
