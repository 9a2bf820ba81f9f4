"""Job specs: one validated YAML file for a whole job (pre-train, tune, fine-tune of the
best config, multi-task), run locally or submitted to a Ray cluster. Format: jobs/README.md."""
from .spec import STAGES, JobSpec, PlannedRun, RunResources

__all__ = ["STAGES", "JobSpec", "PlannedRun", "RunResources"]
