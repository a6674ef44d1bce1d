"""Release exports: a trained Nemotron-H as an HF folder in NVIDIA's released checkpoint layout,
verified by logit parity under every transformers version that will read it (see `hf.py`)."""

from hebatron_nemo.export.hf import (
    ExportError,
    ExportKeyError,
    NotReleaseFormatError,
    ParityError,
    check_parity,
    export_hf,
    load_exported,
    release_config,
    release_key_shapes,
    release_state_dict,
    run_export,
)

__all__ = [
    "ExportError",
    "ExportKeyError",
    "NotReleaseFormatError",
    "ParityError",
    "check_parity",
    "export_hf",
    "load_exported",
    "release_config",
    "release_key_shapes",
    "release_state_dict",
    "run_export",
]
