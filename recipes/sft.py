"""Supervised fine-tuning: python recipes/sft.py experiment=tiny_cpu [overrides]."""

import sys

import hydra

from hebatron_nemo.backends.local.threads import wait_passively

wait_passively()  # before torch loads: OpenMP threads then sleep, not spin, while they wait

from hebatron_nemo.config import register_configs  # noqa: E402

register_configs()


@hydra.main(config_path="../conf", config_name="sft", version_base="1.3")
def main(cfg) -> None:
    from hebatron_nemo.cli import EXIT_PREEMPTED, clean_errors

    with clean_errors():
        if cfg.backend == "megatron_bridge":
            from hebatron_nemo.backends.megatron_bridge.run import run_sft_mb

            run_sft_mb(cfg)  # Megatron-Bridge handles the preemption signal itself (train.exit_signal_handler)
            return
        from hebatron_nemo.backends.local.sft import run_sft

        state = run_sft(cfg)
    if state.get("preempted"):
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    main()
