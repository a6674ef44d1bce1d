"""SFT examples for the local backend: tokenized conversations and length-bucketed batches (no packing).

The SFT data itself is prepared from a registry (``sft.prepare``, ``conf/sft_data/``); this module
holds what the preparation and the local trainer share: ``tokenize_conversations``, ``collate`` and
``bucket_indices``.

Why no packing on the local backend: transformers' Nemotron-H passes no document boundaries to its
Mamba-2 layers (no ``seq_idx``/``cu_seqlens``), so a packed row would carry recurrent state from one
conversation into the next. Each row is one conversation; similar lengths are batched together to
keep padding low.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hebatron_nemo.errors import ConfigError
from hebatron_nemo.sft.template import ConversationTooLong, encode_conversations, fit_length

IGNORE_INDEX = -100  # transformers' cross-entropy ignore_index


# ------------------------------------------------------------------------------------------ tokenized


@dataclass(frozen=True, slots=True, eq=False)
class SFTExample:
    """One tokenized conversation: ``input_ids`` (int32) and ``loss_mask`` (uint8, 1 = trained token),
    equal lengths."""

    id: str
    source: str
    input_ids: np.ndarray
    loss_mask: np.ndarray
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss(self) -> int:
        """Tokens the loss is computed on."""
        return int(self.loss_mask.sum())


OVERFLOW = ("drop", "truncate", "error")


def tokenize_conversations(conversations: Sequence[Mapping], tokenizer, max_length: int,
                           overflow: str = "drop", batch: int = 4096) -> tuple[list[SFTExample], dict]:
    """Tokenizes chats (``{"id", "source", "messages"}``) into SFTExamples, and counts what happened.

    Over `max_length`: ``drop`` skips the chat, ``truncate`` cuts its tail (skipping it if no loss
    token is left), ``error`` raises ConversationTooLong naming it. The counts are
    ``{"conversations", "kept", "truncated", "dropped_too_long", "dropped_no_loss"}``."""
    if overflow not in OVERFLOW:
        raise ConfigError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
    counts = {"conversations": len(conversations), "kept": 0, "truncated": 0, "dropped_too_long": 0,
              "dropped_no_loss": 0}
    out = []
    for start in range(0, len(conversations), batch):
        chunk = conversations[start:start + batch]
        encoded = encode_conversations([c["messages"] for c in chunk], tokenizer)
        for conv, (ids, mask) in zip(chunk, encoded):
            too_long = len(ids) > max_length
            try:
                ids, mask, truncated = fit_length(ids, mask, max_length, overflow == "truncate",
                                                  what=f"conversation {conv['id']!r}")
            except ConversationTooLong:
                if overflow == "error":
                    raise
                # "drop" skips what is too long; any mode skips what would train on nothing
                counts["dropped_too_long" if too_long and overflow == "drop" else "dropped_no_loss"] += 1
                continue
            counts["truncated"] += truncated
            out.append(SFTExample(conv["id"], conv.get("source", ""), np.asarray(ids, np.int32),
                                  np.asarray(mask, np.uint8), truncated))
    counts["kept"] = len(out)
    return out, counts


# ------------------------------------------------------------------------------------------ batches


def collate(examples: Sequence[SFTExample], pad_id: int = 0, pad_to_multiple_of: int | None = None) -> dict:
    """Right-padded LongTensors ``input_ids``, ``labels``, ``attention_mask``, ``loss_mask`` [batch, length].

    Label alignment: ``labels[b, t] = input_ids[b, t]`` where ``loss_mask[b, t] == 1``, else -100 (padding
    included). Labels are *not* shifted here: transformers' causal-LM loss (``ForCausalLMLoss``) shifts
    internally, scoring ``logits[:, t - 1]`` against ``labels[:, t]``, so passing ``labels`` to the model
    trains exactly "predict token t from tokens < t" for the masked t. A loop computing the loss itself
    uses ``cross_entropy(logits[:, :-1], input_ids[:, 1:])`` weighted by ``loss_mask[:, 1:]``. Position 0
    is never a target (no prefix); in rendered chats it is ``<|im_start|>``, mask 0.

    Padding is on the right and gets ``pad_id``, attention 0, loss mask 0: every pad comes after all
    real tokens of its row, so neither causal attention nor the Mamba scan carries it into them."""
    import torch

    if not examples:
        raise ConfigError("collate needs at least one example")
    width = max(len(e) for e in examples)
    if pad_to_multiple_of:
        width = math.ceil(width / pad_to_multiple_of) * pad_to_multiple_of
    ids = np.full((len(examples), width), pad_id, np.int64)
    mask = np.zeros((len(examples), width), np.int64)
    attn = np.zeros((len(examples), width), np.int64)
    for b, e in enumerate(examples):
        n = len(e)
        ids[b, :n] = e.input_ids
        mask[b, :n] = e.loss_mask
        attn[b, :n] = 1
    labels = np.where(mask == 1, ids, IGNORE_INDEX)
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(attn), "loss_mask": torch.from_numpy(mask)}


def bucket_indices(lengths: Sequence[int], batch_size: int, seed: int, window: int | None = None) -> list[list[int]]:
    """Batches of example indices, each of similar lengths; together every index exactly once.

    Indices are sorted by length (ties broken by a seeded shuffle, so equal lengths mix sources), cut
    into consecutive batches of `batch_size` (the last one of each sorting range may be smaller), and
    the batch order is shuffled by `seed`. With `window` (batches), sorting and shuffling happen within
    consecutive ranges of ``window * batch_size`` indices in input order, keeping the mixture's
    interleaving at that scale; without it, over the whole epoch (least padding)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if window is not None and window < 1:
        raise ConfigError(f"window must be >= 1 batches, got {window}")
    lengths = np.asarray(lengths, np.int64)
    n = len(lengths)
    rng = np.random.default_rng(seed)
    span = n if window is None else window * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, max(span, 1)):
        idx = np.arange(start, min(start + span, n))
        tie = rng.permutation(len(idx))
        order = idx[np.lexsort((tie, lengths[idx]))]
        group = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        batches += [group[j] for j in rng.permutation(len(group))]
    return batches


def length_bucketed_batches(examples: Sequence[SFTExample], batch_size: int, seed: int, window: int | None = None,
                            pad_id: int = 0, pad_to_multiple_of: int | None = None) -> Iterator[dict]:
    """One epoch of collated batches (see ``collate``) in ``bucket_indices`` order; each batch also has
    ``index``, the positions of its examples in `examples`. Use a different seed per epoch."""
    for batch in bucket_indices([len(e) for e in examples], batch_size, seed, window):
        out = collate([examples[i] for i in batch], pad_id, pad_to_multiple_of)
        out["index"] = batch
        yield out
