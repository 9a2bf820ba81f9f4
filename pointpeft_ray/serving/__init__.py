"""Serving fine-tuned adapters: the adapter bank (one frozen backbone, one small adapter
per task) and the `pointpeft-ray predict` command."""
from .adapter_bank import (AdapterBank, AdapterBankError, BankEntry, Prediction, entries_from_task_rows,
                           read_points_file, write_adapter_bank, write_points_file)

__all__ = ["AdapterBank", "AdapterBankError", "BankEntry", "Prediction", "entries_from_task_rows",
           "read_points_file", "write_adapter_bank", "write_points_file"]
