"""Settings left to ``auto`` (TrainConfig.AUTO_FIELDS), fitted to the data, the model and the device at the
start of a run, each with the reason said in the run's first lines; and warnings for settings, chosen or
given, that cannot learn well.

Defaults tuned for Food-101 on a GPU (batch 128, 5 epochs, 8% crops, flips) fail quietly on small data:
on a few thousand 28 px digits they give 15 optimizer steps an epoch and crops of a few pixels (38% test
accuracy against 88% with fitting flags). Only what the data can decide is decided here; flips follow a
test of whether the training images look the same in a mirror (``mirror``: photos do, digits and text don't).

``fit_to_data`` runs once the splits are loaded (batch, epochs, crops, flips); ``fit_to_model`` once the
adapted model exists (precision, ``--lr auto``). A resumed run takes the values its checkpoint recorded,
so it continues with exactly the settings it started with.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from PIL import Image

from imgtune.config import AUTO_FIELDS, TrainConfig
from imgtune.data.decode import check_regular
from imgtune.inference.precision import cpu_has_native_bf16, faster_cpu_precision, precision_name, resolve_precision
from imgtune.tuning.accelerated import find_epoch_sampler, make_accelerator
from imgtune.tuning.checkpoint import STATE, find_checkpoint
from imgtune.tuning.lr_find import LR_FIND_PNG, lr_range_test, plot_lr_find
from imgtune.tuning.mirror import mirror_test

log = logging.getLogger(__name__)

# Trainer's step count is what learns, not epochs: LoRA on a strong pretrained backbone settles in a few
# hundred optimizer steps (the seeds' Food-101 subset run: 5 epochs x 36 steps of 128 already reach 96%),
# on small data and a weaker backbone it takes longer (benchmarks/recipe.py: digits scored 3 points more
# with 690 steps than with 405; shapes were still improving at 612 and scored 4 points more at 1,700);
# the best epoch is restored at the end, so a longer run costs time, not accuracy. Fewer than ~50 steps
# leave the new head barely past its random start.
TARGET_STEPS = 1000
FEW_STEPS = 50
# below ~20 steps an epoch the linear decay and per-epoch validation are too coarse to pick a best epoch
MIN_STEPS_PER_EPOCH = 20
# the seeds' 5 epochs stay the floor (large data: what the reference recipe does); past 50 passes over a
# small set the adapter memorises it rather than learns
MIN_EPOCHS, MAX_EPOCHS = 5, 50
# a GPU's throughput grows up to ~128 images a batch (the seeds' batch); a CPU's is flat past ~32, where a
# smaller batch only buys more steps. Below 8 the gradient is mostly noise.
DEVICE_BATCH = {"cuda": 128}
CPU_BATCH, MIN_BATCH = 32, 8
# the smallest crop may be upscaled at most 1.1x to the model's input: crops stay views of the image at
# its own detail, not blur (an 8% crop is 28% of the side: fine for an 800 px photo into 224, a few pixels
# of a 28 px digit; on benchmarks/recipe.py's 32 px digits, crops from 0.85 scored 2.5 points above 0.44)
MAX_UPSCALE = 1.1
DEFAULT_CROP_LOW, MAX_CROP_LOW = 0.08, 0.85  # the seeds' RandomResizedCrop; keep some scale jitter
# warn when crops are upscaled more than 4x (hold under 1/16 of the input's pixels): they show blur
DETAIL_UPSCALE = 4.0
SAMPLE_IMAGES = 64  # headers only (PIL reads the size without decoding): milliseconds even for JPEGs


@dataclass
class ImageStats:
    short_side: float  # median over the sample, in pixels


def look_at_images(rows, seed: int, count: int = SAMPLE_IMAGES) -> ImageStats | None:
    """Sizes of up to ``count`` training images from their headers (undecoded rows)."""
    rng = np.random.default_rng(seed)  # its own stream: the run's seeded ones stay untouched
    picks = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    sides = []
    for index in picks:
        image = rows[int(index)]["image"]
        try:
            source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
            if not isinstance(source, io.BytesIO):
                check_regular(source)  # a FIFO named like an image would block this look forever
            with Image.open(source) as img:
                sides.append(min(img.size))
        except Exception:  # a bad file is the loader's to count and report
            continue
    return ImageStats(float(np.median(sides))) if sides else None


def steps_per_epoch(images: int, batch_size: int, processes: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(images / (batch_size * processes)) / grad_accum)


def total_steps(cfg: TrainConfig, images: int, processes: int) -> int:
    """The run's optimizer steps (what the schedule and AdaLoRA's budget are sized for)."""
    return steps_per_epoch(images, cfg.batch_size, processes, cfg.grad_accum) * cfg.epochs


def auto_batch(images: int, device_type: str, processes: int, grad_accum: int) -> tuple[int, str]:
    base = DEVICE_BATCH.get(device_type, CPU_BATCH)
    fits = images / (MIN_STEPS_PER_EPOCH * processes * grad_accum)
    # a multiple of 8 (vector and tensor-core widths), not a power of two: 639 images would drop 32 to 16
    batch = min(max(MIN_BATCH, int(min(base, fits)) // 8 * 8), images)
    why = f"{base} suits a {device_type}" + (
        f", lowered to {batch} for at least {MIN_STEPS_PER_EPOCH} steps an epoch over {images:,} images"
        if batch < base
        else ""
    )
    return batch, why


def auto_epochs(per_epoch: int) -> tuple[int, str]:
    epochs = min(max(math.ceil(TARGET_STEPS / per_epoch), MIN_EPOCHS), MAX_EPOCHS)
    return epochs, (
        f"{per_epoch} optimizer steps an epoch; about {TARGET_STEPS} in all wanted "
        f"(within {MIN_EPOCHS}-{MAX_EPOCHS} epochs): {epochs * per_epoch} steps"
    )


def auto_crop(stats: ImageStats | None, input_size: int) -> tuple[list[float], str]:
    if stats is None:
        return [DEFAULT_CROP_LOW, 1.0], "no image header could be read: the seeds' default"
    ratio = stats.short_side / input_size
    low = round(min(max(1 / (MAX_UPSCALE * ratio) ** 2, DEFAULT_CROP_LOW), MAX_CROP_LOW), 2)
    return [low, 1.0], (
        f"images' median short side {stats.short_side:.0f} px for a {input_size} px input: "
        f"the smallest crop is upscaled at most {MAX_UPSCALE}x"
    )


def fit_to_data(recipe) -> TrainConfig:
    """``recipe.cfg`` with batch size, epochs, crop scale and flips resolved where left to auto."""
    cfg, accelerator, train = recipe.cfg, recipe.accelerator, recipe.data.train
    cfg = take_recorded(cfg, recipe.out, recipe.say)
    device = accelerator.device.type
    stats = look_at_images(train, cfg.seed)
    reasons, warnings = [], []
    if cfg.batch_size is None:
        batch, why = auto_batch(len(train), device, accelerator.num_processes, cfg.grad_accum)
        cfg = cfg.replace(batch_size=batch)
        reasons.append(f"batch size {batch}: {why}")
    per_epoch = steps_per_epoch(len(train), cfg.batch_size, accelerator.num_processes, cfg.grad_accum)
    if cfg.epochs is None:
        epochs, why = auto_epochs(per_epoch)
        cfg = cfg.replace(epochs=epochs)
        reasons.append(f"epochs {epochs}: {why}")
    if cfg.crop_scale is None:
        scale, why = auto_crop(stats, recipe.spec.size)
        cfg = cfg.replace(crop_scale=scale)
        reasons.append(f"crop scale {scale[0]:g}-{scale[1]:g}: {why}")
    if cfg.hflip is None or cfg.hflip:
        hflip, why = decide_flips(train, cfg.seed)
        if cfg.hflip is None:
            cfg = cfg.replace(hflip=hflip)
            reasons.append(f"horizontal flips {'on' if hflip else 'off'}: {why}")
        elif not hflip:  # asked for on data that is not its own mirror image
            warnings.append(f"horizontal flips are on and {why}: if a mirrored image is another class (or no class), "
                            "pass --no-hflip (hflip: false)")  # fmt: skip
    if reasons:
        recipe.say("settings fitted to the data (set them to choose yourself):\n  " + "\n  ".join(reasons))
    warnings += setting_warnings(cfg, len(train), len(recipe.data.labels), per_epoch, stats, recipe.spec.size)
    for message in warnings:
        warn(recipe, message)
    return cfg


def decide_flips(train, seed: int) -> tuple[bool, str]:
    """(flips on?, why): off when the training images do not look the same in a mirror."""
    test = mirror_test(train, seed)
    if test is None:
        return True, "the default (photos): too few images a class to test whether they look the same in a mirror"
    if test.handed:
        return False, f"{test.summary()}: a mirrored image is not like the training images (digits, text)"
    return True, f"{test.summary()}: mirrored images are like the training images (photos)"


def setting_warnings(
    cfg: TrainConfig, images: int, classes: int, per_epoch: int, stats: ImageStats | None, input_size: int
) -> list[str]:
    warnings = []
    total = per_epoch * cfg.epochs
    if total < FEW_STEPS:
        warnings.append(
            f"only {total} optimizer steps in the whole run ({cfg.epochs} epochs x {per_epoch}): under "
            f"{FEW_STEPS} the model barely moves from where it started; lower --batch-size or raise --epochs"
        )
    if stats is not None:
        # the crop's side in source pixels against the input's: upscaled more than 4x, a crop is blur
        upscale = input_size / (math.sqrt(cfg.crop_scale[0]) * stats.short_side)
        if upscale > DETAIL_UPSCALE:
            whole, low = input_size / stats.short_side, auto_crop(stats, input_size)[0][0]
            fix = (
                f"raise --crop-scale's lower bound to {low:g}"
                if whole / math.sqrt(low) <= DETAIL_UPSCALE
                else f"even whole images are upscaled {whole:.1f}x: a model with a smaller input fits them better"
            )
            warnings.append(
                f"the smallest crops ({cfg.crop_scale[0]:g} of {stats.short_side:.0f} px images) are upscaled "
                f"{upscale:.1f}x to the {input_size} px input: they show blur, not detail; {fix}"
            )
    if images < 10 * classes:
        warnings.append(f"{images} training images for {classes} classes (under 10 a class): expect a noisy result")
    return warnings


def warn(recipe, message: str) -> None:
    if recipe.accelerator.is_main_process:
        log.warning(message)


def take_recorded(cfg: TrainConfig, out, say) -> TrainConfig:
    """A resumed run's auto settings are the ones its checkpoint recorded: measurements (precision's
    timings, the learning-rate sweep) need not come out the same twice, and the run must continue as it began."""
    if not cfg.resume:
        return cfg
    checkpoint = find_checkpoint(out, cfg.resume)
    if checkpoint is None or not (checkpoint / STATE).is_file():
        return cfg
    recorded = json.loads((checkpoint / STATE).read_text()).get("settings", {})
    taken = {k: recorded[k] for k, auto in AUTO_FIELDS.items() if getattr(cfg, k) == auto and k in recorded}
    if taken:
        say(f"resumed run: auto settings as the checkpoint recorded them: {taken}")
    return cfg.replace(**taken)


def fit_to_model(recipe) -> TrainConfig:
    """``recipe.cfg`` with precision and ``--lr auto`` resolved on the adapted model; a new accelerator
    on ``recipe`` when the precision it was made with is not the one picked."""
    cfg = recipe.cfg
    device = "cuda" if torch.cuda.is_available() else "cpu"  # make_accelerator's choice
    if cfg.precision == "auto":
        precision, why = pick_precision(recipe, device)
        cfg = cfg.replace(precision=precision)
        recipe.say(f"precision {precision}: {why}")
    if resolve_precision(cfg.precision, device) != recipe.accelerator.mixed_precision:
        recipe.accelerator = make_accelerator(cfg)
    if cfg.lr == "auto":
        cfg = cfg.replace(lr=find_lr(recipe, cfg))
    return cfg


def pick_precision(recipe, device: str) -> tuple[str, str]:
    if device == "cuda":
        return precision_name(resolve_precision("auto", device)), "the GPU's fastest half precision"
    if device != "cpu" or not cpu_has_native_bf16():
        return "fp32", "this CPU has no native bf16 (AMX or AVX512-BF16), where bf16 is emulated and many times slower"
    mode, times = faster_cpu_precision(recipe.model, recipe.cfg.batch_size, recipe.spec.size)
    mode = shared(recipe, mode)
    measured = ", ".join(f"{precision_name(m)} {t * 1000:.0f} ms" for m, t in times.items())
    return precision_name(mode), f"the faster of fp32 and bf16 for this model on this CPU ({measured} a step)"


def shared(recipe, value):
    """The main process's value on every process (measurements may differ between them)."""
    if recipe.accelerator.num_processes == 1:
        return value
    return broadcast_object_list([value])[0]


def find_lr(recipe, cfg: TrainConfig) -> float:
    from imgtune.data.transforms import BatchNormalizer  # the recipe's normaliser exists only after prepare

    accelerator, loader = recipe.accelerator, recipe.train_loader
    device = accelerator.device
    normalize = BatchNormalizer(recipe.spec).to(device)
    sampler = find_epoch_sampler(loader)
    position = (sampler.epoch, sampler.start)

    def batches(sweep_pass: int):
        sampler.set_position(10_000 + sweep_pass)  # orders the run itself never uses
        return iter(loader)

    model = recipe.model.to(device)
    result = lr_range_test(
        model,
        lambda m: recipe.method.optimizer(m, cfg.replace(lr=1.0)),
        batches,
        lambda b: (normalize(b.pixel_values.to(device)), b.labels.to(device)),
        accelerator.autocast,
        cfg.max_grad_norm,
    )
    sampler.set_position(*position)
    lr = shared(recipe, result.suggestion)
    if accelerator.is_main_process:
        plot_lr_find(result, recipe.out / LR_FIND_PNG)
    recipe.say(
        f"learning rate {lr:.2g}: range test over {len(result.lrs)} steps ({result.lrs[0]:.0e} to "
        f"{result.lrs[-1]:.0e}): steepest fall at {result.steepest:.2g}, lowest loss at {result.minimum:.2g}; "
        f"picked the lower of the steepest and a tenth of the lowest ({recipe.out / LR_FIND_PNG})"
    )
    return lr
