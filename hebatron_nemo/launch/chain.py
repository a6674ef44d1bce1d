"""The whole pipeline as dependent Slurm jobs (`--dependency=afterok`), one plain recipe call per job.

    prepare -> plan -> [parity gate] -> cpt_<seg1> -> export_<seg1> -> eval_<seg1>
            -> cpt_<seg2> -> export_<seg2> -> eval_<seg2> -> ... -> sft -> export_chat -> eval -> report

One CPT job per curriculum segment (`stop_after_segment=<name>`; the last runs to the end of the
plan), each exporting the model at its segment's end as `base_<segment>` (base_8k, base_64k on the
Nemotron curriculum). Evaluations hang off the exports and do not hold up training. The stage list is
data (`pipeline_stages`); every job's command is a recipe call with the user's overrides (those the
recipe's config accepts) plus the stage's own.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from hebatron_nemo.errors import ConfigError
from hebatron_nemo.launch.slurm import StageJob, Submission, submit


@dataclass
class ChainStage:
    """One job of the chain: `recipes/<recipe>.py <user overrides it accepts> <args>` after `after`."""

    name: str
    recipe: str
    args: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)  # stage names this job waits for (afterok)
    distributed: bool = False
    user_overrides: bool = True  # pass the chain's common overrides (filtered to what the recipe accepts)


def pipeline_stages(segments: list[str], run_dir: str, base_model: str | None = None) -> list[ChainStage]:
    """The pipeline for a curriculum with these segment names, in submission (topological) order.

    `base_model`: an HF checkpoint folder to gate on before training (exported and reloaded with
    logit parity checks under both transformers versions); no gate without it."""
    if not segments:
        raise ConfigError("the curriculum has no segments")
    stages = [ChainStage("prepare", "prepare_data"),
              ChainStage("plan", "plan", ["build_caches=true"], after=["prepare"])]
    gate = []
    if base_model:
        stages.append(ChainStage("parity_gate", "export", [f"source_dir={base_model}",
                                                           "out_dir=${run_dir}/hf/base_parity"], after=["plan"]))
        gate = ["parity_gate"]
    previous_train = ["plan", *gate]
    previous_eval: list[str] = []
    for k, seg in enumerate(segments):
        last = k == len(segments) - 1
        cpt_args = [] if last else [f"stop_after_segment={seg}"]
        source = "${run_dir}/model" if last else f"${{run_dir}}/segments/{seg}/model"
        stages += [ChainStage(f"cpt_{seg}", "cpt", cpt_args, after=previous_train, distributed=True),
                   ChainStage(f"export_{seg}", "export", [f"source_dir={source}", f"out_dir=${{run_dir}}/hf/base_{seg}"],
                              after=[f"cpt_{seg}"]),
                   # evals one after another: each writes the run's eval/ folder
                   ChainStage(f"eval_{seg}", "evaluate", [f"evaluate.model_dir=${{run_dir}}/hf/base_{seg}"],
                              after=[f"export_{seg}", *previous_eval])]
        previous_train, previous_eval = [f"cpt_{seg}"], [f"eval_{seg}"]
    stages += [ChainStage("sft", "sft", after=previous_train, distributed=True),
               ChainStage("export_chat", "export", ["source=sft", "out_dir=${run_dir}/hf/chat"], after=["sft"]),
               # the whole series (base, phase ends, final, SFT) for the report's benchmark table
               ChainStage("eval", "evaluate", after=["export_chat", *previous_eval]),
               ChainStage("report", "report", [run_dir], after=["eval"], user_overrides=False)]
    return stages


def select(stages: list[ChainStage], only: list[str] | None) -> list[ChainStage]:
    """A sub-chain: the named stages, depending only on each other (for re-running part of a pipeline)."""
    if not only:
        return stages
    names = [s.name for s in stages]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; the chain has {names}")
    keep = set(only)
    return [ChainStage(s.name, s.recipe, s.args, [a for a in s.after if a in keep], s.distributed, s.user_overrides)
            for s in stages if s.name in keep]


def accepted_overrides(recipe: str, overrides: list[str]) -> list[str]:
    """The overrides whose key (or config group) the recipe's config has; the rest belong to other stages."""
    from hebatron_nemo.launch.compose import RECIPE_CONFIGS, _compose

    if recipe not in RECIPE_CONFIGS:
        return []
    cfg = _compose(RECIPE_CONFIGS[recipe], [o for o in overrides if o.startswith("hydra.")])
    from omegaconf import OmegaConf

    keys = set(OmegaConf.to_container(cfg, resolve=False).keys())
    groups = set()
    for path in _group_dirs():
        groups.add(path)
    out = []
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        root = key.split(".", 1)[0].split("@", 1)[0]
        if key.startswith("hydra.") or root in keys or (root in groups and _has_group(recipe, root)):
            out.append(o)
    return out


def _group_dirs() -> list[str]:
    from hebatron_nemo.launch.compose import CONF

    return [p.name for p in CONF.iterdir() if p.is_dir()]


def _has_group(recipe: str, group: str) -> bool:
    """Whether the recipe's primary config lists `group` in its defaults (e.g. `optional experiment`)."""
    import yaml

    from hebatron_nemo.launch.compose import CONF, RECIPE_CONFIGS

    defaults = yaml.safe_load((CONF / f"{RECIPE_CONFIGS[recipe]}.yaml").read_text()).get("defaults", [])
    for d in defaults:
        if isinstance(d, dict) and any(k.replace("optional ", "").strip() == group for k in d):
            return True
    return False


def chain_jobs(stages: list[ChainStage], overrides: list[str], check: bool = True) -> list[tuple[ChainStage, StageJob]]:
    """Each stage's job (its recipe call), its overrides checked by composing the recipe's config."""
    from hebatron_nemo.launch.compose import check_stage

    jobs = []
    for s in stages:
        args = (accepted_overrides(s.recipe, overrides) if s.user_overrides else []) + list(s.args)
        if check:
            check_stage(s.recipe, args)
        jobs.append((s, StageJob(s.name, s.recipe, args, distributed=s.distributed)))
    return jobs


def submit_chain(cluster, stages: list[ChainStage], overrides: list[str], dry_run: bool = False,
                 show_scripts: bool = False, log=print) -> list[Submission]:
    """Submits the stages in order, each after its dependencies (afterok). In a dry run nothing is
    written or submitted: the jobs' sbatch commands are printed with placeholder ids (and the scripts
    with `show_scripts`)."""
    ids: dict[str, str] = {}
    subs = []
    for stage, job in chain_jobs(stages, overrides):
        after = [ids[a] for a in stage.after]
        quiet = (lambda *a: None) if dry_run and not show_scripts else log
        sub = submit(cluster, job, after=after, dry_run=dry_run, log=quiet)
        ids[stage.name] = sub.job_id or f"<{stage.name}>"
        subs.append(sub)
        if dry_run:
            log(f"{stage.name:>14}  after {','.join(stage.after) or '-':<28} {shlex.join(sub.command)}\n"
                f"{'':>16}{job.recipe}.py {shlex.join(job.args)}")
    return subs
