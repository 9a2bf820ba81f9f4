"""TensorBoard scalars of a run (tensorboardX event files), written by rank 0 only."""
from __future__ import annotations

from pathlib import Path

# Metric name -> TensorBoard tag: grouped so TensorBoard shows train and val side by side.
_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val",
    "train_accuracy": "accuracy/train", "val_accuracy": "accuracy/val",
    "val_mean_class_accuracy": "accuracy/val_mean_class", "best_accuracy": "accuracy/best",
    "lr": "optim/lr", "train_samples_per_second": "speed/samples_per_second",
}


class ScalarLogger:
    """Writes each epoch's scalars; a no-op without a directory (or on ranks other than 0)."""

    def __init__(self, log_dir: str | Path | None):
        self._writer = None
        if log_dir:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(log_dir), flush_secs=10)

    def log_epoch(self, metrics: dict) -> None:
        if self._writer is None:
            return
        step = int(metrics["epoch"])
        for key, tag in _TAGS.items():
            if key in metrics:
                self._writer.add_scalar(tag, float(metrics[key]), step)
        self._writer.flush()  # an epoch is long: make it visible to a live TensorBoard now

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
