"""Figures of runs: training curves, confusion matrix, per-class accuracy, method comparisons.

Everything draws on ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot: no GUI
backend is touched, no global figure state leaks between runs, and it works headless.
Each function takes the ``metrics.json`` dict(s) that ``train`` writes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay

CURVES_PNG = "training_curves.png"
CONFUSION_PNG = "confusion_matrix.png"
MAX_CLASS_COLUMNS = 30  # beyond this the per-class heatmap shows the hardest classes only
MAX_CM_VALUES = 20  # beyond this the confusion matrix has no numbers in its cells
DPI = 110


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_png(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))
    return path


def method_colours(names: list[str]) -> dict[str, tuple]:
    """Distinct colours: tab10, then the darker tab20b shades (tab20 pairs look alike side by side)."""
    palette = list(colormaps["tab10"].colors) + [colormaps["tab20b"](i) for i in (0, 4, 8, 12, 16, 2, 6, 10, 14, 18)]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _epochs(metrics: dict) -> list[int]:
    return [row["epoch"] for row in metrics["history"]]


def _series(metrics: dict, key: str) -> list[float]:
    return [row[key] for row in metrics["history"]]


def _integer_epochs(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


# --- one run -----------------------------------------------------------------------------


def training_curves(metrics: dict) -> Figure:
    """Loss (train and validation) and validation accuracy per epoch of one run."""
    fig = new_figure(9, 3.4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = _epochs(metrics)
    loss_ax.plot(epochs, _series(metrics, "train_loss"), "o--", label="train")
    loss_ax.plot(epochs, _series(metrics, "eval_loss"), "o-", label="validation")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    acc_ax.plot(epochs, _series(metrics, "eval_accuracy"), "o-", color="tab:green")
    best = metrics.get("best_epoch")
    if best:
        acc_ax.axvline(best, color="grey", linestyle=":", label=f"best epoch ({best})")
        acc_ax.legend()
    acc_ax.set_ylabel("validation accuracy")
    for ax in (loss_ax, acc_ax):
        _integer_epochs(ax)
    fig.suptitle(f"{metrics.get('method', '')} on {Path(str(metrics.get('dataset', ''))).name}")
    return fig


def _split_name(metrics: dict) -> str:
    return "test" if metrics.get("test") else "validation"


def _confusion_side(metrics: dict) -> float:
    return min(max(3.5, 0.45 * len(metrics["labels"]) + 1.5), 14)


def confusion_matrix(metrics: dict, name: str | None = None) -> Figure:
    """The confusion matrix of the run's test split (validation when it has none), drawn by
    scikit-learn's ConfusionMatrixDisplay; cells carry counts up to MAX_CM_VALUES classes."""
    labels = metrics["labels"]
    many = len(labels) > MAX_CM_VALUES
    side = _confusion_side(metrics)
    fig = new_figure(side + 0.8, side)
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(metrics["confusion_matrix"]), display_labels=None if many else labels).plot(
        ax=ax,
        include_values=not many,
        colorbar=True,
        cmap="Blues",
        xticks_rotation="vertical" if len(labels) > 8 else "horizontal",
    )
    ax.set_title(f"{name or metrics.get('method', '')}: confusion matrix ({_split_name(metrics)})")
    return fig


def write_run_plots(out: str | Path, metrics: dict) -> list[Path]:
    """The training-curve and confusion-matrix PNGs of one run, next to its metrics.json."""
    out = Path(out)
    return [
        save_png(training_curves(metrics), out / CURVES_PNG),
        save_png(confusion_matrix(metrics), out / CONFUSION_PNG),
    ]


# --- several runs (compare) ------------------------------------------------------------------


def comparison_curves(runs: dict[str, dict], kind: str) -> Figure:
    """All methods on one chart: ``loss`` (training and validation panels, shared legend) or
    ``accuracy`` (validation accuracy)."""
    colours = method_colours(list(runs))
    if kind == "loss":
        fig = new_figure(11, 4.2)
        axes = fig.subplots(1, 2, sharey=True)
        panels = [(axes[0], "train_loss", "training loss"), (axes[1], "eval_loss", "validation loss")]
    else:
        fig = new_figure(9, 4.2)
        axes = [fig.subplots()]
        panels = [(axes[0], "eval_accuracy", "validation accuracy")]
    for ax, key, label in panels:
        for name, metrics in runs.items():
            ax.plot(
                _epochs(metrics),
                _series(metrics, key),
                "-",
                marker="." if len(metrics["history"]) <= 30 else None,
                color=colours[name],
                label=name,
                linewidth=1.4,
            )
        ax.set_title(f"{label} per epoch")
        _integer_epochs(ax)
    panels[0][0].set_ylabel(kind)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=9)
    return fig


def accuracy_vs_parameters(runs: dict[str, dict]) -> Figure:
    """Final accuracy (test, else validation) against trainable parameters, log x."""
    colours = method_colours(list(runs))
    fig = new_figure(8, 4.2)
    ax = fig.subplots()
    split = "test" if all(m.get("test") for m in runs.values()) else "validation"
    for name, metrics in runs.items():
        x, y = metrics["trainable_params"], (metrics[split] or metrics["validation"])["accuracy"]
        ax.scatter([x], [y], s=60, color=colours[name], zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{split} accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"{split} accuracy against trainable parameters")
    return fig


def per_class_heatmap(runs: dict[str, dict]) -> Figure:
    """Accuracy of every class (columns) for every method (rows). With many classes, the
    MAX_CLASS_COLUMNS classes with the lowest mean accuracy over the methods."""
    names = list(runs)
    labels = runs[names[0]]["labels"]
    acc = np.array([[np.nan if a is None else a for a in runs[n]["per_class_accuracy"]] for n in names], dtype=float)
    columns = np.arange(len(labels))
    if len(labels) > MAX_CLASS_COLUMNS:
        columns = np.sort(np.argsort(np.nanmean(acc, axis=0), kind="stable")[:MAX_CLASS_COLUMNS])
    shown = acc[:, columns]
    fig = new_figure(min(2.2 + 0.62 * len(columns), 16), 1.4 + 0.36 * len(names))
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), [labels[i] for i in columns], rotation=90 if len(columns) > 12 else 0)
    ax.set_yticks(range(len(names)), names)
    if len(columns) <= MAX_CM_VALUES:
        for (row, col), value in np.ndenumerate(shown):
            if not np.isnan(value):
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="accuracy")
    split = "test" if all(m.get("test") for m in runs.values()) else "validation"
    scope = f"the {len(columns)} hardest of {len(labels)} classes" if len(columns) < len(labels) else "each class"
    ax.set_title(f"{split} accuracy of {scope}, per method")
    return fig
