"""SFT with the local backend: the prepared SFT dataset (sft.prepare), assistant-only loss, no packing.

transformers' Nemotron-H passes no document boundaries to its Mamba layers, so a packed row would
carry one conversation's state into the next. We do not pack: conversations of similar length are
batched together (right-padded; padding never reaches a real token, see sft/data.py), which keeps
padding near 0.1% on the demo data. The loss of a step is the mean over the loss tokens of the whole
global batch, so 1 or 2 processes give the same update.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hebatron_nemo.backends.local import checkpoint, distributed, threads
from hebatron_nemo.backends.local.cpt import export_model, load_weights
from hebatron_nemo.backends.local.router import RouterBalancer
from hebatron_nemo.backends.local.schedule import WSDSchedule
from hebatron_nemo.backends.local.preemption import StopOnSignal
from hebatron_nemo.backends.local.trainer import RunLogger, make_optimizer
from hebatron_nemo.utils.io import read_json
from hebatron_nemo.utils.logs import quiet_megatron
from hebatron_nemo.data.tokenizer import LocalTokenizer
from hebatron_nemo.errors import ConfigError
from hebatron_nemo.models.nemotron_h import build_model

KINDS = ("hebrew", "anchor")


def chat_losses(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss [b, L-1], loss mask [b, L-1]): token t+1 predicted from tokens <= t."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    tl = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                           batch["input_ids"][:, 1:].reshape(-1), reduction="none")
    return tl.view(batch["input_ids"].shape[0], -1), batch["loss_mask"][:, 1:].to(tl.dtype)


def _kind(example) -> int:
    return KINDS.index("anchor") if example.source == "anchor" else KINDS.index("hebrew")


def _examples(path: Path, tokenizer, max_length: int, limit: int | None = None) -> list:
    """Tokenized examples of a prepared JSONL file; `source` holds the record's role (target/anchor)."""
    from hebatron_nemo.sft.data import SFTExample
    from hebatron_nemo.sft.prepare import iter_prepared
    from hebatron_nemo.sft.template import encode_conversations

    out, chunk = [], []

    def flush():
        for rec, (ids, mask) in zip(chunk, encode_conversations([r["messages"] for r in chunk], tokenizer)):
            if len(ids) > max_length:  # the preparation filtered at this length with this tokenizer
                raise ConfigError(f"{path}: conversation {rec['id']!r} has {len(ids)} tokens, over max_length "
                                  f"{max_length}: the prepared data does not match this tokenizer")
            out.append(SFTExample(rec["id"], rec["role"], np.asarray(ids, np.int32), np.asarray(mask, np.uint8)))
        chunk.clear()

    for rec in iter_prepared(path):
        if limit is not None and len(out) + len(chunk) >= limit:
            break
        chunk.append(rec)
        if len(chunk) >= 1024:
            flush()
    if chunk:
        flush()
    return out


def build_data(cfg, tokenizer, log=print):
    """(training examples, validation examples, manifest) of the prepared SFT dataset (recipes/prepare_sft.py)."""
    from hebatron_nemo.sft.prepare import TRAIN_FILE, VALID_FILE, open_prepared

    s = cfg.sft
    folder, manifest = open_prepared(cfg, tokenizer)
    max_length = int(cfg.sft_data.max_length)
    train = _examples(folder / TRAIN_FILE, tokenizer, max_length)
    valid = _examples(folder / VALID_FILE, tokenizer, max_length, limit=s.eval_conversations)
    roles = manifest["roles"]
    by_role = ", ".join(f"{k} {v['samples']:,}" for k, v in roles.items())
    log(f"SFT data {folder}: {len(train):,} conversations ({by_role}), "
        f"anchor share of loss tokens {manifest['anchor_share_of_loss_tokens']:.4f}")
    return train, valid, manifest


@torch.no_grad()
def evaluate(model, examples, micro_batch: int) -> dict[str, float]:
    from hebatron_nemo.sft.data import collate

    model.eval()
    sums = np.zeros((2, 2))
    for i in range(0, len(examples), micro_batch):
        chunk = examples[i:i + micro_batch]
        tl, mask = chat_losses(model, collate(chunk))
        for row, ex in enumerate(chunk):
            k = _kind(ex)
            sums[k] += (float((tl[row] * mask[row]).sum()), float(mask[row].sum()))
    model.train()
    return {f"eval/sft_loss/{KINDS[k]}": sums[k, 0] / sums[k, 1] for k in range(2) if sums[k, 1] > 0}


def run_sft(cfg, log=print) -> dict:
    """Fine-tunes the CPT model on the SFT mixture; writes <sft.run_dir>/model with the chat template."""
    from hebatron_nemo.sft.data import bucket_indices, collate

    quiet_megatron()
    rank, world = distributed.init()
    threads.configure(cfg.threads)  # the cores this process may use, at most cfg.threads
    s = cfg.sft
    init = Path(str(s.init_from))
    if not (init / "COMPLETE").exists():
        raise ConfigError(f"sft.init_from: no complete model folder at {init} (run recipes/cpt.py first)")
    tokenizer = LocalTokenizer(str(cfg.tokenizer.path))
    train_ex, valid_ex, report = build_data(cfg, tokenizer, log if rank == 0 else (lambda *a: None))
    if s.global_batch_size % (s.micro_batch_size * world):
        raise ConfigError(f"sft.global_batch_size {s.global_batch_size} must divide by micro_batch_size x processes = "
                          f"{s.micro_batch_size} x {world}")
    accum = s.global_batch_size // (s.micro_batch_size * world)
    micro_batches = [b for e in range(s.epochs)
                     for b in bucket_indices([len(x) for x in train_ex], s.micro_batch_size, cfg.seed + e)]
    per_step = accum * world
    steps = len(micro_batches) // per_step
    if steps < 1:
        raise ConfigError("sft: fewer conversations than one global batch")
    total_tokens = sum(len(train_ex[i]) for b in micro_batches[: steps * per_step] for i in b)
    model = build_model(cfg.model, tokenizer.vocab_size, seed=cfg.seed)
    load_weights(model, init)
    optimizer = make_optimizer(model, cfg.optim)
    schedule = WSDSchedule(s.lr, s.min_lr, total_tokens, s.warmup_fraction, s.decay_fraction)
    router = RouterBalancer(model, cfg.router.seq_aux_loss_coeff, cfg.router.bias_update_rate)
    run_dir = Path(str(s.run_dir))
    state = {"step": 0, "consumed_samples": 0, "tokens": 0}
    counts = np.zeros((2, 2), dtype=np.int64)  # [kind] -> conversations, loss tokens
    if rank == 0:  # what killed writes left behind
        checkpoint.clean_partial(run_dir, log)
    distributed.barrier()
    ckpt = checkpoint.latest(run_dir, log) if cfg.checkpoint.resume else None
    if ckpt is not None:
        saved = checkpoint.load(ckpt, model, optimizer)
        state = {k: saved[k] for k in ("step", "consumed_samples", "tokens")}
        if rank == 0:
            counts = np.array(saved["ledger"]["counts"], dtype=np.int64)
        log(f"resumed SFT from {ckpt.name} (step {state['step']})")
    logger = RunLogger(run_dir, cfg.logging, rank == 0, state["step"] if ckpt is not None else None, {"sft": report})
    if state["step"] == 0:
        logger.log({"kind": "eval", "step": 0, "consumed_samples": 0, "tokens": 0, "phase": "sft", "segment": "sft",
                    "values": evaluate(model, valid_ex, s.micro_batch_size)})
    t0 = time.time()
    stopper = StopOnSignal()  # the cluster's warning: checkpoint at the next step and exit (see preemption.py)
    preempted = False
    try:
        for step in range(state["step"], steps):
            mine = micro_batches[step * per_step:(step + 1) * per_step][rank::world]
            batches = [(collate([train_ex[i] for i in b]), [train_ex[i] for i in b]) for b in mine]
            local = torch.tensor(float(sum(float(b["loss_mask"][:, 1:].sum()) for b, _ in batches)), dtype=torch.float64)
            total = float(distributed.all_reduce_sum(local.clone()))
            lr = schedule(state["tokens"])
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            stats = torch.zeros(2, 3, dtype=torch.float64)  # loss sum, loss tokens, conversations
            for batch, exs in batches:
                tl, mask = chat_losses(model, batch)
                loss = (tl * mask).sum() / max(total, 1.0)
                aux = router.aux_loss()
                if aux is not None:
                    loss = loss + aux / (accum * world)
                loss.backward()
                with torch.no_grad():
                    for row, ex in enumerate(exs):
                        k = _kind(ex)
                        stats[k] += torch.tensor([float((tl[row] * mask[row]).sum()), float(mask[row].sum()), 1.0],
                                                 dtype=torch.float64)
            distributed.all_reduce_gradients(model)
            params = [p for p in model.parameters() if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad or float("inf"), foreach=False))
            optimizer.step()
            router.step()
            distributed.all_reduce_sum(stats)
            counts += stats[:, [2, 1]].numpy().astype(np.int64)
            n_tokens = sum(int(b["attention_mask"].sum()) for b, _ in batches)
            state["step"] = step + 1
            state["consumed_samples"] += s.global_batch_size
            state["tokens"] += int(distributed.all_reduce_sum(torch.tensor(n_tokens)).item())
            record = {"kind": "train", "step": state["step"], "consumed_samples": state["consumed_samples"],
                      "tokens": state["tokens"], "phase": "sft", "segment": "sft", "lr": lr, "grad_norm": grad_norm,
                      "loss": float(stats[:, 0].sum() / stats[:, 1].sum().clamp(min=1)),
                      "loss_by_source": {KINDS[k]: float(stats[k, 0] / stats[k, 1]) for k in range(2) if stats[k, 1] > 0},
                      "loss_tokens_by_source": {KINDS[k]: int(stats[k, 1]) for k in range(2) if stats[k, 1] > 0},
                      "tokens_per_second": state["tokens"] / max(time.time() - t0, 1e-9)}
            logger.log(record)
            last = state["step"] == steps
            if (s.eval_interval and state["step"] % s.eval_interval == 0) or last:
                logger.log({**{k: record[k] for k in ("step", "consumed_samples", "tokens", "phase", "segment")},
                            "kind": "eval", "values": evaluate(model, valid_ex, s.micro_batch_size)})
            periodic = bool(cfg.checkpoint.save_interval and state["step"] % cfg.checkpoint.save_interval == 0)
            preempted = stopper.requested() and not last  # a collective: every rank asks
            if last or periodic or preempted:
                if rank == 0:
                    checkpoint.save(run_dir, state["step"], model, optimizer,
                                    {**state, "plan": {"fingerprint": "sft", "phases": []}},
                                    {"counts": counts.tolist(), "kinds": list(KINDS)}, forced=last)
                    checkpoint.prune(run_dir, cfg.checkpoint.keep_last)
                distributed.barrier()
            if preempted:
                log(f"stopped: {stopper.name}: checkpointed at step {state['step']}; run again to resume")
                if stopper.warnings > 1 or stopper.deferred_terms:
                    log(f"  ({stopper.name} arrived {stopper.warnings}x and SIGTERM {stopper.deferred_terms}x after it; "
                        "the repeats were absorbed until the checkpoint was written)")
                break
    finally:
        stopper.restore()
        logger.close()
        router.remove()
    if preempted:
        return {**state, "counts": counts.tolist(), "preempted": True}
    if rank == 0:
        plan = read_json(init.parent / "plan.json") or {"tokenizer": {"path": str(cfg.tokenizer.path)}, "fingerprint": "sft"}
        export_model(model, plan, run_dir / "model", finalize=lambda d: _add_chat_template(d, tokenizer))
        log(f"SFT done: {state['step']} steps, {state['tokens']:,} tokens; conversations/loss tokens by kind "
            f"{dict(zip(KINDS, counts.tolist()))} -> {run_dir / 'model'}")
    distributed.barrier()
    return {**state, "counts": counts.tolist()}


def _add_chat_template(model_dir: Path, tokenizer: LocalTokenizer) -> None:
    """The chat template in tokenizer_config.json and `<|im_end|>` as the generation stop token."""
    import json

    from hebatron_nemo.sft.template import CHAT_TEMPLATE

    tc = model_dir / "tokenizer_config.json"
    conf = json.loads(tc.read_text()) if tc.exists() else {}
    conf["chat_template"] = CHAT_TEMPLATE
    tc.write_text(json.dumps(conf, ensure_ascii=False, indent=2))
    gc = model_dir / "generation_config.json"
    gen = json.loads(gc.read_text()) if gc.exists() else {}
    im_end = tokenizer.tok.token_to_id("<|im_end|>")
    gen["eos_token_id"] = [im_end, tokenizer.eod]
    gc.write_text(json.dumps(gen, indent=2))
