"""Logging settings shared by the stages."""

from __future__ import annotations


def quiet_megatron() -> None:
    """megatron-core logs every index it opens at INFO and warns that TE/apex are absent (expected on
    a CPU machine); keep our progress output readable."""
    import logging
    import warnings

    logging.getLogger("megatron.core").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", message=".*Megatron-FSDP.*")
    warnings.filterwarnings("ignore", message="Could not determine rank")  # megatron-core outside torch.distributed
