"""Difficulty signals per document, stored beside the data so the curriculum can select by them.

- `n_chars`, `n_words`, `n_tokens`: length in characters, whitespace words and tokens (EOD excluded).
- `compression_ratio`: UTF-8 bytes / zlib-compressed bytes. Repetitive, formulaic text compresses
  well (high ratio); varied text less so.
- `tokens_per_word`: tokenizer fertility; high values mean the tokenizer finds the text unfamiliar.
- `perplexity`: under a configured local reference model, when `data.signals.reference_model` is set.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

from hebatron_nemo.errors import ConfigError

SIGNAL_COLUMNS = ("n_chars", "n_words", "n_tokens", "compression_ratio", "tokens_per_word", "perplexity")


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw, 6)))


class ReferencePerplexity:
    """Per-document perplexity under a local HF causal LM (first `max_tokens` tokens of each document)."""

    def __init__(self, model_dir: str, max_tokens: int = 512, batch_size: int = 8):
        if not Path(model_dir, "config.json").exists():
            raise ConfigError(f"data.signals.reference_model: no HF model folder at {model_dir!r} (config.json missing)")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.model_dir = str(model_dir)

    def __call__(self, texts: list[str]) -> list[float]:
        torch = self.torch
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            for text in texts[start:start + self.batch_size]:
                ids = self.tokenizer(text, add_special_tokens=False).input_ids[: self.max_tokens]
                if len(ids) < 2:
                    out.append(float("nan"))
                    continue
                with torch.no_grad():
                    x = torch.tensor([ids])
                    logits = self.model(input_ids=x, use_cache=False).logits[0, :-1].float()
                    nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="mean")
                out.append(math.exp(nll.item()))
        return out
