"""The sweep summary of a Hydra multirun, written when the multirun ends (locally or on Slurm).

Registered as a Hydra callback by the ablation experiments (conf/experiment/ablation_*.yaml):
every finished arm appends its run folder to `<sweep dir>/arms.jsonl` (on the node that ran it,
so it works with the submitit launcher too), and at the end of the multirun the arms are compared
with `hebatron_nemo.eval.report.sweep_summary` (table + plot) in `<sweep dir>/summary/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


class SweepSummary(Callback):
    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir

    def _sweep_dir(self, config) -> Path:
        return Path(self.out_dir) if self.out_dir else Path(str(config.hydra.sweep.dir))

    def on_job_end(self, config, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.COMPLETED or "run_dir" not in config:
            return
        hc = HydraConfig.get()
        if hc.mode is None or hc.mode.name != "MULTIRUN":
            return
        sweep = Path(self.out_dir) if self.out_dir else Path(str(hc.sweep.dir))
        sweep.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"num": hc.job.num, "run_dir": str(Path(str(config.run_dir)).absolute()),
                           "overrides": list(hc.overrides.task)}) + "\n"
        # one short O_APPEND write per arm: arms finishing at once on different nodes do not interleave
        fd = os.open(sweep / "arms.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep = self._sweep_dir(config)
        path = sweep / "arms.jsonl"
        if not path.exists():
            print(f"sweep summary: no finished arms in {sweep}")
            return
        write_summary(sweep)


def write_summary(sweep_dir: str | Path) -> Path:
    """Compares the arms listed in `<sweep_dir>/arms.jsonl` (newest entry per arm); returns sweep.md."""
    from hebatron_nemo.eval.report import sweep_summary

    sweep_dir = Path(sweep_dir)
    arms: dict[int, str] = {}
    for line in (sweep_dir / "arms.jsonl").read_text().splitlines():
        rec = json.loads(line)
        arms[rec["num"]] = rec["run_dir"]
    out = sweep_summary([arms[k] for k in sorted(arms)], sweep_dir / "summary")
    print(f"sweep summary: {out}")
    return out
