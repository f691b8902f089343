"""Recipe benchmark: test accuracy of the guide's Trainer recipe and of imgtune's, on a small real task.

    python benchmarks/recipe.py [--seeds 3] [--epochs N] [--work-dir /tmp/imgtune-bench-digits]

The task is the demo's (imgtune.demo), written as image folders: scikit-learn's 8x8 digits upscaled to
32 px RGB PNGs. A compact ViT (from ViTConfig, 32 px input, patch 8) is trained fully on digits 0-4 (its
"pretraining", done once and kept in --work-dir), then adapted to the unseen digits 5-9, held-out test
folder fixed for every run:

(a) the seeds' flags through the PEFT guide's pipeline: transformers Trainer with the guide's
    TrainingArguments (lr 5e-3, batch 32, gradient accumulation 4, 5 epochs, evaluate/save every epoch,
    best model by accuracy; fp32 here, the guide's fp16 needs a GPU), LoRA r=16/alpha 16/dropout 0.1 on
    query/value with the classifier saved, its v1 transforms (RandomResizedCrop + flip) and 10% validation;
(b) the same flags through ``imgtune.train``;
(c) ``imgtune.train`` with every setting left at its default (fitted to the data);
(d) (c) plus ``--lr auto``;
(e) (c) plus ``--hflip``: flips forced on, what the defaults' mirror test turned off for digits;
(f) hand-tuned flags (the demo's: LoRA r=8 on query/value/fc1/fc2, 30 epochs, batch 32, crops 0.85-1,
    no flips).
Each runs once per seed; the table gives mean +- standard deviation of test accuracy, the per-seed
values, and the mean wall time of a run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# as the imgtune command does (imgtune.cli.main): idle OpenMP threads wait passively; set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SIZE = 32
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
PRETRAIN, ADAPT = [str(d) for d in range(5)], [str(d) for d in range(5, 10)]


def write_digit_folders(root: Path) -> Path:
    """root/pretrain/<digit>/ (0-4, everything) and root/adapt/{train,test}/<digit>/ (5-9, 80/20)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    marker = root / ".complete"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    digits = load_digits()
    rng = np.random.default_rng(0)
    test = rng.random(len(digits.target)) < 0.2
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        image = Image.fromarray(np.clip(pixels * 16, 0, 255).astype(np.uint8), mode="L")
        image = image.resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")
        name = str(label)
        folder = (
            root / "pretrain" / name if name in PRETRAIN else root / "adapt" / ("test" if test[i] else "train") / name
        )
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:04d}.png")
    marker.touch()
    return root


def pretrained_backbone(root: Path) -> Path:
    """The compact ViT trained fully on digits 0-4 with the demo's backbone flags (once)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from imgtune.config import TrainConfig
    from imgtune.tuning.recipe import train

    out = root / "backbone"
    if (out / "metrics.json").is_file():
        return out
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    untrained = root / "untrained"
    ViTForImageClassification(config).save_pretrained(untrained)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=MEAN, image_std=STD).save_pretrained(untrained)
    cfg = TrainConfig(
        model=str(untrained),
        dataset=str(root / "pretrain"),
        method="full",
        lr=1e-3,
        warmup_ratio=0.1,
        epochs=30,
        batch_size=32,
        hflip=False,
        crop_scale=[0.85, 1.0],
        precision="fp32",
        seed=0,
        report_to="none",
        progress=False,
        overwrite=True,
        output_dir=str(out),
    )
    result = train(cfg)
    print(
        f"backbone: validation accuracy {result.metrics['validation']['accuracy']:.4f} on digits 0-4", file=sys.stderr
    )
    return out


# --- (a) the guide's Trainer pipeline ----------------------------------------------------------


def guide_run(data: Path, backbone: Path, seed: int, epochs: int, out: Path) -> float:
    """The PEFT image-classification guide, as written (transforms, collate, LoRA, TrainingArguments)."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        Normalize,
        RandomHorizontalFlip,
        RandomResizedCrop,
        Resize,
        ToTensor,
    )
    from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from imgtune.tuning.pretrained import resolve_targets

    ds = datasets.load_dataset("imagefolder", data_dir=str(data))
    labels = ds["train"].features["label"].names
    label2id, id2label = {c: i for i, c in enumerate(labels)}, dict(enumerate(labels))
    processor = AutoImageProcessor.from_pretrained(backbone)
    normalize = Normalize(mean=processor.image_mean, std=processor.image_std)
    size = processor.size["height"]
    train_transforms = Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), normalize])
    val_transforms = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])

    def preprocess(transforms):
        def apply(batch):
            batch["pixel_values"] = [transforms(image.convert("RGB")) for image in batch["image"]]
            return batch

        return apply

    splits = ds["train"].train_test_split(test_size=0.1, seed=seed)
    train_ds, val_ds, test_ds = splits["train"], splits["test"], ds["test"]
    train_ds.set_transform(preprocess(train_transforms))
    val_ds.set_transform(preprocess(val_transforms))
    test_ds.set_transform(preprocess(val_transforms))

    def collate_fn(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["label"] for e in examples]),
        }

    def compute_metrics(prediction):
        return {"accuracy": float(np.mean(np.argmax(prediction.predictions, axis=1) == prediction.label_ids))}

    torch.manual_seed(seed)  # Trainer seeds again from args.seed; the head's init follows from here too
    model = AutoModelForImageClassification.from_pretrained(
        backbone, label2id=label2id, id2label=id2label, ignore_mismatched_sizes=True
    )
    targets = resolve_targets(model, ["query", "value"], ["classifier"])  # q_proj/v_proj on transformers 5
    lora = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=16, target_modules=targets, lora_dropout=0.1, bias="none", modules_to_save=["classifier"]
        ),
    )
    args = TrainingArguments(
        str(out),
        remove_unused_columns=False,
        eval_strategy="epoch",
        save_strategy="epoch",
        learning_rate=5e-3,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=4,
        per_device_eval_batch_size=32,
        num_train_epochs=epochs,
        logging_steps=10,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        label_names=["labels"],
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        fp16=torch.cuda.is_available(),  # the guide's fp16 needs a GPU
        seed=seed,
        disable_tqdm=True,
        save_total_limit=1,
    )
    trainer = Trainer(
        lora,
        args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=processor,
        compute_metrics=compute_metrics,
        data_collator=collate_fn,
    )
    trainer.remove_callback(PrinterCallback)  # its per-epoch dicts would bury the table
    trainer.train()
    return trainer.evaluate(test_ds, metric_key_prefix="test")["test_accuracy"]


# --- (b)-(e) imgtune ----------------------------------------------------------------------------


def imgtune_settings(kind: str, epochs: int | None) -> dict:
    if kind == "seeds":
        return dict(
            rank=16,
            alpha=16,
            dropout=0.1,
            target_modules=["query", "value"],
            lr=5e-3,
            batch_size=32,
            grad_accum=4,
            epochs=epochs or 5,
            crop_scale=[0.08, 1.0],
            hflip=True,
            precision="fp32",
        )
    if kind == "defaults":
        return dict(epochs=epochs) if epochs else {}
    if kind == "lr-auto":
        return dict(lr="auto", **(dict(epochs=epochs) if epochs else {}))
    if kind == "flip":  # the flips the defaults' mirror test turns off for digits, forced on
        return dict(hflip=True, **(dict(epochs=epochs) if epochs else {}))
    return dict(  # hand-tuned: the demo's adapter flags
        rank=8,
        alpha=16,
        dropout=0.0,
        target_modules=["query", "value", "fc1", "fc2"],
        lr=5e-3,
        batch_size=32,
        epochs=epochs or 30,
        crop_scale=[0.85, 1.0],
        hflip=False,
        precision="fp32",
    )


def imgtune_run(data: Path, backbone: Path, seed: int, kind: str, epochs: int | None, out: Path) -> tuple[float, dict]:
    from imgtune.config import TrainConfig, load_config
    from imgtune.tuning.recipe import train

    cfg = TrainConfig(
        model=str(backbone),
        dataset=str(data),
        method="lora",
        seed=seed,
        output_dir=str(out),
        report_to="none",
        progress=False,
        overwrite=True,
        **imgtune_settings(kind, epochs),
    )
    result = train(cfg)
    used = load_config(out / "imgtune.yaml")
    chosen = {k: getattr(used, k) for k in ("epochs", "batch_size", "lr", "crop_scale", "hflip", "precision")}
    return result.metrics["test"]["accuracy"], chosen


# --- the table ----------------------------------------------------------------------------------

PIPELINES = {
    "guide": "(a) seeds' flags, the guide's Trainer pipeline",
    "seeds": "(b) seeds' flags, imgtune",
    "defaults": "(c) imgtune, all defaults",
    "lr-auto": "(d) imgtune, all defaults + --lr auto",
    "flip": "(e) imgtune, all defaults + --hflip",
    "tuned": "(f) imgtune, hand-tuned flags",
}


def machine() -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        )
    except (OSError, StopIteration):
        import platform

        cpu = platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} usable cores"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="/tmp/imgtune-bench-digits", help="data and the backbone, kept")
    parser.add_argument("--seeds", type=int, default=3, help="runs per pipeline (seeds 0..N-1)")
    parser.add_argument("--epochs", type=int, default=None, help="override every pipeline's epochs (a quick look)")
    parser.add_argument("--only", default=",".join(PIPELINES), help=f"comma-separated subset of {','.join(PIPELINES)}")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    root = write_digit_folders(Path(args.work_dir))
    backbone = pretrained_backbone(root)
    data = root / "adapt"
    work = Path(tempfile.mkdtemp(prefix="imgtune-bench-recipe-"))
    results: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    chosen: dict[str, dict] = {}
    try:
        for seed in range(args.seeds):
            for name in args.only.split(","):
                started = time.perf_counter()
                if name == "guide":
                    accuracy = guide_run(data, backbone, seed, args.epochs or 5, work / f"guide-{seed}")
                else:
                    accuracy, chosen[name] = imgtune_run(
                        data, backbone, seed, name, args.epochs, work / f"{name}-{seed}"
                    )
                results.setdefault(name, []).append(accuracy)
                seconds.setdefault(name, []).append(time.perf_counter() - started)
                print(f"seed {seed} {name}: test accuracy {accuracy:.4f}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tests = sum(1 for _ in (data / "test").rglob("*.png"))
    print(
        f"\n{time.strftime('%Y-%m-%d')}; {machine()}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; digits 5-9 at {SIZE} px, {tests} test images; {args.seeds} seed(s)\n"
    )
    print("| pipeline | test accuracy (mean ± sd) | per seed | s / run |\n|---|---:|---|---:|")
    for name, values in results.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = ", ".join(f"{v:.3f}" for v in values)
        print(
            f"| {PIPELINES[name]} | {statistics.mean(values):.3f} ± {sd:.3f} | {per_seed} | "
            f"{statistics.mean(seconds[name]):.0f} |"
        )
    for name, values in chosen.items():
        print(f"\n{PIPELINES[name]}: " + ", ".join(f"{k} {v}" for k, v in values.items()), end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
