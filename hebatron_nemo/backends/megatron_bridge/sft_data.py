"""The prepared SFT dataset as Megatron-Bridge reads it: a per-run data folder, keyed by the prepared
data's fingerprint, that MB's `GPTSFTDatasetConfig` uses as `dataset_root`.

The prepared dataset (`recipes/prepare_sft.py`, one job before SFT) is only read here. MB writes next
to the files it reads (the JSONL index `training.jsonl.idx.{npy,info}`) and packs into
`<dataset_root>/packed/<tokenizer_model_name>_pad_seq_to_mult<k>_sft_<MB fingerprint>/`, whose MB
fingerprint covers the packing settings but not the data. So `dataset_root` is a folder of the run,
``<megatron_bridge.sft_data_dir or sft.run_dir/mb_data>/prepared-<fingerprint>/``, holding symbolic links to
the prepared `training.jsonl`/`validation.jsonl`: new data means a new folder (never a stale pack), and
a read-only prepared folder (or model folder) is never written. `tokenizer_model_name` is a safe file
name (MB joins it under `packed/`; an absolute path would escape to `/<path>_pad...`).

Every rank may call `link_prepared_sft` at once, before torch.distributed exists: it only creates
folders (`exist_ok`) and puts each link in place with an atomic rename of an identical link, so there
is nothing to race on. MB's own packing then runs on rank 0 behind its barrier.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from hebatron_nemo.errors import ConfigError
from hebatron_nemo.sft.prepare import TRAIN_FILE, VALID_FILE, open_prepared

LINKED = (TRAIN_FILE, VALID_FILE)


def run_data_dir(cfg) -> Path:
    """The run's SFT data folder (what `megatron_bridge.sft_data_dir` names; default <sft.run_dir>/mb_data)."""
    mb = cfg.megatron_bridge
    return Path(str(mb.sft_data_dir or Path(str(cfg.sft.run_dir)) / "mb_data"))


def dataset_root(cfg, fingerprint: str) -> Path:
    """`GPTSFTDatasetConfig.dataset_root` for the prepared data with this fingerprint."""
    return run_data_dir(cfg) / f"prepared-{fingerprint}"


def pack_tokenizer_name(cfg) -> str:
    """`PackedSequenceSpecs.tokenizer_model_name`: the tokenizer folder's name as one safe path component."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(cfg.tokenizer.path)).name).strip("-.")
    return name or "tokenizer"


def _tokenizer_sha(cfg) -> str:
    from hebatron_nemo.utils.hashing import sha256_file

    path = Path(str(cfg.tokenizer.path)) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"tokenizer.path: no tokenizer.json in {cfg.tokenizer.path!r}")
    return sha256_file(path)


def _place_link(link: Path, target: Path) -> None:
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.symlink(target, tmp)
    os.replace(tmp, link)  # atomic: a reader sees the old link or the new one, both to the same file


def link_prepared_sft(cfg, log=print) -> tuple[Path, dict]:
    """(dataset_root, manifest): checks the prepared SFT dataset (refusing clearly when it is missing,
    incomplete, or tokenized with another tokenizer) and links its files into the run's data folder.
    Safe to call from every rank at the same time; writes nothing in the prepared folder."""
    folder, manifest = open_prepared(cfg)
    if manifest.get("tokenizer", {}).get("tokenizer_json_sha256") != _tokenizer_sha(cfg):
        raise ConfigError(f"prepared SFT dataset {folder} was tokenized with another tokenizer than "
                          f"{cfg.tokenizer.path}. Fix: rerun recipes/prepare_sft.py with this run's tokenizer")
    if not manifest.get("validation_samples"):
        # MB 0.6.0 builds a memmap index of validation.jsonl; on an empty file its worker's ValueError
        # is swallowed by `safe_map` and surfaces as `TypeError: ... 'int' and 'NoneType'` in
        # build_index_files, far from the cause.
        raise ConfigError(f"prepared SFT dataset {folder} has no validation conversations "
                          f"({VALID_FILE} is empty), which Megatron-Bridge's SFT dataset cannot index. Fix: raise "
                          f"sft_data.valid_fraction (now {cfg.sft_data.valid_fraction}) and rerun recipes/prepare_sft.py")
    root = dataset_root(cfg, manifest["fingerprint"])
    root.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        _place_link(root / name, (folder / name).resolve())
    log(f"SFT data: {manifest['samples']:,} training conversations from {folder} (prepared "
        f"{manifest['fingerprint']}) -> {root}")
    return root, manifest


def planned_dataset_root(cfg) -> tuple[Path, dict | None]:
    """What a dry run shows: the dataset root of the prepared data if there is one, else a placeholder
    (a dry run needs no prepared data); writes nothing."""
    try:
        folder, manifest = open_prepared(cfg)
    except ConfigError:
        return dataset_root(cfg, "<not prepared yet>"), None
    return dataset_root(cfg, manifest["fingerprint"]), manifest
