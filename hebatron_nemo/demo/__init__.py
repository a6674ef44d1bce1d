"""Code that exists only for the CPU demo's corpora (the general library never names demo sources):

- `corpora`: the demo corpora from installed packages (and pinned Debian packages), the one verse
  cleaner, and the pipeline's `corpora` stage;
- `sft`: the demo's SFT sources derived from those corpora (the `derive` hook of
  `conf/sft_data/demo.yaml`), the aligned-pairs reader and the English anchor chats;
- `tasks`: small eval task files in the layouts of `conf/eval_tasks`, so the eval path runs on a CPU.
"""
