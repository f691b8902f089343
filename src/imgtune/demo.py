"""``imgtune demo``: the whole life of an adapter, offline, in about a minute on two cores.

1. A compact ViT, defined from a config (no download), is trained fully on scikit-learn's
   digits 0-4 and saved with ``save_pretrained``: the demo's "pretrained backbone".
2. That backbone is LoRA-adapted to the unseen digits 5-9 with the backbone frozen, through
   the same ``train`` a user's run takes.
3. A few held-out images are classified through the saved adapter.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from imgtune.config import TrainConfig
from imgtune.data.decode import decode_rgb
from imgtune.data.splits import load_splits
from imgtune.inference.predict import Predictor
from imgtune.tuning.recipe import train

log = logging.getLogger(__name__)

DIGITS_BACKBONE = ViTConfig(
    image_size=16,
    patch_size=4,
    num_channels=3,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def write_untrained_backbone(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)  # the backbone's random init is part of the demo's reproducibility
    ViTForImageClassification(DIGITS_BACKBONE).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return path


def demo_configs(out: Path, epochs: int | None = None) -> tuple[TrainConfig, TrainConfig]:
    common = dict(
        dataset="digits",
        test_fraction=0.2,
        val_fraction=0.15,
        hflip=False,
        crop_scale=[0.85, 1.0],
        precision="fp32",
        batch_size=32,
        seed=0,
        report_to="none",
        logging_steps=5,
        overwrite=True,  # the demo's folders are the demo's: a rerun replaces them
    )
    backbone = TrainConfig(
        model=str(out / "untrained"),
        method="full",
        classes=[str(d) for d in range(5)],
        lr=1e-3,
        warmup_ratio=0.1,
        epochs=epochs or 30,
        output_dir=str(out / "backbone-digits-0-4"),
        **common,
    )
    adapter = TrainConfig(
        model=backbone.output_dir,
        method="lora",
        classes=[str(d) for d in range(5, 10)],
        rank=8,
        alpha=16,
        dropout=0.0,
        target_modules=["query", "value", "fc1", "fc2"],
        lr=5e-3,
        epochs=epochs or 30,
        output_dir=str(out / "lora-digits-5-9"),
        **common,
    )
    return backbone, adapter


def run_demo(output_dir: str = "imgtune-demo", epochs: int | None = None) -> dict:
    started = time.perf_counter()
    out = Path(output_dir)
    backbone_cfg, adapter_cfg = demo_configs(out, epochs)
    write_untrained_backbone(out / "untrained")

    log.info("== step 1/3: train a compact ViT fully on digits 0-4 (the demo's pretrained backbone)")
    base = train(backbone_cfg)
    log.info(f"backbone test accuracy on digits 0-4: {base.metrics['test']['accuracy']:.4f}\n")

    log.info("== step 2/3: LoRA-adapt the frozen backbone to the unseen digits 5-9")
    run = train(adapter_cfg)
    test_acc = run.metrics["test"]["accuracy"]
    size_kb = run.metrics["adapter_bytes"] / 1024
    log.info(f"\nLoRA test accuracy on digits 5-9: {test_acc:.4f} ({run.metrics['splits']['test']} held-out images)")
    log.info(f"adapter on disk: {size_kb:.1f} KiB in {run.output_dir}")

    log.info("\n== step 3/3: classify held-out images through the saved adapter")
    samples = write_samples(adapter_cfg, out / "samples")
    test_folder = write_test_folder(adapter_cfg, out / "test-digits-5-9")
    results, _ = Predictor.from_dir(run.output_dir).predict([str(p) for p in samples], top_k=3)
    for res in results:
        truth = Path(res["image"]).stem.split("_")[-1]
        best = res["predictions"][0]
        log.info(f"  {Path(res['image']).name}: predicted {best['label']} ({best['score']:.2f}), true {truth}")
    log.info(
        f"\ndemo finished in {time.perf_counter() - started:.0f} s. Try:\n"
        f"  imgtune predict {run.output_dir} {out / 'samples'}\n"
        f"  imgtune evaluate {run.output_dir} --dataset {test_folder}    # the held-out test images"
    )
    return {"test_accuracy": test_acc, "adapter_bytes": run.metrics["adapter_bytes"], "output_dir": str(run.output_dir)}


def write_test_folder(cfg: TrainConfig, folder: Path) -> Path:
    """The run's held-out test images as an image folder (one subfolder per class, lossless PNG), so
    ``imgtune evaluate`` on it reproduces the test accuracy the run reported."""
    test = load_splits(cfg).test
    names = test.features["label"].names
    for i, row in enumerate(test):
        path = folder / names[row["label"]] / f"test{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        decode_rgb(row["image"]).save(path)
    return folder


def write_samples(cfg: TrainConfig, folder: Path, count: int = 6) -> list[Path]:
    """A few test-split digits as PNG files, named with their true label."""
    folder.mkdir(parents=True, exist_ok=True)
    test = load_splits(cfg).test
    names = test.features["label"].names
    paths = []
    for i in range(min(count, len(test))):
        row = test[i]
        path = folder / f"sample{i}_{names[row['label']]}.png"
        decode_rgb(row["image"]).resize((64, 64)).save(path)
        paths.append(path)
    return paths
