"""HF <-> Megatron conversion of Nemotron-3 Nano through Megatron-Bridge's AutoBridge, and the logit
parity gate CPT's first segment requires (NeMo container, one GPU for `parity`).

  python recipes/convert.py parity --hf-dir /models/NVIDIA-Nemotron-3-Nano-30B-A3B-Base-BF16 --run-dir work/runs/hebatron-...
  python recipes/convert.py import --hf-dir <hf folder> --megatron-dir <out>
  python recipes/convert.py export --megatron-dir <iter dir> --hf-dir <source hf folder> --out <new hf folder>
"""

import argparse

def main(argv=None) -> None:
    from hebatron_nemo.cli import clean_errors

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parity", help="compare HF and converted Megatron logits; record a pass in <run-dir>/parity.json")
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--atol", type=float, default=0.5)
    p.add_argument("--min-cosine", type=float, default=0.999)
    i = sub.add_parser("import", help="HF folder -> Megatron torch_dist checkpoint")
    i.add_argument("--hf-dir", required=True)
    i.add_argument("--megatron-dir", required=True)
    e = sub.add_parser("export", help="Megatron checkpoint -> HF folder (written aside, then renamed)")
    e.add_argument("--megatron-dir", required=True)
    e.add_argument("--hf-dir", required=True, help="the HF folder the model was converted from (config, tokenizer)")
    e.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from hebatron_nemo.backends.megatron_bridge import convert

    with clean_errors():
        if a.cmd == "parity":
            convert.init_single_gpu_parallel_state()
            result = convert.logit_parity(a.hf_dir, atol=a.atol, min_cosine=a.min_cosine)
            print(f"parity passed: {result} -> {convert.write_parity_record(a.run_dir, a.hf_dir, result)}")
        elif a.cmd == "import":
            convert.import_hf(a.hf_dir, a.megatron_dir)
        else:
            convert.export_hf(a.megatron_dir, a.hf_dir, a.out)


if __name__ == "__main__":
    main()
