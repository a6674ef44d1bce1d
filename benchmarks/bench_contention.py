"""Benchmark: CPU time of two tiny CPT runs at once against the same two runs alone.

Run by a developer on an otherwise quiet machine, not CI (other load makes the figure meaningless):

    PYTHONPATH=.:tests python benchmarks/bench_contention.py                         # ~2-4 min on 2 cores
    PYTHONPATH=.:tests python benchmarks/bench_contention.py --wait-policy active    # OpenMP's spinning wait, for comparison
    PYTHONPATH=.:tests python benchmarks/bench_contention.py --quick                 # a smoke run (a few steps): checks it works

What it measures: the local backend's cost of sharing a machine. Each run is `recipes/cpt.py` in its
own process and run folder, on a synthetic prepared corpus and the micro Nemotron-H
(tests/stage_conf.py: one segment, two phases, the English anchor at 25%); stage 0 (the base model,
shared through its cache) is trained first, untimed. Then

1. run A alone, then run B alone;
2. runs A2 and B2 started together.

CPU time is user + system time of each process and all its threads (`os.wait4`). The figure is
`CPU(A2) + CPU(B2)` over `CPU(A) + CPU(B)`: 1.0 when sharing costs nothing, the goal is <= 1.3.
Threads that spin while they wait (OpenMP's active wait) or more threads than the cores the process
may use make it several times that. Wall times are reported too, and the runs' final losses are
compared (alone and paired runs train the same model: they must agree bit for bit).

`--wait-policy passive|active|unset` sets OMP_WAIT_POLICY in the runs' environment (`unset`: what
the entry points choose, which is passive). `--threads` overrides the config's `threads`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy.upper()
    env.setdefault("HEBATRON_WORK", str(REPO / "work"))
    return env


def _start(args: list[str], run: Path, env: dict) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "recipes/cpt.py", *args, f"run_dir={run}"]
    log = open(run.parent / f"{run.name}.log", "w")
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env), time.monotonic()


def _finish(proc: subprocess.Popen, t0: float, run: Path) -> dict:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{run.name} failed (exit {proc.returncode}); see {run.parent / (run.name + '.log')}")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "user_s": round(usage.ru_utime, 3),
            "sys_s": round(usage.ru_stime, 3), "wall_s": round(wall, 3), "steps": len(losses),
            "final_loss": losses[-1] if losses else None}


def run(args) -> dict:
    from stage_conf import stage_args, write_stage_conf

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-contention-"))
    conf = write_stage_conf(root, steps_per_phase=args.steps_per_phase)
    work = root / "work"
    base_args = stage_args(conf, work) + ["logging.tensorboard=false"]
    if args.threads is not None:
        base_args.append(f"threads={args.threads}")
    env = _env(args.wait_policy)
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)

    print(f"stage 0 and caches (untimed) in {root} ...", flush=True)
    proc, _ = _start(base_args + ["max_steps=0"], runs / "warmup", env)
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"warm-up failed; see {runs / 'warmup.log'}")

    out: dict = {}
    for name in ("A", "B"):
        print(f"run {name} alone ...", flush=True)
        out[name] = _finish(*_start(base_args, runs / name, env), runs / name)
    print("runs A2 and B2 together ...", flush=True)
    started = [(name, *_start(base_args, runs / name, env)) for name in ("A2", "B2")]
    for name, proc, t0 in started:
        out[name] = _finish(proc, t0, runs / name)

    alone = out["A"]["cpu_s"] + out["B"]["cpu_s"]
    pair = out["A2"]["cpu_s"] + out["B2"]["cpu_s"]
    result = {
        "runs": out,
        "cpu_alone_s": round(alone, 3), "cpu_pair_s": round(pair, 3), "cpu_ratio": round(pair / alone, 3),
        "wall_alone_s": round(out["A"]["wall_s"] + out["B"]["wall_s"], 3),
        "wall_pair_s": round(max(out["A2"]["wall_s"], out["B2"]["wall_s"]), 3),
        "goal_cpu_ratio": 1.3, "within_goal": pair / alone <= 1.3,
        "same_losses": len({r["final_loss"] for r in out.values()}) == 1,
        "settings": {"steps_per_phase": args.steps_per_phase, "threads": args.threads,
                     "wait_policy": args.wait_policy, "quick": args.quick},
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "loadavg_before": list(os.getloadavg()), "python": platform.python_version()},
    }
    return result


def report(result: dict) -> None:
    print(f"{'run':>4} {'cpu s':>8} {'wall s':>8} {'steps':>6}  final loss")
    for name, r in result["runs"].items():
        print(f"{name:>4} {r['cpu_s']:>8.2f} {r['wall_s']:>8.2f} {r['steps']:>6}  {r['final_loss']}")
    print(f"CPU time: pair {result['cpu_pair_s']:.2f} s vs alone {result['cpu_alone_s']:.2f} s -> ratio "
          f"{result['cpu_ratio']:.3f} (goal <= {result['goal_cpu_ratio']}); wall: pair {result['wall_pair_s']:.2f} s, "
          f"alone one after the other {result['wall_alone_s']:.2f} s; losses identical: {result['same_losses']}")
    if result["settings"]["quick"]:
        print("(--quick: a smoke run; its ratio is not a measurement)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps-per-phase", type=int, default=40, help="optimizer steps per phase (two phases per run)")
    ap.add_argument("--threads", type=int, default=None, help="the runs' `threads` (default: the config's)")
    ap.add_argument("--wait-policy", choices=("unset", "passive", "active"), default="unset")
    ap.add_argument("--quick", action="store_true", help="2 steps per phase: checks that the benchmark runs")
    ap.add_argument("--workdir", default=None, help="where data and runs go (default: a temp folder)")
    ap.add_argument("--out", default=None, help="write the result JSON here (e.g. benchmarks/results/bench_contention.json)")
    args = ap.parse_args()
    if args.quick:
        args.steps_per_phase = 2
    result = run(args)
    report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
