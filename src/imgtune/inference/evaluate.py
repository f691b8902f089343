"""``evaluate``: a trained run scored on a dataset split (loss, accuracy, top-5, per class)."""

from __future__ import annotations

from pathlib import Path

import datasets

from imgtune.config import TrainConfig
from imgtune.data.badfiles import BadFiles, check_strict
from imgtune.data.loading import image_dataset, make_loader
from imgtune.data.sources import CSV_PATHS_HINT
from imgtune.data.splits import load_eval_split, load_splits
from imgtune.data.workers import loader_workers
from imgtune.errors import UserError, check_counts
from imgtune.inference.precision import inference_autocast
from imgtune.inference.predict import Predictor
from imgtune.inference.scoring import run_eval
from imgtune.rundir import RUN_CONFIG, recorded_settings


def evaluate(
    output_dir: str | Path,
    dataset: str | None = None,
    split: str | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    bad_files: str = "skip",
    image_column: str | None = None,
    label_column: str | None = None,
    progress: bool = True,
    *,
    device: str | None = None,
    precision: str = "auto",
    cache: str | None = None,
    base: str | None = None,
) -> dict:
    """Evaluate a trained run (adapter or full model directory) on a dataset split, on ``device``
    (default: the GPU when there is one) with the adapter folded into the base, as predict does.
    Without ``dataset``, the run's own held-out split (test, else validation), made again from its
    recorded settings. The result names the dataset and split it scored."""
    check_counts(batch_size=batch_size, num_workers=num_workers)
    predictor = Predictor.from_dir(output_dir, device, precision, base=base)
    run, spec = predictor.run, predictor.spec
    if dataset is None:
        dataset, split, ds = recorded_split(Path(output_dir), split)
    else:
        split, ds = load_eval_split(dataset, split, run.labels, image_column, label_column)
    images = image_dataset(ds, predictor.transform, spec.size, cache, "eval", progress)
    if bad_files == "strict":
        check_strict({"eval": images})
    on = predictor.device.type
    loader = make_loader(images, batch_size, False, 0, loader_workers(num_workers, on), pin_memory=on == "cuda")
    bad = BadFiles()
    with inference_autocast(predictor.precision, on):
        result = run_eval(predictor.model, loader, predictor.normalize, bad=bad, progress=progress)
    if result.count == 0:
        raise UserError(
            f"none of the {len(ds)} images in {dataset} could be read; {bad.summary()}"
            f"{CSV_PATHS_HINT if str(dataset).endswith('.csv') else ''}"
        )
    metrics = {"dataset": dataset, "split": split, **result.metrics()}
    metrics.update(
        per_class_accuracy=dict(zip(run.labels, result.per_class_accuracy(len(run.labels)))),
        bad_files=len(bad),
        bad_file_names=sorted(bad.reasons),
    )
    return metrics


def recorded_split(out: Path, split: str | None) -> tuple[str, str, datasets.Dataset]:
    """(dataset, split name, split) the run held out, rebuilt from its imgtune.yaml: the same seeded
    carving gives the same images."""
    if not (out / RUN_CONFIG).is_file():
        raise UserError(f"{out} records no training settings ({RUN_CONFIG}): pass --dataset to evaluate on")
    try:
        cfg = TrainConfig(**recorded_settings(out))
    except TypeError as err:
        raise UserError(f"{out / RUN_CONFIG} does not hold imgtune's settings ({err}): pass --dataset") from None
    data = load_splits(cfg)
    if split not in (None, "test", "validation"):
        raise UserError(f"without --dataset the run's own splits are test and validation, not {split!r}")
    name = split or ("test" if data.test is not None else "validation")
    chosen = data.test if name == "test" else data.validation
    if chosen is None:
        raise UserError("the run held out no test split: use --split validation, or pass --dataset")
    return cfg.dataset, name, chosen
