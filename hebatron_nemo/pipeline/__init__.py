"""The run as a graph of stages with completion markers (`recipes/pipeline.py`)."""

from hebatron_nemo.pipeline.markers import check_marker, read_markers, write_marker
from hebatron_nemo.pipeline.stages import STAGE_NAMES, STAGES, fingerprints, run_pipeline, stage_table

__all__ = ["STAGES", "STAGE_NAMES", "check_marker", "fingerprints", "read_markers", "run_pipeline", "stage_table",
           "write_marker"]
