"""A `forward_step` around Megatron-Bridge's `gpt_step.forward_step` that keeps our per-sample keys.

MB's `get_batch` keeps only the keys a GPT forward needs and sets the rest to None, so `source_id`,
`phase_id` and `is_anchor` (written by `CurriculumDataset`) never reach the loss. The wrapper reads
them off the batch as it passes through the data iterator, lets MB compute the forward and loss as
usual (its loss and reporting are returned unchanged), and adds each micro-batch's per-source loss
sum, loss-masked tokens and samples to a `SourceStats`. A callback (callbacks.py) reduces those over
data parallel once per step, logs per-source loss, and feeds the ledger.

Under context parallel each rank holds a slice of every sequence: loss sums and token counts add up
over the DP x CP group, while samples are counted on CP rank 0 only.
"""

from __future__ import annotations

from functools import partial

import torch

KEEP = ("source_id", "phase_id", "is_anchor")
EVAL_SET = "eval_set"  # present on validation samples (dataset_provider.ValidationWindows)


def per_source_sums(token_loss: torch.Tensor, loss_mask: torch.Tensor, source_id: torch.Tensor, n_sources: int):
    """(loss sum, loss tokens) per source from per-token losses [b, s] and a mask [b, s] (float64)."""
    b = source_id.numel()
    tl = token_loss.detach().reshape(b, -1).double()
    m = loss_mask.detach().reshape(b, -1).double()
    ids = source_id.detach().reshape(-1).long().to(tl.device)
    loss = torch.zeros(n_sources, dtype=torch.float64, device=tl.device).index_add_(0, ids, (tl * m).sum(dim=1))
    tokens = torch.zeros(n_sources, dtype=torch.float64, device=tl.device).index_add_(0, ids, m.sum(dim=1))
    return loss, tokens


class SourceStats:
    """One step's counts on this rank: [phase, source, (samples, loss tokens, anchor samples, loss sum)]."""

    SAMPLES, TOKENS, ANCHOR, LOSS = range(4)

    def __init__(self, n_phases: int, n_sources: int):
        self.shape = (n_phases, n_sources, 4)
        self.counts = torch.zeros(self.shape, dtype=torch.float64)
        self.paused = False  # set during evaluation: eval batches are not training consumption

    def add(self, source_id, phase_id, is_anchor, token_loss, loss_mask, count_samples: bool = True) -> None:
        if self.paused:
            return
        b = source_id.numel()
        tl = token_loss.detach().reshape(b, -1).double().cpu()
        m = loss_mask.detach().reshape(b, -1).double().cpu()
        src = source_id.reshape(-1).long().cpu()
        ph = phase_id.reshape(-1).long().cpu()
        flat = self.counts.view(-1, 4)
        row = ph * self.shape[1] + src
        if count_samples:
            flat[:, self.SAMPLES].index_add_(0, row, torch.ones(b, dtype=torch.float64))
            flat[:, self.ANCHOR].index_add_(0, row, is_anchor.reshape(-1).double().cpu())
        flat[:, self.TOKENS].index_add_(0, row, m.sum(dim=1))
        flat[:, self.LOSS].index_add_(0, row, (tl * m).sum(dim=1))

    def reduce(self, group=None) -> torch.Tensor:
        """The step's counts summed over `group` (a collective: every rank of the group calls it);
        resets the local counts."""
        t = self.counts.clone()
        self.counts.zero_()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else t.device
            t = t.to(device)
            torch.distributed.all_reduce(t, group=group)
            t = t.cpu()
        return t


class _KeepKeys:
    """Wraps MB's data iterator; remembers our keys of the last batch drawn."""

    def __init__(self, it):
        self.it = it
        self.last = None

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.it)
        self.last = {k: batch[k] for k in (*KEEP, EVAL_SET) if isinstance(batch, dict) and k in batch}
        return batch


def _with_sources(loss_fn, stats: SourceStats, eval_stats, meta: dict, count_samples: bool, output_tensor):
    result = loss_fn(output_tensor)
    if meta and all(k in meta for k in KEEP):
        # MB's masked_next_token_loss partial carries this rank's (CP-sliced) loss mask first
        loss_mask = loss_fn.args[0]
        token_loss = output_tensor[0] if isinstance(output_tensor, tuple) else output_tensor
        if EVAL_SET in meta:  # a validation window: counted per validation set, never as training
            if eval_stats is not None:
                eval_stats.add(meta["source_id"], meta[EVAL_SET], meta["is_anchor"], token_loss, loss_mask,
                               count_samples)
        else:
            stats.add(meta["source_id"], meta["phase_id"], meta["is_anchor"], token_loss, loss_mask, count_samples)
    return result


def make_forward_step(stats: SourceStats, base_forward_step=None, eval_stats: SourceStats | None = None):
    """MB's GPT forward step (or `base_forward_step`) with per-source accounting into `stats`, and per
    validation set into `eval_stats` (its first axis is the validation set, not the phase)."""

    def forward_step(state, data_iterator, model, return_schedule_plan: bool = False):
        base = base_forward_step
        if base is None:
            from megatron.bridge.training.gpt_step import forward_step as base
        keep = _KeepKeys(data_iterator) if data_iterator is not None else None
        output, loss_fn = base(state, keep, model, return_schedule_plan)
        if not isinstance(loss_fn, partial):
            raise TypeError("Megatron-Bridge's forward_step no longer returns a partial loss function; the "
                            "per-source wrapper needs updating for this version (versions.yaml pins it)")
        from megatron.core import parallel_state

        cp_rank = parallel_state.get_context_parallel_rank() if parallel_state.model_parallel_is_initialized() else 0
        meta = keep.last if keep is not None else None
        return output, partial(_with_sources, loss_fn, stats, eval_stats, meta or {}, cp_rank == 0)

    return forward_step
