"""Serving fine-tuned adapters: the adapter bank (one frozen backbone, one small adapter
per task) and the `pointpeft-ray predict` command."""
from importlib import import_module

__all__ = ["AdapterBank", "AdapterBankError", "BankEntry", "Prediction", "entries_from_task_rows",
           "read_points_file", "write_adapter_bank", "write_points_file"]


def __getattr__(name: str):
    # The bank loads torch: registering the `predict` command must not.
    if name in __all__:
        return getattr(import_module(".adapter_bank", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
