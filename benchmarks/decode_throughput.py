"""An analytic decode-throughput estimator: Nemotron-3 Nano 30B-A3B (hybrid Mamba-2 / MoE / attention)
against a dense transformer (Gemma-3-27B geometry), on paper. A study, not a pipeline stage:

    PYTHONPATH=. python benchmarks/decode_throughput.py [--contexts 8192 65536] [--batches 1 64]
                 [--moe-weights touched|active] [--dtype-bytes 2] [--ssm-bytes 4] [--validate]

`--validate` also builds the micro Nemotron-H and checks the cache formulas against its real cache tensors.

Per generated token at a context of L tokens (the sequence already holds L tokens; decoding reads them):

* FLOPs = 2 x matmul parameters used by the token (routed experts: top-k of n; the LM head included; the
  input-embedding lookup is not a matmul) + attention score/value FLOPs over the cached keys/values
  (4 x q_heads x head_dim x cached_len per attention layer) + Mamba-2 decode FLOPs (depthwise conv
  2 x conv_dim x kernel, state update + readout 5 x heads x head_dim x state per layer).
* Bytes moved per decode step of B sequences = weights read once per step (all weights a dense model
  has; for the MoE the non-expert weights plus the *expected distinct experts* the B tokens touch, under
  uniform independent routing: E x (1 - (1 - k/E)^B) per layer; `moe_weights="active"` gives the naive
  "top-k experts only" reading) + B x (KV cache read + the new token's K/V written + SSM and conv states
  read and written).
* Roofline tokens/s at batch B = B / max(step FLOPs / peak FLOPs, step bytes / HBM bandwidth)
  = min(compute-bound, memory-bound).
* Memory capacity: concurrent sequences = floor((HBM - all weights) / per-sequence cache at L).

Cache sizes follow transformers' (5.24) own Nemotron-H / Gemma-3 caches exactly: K/V of shape
[B, kv_heads, len, head_dim] per attention layer (a sliding-window layer keeps window - 1 tokens), the
Mamba conv state [B, conv_dim, conv_kernel] (conv_dim = heads x head_dim + 2 x groups x state) and the SSM
state [B, heads, head_dim, state] *in float32* even for a bf16 model (the scan runs in fp32), hence
`Precision.ssm = 4` by default. `validate_against_model` measures the real cache objects of a tiny model.

Everything here is an upper bound (perfect kernels, no activations, no fragmentation, no prefill); the
Nano/dense *ratio* is the quantity of interest. See docs/throughput.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

BF16 = 2
FP32 = 4
CONTEXTS = (8192, 16384, 32768, 65536)
BATCHES = (1, 64)
MOE_WEIGHT_MODES = ("touched", "active")
RATIO_MODES = ("same_batch", "served", "at_capacity")


# ----------------------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    hbm_bandwidth: float  # bytes/s
    hbm_bytes: float  # capacity for weights + caches
    source: str = ""


H100_SXM = Hardware(
    name="H100 SXM5 80GB",
    peak_flops=989.4e12,
    hbm_bandwidth=3.35e12,
    hbm_bytes=80e9,
    source="assumption: NVIDIA H100 SXM5 datasheet values: 989 TFLOP/s dense BF16 (1979 is with 2:4 sparsity), "
           "3.35 TB/s HBM3, 80 GB (taken as 80e9 bytes, no framework/activation reserve)",
)


@dataclass(frozen=True)
class Precision:
    """Bytes per element: weights, K/V cache, Mamba conv state, Mamba SSM state."""

    weights: int = BF16
    kv: int = BF16
    conv: int = BF16
    ssm: int = FP32  # transformers keeps the SSM state in fp32 for a bf16 model (measured; see module doc)

    @classmethod
    def uniform(cls, nbytes: int) -> "Precision":
        return cls(nbytes, nbytes, nbytes, nbytes)


# ------------------------------------------------------------------------------------ architectures


@dataclass(frozen=True)
class HybridArch:
    """A Nemotron-H model: pattern letters M Mamba-2, E MoE, * attention, - dense MLP."""

    name: str
    pattern: str
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    mamba_num_heads: int
    mamba_head_dim: int
    ssm_state_size: int
    n_groups: int
    conv_kernel: int
    n_routed_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    moe_shared_expert_intermediate_size: int
    intermediate_size: int
    tie_word_embeddings: bool = False
    use_conv_bias: bool = True
    conv_state_len: int | None = None  # tokens a conv state holds: transformers keeps conv_kernel (vLLM: kernel-1)
    source: str = ""

    @classmethod
    def from_model_config(cls, cfg, vocab_size: int | None = None, source: str = "") -> "HybridArch":
        """From a `conf/model/*.yaml` node (`load_model_config`) or a transformers `NemotronHConfig`."""
        get = (lambda k, d=None: getattr(cfg, k, d))
        pattern = get("pattern") or get("hybrid_override_pattern")
        return cls(
            name=str(get("name", None) or get("model_type", "nemotron_h")),
            pattern=str(pattern),
            hidden_size=int(get("hidden_size")),
            vocab_size=int(vocab_size if vocab_size is not None else get("vocab_size")),
            num_attention_heads=int(get("num_attention_heads")),
            num_key_value_heads=int(get("num_key_value_heads")),
            head_dim=int(get("head_dim")),
            mamba_num_heads=int(get("mamba_num_heads")),
            mamba_head_dim=int(get("mamba_head_dim")),
            ssm_state_size=int(get("ssm_state_size")),
            n_groups=int(get("n_groups")),
            conv_kernel=int(get("conv_kernel", 4)),
            n_routed_experts=int(get("n_routed_experts")),
            num_experts_per_tok=int(get("num_experts_per_tok")),
            moe_intermediate_size=int(get("moe_intermediate_size")),
            moe_shared_expert_intermediate_size=int(get("moe_shared_expert_intermediate_size")),
            intermediate_size=int(get("intermediate_size")),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            use_conv_bias=bool(get("use_conv_bias", True)),
            source=source,
        )

    # layer counts
    @property
    def n_mamba(self) -> int:
        return self.pattern.count("M")

    @property
    def n_moe(self) -> int:
        return self.pattern.count("E")

    @property
    def n_attn(self) -> int:
        return self.pattern.count("*")

    @property
    def n_mlp(self) -> int:
        return self.pattern.count("-")

    @property
    def mamba_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        return self.mamba_inner + 2 * self.n_groups * self.ssm_state_size

    # parameters (exactly transformers' NemotronHForCausalLM)
    def _mamba_matmul(self) -> int:
        h = self.hidden_size
        return h * (self.mamba_inner + self.conv_dim + self.mamba_num_heads) + self.mamba_inner * h

    def _attn_matmul(self) -> int:
        h, d = self.hidden_size, self.head_dim
        return h * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)

    @property
    def expert_params(self) -> int:
        """One routed expert: up + down (squared ReLU, not gated)."""
        return 2 * self.hidden_size * self.moe_intermediate_size

    def _moe_dense_matmul(self) -> int:
        """Per MoE layer, what every token uses: shared expert (up + down) and router."""
        h = self.hidden_size
        return 2 * h * self.moe_shared_expert_intermediate_size + self.n_routed_experts * h

    def param_counts(self) -> dict:
        h = self.hidden_size
        mamba = self._mamba_matmul() + self.conv_dim * self.conv_kernel + (self.conv_dim if self.use_conv_bias else 0) \
            + 3 * self.mamba_num_heads + self.mamba_inner + h  # conv, dt_bias/A_log/D, gated norm, layer norm
        attn = self._attn_matmul() + h
        experts = self.n_routed_experts * self.expert_params
        moe = experts + self._moe_dense_matmul() + h
        mlp = 2 * h * self.intermediate_size + h
        embedding = self.vocab_size * h
        lm_head = 0 if self.tie_word_embeddings else self.vocab_size * h
        total = (self.n_mamba * mamba + self.n_attn * attn + self.n_moe * moe + self.n_mlp * mlp
                 + embedding + lm_head + h)
        all_experts = self.n_moe * experts
        return {
            "total": total,
            "routed_experts": all_experts,
            "embedding": embedding,
            "lm_head": lm_head,
            # like hebatron_nemo.models.nemotron_h.count_parameters: experts count k/n, embeddings included
            "active": total - all_experts + all_experts * self.num_experts_per_tok // self.n_routed_experts,
        }

    def total_params(self) -> int:
        return self.param_counts()["total"]

    def matmul_params_per_token(self) -> int:
        """Weights multiplied by one token's activations (LM head yes, embedding lookup no, norms no)."""
        active_moe = self.num_experts_per_tok * self.expert_params + self._moe_dense_matmul()
        return (self.n_mamba * self._mamba_matmul() + self.n_attn * self._attn_matmul() + self.n_moe * active_moe
                + self.n_mlp * 2 * self.hidden_size * self.intermediate_size + self.vocab_size * self.hidden_size)

    def expected_experts_touched(self, batch: int) -> float:
        """Distinct routed experts per MoE layer that `batch` tokens hit, routing uniform and independent."""
        e, k = self.n_routed_experts, self.num_experts_per_tok
        return e * (1.0 - (1.0 - k / e) ** batch)

    def weight_params_read(self, batch: int, moe_weights: str = "touched") -> float:
        """Parameters read from HBM by one decode step of `batch` tokens (the embedding table's rows: no)."""
        pc = self.param_counts()
        non_expert = pc["total"] - pc["routed_experts"] - (0 if self.tie_word_embeddings else pc["embedding"])
        if moe_weights == "touched":
            experts = self.expected_experts_touched(batch)
        elif moe_weights == "active":
            experts = float(self.num_experts_per_tok)
        else:
            raise ValueError(f"moe_weights must be one of {MOE_WEIGHT_MODES}, not {moe_weights!r}")
        return non_expert + self.n_moe * experts * self.expert_params

    # caches, per sequence
    def kv_tokens_per_token(self) -> int:
        """K and V elements one token adds over all attention layers."""
        return 2 * self.n_attn * self.num_key_value_heads * self.head_dim

    def kv_cache_bytes(self, context: int, precision: Precision = Precision()) -> int:
        return self.kv_tokens_per_token() * context * precision.kv

    def ssm_state_bytes(self, precision: Precision = Precision()) -> int:
        return self.n_mamba * self.mamba_num_heads * self.mamba_head_dim * self.ssm_state_size * precision.ssm

    def conv_state_bytes(self, precision: Precision = Precision()) -> int:
        width = self.conv_state_len if self.conv_state_len is not None else self.conv_kernel
        return self.n_mamba * self.conv_dim * width * precision.conv

    def cache_bytes(self, context: int, precision: Precision = Precision()) -> dict:
        kv, ssm, conv = self.kv_cache_bytes(context, precision), self.ssm_state_bytes(precision), \
            self.conv_state_bytes(precision)
        return {"kv": kv, "ssm": ssm, "conv": conv, "total": kv + ssm + conv}

    def kv_bytes_written_per_token(self, precision: Precision = Precision()) -> int:
        return self.kv_tokens_per_token() * precision.kv

    def state_bytes_rw_per_token(self, precision: Precision = Precision()) -> int:
        """Conv + SSM states read and written back once per decode step."""
        return 2 * (self.ssm_state_bytes(precision) + self.conv_state_bytes(precision))

    # FLOPs per token
    def attention_flops(self, context: int) -> int:
        """QK^T and softmax(.)V over `context` cached tokens: 4 x q_heads x head_dim x context per layer."""
        return self.n_attn * 4 * self.num_attention_heads * self.head_dim * context

    def recurrent_flops(self) -> int:
        per_layer = 2 * self.conv_dim * self.conv_kernel + 5 * self.mamba_inner * self.ssm_state_size
        return self.n_mamba * per_layer


@dataclass(frozen=True)
class DenseArch:
    """A dense decoder: GQA attention (optionally sliding-window local layers) and a (gated) FFN."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    ffn_matrices: int = 3  # gated (GeGLU/SwiGLU): gate, up, down
    tie_word_embeddings: bool = True
    sliding_window: int | None = None  # None: every layer attends to the full context
    global_every: int = 1  # layer i is global iff (i + 1) % global_every == 0 (Gemma-3: 6 -> 5 local : 1 global)
    qk_norm: bool = True
    norms_per_layer: int = 4
    source: str = ""

    @classmethod
    def from_gemma3_config(cls, cfg, name: str = "gemma3", source: str = "") -> "DenseArch":
        """From a transformers `Gemma3TextConfig` (its `layer_types` must be a regular local/global pattern)."""
        types = list(cfg.layer_types)
        n_full = types.count("full_attention")
        every = types.index("full_attention") + 1 if n_full else len(types) + 1
        arch = cls(
            name=name, num_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
            num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
            ffn_matrices=3, tie_word_embeddings=bool(cfg.tie_word_embeddings),
            sliding_window=None if n_full == len(types) else int(cfg.sliding_window), global_every=every,
            source=source or "transformers Gemma3TextConfig",
        )
        expected = ["full_attention" if (arch.sliding_window is None or (i + 1) % every == 0) else "sliding_attention"
                    for i in range(len(types))]
        if expected != types:
            raise ValueError(f"layer_types is not a regular 1-in-{every} global pattern: {types}")
        return arch

    @property
    def n_global(self) -> int:
        if self.sliding_window is None:
            return self.num_layers
        return sum(1 for i in range(self.num_layers) if (i + 1) % self.global_every == 0)

    @property
    def n_local(self) -> int:
        return self.num_layers - self.n_global

    def cached_len(self, context: int, local: bool) -> int:
        # transformers' DynamicSlidingWindowLayer keeps window - 1 tokens (the new one makes `window`)
        return min(context, self.sliding_window - 1) if local else context

    def _layer_matmul(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        return attn + self.ffn_matrices * h * self.intermediate_size

    def param_counts(self) -> dict:
        h = self.hidden_size
        layer = self._layer_matmul() + self.norms_per_layer * h + (2 * self.head_dim if self.qk_norm else 0)
        embedding = self.vocab_size * h
        lm_head = 0 if self.tie_word_embeddings else embedding
        total = self.num_layers * layer + embedding + lm_head + h
        return {"total": total, "routed_experts": 0, "embedding": embedding, "lm_head": lm_head, "active": total}

    def total_params(self) -> int:
        return self.param_counts()["total"]

    def matmul_params_per_token(self) -> int:
        return self.num_layers * self._layer_matmul() + self.vocab_size * self.hidden_size

    def weight_params_read(self, batch: int, moe_weights: str = "touched") -> float:
        pc = self.param_counts()
        return float(pc["total"] - (0 if self.tie_word_embeddings else pc["embedding"]))

    def kv_tokens_per_token(self) -> int:
        return 2 * self.num_layers * self.num_key_value_heads * self.head_dim

    def kv_cache_bytes(self, context: int, precision: Precision = Precision()) -> int:
        per_layer_token = 2 * self.num_key_value_heads * self.head_dim * precision.kv
        tokens = self.n_global * self.cached_len(context, False) + self.n_local * self.cached_len(context, True) \
            if self.sliding_window is not None else self.num_layers * context
        return per_layer_token * tokens

    def ssm_state_bytes(self, precision: Precision = Precision()) -> int:
        return 0

    def conv_state_bytes(self, precision: Precision = Precision()) -> int:
        return 0

    def cache_bytes(self, context: int, precision: Precision = Precision()) -> dict:
        kv = self.kv_cache_bytes(context, precision)
        return {"kv": kv, "ssm": 0, "conv": 0, "total": kv}

    def kv_bytes_written_per_token(self, precision: Precision = Precision()) -> int:
        return self.kv_tokens_per_token() * precision.kv

    def state_bytes_rw_per_token(self, precision: Precision = Precision()) -> int:
        return 0

    def attention_flops(self, context: int) -> int:
        per_tok = 4 * self.num_attention_heads * self.head_dim
        if self.sliding_window is None:
            return self.num_layers * per_tok * context
        return per_tok * (self.n_global * self.cached_len(context, False)
                          + self.n_local * self.cached_len(context, True))

    def recurrent_flops(self) -> int:
        return 0


_GEMMA3_SOURCE = (
    "assumption: Gemma-3-27B(-IT) text decoder as in its public HF config.json (Gemma3TextConfig): 62 layers, "
    "hidden 5376, 32 q heads, 16 KV heads, head_dim 128, GeGLU FFN 21504 (gate/up/down), vocab 262208 "
    "(262144 + 64 special; the 64 rows are immaterial), tied embeddings, QK-norm, 4 norms per layer, "
    "sliding_window 1024 with pattern 6 (5 local : 1 global -> 52 local, 10 global of 62). Vision tower ignored."
)
GEMMA3_27B_FULL = DenseArch(
    name="dense-27B full attention", num_layers=62, hidden_size=5376, num_attention_heads=32,
    num_key_value_heads=16, head_dim=128, intermediate_size=21504, vocab_size=262208, ffn_matrices=3,
    tie_word_embeddings=True, sliding_window=None,
    source=_GEMMA3_SOURCE + " Variant: every layer global (a plain full-attention 27B, e.g. Gemma-2/3 served "
                            "without sliding-window KV eviction).",
)
GEMMA3_27B_SLIDING = replace(
    GEMMA3_27B_FULL, name="Gemma-3-27B sliding-window", sliding_window=1024, global_every=6,
    source=_GEMMA3_SOURCE + " Variant: local layers keep only the last 1023 tokens of K/V.",
)


def nano_arch(conf_dir: str | None = None) -> HybridArch:
    """Nemotron-3 Nano 30B-A3B from conf/model/nemotron3_nano_30b_a3b.yaml."""
    from hebatron_nemo.models.nemotron_h import load_model_config

    return HybridArch.from_model_config(
        load_model_config("nemotron3_nano_30b_a3b", conf_dir),
        source="conf/model/nemotron3_nano_30b_a3b.yaml (the values of the released HF config.json)")


# --------------------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class DecodeEstimate:
    arch: str
    context: int
    batch: int
    flops_per_token: float
    matmul_flops_per_token: float
    attention_flops_per_token: float
    recurrent_flops_per_token: float
    weight_bytes_per_step: float
    kv_read_bytes_per_step: float
    kv_write_bytes_per_step: float
    state_rw_bytes_per_step: float
    bytes_per_step: float
    cache_bytes_per_sequence: int
    compute_bound_tokens_per_s: float
    memory_bound_tokens_per_s: float
    tokens_per_s: float
    bound: str  # "compute" | "memory"
    max_batch: int  # concurrent sequences that fit in HBM at this context
    fits: bool  # batch <= max_batch

    @property
    def bytes_per_token(self) -> float:
        return self.bytes_per_step / self.batch

    @property
    def arithmetic_intensity(self) -> float:
        return self.flops_per_token * self.batch / self.bytes_per_step


def max_concurrent_sequences(arch, context: int, hw: Hardware = H100_SXM, precision: Precision = Precision()) -> int:
    """Sequences of `context` tokens whose caches fit next to all the weights (no activation reserve)."""
    free = hw.hbm_bytes - arch.total_params() * precision.weights
    per_seq = arch.cache_bytes(context, precision)["total"]
    return max(0, int(free // per_seq)) if free > 0 else 0


def decode_estimate(arch, context: int, batch: int = 1, hw: Hardware = H100_SXM,
                    precision: Precision = Precision(), moe_weights: str = "touched") -> DecodeEstimate:
    """Roofline decode estimate of `batch` sequences each holding `context` tokens (see the module doc)."""
    if context < 0 or batch < 1:
        raise ValueError(f"need context >= 0 and batch >= 1, got {context}, {batch}")
    matmul = 2.0 * arch.matmul_params_per_token()
    attn = float(arch.attention_flops(context))
    rec = float(arch.recurrent_flops())
    flops_tok = matmul + attn + rec
    weights = arch.weight_params_read(batch, moe_weights) * precision.weights
    kv_read = batch * float(arch.kv_cache_bytes(context, precision))
    kv_write = batch * float(arch.kv_bytes_written_per_token(precision))
    state_rw = batch * float(arch.state_bytes_rw_per_token(precision))
    step_bytes = weights + kv_read + kv_write + state_rw
    t_compute = batch * flops_tok / hw.peak_flops
    t_memory = step_bytes / hw.hbm_bandwidth
    max_b = max_concurrent_sequences(arch, context, hw, precision)
    return DecodeEstimate(
        arch=arch.name, context=context, batch=batch, flops_per_token=flops_tok, matmul_flops_per_token=matmul,
        attention_flops_per_token=attn, recurrent_flops_per_token=rec, weight_bytes_per_step=weights,
        kv_read_bytes_per_step=kv_read, kv_write_bytes_per_step=kv_write, state_rw_bytes_per_step=state_rw,
        bytes_per_step=step_bytes, cache_bytes_per_sequence=arch.cache_bytes(context, precision)["total"],
        compute_bound_tokens_per_s=batch / t_compute, memory_bound_tokens_per_s=batch / t_memory,
        tokens_per_s=batch / max(t_compute, t_memory), bound="compute" if t_compute >= t_memory else "memory",
        max_batch=max_b, fits=batch <= max_b,
    )


def served_tokens_per_s(arch, context: int, batch: int | None, hw: Hardware = H100_SXM,
                        precision: Precision = Precision(), moe_weights: str = "touched") -> tuple[float, int]:
    """Tokens/s on one device with min(batch, capacity) sequences (batch None: at capacity); 0 if none fit."""
    cap = max_concurrent_sequences(arch, context, hw, precision)
    b = cap if batch is None else min(batch, cap)
    if b < 1:
        return 0.0, 0
    return decode_estimate(arch, context, b, hw, precision, moe_weights).tokens_per_s, b


def throughput_ratio(nano, dense, context: int, batch: int = 1, mode: str = "same_batch",
                     hw: Hardware = H100_SXM, precision: Precision = Precision(),
                     moe_weights: str = "touched") -> float:
    """Nano tokens/s over dense tokens/s.

    same_batch:  both at `batch` sequences, capacity ignored (pure roofline);
    served:      each at min(batch, what fits in HBM) (inf if no dense sequence fits, nan if neither);
    at_capacity: each at its own HBM capacity (`batch` ignored).
    """
    if mode == "same_batch":
        n = decode_estimate(nano, context, batch, hw, precision, moe_weights).tokens_per_s
        d = decode_estimate(dense, context, batch, hw, precision, moe_weights).tokens_per_s
        return n / d
    if mode not in RATIO_MODES:
        raise ValueError(f"mode must be one of {RATIO_MODES}, not {mode!r}")
    b = None if mode == "at_capacity" else batch
    n, _ = served_tokens_per_s(nano, context, b, hw, precision, moe_weights)
    d, _ = served_tokens_per_s(dense, context, b, hw, precision, moe_weights)
    if d == 0:
        return math.inf if n > 0 else math.nan
    return n / d


def ratio_table(nano=None, denses: Sequence | None = None, contexts: Iterable[int] = CONTEXTS,
                batches: Iterable[int] = BATCHES, hw: Hardware = H100_SXM, precision: Precision = Precision(),
                moe_weights: str = "touched") -> list[dict]:
    """One row per (dense variant, context, batch): tokens/s of both and the ratios of every mode."""
    nano = nano or nano_arch()
    denses = denses or (GEMMA3_27B_FULL, GEMMA3_27B_SLIDING)
    rows = []
    for dense in denses:
        for L in contexts:
            for B in batches:
                n = decode_estimate(nano, L, B, hw, precision, moe_weights)
                d = decode_estimate(dense, L, B, hw, precision, moe_weights)
                rows.append({
                    "dense": dense.name, "context": L, "batch": B,
                    "nano_tps": n.tokens_per_s, "dense_tps": d.tokens_per_s,
                    "nano_bound": n.bound, "dense_bound": d.bound,
                    "nano_max_batch": n.max_batch, "dense_max_batch": d.max_batch,
                    **{m: throughput_ratio(nano, dense, L, B, m, hw, precision, moe_weights) for m in RATIO_MODES},
                })
    return rows


def drivers(nano=None, dense=None, context: int = 65536, precision: Precision = Precision()) -> dict:
    """The assumption-level ratios (dense / Nano) that drive the throughput ratio."""
    nano = nano or nano_arch()
    dense = dense or GEMMA3_27B_SLIDING
    return {
        "matmul_params_per_token": dense.matmul_params_per_token() / nano.matmul_params_per_token(),
        "total_params": dense.total_params() / nano.total_params(),
        "weights_read_B1": dense.weight_params_read(1) / nano.weight_params_read(1),
        "weights_read_B64_touched": dense.weight_params_read(64) / nano.weight_params_read(64),
        "kv_bytes_per_token": dense.kv_tokens_per_token() / nano.kv_tokens_per_token(),
        f"cache_bytes_at_{context}": dense.cache_bytes(context, precision)["total"]
        / nano.cache_bytes(context, precision)["total"],
        f"flops_per_token_at_{context}": (2 * dense.matmul_params_per_token() + dense.attention_flops(context))
        / (2 * nano.matmul_params_per_token() + nano.attention_flops(context) + nano.recurrent_flops()),
        "nano_experts_touched_B64": nano.expected_experts_touched(64),
    }


def _fmt_ratio(x: float) -> str:
    if math.isinf(x):
        return "inf (dense: 0 fit)"
    if math.isnan(x):
        return "n/a"
    return f"{x:.1f}x"


def format_markdown(rows: list[dict]) -> str:
    head = ("| dense variant | L | B | Nano tok/s | dense tok/s | same-B ratio | served ratio (min(B, fit)) | "
            "at-capacity ratio | fit Nano / dense |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['dense']} | {r['context'] // 1024}K | {r['batch']} | {r['nano_tps']:,.0f} | {r['dense_tps']:,.0f} "
            f"| {_fmt_ratio(r['same_batch'])} | {_fmt_ratio(r['served'])} | {_fmt_ratio(r['at_capacity'])} "
            f"| {r['nano_max_batch']} / {r['dense_max_batch']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------- validation on a real model


def cache_tensor_bytes(cache) -> dict:
    """Bytes held by a transformers (5.x) cache object, by kind: K/V, conv states, SSM (recurrent) states."""
    out = {"kv": 0, "conv": 0, "ssm": 0, "kv_len": [], "ssm_dtypes": set()}
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is not None and getattr(keys, "numel", lambda: 0)() > 0:
            out["kv"] += keys.numel() * keys.element_size() + values.numel() * values.element_size()
            out["kv_len"].append(int(keys.shape[-2]))
        for kind, attr in (("conv", "conv_states"), ("ssm", "recurrent_states")):
            for t in (getattr(layer, attr, None) or {}).values():
                if t is not None:
                    out[kind] += t.numel() * t.element_size()
                    if kind == "ssm":
                        out["ssm_dtypes"].add(str(t.dtype))
    out["total"] = out["kv"] + out["conv"] + out["ssm"]
    return out


@dataclass
class CacheCheck:
    context: int
    batch: int
    measured: dict
    predicted: dict

    @property
    def exact(self) -> bool:
        return all(self.measured[k] == self.predicted[k] for k in ("kv", "conv", "ssm"))


def validate_against_model(model_name: str = "micro", contexts: Sequence[int] = (16, 32, 64, 128), batch: int = 2,
                           dtype: str = "float32", vocab_size: int = 256, decode_steps: int = 1,
                           seed: int = 0) -> list[CacheCheck]:
    """Build the tiny Nemotron-H, run a cached forward of each context (then `decode_steps` single-token
    steps), and compare the real cache's tensor bytes with this module's formulas for the same config.

    Precision for the prediction: K/V and conv in the model dtype, SSM state fp32 (what transformers keeps).
    """
    import torch

    from hebatron_nemo.models.nemotron_h import build_model, load_model_config

    cfg = load_model_config(model_name)
    model = build_model(cfg, vocab_size, seed=seed).eval().to(getattr(torch, dtype))
    arch = HybridArch.from_model_config(model.config, source=f"conf/model/{model_name}.yaml")
    nbytes = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    prec = Precision(weights=nbytes, kv=nbytes, conv=nbytes, ssm=FP32)
    gen = torch.Generator().manual_seed(seed)
    checks = []
    for L in contexts:
        ids = torch.randint(3, vocab_size, (batch, L), generator=gen)
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
            cache = out.cache
            checks.append(_check(cache, arch, L, batch, prec))
            nxt = ids[:, -1:]
            for s in range(decode_steps):
                out = model(input_ids=nxt, cache=cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
                checks.append(_check(cache, arch, L + s + 1, batch, prec))
    return checks


def _check(cache, arch: HybridArch, context: int, batch: int, prec: Precision) -> CacheCheck:
    measured = cache_tensor_bytes(cache)
    pred = arch.cache_bytes(context, prec)
    predicted = {k: batch * pred[k] for k in ("kv", "ssm", "conv", "total")}
    return CacheCheck(context, batch, measured, predicted)


def report(contexts: Iterable[int] = CONTEXTS, batches: Iterable[int] = BATCHES, moe_weights: str = "touched",
           precision: Precision = Precision(), hw: Hardware = H100_SXM) -> str:
    nano = nano_arch()
    lines = [f"# decode throughput estimate on {hw.name} (moe_weights={moe_weights}, precision={precision})", ""]
    pc = nano.param_counts()
    lines.append(f"Nano: total {pc['total']:,} params, matmul/token {nano.matmul_params_per_token():,}, "
                 f"KV 64K {nano.kv_cache_bytes(65536, precision):,} B, SSM {nano.ssm_state_bytes(precision):,} B, "
                 f"conv {nano.conv_state_bytes(precision):,} B per sequence")
    for d in (GEMMA3_27B_FULL, GEMMA3_27B_SLIDING):
        lines.append(f"{d.name}: total {d.total_params():,} params, matmul/token {d.matmul_params_per_token():,}, "
                     f"KV 64K {d.kv_cache_bytes(65536, precision):,} B per sequence")
    lines += ["", format_markdown(ratio_table(nano, None, contexts, batches, hw, precision, moe_weights)), ""]
    for k, v in drivers(nano, GEMMA3_27B_SLIDING, precision=precision).items():
        lines.append(f"driver {k}: {v:.2f}")
    return "\n".join(lines)


__all__ = [
    "BF16", "FP32", "CONTEXTS", "BATCHES", "MOE_WEIGHT_MODES", "RATIO_MODES", "Hardware", "H100_SXM", "Precision",
    "HybridArch", "DenseArch", "GEMMA3_27B_FULL", "GEMMA3_27B_SLIDING", "nano_arch", "DecodeEstimate",
    "decode_estimate", "max_concurrent_sequences", "served_tokens_per_s", "throughput_ratio", "ratio_table",
    "drivers", "format_markdown", "cache_tensor_bytes", "CacheCheck", "validate_against_model", "report",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--moe-weights", choices=MOE_WEIGHT_MODES, default="touched")
    p.add_argument("--dtype-bytes", type=int, default=2, help="weights, K/V and conv state (bf16: 2)")
    p.add_argument("--ssm-bytes", type=int, default=4, help="Mamba SSM state (transformers keeps fp32: 4)")
    p.add_argument("--validate", action="store_true", help="check the cache formulas on the micro model")
    a = p.parse_args(argv)
    prec = Precision(weights=a.dtype_bytes, kv=a.dtype_bytes, conv=a.dtype_bytes, ssm=a.ssm_bytes)
    print(report(a.contexts, a.batches, a.moe_weights, prec))
    if a.validate:
        print("\n# cache check: micro Nemotron-H, batch 2, fp32 (measured == predicted bytes)")
        ok = True
        for c in validate_against_model():
            m, q = c.measured, c.predicted
            ok &= c.exact
            print(f"L={c.context:4d} kv {m['kv']:>6} / {q['kv']:>6}  ssm {m['ssm']:>5} / {q['ssm']:>5}  "
                  f"conv {m['conv']:>5} / {q['conv']:>5}  {'exact' if c.exact else 'MISMATCH'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
