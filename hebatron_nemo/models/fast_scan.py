"""A faster pure-PyTorch Mamba-2 (SSD) chunked scan for transformers' `NemotronHMamba2Mixer` on CPU.

Without `mamba_ssm`, transformers runs the mixer's PyTorch fallback (`mamba2_chunk_scan` in 5.24,
`torch_forward` in 5.12.1). This module computes the same function with the same operations in a
cheaper layout:

- heads lead (`b, h, c, l, p`) so every contraction is a plain batched matmul (no einsum permutes);
- `C Bᵀ` is computed once per *group* and broadcast to the group's heads, instead of once per head on
  `repeat_interleave`d copies of B and C;
- the chunk-decay of the B terms is applied to x (p = 32 wide) rather than materialized per head on B;
- the discretization (`softplus(dt + dt_bias)`, clamp to `time_step_limit`), `segment_sum` (the same
  cumsum-of-masked-copies, so the decay matrices are bit-identical), the D residual, the gated
  RMSNorm (the mixer's own `norm` module), the causal depthwise conv1d + SiLU and the padding-mask
  handling are kept exactly as in transformers.

Only the summation order of the matmuls differs, so outputs and gradients match the stock path to
fp32 rounding (~1e-6 relative); `tests/test_fast_scan.py` checks it. Torch ops only: no Triton, no
compiled extension, no `torch.compile`.

    from hebatron_nemo.models.fast_scan import enable_fast_scan, disable_fast_scan
    enable_fast_scan(model)    # patches each Mamba mixer instance; returns how many
    disable_fast_scan(model)   # restores the stock forward

The patched forward only takes the full-sequence path without a cache (training, scoring). With a
cache (generation) or packed-sequence kwargs (`seq_idx`, `cu_seqlens`) it calls the stock forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

_ORIG = "_hebatron_stock_forward"


def _segment_sum(x: torch.Tensor) -> torch.Tensor:
    """transformers' `segment_sum`, op for op: out[..., i, j] = sum(x[..., j+1 : i+1]) for i >= j, else -inf."""
    t = x.size(-1)
    x = x[..., None].expand(*x.size(), t)
    mask = torch.tril(torch.ones(t, t, device=x.device, dtype=torch.bool), diagonal=-1)
    x = x.masked_fill(~mask, 0)
    seg = torch.cumsum(x, dim=-2)
    mask = torch.tril(torch.ones(t, t, device=x.device, dtype=torch.bool), diagonal=0)
    return seg.masked_fill(~mask, -torch.inf)


def ssd_chunk_scan(
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Drop-in for transformers 5.24's torch `mamba2_chunk_scan`.

    hidden_states (b, L, h, p), dt (b, L, h), A (h,), B and C (b, L, g, n), D (h,), dt_bias (h,),
    initial_states (b, h, p, n). Returns y (b, L, h, p) in fp32 [, final_state (b, h, p, n)].
    """
    b, L, h, p = hidden_states.shape
    g, n = B.shape[2], B.shape[3]
    hpg = h // g

    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])

    x = hidden_states.float()
    pad = (chunk_size - L % chunk_size) % chunk_size
    Lp = L + pad
    c = Lp // chunk_size
    l = chunk_size

    # heads-major layouts: x (b, h, L, p), dt (b, h, L), B and C (b, g, L, n)
    xh = x.permute(0, 2, 1, 3)
    dth = dt.float().permute(0, 2, 1)
    Bg = B.float().permute(0, 2, 1, 3)
    Cg = C.float().permute(0, 2, 1, 3)
    if pad:
        xh = F.pad(xh, (0, 0, 0, pad))
        dth = F.pad(dth, (0, pad))
        Bg = F.pad(Bg, (0, 0, 0, pad))
        Cg = F.pad(Cg, (0, 0, 0, pad))

    # discretize: x * dt and A * dt (as transformers: the D residual uses the undiscretized x)
    xdt = (xh * dth[..., None]).reshape(b, g, hpg, c, l, p)  # (b, g, j, c, l, p)
    Adt = (A.to(torch.float32)[:, None] * dth).reshape(b, h, c, l)  # (b, h, c, l)
    A_cumsum = torch.cumsum(Adt, dim=-1)

    Bc = Bg.reshape(b, g, 1, c, l, n)
    Cc = Cg.reshape(b, g, 1, c, l, n)

    # 1. intra-chunk (diagonal blocks): Y_diag = (C Bᵀ ∘ L) x, with C Bᵀ once per group
    Lmat = torch.exp(_segment_sum(Adt)).reshape(b, g, hpg, c, l, l)
    G = torch.matmul(Cc, Bc.transpose(-1, -2))  # (b, g, 1, c, l, s)
    Y = torch.matmul(G * Lmat, xdt)  # (b, g, j, c, l, p)

    # 2. chunk states: sum_l B[l] ⊗ (x dt)[l] * exp(A_cumsum[-1] - A_cumsum[l])
    decay_states = torch.exp(A_cumsum[..., -1:] - A_cumsum).reshape(b, g, hpg, c, l, 1)
    states = torch.matmul((xdt * decay_states).transpose(-1, -2), Bc)  # (b, g, j, c, p, n)

    # 3. inter-chunk recurrence over chunk boundaries
    states = states.reshape(b, h, c, p * n)
    if initial_states is not None:
        prev = initial_states.to(dtype=states.dtype, device=states.device).reshape(b, h, 1, p * n)
    else:
        prev = torch.zeros_like(states[:, :, :1])
    states = torch.cat([prev, states], dim=2)  # (b, h, c+1, p*n)
    decay_chunk = torch.exp(_segment_sum(F.pad(A_cumsum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    new_states = torch.matmul(decay_chunk, states)  # (b, h, c+1, p*n)
    states = new_states[:, :, :-1].reshape(b, g, hpg, c, p, n)
    final_state = new_states[:, :, -1].reshape(b, h, p, n)

    # 4. state -> output per chunk (off-diagonal blocks)
    state_decay_out = torch.exp(A_cumsum).reshape(b, g, hpg, c, l, 1)
    Y = Y + torch.matmul(Cc, states.transpose(-1, -2)) * state_decay_out  # (b, g, j, c, l, p)

    y = Y.reshape(b, h, Lp, p)[:, :, :L].permute(0, 2, 1, 3)  # (b, L, h, p)
    if D is not None:
        y = y + D[..., None] * x
    if return_final_states:
        return y, final_state
    return y


def _mask_padding(hidden_states, attention_mask):
    # transformers' apply_mask_to_padding_states
    if attention_mask is not None:
        dtype = hidden_states.dtype
        hidden_states = (hidden_states * attention_mask[:, :, None]).to(dtype)
    return hidden_states


def _dt_limit(mixer) -> tuple[float, float]:
    if hasattr(mixer, "torch_forward"):
        # transformers <= 5.12: torch_forward clamps with `torch.clamp(dt, self.time_step_min)`
        return (mixer.time_step_min, float("inf"))
    return tuple(mixer.time_step_limit)


def _fast_forward(self, hidden_states, *args, **kwargs):
    cache = kwargs.get("cache", kwargs.get("cache_params", kwargs.get("past_key_values")))
    if args:
        cache = args[0]
    attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    extra = {k: v for k, v in kwargs.items() if k not in ("cache", "cache_params", "past_key_values", "attention_mask")}
    if cache is not None or extra.get("seq_idx") is not None or extra.get("cu_seqlens") is not None:
        return getattr(self, _ORIG)(hidden_states, *args, **kwargs)
    if attention_mask is not None and attention_mask.ndim != 2:
        return getattr(self, _ORIG)(hidden_states, *args, **kwargs)

    batch_size, seq_len, _ = hidden_states.shape
    dtype = hidden_states.dtype

    hidden_states = _mask_padding(hidden_states, attention_mask)
    projected_states = self.in_proj(hidden_states)
    A = -torch.exp(self.A_log.float())
    d_mlp = (
        projected_states.shape[-1] - 2 * self.intermediate_size - 2 * self.n_groups * self.ssm_state_size - self.num_heads
    ) // 2
    _, _, gate, xBC, dt = projected_states.split(
        [d_mlp, d_mlp, self.intermediate_size, self.conv_dim, self.num_heads], dim=-1
    )

    # causal depthwise conv1d + activation, as transformers' causal_conv1d_fn fallback / torch_forward
    xBC = xBC.transpose(1, 2)
    xBC = F.conv1d(
        xBC.to(self.conv1d.weight.dtype),
        weight=self.conv1d.weight,
        bias=self.conv1d.bias,
        padding=self.conv1d.weight.shape[-1] - 1,
        groups=self.conv_dim,
    )[..., :seq_len]
    xBC = self.act(xBC).to(dtype).transpose(1, 2)
    xBC = _mask_padding(xBC, attention_mask)
    gs = self.n_groups * self.ssm_state_size
    x, B, C = torch.split(xBC, [self.intermediate_size, gs, gs], dim=-1)

    y = ssd_chunk_scan(
        x.reshape(batch_size, seq_len, self.num_heads, self.head_dim),
        dt,
        A,
        B.reshape(batch_size, seq_len, self.n_groups, self.ssm_state_size),
        C.reshape(batch_size, seq_len, self.n_groups, self.ssm_state_size),
        chunk_size=self.chunk_size,
        D=self.D,
        dt_bias=self.dt_bias,
        dt_softplus=True,
        dt_limit=_dt_limit(self),
    )
    y = y.reshape(batch_size, seq_len, -1)
    y = self.norm(y, gate)
    return self.out_proj(y.to(dtype))


def _is_mamba_mixer(module) -> bool:
    return type(module).__name__.endswith("Mamba2Mixer") and hasattr(module, "A_log") and hasattr(module, "in_proj")


def enable_fast_scan(model) -> int:
    """Patch every Mamba-2 mixer of `model` (instance-level) to use `ssd_chunk_scan`. Returns how many."""
    count = 0
    for module in model.modules():
        if _is_mamba_mixer(module):
            if _ORIG not in module.__dict__:
                setattr(module, _ORIG, module.forward)
                module.forward = types.MethodType(_fast_forward, module)
            count += 1
    return count


def disable_fast_scan(model) -> int:
    """Undo `enable_fast_scan`. Returns how many mixers were restored."""
    count = 0
    for module in model.modules():
        if _ORIG in module.__dict__:
            del module.__dict__["forward"]
            delattr(module, _ORIG)
            count += 1
    return count


def is_fast_scan_enabled(model) -> bool:
    return any(_ORIG in m.__dict__ for m in model.modules())
