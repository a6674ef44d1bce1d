"""Conversations/s and peak RSS of `prepare_sft` (hebatron_nemo/sft/prepare.py) on synthetic chats, at
sizes spanning 1000x (2,000 to 2,000,000), side by side with Megatron-Bridge's own SFT preprocessing and
packing (GPTSFTDatasetBuilder: chat template, tokenization, offline packing) on the same data.

Run by a developer, not CI, on a quiet machine (timings under load are not results; /proc/loadavg is
printed at start and end). The whole run, defaults as below, takes ~12-15 minutes on 2 quiet cores:

    $(scripts/env.sh cpu)/bin/python benchmarks/bench_sft_prepare.py --mb-dir $(scripts/env.sh mb) --compat-dir $(scripts/env.sh compat)

Why these sizes: ours runs at 2k, 6k, 20k, 60k, 200k and 2M (the paper's SFT size; ~5-8 minutes of the
run at several thousand conversations/s, plus ~1-2 minutes writing the synthetic file); MB's path runs
at ~50-100 conversations/s with a heavy import, so it gets 2k and 6k (~3-4 minutes with its start-up).
`--budget-min` (default 25) skips a size whose projected time (from the last measured rate) would
overrun it, and says so.

What to expect of ours: conversations/s flat in N; peak RSS flat apart from the few fixed-size numpy
records per conversation that the module docstring of prepare.py lists (at most ~32 bytes per
conversation at any moment: ~64 MB at 2M); the table prints that bound and the RSS growth per extra
conversation between sizes. Before this bound, the old code grew ~470-540 bytes per conversation
(a Python set of digests and an uncapped tokenizer memo).

1. writes, in a temporary folder, a `messages` JSONL of N synthetic bilingual chats (system prompts on
   a third, reasoning on a fifth, two-turn on a quarter; ~1% exact duplicates) from sentences written
   for this project, and trains a small byte-level BPE with the chat markers;
2. runs `prepare_sft` on it as a fresh process per size (validation, normalization, dedup, the
   length filter with the chat template, the seeded mixture, the manifest) and reads the child's wall
   and CPU time and peak RSS (`ru_maxrss` of the finished child, os.wait4);
3. at the `--mb-sizes` where Megatron-Bridge imports (`--mb-dir`, the MB tier's folder; `scripts/env.sh
   mb`, with the compat layer from `--compat-dir`), runs MB's GPTSFTDatasetBuilder with offline packing
   on the prepared `training.jsonl`/`validation.jsonl` of the same size, also as a fresh process;
4. prints a table (conversations/s, peak RSS, ours/MB speed ratio) and writes JSON (`--out`, default
   benchmarks/results/bench_sft_prepare.json).

"seconds" exclude interpreter start-up and imports done before the timed call (wall includes them); MB's
include its JSONL index build and its packing. MB 0.6.0 cannot index an empty JSONL: its
`build_index_files` runs `_build_memmap_index_files` through `safe_map`, which turns the worker's
`ValueError: cannot mmap an empty file` into a None status, and then `sum(build_status)` raises
`TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'` (an empty validation.jsonl at 1k
rows with valid_fraction 0.001). So the bench holds out 1% for validation and refuses to start MB on an
empty file.

    PYTHONPATH=.:tests python benchmarks/bench_sft_prepare.py --mb-dir $(scripts/env.sh mb) --compat-dir $(scripts/env.sh compat)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SEQ = 2048


def write_synthetic(path: Path, n: int, seed: int = 0) -> None:
    """N chats, streamed to disk (nothing held): sentences from tests/corpus.py, mixed per row."""
    from corpus import ENGLISH, HEBREW

    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            if i % 97 == 5:  # an exact duplicate of an earlier row now and then
                rng_dup = random.Random(seed * 1_000_003 + i // 2)
                j = rng_dup.randrange(max(i, 1))
            else:
                j = i
            r = random.Random(seed * 7_919 + j)
            msgs = [{"role": "system", "content": "ענה בקצרה ובעברית."}] if j % 3 == 0 else []
            turns = 2 if j % 4 == 1 else 1
            for t in range(turns):
                q = " ".join(r.choice(HEBREW) for _ in range(r.randint(1, 3))) + f" ({j}.{t})"
                a = " ".join(r.choice(ENGLISH + HEBREW) for _ in range(r.randint(1, 5)))
                answer = {"role": "assistant", "content": a}
                if j % 5 == 0:
                    answer["reasoning_content"] = " ".join(r.choice(ENGLISH) for _ in range(2))
                msgs += [{"role": "user", "content": q}, answer]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")


def make_tokenizer(out: Path) -> Path:
    from corpus import ENGLISH, HEBREW

    from hebatron_nemo.data.tokenizer import train_byte_level_bpe
    from hebatron_nemo.sft.template import CHAT_TEMPLATE

    train_byte_level_bpe(HEBREW * 20 + ENGLISH * 20, str(out), vocab_size=2000, min_frequency=1,
                         fingerprint={"bench": "sft"})
    conf = json.loads((out / "tokenizer_config.json").read_text())
    conf["chat_template"] = CHAT_TEMPLATE  # MB renders with the tokenizer's own template
    (out / "tokenizer_config.json").write_text(json.dumps(conf))
    return out


OURS = r"""
import json, sys, time
from omegaconf import OmegaConf
from hebatron_nemo.config import RunConfig
from hebatron_nemo.sft import prepare
cfg = OmegaConf.structured(RunConfig)
cfg.tokenizer.path, cfg.tokenizer.name = {tok!r}, "bench"
cfg.sft_data = OmegaConf.merge(cfg.sft_data, {{"name": "bench", "raw_dir": {raw!r}, "output_dir": {out!r},
    "total": {n}, "max_length": {seq}, "valid_fraction": 0.01, "max_valid": 200, "allow_repeat": True,
    "decontamination": {{"enabled": False}},
    "sources": {{"chat": {{"kind": "messages", "path": "chat.jsonl", "weight": 1.0, "normalize": {{}}}}}}}})
t = time.time()
m = prepare.prepare_sft(cfg, log=lambda *a: None)
seconds = time.time() - t
s = m["sources"]["chat"]
distinct = s["read"] - s["dropped"]["duplicate"]
kept = s["available"] + s["validation"]
# the O(N) records of prepare.py's module docstring, at their largest moment
reading = 16 * distinct + prepare.RECORD_BYTES * kept
mixing = prepare.RECORD_BYTES * kept + prepare.ORDER_BYTES * m["samples"] + 8 * s["available"]
print(json.dumps({{"seconds": seconds, "samples": m["samples"], "validation_samples": m["validation_samples"],
                  "tokens": m["tokens"], "dropped": m["dropped"], "records_mib": max(reading, mixing) / 2**20}}))
"""

MB = r"""
import importlib.util, json, os, sys, time
os.environ["HEBATRON_MB_TIER_CHILD"] = "1"
spec = importlib.util.spec_from_file_location("mb_tier_stub", {stub!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))  # the MB tier's transformer_engine stub
from megatron.bridge.data.builders import ChatSFTPreprocessingConfig, GPTSFTDatasetConfig
from megatron.bridge.data.builders.gpt_sft import GPTSFTDatasetBuilder
from megatron.bridge.data.packing.config import PackedSequenceSpecs
from megatron.bridge.training.tokenizers.config import TokenizerConfig
from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer
tok = build_tokenizer(TokenizerConfig(tokenizer_type="HuggingFaceTokenizer", tokenizer_model={tok!r}))
cfg = GPTSFTDatasetConfig(dataset_root={root!r}, seq_length={seq}, dataloader_type="batch", do_test=False,
                          preprocessing=ChatSFTPreprocessingConfig(loss_mode="assistant"), enable_offline_packing=True,
                          offline_packing_specs=PackedSequenceSpecs(packed_sequence_size={seq}, tokenizer_model_name="bench"))
t = time.time()
GPTSFTDatasetBuilder(cfg, tok).prepare_packed_data()
print(json.dumps({{"seconds": time.time() - t}}))
"""


def run_child(code: str, env: dict) -> dict:
    """Runs `code` in a fresh interpreter; its own wall/CPU time and peak RSS (os.wait4's rusage)."""
    with tempfile.TemporaryFile() as err:
        t = time.time()
        env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p)}
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, env=env)
        stdout = p.stdout.read().decode()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t
        if p.returncode != 0:
            err.seek(0)
            return {"error": err.read().decode(errors="replace")[-2000:]}
    out = json.loads(stdout.strip().splitlines()[-1])
    out.update({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024})
    return out


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def table(rows: list[dict]) -> list[str]:
    """The printed table: per size, ours and MB's conversations/s and peak RSS, the speed ratio, and
    ours' RSS growth per extra conversation since the previous size beside the records' bound."""
    nan = float("nan")
    lines = [f"{'conversations':>13} | {'ours conv/s':>11} | {'ours cpu s':>10} | {'ours peak RSS MiB':>17} | "
             f"{'RSS B/conv vs prev':>18} | {'records MiB':>11} | {'MB conv/s':>9} | {'MB peak RSS MiB':>15} | "
             f"{'ours/MB':>7}"]
    prev = None
    for r in rows:
        o, m = r["ours"], r.get("megatron_bridge", {})
        growth = nan
        if prev is not None and "peak_rss_mib" in o and "peak_rss_mib" in prev["ours"]:
            growth = (o["peak_rss_mib"] - prev["ours"]["peak_rss_mib"]) * 2**20 / (r["conversations"] - prev["conversations"])
        ratio = o.get("conversations_per_s", nan) / m["conversations_per_s"] if "conversations_per_s" in m else nan
        mb_note = "" if not m.get("error") and not m.get("skipped") else f"  MB: {(m.get('skipped') or 'error')}"
        lines.append(f"{r['conversations']:>13,} | {o.get('conversations_per_s', nan):>11,.0f} | {o.get('cpu', nan):>10,.1f} | "
                     f"{o.get('peak_rss_mib', nan):>17,.1f} | {growth:>18,.1f} | {o.get('records_mib', nan):>11,.1f} | "
                     f"{m.get('conversations_per_s', nan):>9,.1f} | {m.get('peak_rss_mib', nan):>15,.0f} | {ratio:>7,.1f}"
                     + (f"  {o['skipped']}" if o.get("skipped") else "") + mb_note)
        if "peak_rss_mib" in o:
            prev = r
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000,6000,20000,60000,200000,2000000",
                    help="comma-separated conversation counts for ours, increasing")
    ap.add_argument("--mb-sizes", default="2000,6000", help="the sizes (among --sizes) MB's path also runs at")
    ap.add_argument("--mb-dir", default=os.environ.get("HEBATRON_MB_DIR"), help="the MB tier folder (scripts/env.sh mb)")
    ap.add_argument("--compat-dir", default=os.environ.get("HEBATRON_COMPAT_DIR"))
    ap.add_argument("--budget-min", type=float, default=25.0,
                    help="skip a size whose projected time (the last measured rate) would end the run past this")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_sft_prepare.json"))
    args = ap.parse_args()
    sizes, mb_sizes = _ints(args.sizes), set(_ints(args.mb_sizes))
    start, load_start = time.time(), loadavg()
    print(f"loadavg at start: {load_start}  (cpus: {os.cpu_count()})", flush=True)
    rows = []
    rate = gen_rate = None  # ours' conversations/s (wall) and the synthetic writer's rows/s, last measured
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as d:
        tmp = Path(d)
        tok = make_tokenizer(tmp / "tok")
        for n in sizes:
            row = {"conversations": n}
            left = args.budget_min * 60 - (time.time() - start)
            if rate and gen_rate and 1.3 * (n / rate + n / gen_rate) > left:
                row["ours"] = {"skipped": f"skipped: ~{1.3 * (n / rate + n / gen_rate):.0f} s projected, {left:.0f} s "
                                          "left of --budget-min"}
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            raw = tmp / f"raw{n}"
            raw.mkdir()
            t = time.time()
            write_synthetic(raw / "chat.jsonl", n)
            gen_rate = n / max(time.time() - t, 1e-6)
            out = tmp / f"prepared{n}"
            ours = run_child(OURS.format(repo=str(REPO), tok=str(tok), raw=str(raw), out=str(out), n=n, seq=SEQ),
                             dict(os.environ))
            row["ours"] = ours
            if "seconds" in ours:
                ours["conversations_per_s"] = n / ours["seconds"]
                rate = n / ours["wall"]
            if n in mb_sizes:
                row["megatron_bridge"] = run_mb(args, tmp, tok, out, n)
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(raw, ignore_errors=True)  # a 2M-conversation size holds ~4.5 GB on disk at once
            shutil.rmtree(out, ignore_errors=True)
    load_end = loadavg()
    print()
    for line in table(rows):
        print(line)
    print(f"\nloadavg at start: {load_start}\nloadavg at end:   {load_end}\ntotal: {time.time() - start:.0f} s")
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "seq_length": SEQ,
              "loadavg": {"start": load_start, "end": load_end}, "total_seconds": time.time() - start, "rows": rows,
              "note": "each run is a fresh process; peak RSS is that process's ru_maxrss (os.wait4); seconds "
                      "exclude interpreter start-up, wall includes it; records_mib: the O(N) numpy records of "
                      "prepare.py at their largest moment (its module docstring)"}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


def run_mb(args, tmp: Path, tok: Path, out: Path, n: int) -> dict:
    """MB's GPTSFTDatasetBuilder with offline packing on our prepared files of size `n`, in its own process."""
    if not args.mb_dir:
        return {"skipped": "no --mb-dir"}
    if not (out / "training.jsonl").exists():
        return {"skipped": "ours failed: no training.jsonl"}
    for f in ("training.jsonl", "validation.jsonl"):
        if (out / f).stat().st_size == 0:  # MB 0.6.0 fails on it with a TypeError (see the module docstring)
            return {"skipped": f"{f} is empty: MB's build_index_files cannot index it"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (args.mb_dir, args.compat_dir, str(REPO)) if p)}
    root = tmp / f"mbroot{n}"
    root.mkdir()
    for f in ("training.jsonl", "validation.jsonl"):
        shutil.copyfile(out / f, root / f)  # copies: MB writes its index files beside them
    mb = run_child(MB.format(repo=str(REPO), stub=str(REPO / "tests" / "mb_tier" / "conftest.py"),
                             tok=str(tok), root=str(root), seq=SEQ), env)
    if "seconds" in mb:
        mb["conversations_per_s"] = n / mb["seconds"]
    shutil.rmtree(root, ignore_errors=True)
    return mb


if __name__ == "__main__":
    main()
