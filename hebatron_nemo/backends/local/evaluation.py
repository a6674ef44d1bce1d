"""The cheap in-loop eval: held-out validation losses and a small multiple-choice pack per language.

- `eval/anchor_loss` (and per anchor source): English validation loss, the forgetting watch.
- `eval/he_loss/<phase>`: Hebrew validation loss of each phase's sources.
- `eval/mc_acc/<lang>`: a continuation-choice pack built from held-out (test split) documents: given a
  context window, pick the true continuation among `mc_choices` windows (the others from other held-out
  documents of the same language) by log-likelihood. Generated from the data, so nothing is copied.

Every set is cut from the prepared `valid`/`test` splits at one fixed sequence length, so the numbers
compare across segments and between runs over the same data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch



def token_losses(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy [b, s] (labels already shifted: label t is the token after input t)."""
    logits = model(input_ids=input_ids, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                             reduction="none").view_as(labels)


def _split_docs(data_cfg, source: str, split: str) -> list[np.ndarray]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from hebatron_nemo.data.registry import prepared_split

    prefix = prepared_split(data_cfg, source, split)
    if not prefix:
        return []
    ds = IndexedDataset(prefix)
    return [np.asarray(ds[i], dtype=np.int64) for i in range(len(ds))]


def _windows(docs: list[np.ndarray], seq: int, n: int) -> torch.Tensor | None:
    """The first n windows of seq+1 tokens of the documents' concatenation (EODs kept)."""
    if not docs:
        return None
    stream = np.concatenate(docs)
    k = min(n, (len(stream) - 1) // seq)
    if k < 1:
        return None
    return torch.from_numpy(np.stack([stream[i * seq:i * seq + seq + 1] for i in range(k)]))


def _mc_pack(docs: list[np.ndarray], questions: int, choices: int, ctx: int, cont: int, seed: int):
    """(contexts [q, ctx], candidates [q, choices, cont], answer index [q]) or None."""
    long_docs = [d for d in docs if len(d) >= ctx + cont + 1]
    if len(long_docs) < choices:
        return None
    rng = np.random.default_rng(seed)
    contexts, cands, answers = [], [], []
    for _ in range(questions):
        i = int(rng.integers(len(long_docs)))
        d = long_docs[i]
        a = int(rng.integers(0, len(d) - ctx - cont))
        contexts.append(d[a:a + ctx])
        others = [j for j in rng.permutation(len(long_docs)) if j != i][: choices - 1]
        opts = [d[a + ctx:a + ctx + cont]]
        for j in others:
            o = long_docs[j]
            b = int(rng.integers(0, len(o) - cont))
            opts.append(o[b:b + cont])
        order = rng.permutation(choices)
        cands.append(np.stack([opts[k] for k in order]))
        answers.append(int(np.flatnonzero(order == 0)[0]))
    return torch.tensor(np.stack(contexts)), torch.tensor(np.stack(cands)), torch.tensor(answers)


class InLoopEval:
    """Builds the eval sets once (from the plan's sources) and scores a model on them."""

    def __init__(self, plan: dict, data_cfg, eval_cfg, seed: int = 0):
        self.cfg = eval_cfg
        seq, n = eval_cfg.seq_length, eval_cfg.samples_per_set
        # English is measured in every arm (the no-anchor arm above all): every anchor-role source of
        # the data registry, whether or not this plan replays it
        anchor_sources = sorted({s["source"] for s in plan["streams"] if s["role"] == "anchor"}
                                | {n for n, s in data_cfg.sources.items() if s.role == "anchor"})
        self.anchor = {s: w for s in anchor_sources if (w := _windows(_split_docs(data_cfg, s, "valid"), seq, n)) is not None}
        self.phases = {}
        for p in plan["phases"]:
            sources = sorted({plan["streams"][int(sid)]["source"] for sid in p.get("blend_counts", p["counts"])})
            parts = [w for s in sources if (w := _windows(_split_docs(data_cfg, s, "valid"), seq, max(1, n // len(sources)))) is not None]
            if parts:
                self.phases[p["name"]] = torch.cat(parts)
        he_sources = sorted({s["source"] for s in plan["streams"] if s["role"] == "curriculum"})
        lang_docs = {"he": [d for s in he_sources for d in _split_docs(data_cfg, s, "test")],
                     "en": [d for s in anchor_sources for d in _split_docs(data_cfg, s, "test")]}
        c = eval_cfg
        self.mc = {lang: pack for lang, docs in lang_docs.items()
                   if (pack := _mc_pack(docs, c.mc_questions, c.mc_choices, c.mc_context_tokens,
                                        c.mc_continuation_tokens, seed)) is not None}

    @torch.no_grad()
    def run(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        for name, w in self.anchor.items():
            out[f"eval/anchor_loss/{name}"] = float(token_losses(model, w[:, :-1], w[:, 1:]).mean())
        if self.anchor:
            out["eval/anchor_loss"] = float(np.mean([out[f"eval/anchor_loss/{n}"] for n in self.anchor]))
        for name, w in self.phases.items():
            out[f"eval/he_loss/{name}"] = float(token_losses(model, w[:, :-1], w[:, 1:]).mean())
        if self.phases:
            out["eval/he_loss"] = float(np.mean([out[f"eval/he_loss/{n}"] for n in self.phases]))
        for lang, (ctx, cands, ans) in self.mc.items():
            q, k, L = cands.shape
            seqs = torch.cat([ctx.unsqueeze(1).expand(q, k, ctx.shape[1]), cands], dim=2).reshape(q * k, -1)
            losses = token_losses(model, seqs[:, :-1], seqs[:, 1:])[:, -L:].sum(dim=1).view(q, k)
            out[f"eval/mc_acc/{lang}"] = float((losses.argmin(dim=1) == ans).float().mean())
        model.train(was_training)
        return out


class EarlyStop:
    """Watches one eval value; `update` returns a reason to stop, or None."""

    def __init__(self, cfg, total_tokens: int):
        self.cfg, self.total = cfg, total_tokens
        self.best = float("inf")
        self.bad = 0

    def update(self, values: dict, tokens: int) -> str | None:
        if not self.cfg.enabled or self.cfg.metric not in values:
            return None
        v = values[self.cfg.metric]
        if v < self.best:
            self.best, self.bad = v, 0
            return None
        if v > self.best + self.cfg.min_rise and tokens <= self.cfg.within_fraction * self.total:
            self.bad += 1
            if self.bad >= self.cfg.patience:
                return (f"{self.cfg.metric} rose above its best {self.best:.4f} by more than {self.cfg.min_rise} for "
                        f"{self.bad} evals within the first {self.cfg.within_fraction:.0%} of the run")
        else:
            self.bad = 0
        return None
