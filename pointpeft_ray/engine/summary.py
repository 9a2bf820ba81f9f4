"""The end-of-run summary: what was reached, at what cost, and where the results are."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..file_names import BEST_DIR, LAST_DIR


def format_epoch(metrics: dict) -> str:
    """One line per epoch, for the console."""
    val = f"  val acc {metrics['val_accuracy']:.2f} (best {metrics['best_accuracy']:.2f})" \
        if "val_accuracy" in metrics else ""
    elapsed = f"  [{metrics['elapsed_seconds']:.0f} s]" if "elapsed_seconds" in metrics else ""
    return (f"epoch {metrics['epoch']:>3}  loss {metrics['train_loss']:.4f}  train acc "
            f"{metrics['train_accuracy']:.2f}{val}  lr {metrics['lr']:.2e}  "
            f"{metrics['train_samples_per_second']:.1f} samples/s{elapsed}")


@dataclass
class RunSummary:
    best_accuracy: float
    best_epoch: int
    epochs: int
    trainable_params: int
    total_params: Optional[int]
    wall_seconds: float
    best_checkpoint: Optional[str] = None
    last_checkpoint: Optional[str] = None
    tensorboard: Optional[str] = None
    final: dict = field(default_factory=dict)

    @classmethod
    def from_run_result(cls, result, run_dir: str | None, tensorboard: Path | None) -> "RunSummary":
        run_dir = Path(run_dir) if run_dir else None
        return cls(best_accuracy=result.best_accuracy, best_epoch=result.best_epoch,
                   epochs=int(result.final.get("epoch", 0)), trainable_params=result.trainable_params,
                   total_params=result.total_params, wall_seconds=result.wall_seconds,
                   best_checkpoint=str(run_dir / BEST_DIR) if run_dir else None,
                   last_checkpoint=str(run_dir / LAST_DIR) if run_dir else None,
                   tensorboard=str(tensorboard) if tensorboard else None, final=result.final)

    @classmethod
    def from_ray_result(cls, result, best, wall_seconds: float, tensorboard: str | None) -> "RunSummary":
        last = result.metrics or {}
        return cls(best_accuracy=float(last.get("best_accuracy", 0.0)), best_epoch=int(last.get("best_epoch", -1)),
                   epochs=int(last.get("epoch", 0)), trainable_params=int(last.get("trainable_params", 0)),
                   total_params=None, wall_seconds=wall_seconds,
                   best_checkpoint=best.path if best else None,
                   last_checkpoint=result.checkpoint.path if result.checkpoint else None,
                   tensorboard=tensorboard, final=last)

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        share = f" ({100.0 * self.trainable_params / self.total_params:.2f}% of {self.total_params:,})" \
            if self.total_params else ""
        lines = [
            f"best accuracy     {self.best_accuracy:.2f} at epoch {self.best_epoch} of {self.epochs}",
            f"trainable params  {self.trainable_params:,}{share}",
            f"wall time         {self.wall_seconds:.1f} s",
            f"best checkpoint   {self.best_checkpoint or '(not saved: no run_dir)'}",
            f"last checkpoint   {self.last_checkpoint or '(not saved: no run_dir)'}",
        ]
        if self.tensorboard:
            lines.append(f"tensorboard       tensorboard --logdir {self.tensorboard}")
        return "\n".join(lines)
