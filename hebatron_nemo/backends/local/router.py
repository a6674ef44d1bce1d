"""MoE router balancing for transformers' Nemotron-H, which computes no balancing loss and never
updates its expert bias. Both follow megatron-core (0.19), whose functions are called directly:

- Sequence-level auxiliary loss (`moe_router_load_balancing_type="seq_aux_loss"`): per sequence,
  loss = coeff * E / (k * T^2) * sum_i (sum_t p_ti)(sum_t r_ti), with p the router's sigmoid scores
  normalized per token and r the raw top-k routing map, averaged over the batch's sequences
  (`megatron.core.transformer.moe.router.TopKRouter._apply_seq_aux_loss`,
  `moe_utils.switch_load_balancing_loss_func`, `moe_utils.compute_routing_scores_for_aux_loss`).
- Aux-loss-free balancing (DeepSeek-V3, arXiv 2408.15664): after each optimizer step,
  bias_i += rate * sign(mean_j load_j - load_i), with the load counted over the global batch and summed
  over data-parallel ranks (`moe_utils.get_updated_expert_bias`).

It also keeps per-layer expert load and its entropy (the Hebatron team saw routing collapse in deep
layers on Hebrew): entropy of the load distribution, 1.0 = perfectly even when normalized by ln(E).
"""

from __future__ import annotations

import torch


class RouterBalancer:
    """Hooks every `NemotronHTopkRouter` of a model; see the module docstring."""

    def __init__(self, model, seq_aux_loss_coeff: float = 0.0, bias_update_rate: float = 0.0):
        from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHTopkRouter

        self.coeff, self.rate = float(seq_aux_loss_coeff), float(bias_update_rate)
        self.routers = [(name, m) for name, m in model.named_modules() if isinstance(m, NemotronHTopkRouter)]
        self.names = [n.replace("model.layers.", "layer").replace(".mixer.gate", "") for n, _ in self.routers]
        self._losses: list[torch.Tensor] = []
        self._load = [torch.zeros(m.num_experts, dtype=torch.float64) for _, m in self.routers]
        self._window = [torch.zeros(m.num_experts, dtype=torch.float64) for _, m in self.routers]
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.routers)]

    def _hook(self, i: int):
        def hook(module, inputs, outputs):
            if not module.training:
                # eval forwards must not feed the bias update: it would depend on when evals ran,
                # and a resumed run (which skips the eval it resumed after) would diverge
                return
            router_logits, _, topk_indices = outputs
            counts = torch.bincount(topk_indices.reshape(-1), minlength=module.num_experts).double()
            self._load[i] += counts
            self._window[i] += counts
            if self.coeff > 0 and torch.is_grad_enabled():
                b, s = inputs[0].shape[:2]
                self._losses.append(seq_aux_loss(router_logits, b, s, module.top_k, module.num_experts, self.coeff))
        return hook

    def aux_loss(self) -> torch.Tensor | None:
        """The summed auxiliary loss of the forward passes since the last call (then forgotten)."""
        if not self._losses:
            return None
        loss = torch.stack(self._losses).sum()
        self._losses = []
        return loss

    def step(self, group=None) -> None:
        """After an optimizer step: the expert-bias update from the global batch's load."""
        if self.rate > 0:
            import torch.distributed as dist
            from megatron.core.transformer.moe.moe_utils import get_updated_expert_bias

            for (_, m), load in zip(self.routers, self._load):
                tokens = load.to(torch.float32)
                if dist.is_available() and dist.is_initialized():
                    new = get_updated_expert_bias(tokens, m.e_score_correction_bias, self.rate,
                                                  group or dist.group.WORLD)
                else:  # the same formula without a process group
                    new = m.e_score_correction_bias + torch.sign(tokens.mean() - tokens) * self.rate
                m.e_score_correction_bias.copy_(new)
        for load in self._load:
            load.zero_()

    def stats(self, reset: bool = True) -> dict:
        """Per layer: load fractions, normalized load entropy, max/mean load; since the last reset."""
        from hebatron_nemo.backends.health import load_stats

        out = {}
        for name, w in zip(self.names, self._window):
            s = load_stats(w)  # the rule the Megatron-Bridge callback applies too
            if s is None:
                continue
            out[name] = s
            if reset:
                w.zero_()
        return out

    def state(self) -> list[list[float]]:
        """The counters a checkpoint must carry: per router, the expert load since the last router-health
        line (whole token counts in float64, exact in JSON). The per-step load is always zero at a step
        boundary, so it is not saved."""
        return [w.tolist() for w in self._window]

    def load_state(self, window: list[list[float]] | None) -> None:
        """Restores `state()`; a checkpoint without it (written before the counters were saved) starts
        the window from zero, as such runs did."""
        if window is None:
            for w in self._window:
                w.zero_()
            return
        if len(window) != len(self._window) or any(len(a) != len(w) for a, w in zip(window, self._window)):
            raise ValueError(f"router state has {[len(a) for a in window]} experts per router, the model "
                             f"{[len(w) for w in self._window]}")
        for w, a in zip(self._window, window):
            w.copy_(torch.tensor(a, dtype=torch.float64))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def seq_aux_loss(router_logits: torch.Tensor, batch: int, seq: int, topk: int, num_experts: int,
                 coeff: float) -> torch.Tensor:
    """megatron-core's sequence-level load-balancing loss for HF's [batch*seq, E] router logits."""
    from megatron.core.transformer.moe.moe_utils import (compute_routing_scores_for_aux_loss,
                                                         switch_load_balancing_loss_func)

    routing_map, scores = compute_routing_scores_for_aux_loss(router_logits, topk, "sigmoid")
    # megatron-core's tokens are sequence-major ([s, b]); it folds the batch into the expert dimension
    scores = scores.view(batch, seq, num_experts).transpose(0, 1).reshape(seq, batch * num_experts)
    routing_map = routing_map.view(batch, seq, num_experts).transpose(0, 1).reshape(seq, batch * num_experts)
    tokens_per_expert = routing_map.sum(dim=0)
    return switch_load_balancing_loss_func(scores, tokens_per_expert, seq, topk, num_experts, coeff) / batch
