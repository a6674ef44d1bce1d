"""Conversations/s and peak RSS of `prepare_sft` (hebatron_nemo/sft/prepare.py) on synthetic chats, at
several sizes to show the scaling, side by side with Megatron-Bridge's own SFT preprocessing and
packing (GPTSFTDatasetBuilder: chat template, tokenization, offline packing) on the same data.

Run by a developer, not CI. The goal is 2,000,000 conversations (`--sizes 250000,500000,1000000,2000000`)
on a quiet machine; a smaller fraction shows the trend (conversations/s flat, peak RSS growing only by
the fixed per-conversation records: ~16 bytes of spool offsets and token counts, plus the dedup set of
16-byte digests at roughly 90 bytes per distinct conversation in CPython).

1. writes, in a temporary folder, a `messages` JSONL of N synthetic bilingual chats (system prompts on
   a third, reasoning on a fifth, two-turn on a quarter; a few exact duplicates) from sentences written
   for this project, and trains a small byte-level BPE with the chat markers;
2. runs `prepare_sft` on it as a fresh process per size (validation, normalization, dedup, the
   length filter with the chat template, the seeded mixture, the manifest) and reads the child's wall
   time and peak RSS (`ru_maxrss` of the finished child);
3. where Megatron-Bridge imports (`--mb-dir`, the MB tier's folder; `scripts/env.sh mb`, with the
   compat layer from `--compat-dir`), runs MB's GPTSFTDatasetBuilder with offline packing on the
   prepared `training.jsonl` of the same size, also as a fresh process;
4. prints a table and writes JSON (`--out`, default benchmarks/results/bench_sft_prepare.json).

    PYTHONPATH=.:tests python benchmarks/bench_sft_prepare.py --sizes 5000,10000,20000 \\
        --mb-dir $(scripts/env.sh mb) --compat-dir $(scripts/env.sh compat)

Timings are whole processes on whatever else the machine runs (start-up included: the one-size-1000
run shows the fixed cost); MB's numbers include its JSONL index build and its packing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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

    rng = random.Random(seed)
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
from hebatron_nemo.sft.prepare import prepare_sft
cfg = OmegaConf.structured(RunConfig)
cfg.tokenizer.path, cfg.tokenizer.name = {tok!r}, "bench"
cfg.sft_data = OmegaConf.merge(cfg.sft_data, {{"name": "bench", "raw_dir": {raw!r}, "output_dir": {out!r},
    "total": {n}, "max_length": {seq}, "valid_fraction": 0.001, "max_valid": 100, "allow_repeat": True,
    "decontamination": {{"enabled": False}},
    "sources": {{"chat": {{"kind": "messages", "path": "chat.jsonl", "weight": 1.0, "normalize": {{}}}}}}}})
t = time.time()
m = prepare_sft(cfg, log=lambda *a: None)
print(json.dumps({{"seconds": time.time() - t, "samples": m["samples"], "tokens": m["tokens"],
                  "dropped": m["dropped"]}}))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,5000,20000", help="comma-separated conversation counts, increasing")
    ap.add_argument("--mb-dir", default=os.environ.get("HEBATRON_MB_DIR"), help="the MB tier folder (scripts/env.sh mb)")
    ap.add_argument("--compat-dir", default=os.environ.get("HEBATRON_COMPAT_DIR"))
    ap.add_argument("--mb-max", type=int, default=20000, help="largest size MB's path is run at")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_sft_prepare.json"))
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as d:
        tmp = Path(d)
        tok = make_tokenizer(tmp / "tok")
        for n in sizes:
            raw = tmp / f"raw{n}"
            raw.mkdir()
            write_synthetic(raw / "chat.jsonl", n)
            out = tmp / f"prepared{n}"
            ours = run_child(OURS.format(repo=str(REPO), tok=str(tok), raw=str(raw), out=str(out), n=n, seq=SEQ),
                             dict(os.environ))
            row = {"conversations": n, "ours": ours}
            if "seconds" in ours:
                ours["conversations_per_s"] = n / ours["seconds"]
            if args.mb_dir and n <= args.mb_max and (out / "training.jsonl").exists():
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    p for p in (args.mb_dir, args.compat_dir, str(REPO)) if p)}
                root = tmp / f"mbroot{n}"
                root.mkdir()
                (root / "training.jsonl").symlink_to(out / "training.jsonl")
                (root / "validation.jsonl").symlink_to(out / "validation.jsonl")
                mb = run_child(MB.format(repo=str(REPO), stub=str(REPO / "tests" / "mb_tier" / "conftest.py"),
                                         tok=str(tok), root=str(root), seq=SEQ), env)
                if "seconds" in mb:
                    mb["conversations_per_s"] = n / mb["seconds"]
                row["megatron_bridge"] = mb
            rows.append(row)
            print(json.dumps(row))
    print(f"\n{'conversations':>13} | {'ours conv/s':>11} | {'ours peak RSS MiB':>17} | {'MB conv/s':>9} | {'MB peak RSS MiB':>15}")
    for r in rows:
        o, m = r["ours"], r.get("megatron_bridge", {})
        print(f"{r['conversations']:>13,} | {o.get('conversations_per_s', float('nan')):>11,.0f} | "
              f"{o.get('peak_rss_mib', float('nan')):>17,.0f} | {m.get('conversations_per_s', float('nan')):>9,.0f} | "
              f"{m.get('peak_rss_mib', float('nan')):>15,.0f}")
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "seq_length": SEQ, "rows": rows,
              "note": "each run is a fresh process; peak RSS is that process's ru_maxrss (os.wait4); seconds "
                      "exclude interpreter start-up, wall includes it"}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
