"""hebatron_nemo.models.fast_scan: the faster pure-PyTorch Mamba-2 (SSD) scan equals transformers' own
PyTorch path (outputs, loss and gradients within 1e-5 relative in fp32), and patches are reversible."""

from __future__ import annotations

import math

import pytest
import torch

from hebatron_nemo.models.fast_scan import (
    _ssd_autograd,
    disable_fast_scan,
    enable_fast_scan,
    is_fast_scan_enabled,
    ssd_chunk_scan,
)
from hebatron_nemo.models.nemotron_h import build_model, load_model_config

RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: relative to the tensor's scale (elementwise relative error is meaningless
    for entries that cancel to ~0)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def scan_inputs(b, L, h, p, g, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # dt_bias as NemotronH initializes it: inverse softplus of dt ~ log-uniform in [1e-3, 1e-1]
    dt0 = torch.exp(torch.rand(h, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "hidden_states": torch.randn(b, L, h, p, generator=gen),
        "dt": 0.5 * torch.randn(b, L, h, generator=gen),
        "A": -torch.arange(1, h + 1, dtype=torch.float32),
        "B": torch.randn(b, L, g, n, generator=gen),
        "C": torch.randn(b, L, g, n, generator=gen),
        "D": 1 + 0.1 * torch.randn(h, generator=gen),
        "dt_bias": dt0 + torch.log(-torch.expm1(-dt0)),
    }


def run_scan(fn, inputs, chunk, gy, **kw):
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(leaves["hidden_states"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk, D=leaves["D"],
             dt_bias=leaves["dt_bias"], dt_softplus=True, dt_limit=(1e-3, float("inf")), **kw)
    y = out[0] if isinstance(out, tuple) else out
    loss = (y * gy).sum() + (out[1].square().sum() if isinstance(out, tuple) else 0)
    loss.backward()
    return out, {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("b,L,h,p,g,n,chunk", [
    (2, 100, 8, 32, 1, 32, 64),   # the tiny config's mixer; a padded last chunk
    (1, 70, 4, 16, 2, 8, 16),     # two groups, several chunks, padding
    (3, 20, 4, 8, 4, 8, 32),      # one (padded) chunk, a group per head
])
def test_scan_matches_transformers(b, L, h, p, g, n, chunk):
    stock = pytest.importorskip("transformers.models.nemotron_h.modeling_nemotron_h")
    ref_fn = getattr(stock, "mamba2_chunk_scan", None)
    if ref_fn is None:
        pytest.skip("this transformers has no mamba2_chunk_scan (5.12.1: see the model-level tests)")
    inputs = scan_inputs(b, L, h, p, g, n)
    gy = torch.randn(b, L, h, p, generator=torch.Generator().manual_seed(1))
    y0, g0 = run_scan(ref_fn, inputs, chunk, gy)
    for fn in (ssd_chunk_scan, _ssd_autograd):
        y1, g1 = run_scan(fn, inputs, chunk, gy)
        assert y1.shape == y0.shape and y1.dtype == torch.float32
        assert rel_err(y1, y0) < RTOL
        for k in g0:
            assert rel_err(g1[k], g0[k]) < RTOL, k


def test_scan_initial_and_final_states_match_transformers():
    stock = pytest.importorskip("transformers.models.nemotron_h.modeling_nemotron_h")
    ref_fn = getattr(stock, "mamba2_chunk_scan", None)
    if ref_fn is None:
        pytest.skip("this transformers has no mamba2_chunk_scan")
    b, L, h, p, g, n, chunk = 2, 90, 4, 8, 1, 8, 32
    inputs = scan_inputs(b, L, h, p, g, n, seed=3)
    init = torch.randn(b, h, p, n, generator=torch.Generator().manual_seed(4))
    gy = torch.randn(b, L, h, p, generator=torch.Generator().manual_seed(5))
    (y0, s0), g0 = run_scan(ref_fn, inputs, chunk, gy, initial_states=init, return_final_states=True)
    (y1, s1), g1 = run_scan(ssd_chunk_scan, inputs, chunk, gy, initial_states=init, return_final_states=True)
    assert rel_err(y1, y0) < RTOL and rel_err(s1, s0) < RTOL
    for k in g0:
        assert rel_err(g1[k], g0[k]) < RTOL, k


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(load_model_config("tiny"), vocab_size=512, seed=0)


@pytest.fixture
def model(tiny_model):
    """The module's tiny model in train mode, with the stock scan again after the test."""
    tiny_model.train()
    tiny_model.zero_grad(set_to_none=True)
    yield tiny_model
    disable_fast_scan(tiny_model)
    tiny_model.zero_grad(set_to_none=True)


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids[:, :-1], use_cache=False)
    logits = out.logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), loss.detach(), grads


def test_tiny_model_outputs_loss_and_gradients_match_stock(model):
    b, t = 2, 96  # chunk_size 64: one whole chunk and a padded one
    if hasattr(model.model.layers[0].mixer, "torch_forward"):
        # transformers <= 5.13 (the 5.12.1 compat layer): its torch_forward drops the inter-chunk state
        # recurrence (transformers#47246), so it only computes the SSD correctly within one chunk
        t = model.config.chunk_size
    ids = torch.randint(0, 512, (b, t + 1), generator=torch.Generator().manual_seed(7))
    logits0, loss0, grads0 = _loss_and_grads(model, ids)

    n = enable_fast_scan(model)
    assert n == model.config.hybrid_override_pattern.count("M") and is_fast_scan_enabled(model)
    assert enable_fast_scan(model) == n  # idempotent
    logits1, loss1, grads1 = _loss_and_grads(model, ids)
    assert rel_err(logits1, logits0) < RTOL
    assert abs(float(loss1) - float(loss0)) <= RTOL * abs(float(loss0))
    assert grads1.keys() == grads0.keys()
    for k in grads0:
        assert rel_err(grads1[k], grads0[k]) < RTOL, k
    mamba_grads = [k for k in grads0 if k.endswith(("A_log", "dt_bias", ".D", "conv1d.weight", "in_proj.weight"))]
    assert len(mamba_grads) == 5 * n

    assert disable_fast_scan(model) == n and not is_fast_scan_enabled(model)
    for m in model.modules():
        assert "forward" not in m.__dict__
    logits2, loss2, _ = _loss_and_grads(model, ids)
    assert torch.equal(logits2, logits0) and torch.equal(loss2, loss0)  # the stock path again, bit for bit


def test_padding_mask_matches_stock_mixer(model):
    mixer = next(m for m in model.modules() if type(m).__name__.endswith("Mamba2Mixer"))
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 40, model.config.hidden_size, generator=gen)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[0, :7] = 0  # left padding in the first row
    outs = []
    for fast in (False, True):
        if fast:
            enable_fast_scan(model)
        xi = x.clone().requires_grad_(True)
        y = mixer(xi, attention_mask=mask)
        y.square().sum().backward()
        outs.append((y.detach(), xi.grad, mixer.A_log.grad.clone(), mixer.conv1d.weight.grad.clone()))
        mixer.zero_grad(set_to_none=True)
    disable_fast_scan(model)
    for a, b in zip(*outs):
        assert rel_err(a, b) < RTOL


def test_eval_and_generation_use_the_stock_cache_path(model):
    model.eval()
    ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        enable_fast_scan(model)
        out = model.generate(ids, **kw)
        logits_fast = model(input_ids=ids, use_cache=False).logits
        disable_fast_scan(model)
        logits_stock = model(input_ids=ids, use_cache=False).logits
    assert torch.equal(out, ref)
    assert rel_err(logits_fast, logits_stock) < RTOL
