"""The corpus registry (`conf/data/<name>.yaml`): validation and lookups by name.

Validation runs before any file is read: an unknown source in a blend, an unknown format or role, a
missing path, a bad hold-out fraction, or a missing evaluation task file that decontamination needs
fails here with the source (or key) and field named.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from hebatron_nemo.config import ROLES, renamed_key
from hebatron_nemo.data.filters import DocumentFilter
from hebatron_nemo.data.languages import LANGUAGES, build_normalizer
from hebatron_nemo.data.readers import FORMATS
from hebatron_nemo.errors import ConfigError


def source_path(data_cfg, name: str) -> str:
    """The absolute input path of a source (relative paths are under `data.raw_dir`)."""
    p = Path(str(data_cfg.sources[name].path)).expanduser()
    return str(p if p.is_absolute() else Path(str(data_cfg.raw_dir)) / p)


def split_prefix(source_dir: str | Path, prefix: str | None) -> str | None:
    """A split's `.bin/.idx` path prefix from its `manifest.json` entry, `source_dir` being the folder
    that holds the manifest. `prepare` records the prefix relative to that folder (`"train"`), so a
    prepared folder reads its own files wherever it is copied or mounted. An absolute prefix (written
    before that) is read from `source_dir` when the files are there, else as written. None: no data."""
    if not prefix:
        return None
    p = Path(prefix)
    if not p.is_absolute():
        return str(Path(source_dir) / p)
    local = Path(source_dir) / p.name
    return str(local) if Path(f"{local}.idx").exists() else str(p)


def prepared_split(data_cfg, name: str, split: str) -> str | None:
    """The `.bin/.idx` prefix of a prepared source's split under `data.output_dir` (None when the
    split is empty or the source is not prepared)."""
    from hebatron_nemo.utils.io import read_json

    source_dir = Path(str(data_cfg.output_dir)) / name
    manifest = read_json(source_dir / "manifest.json")
    entry = (manifest or {}).get("splits", {}).get(split) or {}
    return split_prefix(source_dir, entry.get("prefix"))


def plan_data_path(plan: dict, path: str) -> str:
    """A data path as a plan stores it (relative to the plan's `data_root`: `<source>/train`) made
    absolute. `data_root` is the run's `data.output_dir`: the plan records the one it was made
    against, and a run that reads it elsewhere (another mount, a copied folder) replaces it with its
    own (`with_data_root`). Absolute paths (older plans) are returned as they are."""
    p = Path(path)
    if p.is_absolute() or not plan.get("data_root"):
        return str(p)
    return str(Path(plan["data_root"]) / p)


def with_data_root(plan: dict, data_root: str | None) -> dict:
    """The plan, reading its data under `data_root` (the run's `data.output_dir`) when one is given."""
    if data_root:
        plan["data_root"] = str(Path(str(data_root)).expanduser().absolute())
    return plan


def output_prefix(data_cfg, name: str, split: str = "train") -> str:
    """The Megatron path prefix (`<prefix>.bin/.idx`) of a prepared source split."""
    return str(Path(str(data_cfg.output_dir)) / name / split)


def validate_registry(data_cfg, check_paths: bool = True, only: Iterable[str] | None = None) -> None:
    """Raises ConfigError naming `data.sources.<name>.<field>` for the first invalid entry."""
    if not data_cfg.sources:
        raise ConfigError(f"data.sources is empty in data config {data_cfg.name!r}")
    names = list(only) if only else list(data_cfg.sources)
    require_sources(data_cfg, names, what="sources")
    for name in names:
        src = data_cfg.sources[name]
        key = f"data.sources.{name}"
        if src.language not in LANGUAGES:
            raise ConfigError(f"{key}.language must be one of {LANGUAGES}, got {src.language!r} "
                              "(hebatron_nemo/data/languages.py; docs/data.md, 'Adding a language')")
        # the source's normalizer and filters, built as prepare builds them: a bad or renamed key fails here
        normalize = effective(data_cfg.normalize, src.normalize, f"{key}.normalize")
        filters = effective(data_cfg.filters, src.filters, f"{key}.filters")
        try:
            build_normalizer(src.language, normalize)
            DocumentFilter(language=src.language, **OmegaConf.to_container(filters))
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
        if src.role not in ROLES:
            raise ConfigError(f"{key}.role must be one of {ROLES}, got {src.role!r}")
        if src.format not in FORMATS:
            raise ConfigError(f"{key}.format must be one of {FORMATS}, got {src.format!r}")
        for split in ("valid", "test"):
            frac = getattr(src.holdout, split)
            if not 0.0 <= frac < 0.5:
                raise ConfigError(f"{key}.holdout.{split} must be in [0, 0.5), got {frac}")
        if check_paths and not src.shard_prefixes:
            path = source_path(data_cfg, name).split("::")[0]
            exists = bool(glob.glob(path)) if any(c in path for c in "*?[") else Path(path).exists()
            if not exists:
                raise ConfigError(f"{key}.path: {path!r} does not exist")
    if check_paths and "decontamination" in data_cfg:
        from hebatron_nemo.data.decontam import check_inputs

        check_inputs(data_cfg.decontamination, str(data_cfg.raw_dir))  # a missing eval task file fails here


def require_sources(data_cfg, names: Iterable[str], what: str = "blend") -> None:
    """Raises ConfigError when a name is not in the registry, listing the known ones."""
    known = set(data_cfg.sources)
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown source {name!r} in {what}; the registry {data_cfg.name!r} has: "
                              f"{', '.join(sorted(known))}")


def effective(section, overrides: Mapping, key: str):
    """`section` (a structured config node) with a source's overrides applied; unknown override keys fail
    (a renamed one naming its new key)."""
    base = OmegaConf.structured(section) if not isinstance(section, DictConfig) else section.copy()
    for name in overrides or ():
        old = renamed_key(f"{key}.{name}")
        if old:
            raise ConfigError(old)
    if overrides:
        try:
            base = OmegaConf.merge(base, OmegaConf.create(dict(overrides)))
        except Exception as e:  # omegaconf raises several types; all mean a bad override
            raise ConfigError(f"{key}: {e}") from None
    return base


def tokenized_sources(data_cfg) -> list[str]:
    """Sources that become Megatron datasets (pretraining and anchor text), in registry order."""
    return [n for n, s in data_cfg.sources.items() if s.role in ("pretrain", "anchor")]
