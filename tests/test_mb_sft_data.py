"""The Megatron-Bridge side of SFT data: ranks only read the prepared dataset (written once, by
recipes/prepare_sft.py), from a per-run folder keyed by its fingerprint, and MB's pack folder name is a
safe path component. Several processes enter the MB-side data entry at once, as 16 ranks do before
torch.distributed exists."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from corpus import ENGLISH, HEBREW, write_jsonl

from hebatron_nemo.backends.megatron_bridge.sft_data import (dataset_root, link_prepared_sft, pack_tokenizer_name,
                                                             planned_dataset_root)
from hebatron_nemo.config import RunConfig
from hebatron_nemo.data.tokenizer import train_byte_level_bpe
from hebatron_nemo.errors import ConfigError
from hebatron_nemo.sft.prepare import MANIFEST, TRAIN_FILE, VALID_FILE, prepare_sft

PROCESSES = 8


def make_cfg(tmp: Path, tok: Path, prepared: Path):
    cfg = OmegaConf.structured(RunConfig)
    cfg.tokenizer.path, cfg.tokenizer.name = str(tok), "bpe"
    cfg.sft.run_dir = str(tmp / "run" / "sft")
    cfg.sft_data = OmegaConf.merge(cfg.sft_data, {
        "name": "mbtest", "raw_dir": str(tmp / "raw"), "output_dir": str(prepared), "total": 40, "max_length": 256,
        "valid_fraction": 0.1, "decontamination": {"enabled": False},
        "sources": {"chat": {"kind": "messages", "path": "chat.jsonl", "weight": 1.0}}})
    return cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mbsft")
    tok = tmp / "tok"
    train_byte_level_bpe(HEBREW * 4 + ENGLISH * 4, str(tok), vocab_size=600, min_frequency=1, fingerprint={"t": 1})
    write_jsonl(tmp / "raw" / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"{HEBREW[i % len(HEBREW)]} {i}"},
                      {"role": "assistant", "content": f"{ENGLISH[i % len(ENGLISH)]} {i}"}]} for i in range(60)])
    cfg = make_cfg(tmp, tok, tmp / "prepared")
    manifest = prepare_sft(cfg, log=lambda *a: None)
    return tmp, cfg, manifest


def _listing(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _rank(cfg_yaml: str, barrier, out: str, rank: int) -> None:
    """One 'rank': waits for all, then enters the MB-side data entry at the same moment."""
    from hebatron_nemo.config import RunConfig as Schema

    cfg = OmegaConf.merge(OmegaConf.structured(Schema), OmegaConf.create(cfg_yaml))
    barrier.wait()
    try:
        root, manifest = link_prepared_sft(cfg, log=lambda *a: None)
        rows = sum(1 for _ in open(root / TRAIN_FILE, encoding="utf-8"))
        result = {"root": str(root), "fingerprint": manifest["fingerprint"], "rows": rows}
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the test
        result = {"error": f"{type(e).__name__}: {e}"}
    Path(out, f"{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow  # 16 spawned processes
def test_every_rank_enters_the_data_entry_at_once(prepared, tmp_path):
    """8 processes x 2 rounds call the MB-side data entry simultaneously: every one gets the same
    dataset root with all rows, nothing is left half-written, and the prepared folder is not touched."""
    tmp, cfg, manifest = prepared
    before = _listing(Path(cfg.sft_data.output_dir))
    ctx = mp.get_context("spawn")
    for round_ in range(2):
        out = tmp_path / f"round{round_}"
        out.mkdir()
        barrier = ctx.Barrier(PROCESSES)
        procs = [ctx.Process(target=_rank, args=(OmegaConf.to_yaml(cfg), barrier, str(out), r)) for r in range(PROCESSES)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        results = [json.loads((out / f"{r}.json").read_text()) for r in range(PROCESSES)]
        assert all("error" not in r for r in results), results
        assert {r["root"] for r in results} == {str(dataset_root(cfg, manifest["fingerprint"]))}
        assert {r["rows"] for r in results} == {manifest["samples"]}
    root = dataset_root(cfg, manifest["fingerprint"])
    assert sorted(p.name for p in root.iterdir()) == sorted([TRAIN_FILE, VALID_FILE])  # no temp links left
    for name in (TRAIN_FILE, VALID_FILE):
        assert (root / name).resolve() == (Path(cfg.sft_data.output_dir) / name).resolve()
    assert _listing(Path(cfg.sft_data.output_dir)) == before  # ranks never write the prepared data
    assert root.parent == Path(cfg.sft.run_dir) / "mb_data" and manifest["fingerprint"] in root.name


def test_missing_prepared_data_is_refused_before_anything_is_written(prepared, tmp_path):
    tmp, cfg, _ = prepared
    missing = make_cfg(tmp_path, Path(cfg.tokenizer.path), tmp_path / "never-prepared")
    with pytest.raises(ConfigError, match=r"no prepared SFT dataset .*recipes/prepare_sft.py sft_data=mbtest"):
        link_prepared_sft(missing)
    assert not (tmp_path / "run").exists()
    root, manifest = planned_dataset_root(missing)  # a dry run needs no prepared data and writes nothing
    assert manifest is None and "not prepared yet" in str(root) and not (tmp_path / "run").exists()


def test_data_prepared_with_another_tokenizer_is_refused(prepared, tmp_path):
    tmp, cfg, _ = prepared
    other = tmp_path / "tok2"
    train_byte_level_bpe(ENGLISH * 4, str(other), vocab_size=400, min_frequency=1, fingerprint={"t": 2})
    wrong = make_cfg(tmp, other, Path(cfg.sft_data.output_dir))
    with pytest.raises(ConfigError, match="another tokenizer"):
        link_prepared_sft(wrong)


def test_new_data_gets_a_new_folder_and_packs_stay_inside_it(prepared, tmp_path):
    """MB's pack folder is <dataset_root>/packed/<tokenizer_model_name>_pad...: keyed by the prepared
    data's fingerprint through dataset_root, and a name that cannot escape it."""
    tmp, cfg, manifest = prepared
    assert dataset_root(cfg, "a") != dataset_root(cfg, "b")
    absolute = OmegaConf.merge(cfg, {"tokenizer": {"path": "/models/Nemotron 3 Nano/tokenizer dir/"}})
    name = pack_tokenizer_name(absolute)
    assert name == "tokenizer-dir" and os.sep not in name
    root = Path(str(dataset_root(cfg, manifest["fingerprint"])))
    assert (root / "packed" / f"{name}_pad_seq_to_mult1_sft_x").resolve().is_relative_to(root)
    assert json.loads((Path(cfg.sft_data.output_dir) / MANIFEST).read_text())["fingerprint"] == manifest["fingerprint"]


def test_sft_steps_follow_from_the_data_not_a_fixed_number(tmp_path):
    """The cluster SFT experiment fixes no step count: MB gets sft.epochs and derives train_iters (and the
    LR decay) from the packed rows; the dry run states the arithmetic from the prepared manifest."""
    from mb_fixtures import compose_experiment

    from hebatron_nemo.backends.megatron_bridge.run import sft_steps_line
    from hebatron_nemo.backends.megatron_bridge.seam import sft_overrides

    cfg = compose_experiment("hebatron_sft_h100x16", [f"paths.work={tmp_path}"], recipe="sft")
    assert cfg.sft_data.name == "hebatron" and cfg.sft_data.total == 2_000_000
    assert cfg.megatron_bridge.sft_train_iters is None
    train = sft_overrides(cfg, tmp_path)["train"]
    assert train["train_iters"] is None and train["num_epochs"] == cfg.sft.epochs
    manifest = {"samples": 2_000_000, "tokens": 2_000_000 * 1500}
    line = sft_steps_line(cfg, manifest)
    rows = -(-manifest["tokens"] // cfg.sft_data.max_length)
    assert f"at least {-(-rows // cfg.sft.global_batch_size):,} steps" in line


def test_prepared_data_without_validation_rows_is_refused_before_mb_indexes_it(prepared, tmp_path):
    """valid_fraction=0 leaves validation.jsonl empty: MB's index build would fail with an unrelated
    TypeError, so the data entry refuses it by name before any folder is made."""
    tmp, cfg, _ = prepared
    novalid = make_cfg(tmp, Path(cfg.tokenizer.path), tmp_path / "prepared-novalid")
    novalid.sft.run_dir = str(tmp_path / "run" / "sft")
    novalid.sft_data.valid_fraction = 0.0
    prepare_sft(novalid, log=lambda *a: None)
    assert (tmp_path / "prepared-novalid" / VALID_FILE).stat().st_size == 0
    with pytest.raises(ConfigError, match=r"no validation conversations .*sft_data.valid_fraction"):
        link_prepared_sft(novalid, log=lambda *a: None)
    assert not (tmp_path / "run").exists()
