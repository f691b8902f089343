"""What a run reports: ``RunMetrics``, written as the run directory's metrics.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# metrics.json fields that measure the machine, not the run: everything else is reproducible
TIMING_FIELDS = ("wall_time_s", "train_images_per_s", "peak_memory_mb")


@dataclass
class RunMetrics:
    """A finished run's figures; ``to_dict`` is metrics.json (same keys, same order)."""

    method: str
    model: str
    dataset: str
    labels: list[str]
    precision: str  # what the run trained in: fp32, bf16 or fp16
    num_processes: int
    history: list[dict[str, Any]]  # one row per epoch
    best_epoch: int
    validation: dict[str, float]  # the best epoch's weights on the validation split
    test: dict[str, float] | None
    trainable_params: int
    total_params: int
    trainable_percent: float
    train_images_per_s: float
    peak_memory_mb: float
    bad_files: int
    bad_file_names: list[str]
    splits: dict[str, int]
    confusion_matrix: list[list[int]]  # of the test split, else validation
    per_class_accuracy: list[float | None]
    adapter_bytes: int = 0
    wall_time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # added by callers (compare's config hash)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {**{k: v for k, v in values.items() if k != "extra"}, **values["extra"]}


def epoch_table(history: list[dict]) -> str:
    """The seeds' per-epoch table, as Trainer prints it in a notebook."""
    lines = ["Epoch | Training Loss | Validation Loss | Accuracy", "------|---------------|-----------------|---------"]
    for row in history:
        lines.append(
            f"{row['epoch']:<5} | {row['train_loss']:<13.6f} | {row['eval_loss']:<15.6f} | {row['eval_accuracy']:.4f}"
        )
    return "\n".join(lines)


def collect_metrics(recipe, final_val, test, precision: str, peak_memory: float) -> RunMetrics:
    """A finished ``Recipe``'s figures: its config, data, state and the final evaluations."""
    cfg, data, state = recipe.cfg, recipe.data, recipe.state
    evaluated = test or final_val
    return RunMetrics(
        method=recipe.method.name,
        model=cfg.model,
        dataset=cfg.dataset,
        labels=data.labels,
        precision=precision,
        num_processes=recipe.accelerator.num_processes,
        history=state.history,
        best_epoch=state.best_epoch,
        validation=final_val.metrics(),
        test=test.metrics() if test else None,
        trainable_params=recipe.trainable,
        total_params=recipe.total,
        trainable_percent=100 * recipe.trainable / recipe.total,
        train_images_per_s=state.images_seen / state.train_seconds if state.train_seconds else 0.0,
        peak_memory_mb=peak_memory,
        bad_files=len(recipe.bad),
        bad_file_names=sorted(recipe.bad.reasons),
        splits={"train": len(data.train), "validation": len(data.validation), "test": len(data.test or [])},
        confusion_matrix=evaluated.confusion(len(data.labels)).tolist(),
        per_class_accuracy=evaluated.per_class_accuracy(len(data.labels)),
    )
