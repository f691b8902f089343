"""Run plots written by ``train`` (the hook) and the plot functions on many classes."""

import numpy as np
from PIL import Image

from conftest import read_metrics
from imgtune.compare import plots


def assert_real_png(path, min_size=(300, 200)):
    image = Image.open(path)
    assert image.format == "PNG" and image.width >= min_size[0] and image.height >= min_size[1]
    pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5, f"{path} is blank"


def test_train_writes_curves_and_confusion_matrix(lora_run):
    assert_real_png(lora_run / plots.CURVES_PNG)
    assert_real_png(lora_run / plots.CONFUSION_PNG)


def test_confusion_matrix_numbers_come_from_the_run(lora_run):
    metrics = read_metrics(lora_run)
    fig = plots.confusion_matrix(metrics)
    ax = fig.axes[0]
    cm = np.asarray(metrics["confusion_matrix"])
    shown = sorted(int(t.get_text()) for t in ax.texts)
    assert shown == sorted(cm.ravel().tolist())  # every cell is labelled with its count
    assert [t.get_text() for t in ax.get_yticklabels()] == metrics["labels"]


def many_class_metrics(n=101, seed=0):
    """A 101-class run's shape (Food-101): the layout must stay readable, whatever the numbers."""
    rng = np.random.default_rng(seed)
    cm = rng.integers(0, 3, (n, n)) + np.diag(rng.integers(5, 20, n))
    per_class = (np.diag(cm) / cm.sum(1)).tolist()
    history = [
        {"epoch": e, "train_loss": 1 / e, "eval_loss": 1.2 / e, "eval_accuracy": 0.5 + e / 20} for e in (1, 2, 3)
    ]
    return {
        "method": "lora",
        "dataset": "food101",
        "labels": [f"class_{i}" for i in range(n)],
        "confusion_matrix": cm.tolist(),
        "per_class_accuracy": per_class,
        "history": history,
        "best_epoch": 3,
        "test": {"accuracy": 0.6},
        "validation": {"accuracy": 0.65},
        "trainable_params": 667493,
    }


def test_many_classes_stay_readable(tmp_path):
    metrics = many_class_metrics()
    cm_ax = plots.confusion_matrix(metrics).axes[0]
    assert not cm_ax.texts  # no 10,201 numbers in cells
    for path in plots.write_run_plots(tmp_path, metrics):
        assert_real_png(path)


def test_comparison_figures(tmp_path):
    runs = {"lora": many_class_metrics(seed=1), "ia3": {**many_class_metrics(seed=2), "trainable_params": 132965}}
    for kind in ("loss", "accuracy"):
        fig = plots.comparison_curves(runs, kind)
        assert {t.get_text() for t in fig.legends[0].get_texts()} == {"lora", "ia3"}
        assert all(len(ax.lines) == 2 for ax in fig.axes)  # one line per method on each panel
    ax = plots.accuracy_vs_parameters(runs).axes[0]
    assert ax.get_xscale() == "log"
    assert {t.get_text() for t in ax.texts} == {"lora", "ia3"}

    # per-class heatmap: one row per method; with 101 classes, the 30 hardest on average
    ax = plots.per_class_heatmap(runs).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["lora", "ia3"]
    mean = np.mean([runs["lora"]["per_class_accuracy"], runs["ia3"]["per_class_accuracy"]], axis=0)
    hardest = {runs["lora"]["labels"][i] for i in np.argsort(mean, kind="stable")[: plots.MAX_CLASS_COLUMNS]}
    assert {t.get_text() for t in ax.get_xticklabels()} == hardest
    assert "30 hardest of 101" in ax.get_title()
