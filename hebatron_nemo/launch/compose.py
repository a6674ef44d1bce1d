"""Composing configs outside a Hydra app: the cluster profile, and each stage's own config as a check
before anything is submitted (a typo in a stage's overrides fails here, not an hour later in a queue)."""

from __future__ import annotations

from pathlib import Path

from hebatron_nemo.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"

#: recipe -> its primary config in conf/ (recipes without one take plain arguments)
RECIPE_CONFIGS = {"prepare_data": "prepare", "plan": "plan", "cpt": "cpt", "sft": "sft", "evaluate": "evaluate",
                  "export": "export", "install_demo_corpora": "install_demo"}


def _compose(config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hebatron_nemo.config import register_configs

    register_configs()
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose(config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        from hebatron_nemo.config import renamed_key_errors

        hint = "".join(f"\n{m}" for m in renamed_key_errors(overrides, str(e)))
        raise ConfigError(f"conf/{config_name}.yaml with {' '.join(overrides) or 'no overrides'}: {e}{hint}") from e


def compose_launch(cluster: str = "local_slurm", sets: list[str] | None = None):
    """conf/launch.yaml with `cluster=<cluster>` and `sets` (e.g. ["cluster.nodes=4"]); values resolved."""
    from omegaconf import OmegaConf

    cfg = _compose("launch", [f"cluster={cluster}", *(sets or [])])
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:  # an unset interpolation names its key
        raise ConfigError(f"cluster profile {cluster!r}: {e}") from e
    return cfg


def check_stage(recipe: str, args: list[str]):
    """Composes the stage's own config with its overrides (None for recipes without one)."""
    if recipe not in RECIPE_CONFIGS:
        if not (CONF.parent / "recipes" / f"{recipe}.py").is_file():
            raise ConfigError(f"no recipe recipes/{recipe}.py")
        return None
    return _compose(RECIPE_CONFIGS[recipe], [a for a in args if not a.startswith("-")])


def _resolved_cluster(cfg):
    """The run's cluster profile (`cluster=<profile>` of recipes/pipeline.py), every value resolved."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.create(OmegaConf.to_container(cfg.cluster, resolve=True))
    except Exception as e:  # an unset interpolation names its key
        raise ConfigError(f"cluster profile {cfg.cluster.get('name')!r}: {e}") from e
