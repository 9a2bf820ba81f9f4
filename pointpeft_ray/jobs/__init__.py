"""Job specs: one validated YAML file for a whole job (pre-train, tune, fine-tune of the
best config, multi-task), run locally or submitted to a Ray cluster. Format: jobs/README.md."""
from importlib import import_module

__all__ = ["STAGES", "JobSpec", "PlannedRun", "RunResources"]


def __getattr__(name: str):
    # The spec loads torch (through the model configs): `pointpeft-ray status` needs neither.
    if name in __all__:
        return getattr(import_module(".spec", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
