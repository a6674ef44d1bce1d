"""Near-dedup at two corpus sizes 10x apart: the prepare graph's stages (datatrove MinHash) against the
in-process path they replaced. Section (2) and (3) of `benchmarks/bench_prepare.py`; runs alone too:

    PYTHONPATH=. python benchmarks/near_dedup_scale.py --docs 5000 [--old-checkout /tmp/old_prepare]

1. writes a corpus of `--docs` random Hebrew-letter documents (two sources, ~300 words each, one in ten
   a planted near-duplicate: a few words edited, or its paragraphs reordered) and one of 10x as many,
   in a temporary folder;
2. for each, runs `recipes/prepare_data.py` once per stage of the graph (`stop_after=<stage>`, then the
   merge), each as a fresh process under `/usr/bin/time`, with `tasks` growing with the corpus (the same
   documents per task) and one task at a time (`workers=1`, in the process), so a process's peak RSS
   is its start-up (interpreter, imports: torch comes with megatron-core; measured as `start_up`, the
   clean command again once its tasks are done) plus the largest task of that stage;
3. with `--old-checkout` (a worktree of the commit before the graph, e.g. `git worktree add
   /tmp/old_prepare 532e15a`), runs that checkout's prepare (MinHash LSH in one process) on both
   corpora, its wall time and peak RSS;
4. prints a table and returns the records (`bench_prepare.py` stores them in its JSON result).

Decontamination is off (no evaluation files) and the tokenizer is a small BPE trained on the small
corpus, shared by every run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LETTERS = "אבגדהוזחטיכלמנסעפצקרשת"
STAGES = ("clean", "buckets", "cluster", "tokenize", "merge")


def write_corpus(folder: Path, docs: int, seed: int = 0) -> dict:
    """`docs` documents over two JSONL sources; one in ten is a planted near-duplicate of an earlier one."""
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 7))) for _ in range(20000)})
    folder.mkdir(parents=True, exist_ok=True)
    planted = 0
    files = {name: open(folder / f"{name}.jsonl", "w", encoding="utf-8") for name in ("he_a", "he_b")}
    recent: list[list[str]] = []
    try:
        for i in range(docs):
            if recent and rng.random() < 0.1:
                paras = list(rng.choice(recent))
                if rng.random() < 0.5:
                    rng.shuffle(paras)
                else:
                    words = paras[0].split()
                    for k in rng.sample(range(len(words)), 3):
                        words[k] = rng.choice(vocab)
                    paras[0] = " ".join(words)
                planted += 1
            else:
                paras = [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(5)]
                recent = (recent + [paras])[-200:]
            f = files["he_a" if i % 2 == 0 else "he_b"]
            f.write(json.dumps({"id": f"d{i}", "text": "\n\n".join(paras)}, ensure_ascii=False) + "\n")
    finally:
        for f in files.values():
            f.close()
    size = sum((folder / f"{n}.jsonl").stat().st_size for n in files)
    return {"docs": docs, "planted_near_duplicates": planted, "bytes": size}


def write_registry(conf: Path, raw: Path, out: Path, old: bool = False) -> None:
    """The registry of the two sources (`old`: for the checkout before the graph, whose decontamination
    has no task list and is off without eval files)."""
    (conf / "data").mkdir(parents=True, exist_ok=True)
    decon = "" if old else "decontamination: {eval_tasks: []}"
    (conf / "data" / "bench.yaml").write_text(textwrap.dedent(f"""
        defaults: [data_schema]
        name: bench
        raw_dir: {raw}
        output_dir: {out}
        {decon}
        sources:
          he_a: {{language: he, register: formal, path: he_a.jsonl, id_field: id, licence: synthetic}}
          he_b: {{language: he, register: formal, path: he_b.jsonl, id_field: id, licence: synthetic}}
    """))


def timed(cmd: list[str], env: dict, cwd: Path) -> dict:
    """A command under GNU time: wall seconds, CPU seconds, peak RSS (MiB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        t0 = time.time()
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", t.name, *cmd], cwd=cwd, env=env,
                              capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        e, u, s, m = t.read().split()[-4:]
    return {"wall_s": round(wall, 2), "cpu_s": round(float(u) + float(s), 2), "peak_rss_mib": round(int(m) / 1024, 1)}


def run_graph(repo: Path, conf: Path, tok: Path, tasks: int, env: dict, train_tokenizer: bool) -> dict:
    """One process per stage (stop_after), then the merge; then the baseline (everything done)."""
    py = sys.executable
    base = [py, "recipes/prepare_data.py", "data=bench", f"hydra.searchpath=[file://{conf}]", f"tasks={tasks}",
            "workers=1", "keep_work=true", f"tokenizer.path={tok}", "progress=false",
            f"tokenizer.train.enabled={str(train_tokenizer).lower()}", "tokenizer.train.vocab_size=4000"]
    out = {}
    for stage in STAGES:
        cmd = base + ([f"stop_after={stage}"] if stage != "merge" else [])
        out[stage] = timed(cmd, env, repo)
        if stage == "clean":
            # the same command again, every task done: the interpreter, imports, decontaminator, graph
            out["start_up"] = timed(cmd, env, repo)
    start = out["start_up"]["peak_rss_mib"]
    for stage in STAGES:
        out[stage]["above_start_up_mib"] = round(out[stage]["peak_rss_mib"] - start, 1)
    return out


def run_old(old: Path, conf: Path, tok: Path, env: dict) -> dict:
    cmd = [sys.executable, "recipes/prepare_data.py", "data=bench", f"hydra.searchpath=[file://{conf}]",
           f"tokenizer.path={tok}", "tokenizer.train.enabled=false", "progress=false",
           "data.near_dedup.max_docs=10000000"]
    return timed(cmd, {**env, "PYTHONPATH": str(old)}, old)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=5000, help="documents in the small corpus (the large has 10x)")
    ap.add_argument("--docs-per-task", type=int, default=1500, help="documents per task (both corpora alike)")
    ap.add_argument("--old-checkout", type=Path, help="a worktree of the commit before the graph (section 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="near_dedup_scale-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEBATRON_WORK": str(tmp / "work")}
    tok = tmp / "tok"
    results = {"load_before": os.getloadavg(), "sizes": []}
    for k, docs in enumerate((args.docs, args.docs * 10)):
        raw, conf = tmp / f"raw{k}", tmp / f"conf{k}"
        corpus = write_corpus(raw, docs, seed=k)
        write_registry(conf, raw, tmp / f"out{k}")
        tasks = max(1, -(-docs // 2 // args.docs_per_task))  # per source: the same documents per task
        print(f"corpus {k}: {docs:,} documents ({corpus['bytes'] / 2**20:.1f} MiB), {tasks} task(s) per source",
              flush=True)
        graph = run_graph(REPO, conf, tok, tasks, env, train_tokenizer=(k == 0))
        manifests = {n: json.loads((tmp / f"out{k}" / n / "manifest.json").read_text()) for n in ("he_a", "he_b")}
        removed = sum(m["report"]["removed_docs"].get("near_dup", 0) for m in manifests.values())
        rec = {**corpus, "tasks_per_source": tasks, "graph": graph, "near_dup_removed": removed}
        if args.old_checkout:
            write_registry(conf, raw, tmp / f"old_out{k}", old=True)
            rec["old_in_process"] = run_old(args.old_checkout, conf, tok, env)
            old_m = {n: json.loads((tmp / f"old_out{k}" / n / "manifest.json").read_text()) for n in ("he_a", "he_b")}
            rec["old_near_dup_removed"] = sum(m["report"]["removed_docs"].get("near_dup", 0) for m in old_m.values())
        results["sizes"].append(rec)
    results["load_after"] = os.getloadavg()
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return results


def print_table(results: dict) -> None:
    print(f"\nnear-dedup at two sizes (load {results['load_before'][0]:.2f} -> {results['load_after'][0]:.2f})")
    print(f"{'docs':>9} {'tasks':>5} {'stage':<10} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13} {'above start-up':>15}")
    for r in results["sizes"]:
        for stage, m in r["graph"].items():
            print(f"{r['docs']:>9,} {r['tasks_per_source'] * 2:>5} {stage:<10} {m['wall_s']:>8.1f} {m['cpu_s']:>8.1f} "
                  f"{m['peak_rss_mib']:>13.1f} {m.get('above_start_up_mib', 0):>15.1f}")
        if "old_in_process" in r:
            m = r["old_in_process"]
            print(f"{r['docs']:>9,} {'-':>5} {'old path':<10} {m['wall_s']:>8.1f} {m['cpu_s']:>8.1f} "
                  f"{m['peak_rss_mib']:>13.1f}")
        print(f"{'':>9} planted {r['planted_near_duplicates']:,}; removed as near_dup: graph {r['near_dup_removed']:,}"
              + (f", old path {r['old_near_dup_removed']:,}" if "old_near_dup_removed" in r else ""))


if __name__ == "__main__":
    out = main()
    print(json.dumps(out, indent=1)[:2000])
