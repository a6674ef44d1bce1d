"""Analytic decode-throughput estimate, Nemotron-3 Nano vs a dense 27B (Gemma-3 geometry), on paper.

    python recipes/throughput.py [--contexts 8192 65536] [--batches 1 64] [--moe-weights touched|active]
                                 [--ssm-bytes 4] [--validate]

--validate also builds the micro Nemotron-H and checks the formulas against its real cache tensors.
No Hydra: everything is in hebatron_nemo/eval/throughput.py (see docs/throughput.md).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hebatron_nemo.eval.throughput import (  # noqa: E402
    BATCHES, CONTEXTS, MOE_WEIGHT_MODES, Precision, report, validate_against_model,
)


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
