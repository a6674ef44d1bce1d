"""benchmarks/decode_throughput.py: the analytic decode estimator's formulas equal hand-computed values for
the full Nano config and the real modules' parameter counts, its cache formulas equal the bytes of
transformers' real cache objects (micro Nemotron-H; tiny Gemma-3 with a sliding window), and its estimates
move the right way with context and batch."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.decode_throughput import (
    GEMMA3_27B_FULL,
    GEMMA3_27B_SLIDING,
    H100_SXM,
    DenseArch,
    HybridArch,
    Precision,
    cache_tensor_bytes,
    decode_estimate,
    drivers,
    max_concurrent_sequences,
    nano_arch,
    ratio_table,
    throughput_ratio,
    validate_against_model,
)
from hebatron_nemo.models.nemotron_h import count_parameters, hf_config, load_model_config

BF16 = Precision.uniform(2)


@pytest.fixture(scope="module")
def nano() -> HybridArch:
    return nano_arch()


# ------------------------------------------------------------------ hand-computed, full Nano config


def test_nano_layer_counts(nano):
    assert (nano.n_mamba, nano.n_moe, nano.n_attn, nano.n_mlp) == (23, 23, 6, 0)
    assert nano.conv_dim == 64 * 64 + 2 * 8 * 128 == 6144


def test_nano_cache_bytes_by_hand(nano):
    assert nano.kv_cache_bytes(65536, BF16) == 2 * 6 * 2 * 128 * 65536 * 2 == 402_653_184
    assert nano.kv_cache_bytes(8192, BF16) == 402_653_184 // 8
    assert nano.ssm_state_bytes(BF16) == 23 * 64 * 64 * 128 * 2 == 24_117_248
    assert nano.ssm_state_bytes() == 23 * 64 * 64 * 128 * 4  # default: fp32 state, as transformers keeps it
    assert nano.conv_state_bytes(BF16) == 23 * 6144 * 4 * 2 == 1_130_496
    # the dense comparisons
    assert GEMMA3_27B_FULL.kv_cache_bytes(65536, BF16) == 2 * 62 * 16 * 128 * 65536 * 2 == 33_285_996_544
    assert (GEMMA3_27B_SLIDING.n_global, GEMMA3_27B_SLIDING.n_local) == (10, 52)
    assert GEMMA3_27B_SLIDING.kv_cache_bytes(65536, BF16) == 2 * 16 * 128 * 2 * (10 * 65536 + 52 * 1023)
    assert GEMMA3_27B_SLIDING.kv_cache_bytes(512, BF16) == GEMMA3_27B_FULL.kv_cache_bytes(512, BF16)


def test_nano_params_by_hand(nano):
    h = 2688
    mamba = h * (4096 + 6144 + 64) + 4096 * h
    attn = h * 128 * (2 * 32 + 2 * 2)
    moe_active = 6 * 2 * h * 1856 + 2 * h * 3712 + 128 * h
    lm_head = 131072 * h
    assert nano.matmul_params_per_token() == 23 * mamba + 6 * attn + 23 * moe_active + lm_head == 3_226_804_224
    # step FLOPs at 64K: 2 x matmul + attention 6 x 4 x 32 x 128 x L + Mamba (conv + 5 x heads x hd x state)
    est = decode_estimate(nano, 65536, 1)
    assert est.attention_flops_per_token == 6 * 4 * 32 * 128 * 65536
    assert est.recurrent_flops_per_token == 23 * (2 * 6144 * 4 + 5 * 4096 * 128)
    assert est.flops_per_token == 2 * 3_226_804_224 + 6 * 4 * 32 * 128 * 65536 + 23 * (2 * 6144 * 4 + 5 * 4096 * 128)
    assert 8.3 < GEMMA3_27B_FULL.matmul_params_per_token() / nano.matmul_params_per_token() < 8.5


def test_param_counts_equal_the_real_modules(nano):
    """Built on the meta device: transformers' own modules, no memory."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, NemotronHForCausalLM

    with torch.device("meta"):
        model = NemotronHForCausalLM(hf_config(load_model_config("nemotron3_nano_30b_a3b")))
    real = count_parameters(model)
    pc = nano.param_counts()
    assert (pc["total"], pc["active"]) == (real["total"], real["active"]) == (31_577_937_344, 3_580_073_408)

    gcfg = Gemma3TextConfig(num_hidden_layers=62, hidden_size=5376, intermediate_size=21504, num_attention_heads=32,
                            num_key_value_heads=16, head_dim=128, vocab_size=262208, sliding_window=1024)
    with torch.device("meta"):
        gemma = Gemma3ForCausalLM(gcfg)
    assert GEMMA3_27B_SLIDING.total_params() == sum(p.numel() for p in gemma.parameters()) == 27_009_346_304
    from_cfg = DenseArch.from_gemma3_config(gcfg)
    assert (from_cfg.n_global, from_cfg.n_local, from_cfg.sliding_window) == (10, 52, 1024)
    assert from_cfg.kv_cache_bytes(65536) == GEMMA3_27B_SLIDING.kv_cache_bytes(65536)


def test_moe_weights_touched(nano):
    assert nano.expected_experts_touched(1) == pytest.approx(6)
    assert 121 < nano.expected_experts_touched(64) < 123 < 128
    assert nano.weight_params_read(1) == pytest.approx(nano.weight_params_read(1, "active"))
    # B=1 reads exactly the per-token matmul weights (the embedding table is only looked up)
    assert nano.weight_params_read(1) == pytest.approx(nano.matmul_params_per_token() + sum(
        p for p in [23 * (6144 * 5 + 3 * 64 + 4096 + 2688), 6 * 2688, 23 * 2688, 2688]))
    with pytest.raises(ValueError):
        nano.weight_params_read(4, "bogus")


def test_memory_capacity(nano):
    free_nano = 80e9 - nano.total_params() * 2
    per_seq = 402_653_184 + nano.ssm_state_bytes() + nano.conv_state_bytes()
    assert max_concurrent_sequences(nano, 65536) == int(free_nano // per_seq) == 37
    assert max_concurrent_sequences(GEMMA3_27B_FULL, 65536) == 0  # 33.3 GB of KV > 80 - 54 GB
    assert max_concurrent_sequences(GEMMA3_27B_SLIDING, 65536) == 4


# -------------------------------------------------------------- against transformers' cache objects


def test_real_cache_bytes_match_formulas_fp32():
    checks = validate_against_model("micro", contexts=(16, 32, 64, 128), batch=2, dtype="float32")
    assert len(checks) == 8  # each context, then one decode step
    for c in checks:
        assert c.exact, (c.context, c.measured, c.predicted)
    ssm = {c.measured["ssm"] for c in checks}
    conv = {c.measured["conv"] for c in checks}
    assert len(ssm) == 1 and len(conv) == 1  # constant in L
    assert ssm == {2 * 4 * 16 * 16 * 4} and conv == {2 * (64 + 2 * 16) * 4 * 4}
    per_token = {c.measured["kv"] / c.context for c in checks}
    assert per_token == {2 * 2 * 1 * 16 * 4}  # linear in L: batch x 2 x kv_heads x head_dim x 4 bytes
    assert [c.measured["kv_len"] for c in checks] == [[c.context] for c in checks]


def test_real_cache_bf16_keeps_ssm_state_fp32():
    (c, step) = validate_against_model("micro", contexts=(24,), batch=1, dtype="bfloat16")
    assert c.exact and step.exact
    assert c.measured["ssm_dtypes"] == {"torch.float32"}
    assert c.measured["kv"] == 2 * 1 * 16 * 24 * 2


def test_real_sliding_window_cache_matches_dense_formula():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(num_hidden_layers=6, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16, vocab_size=128, sliding_window=8)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    arch = DenseArch.from_gemma3_config(cfg)
    assert (arch.n_global, arch.n_local) == (1, 5)
    full = DenseArch.from_gemma3_config(Gemma3TextConfig(**{**cfg.to_dict(), "layer_types": ["full_attention"] * 6}))
    assert full.sliding_window is None
    for L in (4, 7, 8, 20):
        with torch.no_grad():
            out = model(torch.randint(0, 128, (2, L)), use_cache=True)
        measured = cache_tensor_bytes(out.cache)
        assert measured["kv"] == 2 * arch.kv_cache_bytes(L, Precision.uniform(4)), L
        assert sorted(measured["kv_len"]) == sorted([min(L, 7)] * 5 + [L])


# --------------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize("arch", ["nano", GEMMA3_27B_FULL, GEMMA3_27B_SLIDING], ids=["nano", "full", "swa"])
def test_monotone_in_context_and_batch(arch, nano):
    arch = nano if arch == "nano" else arch
    Ls = [1024, 8192, 16384, 32768, 65536, 131072]
    for B in (1, 8, 64):
        tps = [decode_estimate(arch, L, B).tokens_per_s for L in Ls]
        assert all(a >= b for a, b in zip(tps, tps[1:])), tps
    kv = [arch.kv_cache_bytes(L) for L in Ls]
    assert all(a < b for a, b in zip(kv, kv[1:]))
    caps = [max_concurrent_sequences(arch, L) for L in Ls]
    assert all(a >= b for a, b in zip(caps, caps[1:]))
    for L in (8192, 65536):
        tps = [decode_estimate(arch, L, B).tokens_per_s for B in (1, 2, 8, 64, 512)]
        assert all(a < b for a, b in zip(tps, tps[1:])), tps
        per_tok = [decode_estimate(arch, L, B).bytes_per_token for B in (1, 2, 8, 64)]
        assert all(a > b for a, b in zip(per_tok, per_tok[1:]))


@given(L=st.integers(1, 1 << 17), B=st.integers(1, 4096))
def test_roofline_is_min_of_bounds(L, B):
    for arch in (GEMMA3_27B_SLIDING, _NANO):
        e = decode_estimate(arch, L, B)
        assert e.tokens_per_s == pytest.approx(min(e.compute_bound_tokens_per_s, e.memory_bound_tokens_per_s))
        assert (e.bound == "compute") == (e.compute_bound_tokens_per_s <= e.memory_bound_tokens_per_s)
        assert _NANO.kv_cache_bytes(L) < GEMMA3_27B_SLIDING.kv_cache_bytes(L) <= GEMMA3_27B_FULL.kv_cache_bytes(L)


_NANO = nano_arch()


def test_ratios(nano):
    # B=1 is weight-bandwidth bound: ~ the matmul-parameter ratio (8.4x), growing with the dense KV
    r1 = [throughput_ratio(nano, GEMMA3_27B_SLIDING, L, 1) for L in (8192, 16384, 32768, 65536)]
    assert all(8.0 < r < 9.0 for r in r1) and r1 == sorted(r1)
    assert throughput_ratio(nano, GEMMA3_27B_FULL, 65536, 1) > r1[-1]
    # at B=64 the batch touches ~122 of 128 experts per layer: the weight advantage is gone
    assert throughput_ratio(nano, GEMMA3_27B_SLIDING, 8192, 64) < 2.5
    assert throughput_ratio(nano, GEMMA3_27B_SLIDING, 8192, 64, moe_weights="active") > 7
    assert math.isinf(throughput_ratio(nano, GEMMA3_27B_FULL, 65536, 64, "served"))
    assert throughput_ratio(nano, GEMMA3_27B_SLIDING, 65536, 64, "served") == pytest.approx(
        throughput_ratio(nano, GEMMA3_27B_SLIDING, 65536, 0, "at_capacity"))
    rows = ratio_table(nano, contexts=(8192, 65536), batches=(1, 64))
    assert len(rows) == 8 and all(r["nano_tps"] > r["dense_tps"] for r in rows)
    d = drivers(nano)
    assert 8.3 < d["matmul_params_per_token"] < 8.5 and d["weights_read_B64_touched"] < 1
    assert d["kv_bytes_per_token"] == pytest.approx(62 * 16 / (6 * 2))
    assert H100_SXM.hbm_bandwidth == 3.35e12
