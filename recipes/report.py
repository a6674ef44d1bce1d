"""Write report.md for runs, and a sweep summary when several runs are given.

    python recipes/report.py work/runs/tiny-easy_to_hard-anchor0.25
    python recipes/report.py work/runs/tiny-*-anchor* --sweep work/runs/sweep
"""

import argparse

def main() -> None:
    from hebatron_nemo.eval.report import sweep_summary, write_report

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (with metrics.jsonl)")
    ap.add_argument("--sweep", help="also write a sweep summary (sweep.md, sweep.png) into this folder")
    args = ap.parse_args()
    for run in args.runs:
        print(f"report: {write_report(run)}")
    if args.sweep:
        print(f"sweep: {sweep_summary(args.runs, args.sweep)}")


if __name__ == "__main__":
    main()
