"""The training recipe, top to bottom: data -> model + adapter -> accelerate loop -> output dir.

The loop is written out (no Trainer) so that AdaLoRA's ``update_and_allocate`` runs after
every optimizer step, bad files are skipped and counted, and ``accelerate launch`` scales it.
"""
from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from .checkpoint import (TrainState, check_settings, checkpoint_root, find_checkpoint,
                         load_checkpoint, new_run_id, result_settings, save_checkpoint, set_aside_earlier_runs,
                         trainable_state)
from .config import TrainConfig
from .data import CSV_PATHS_HINT, load_splits
from .errors import UserError
from .evaluate import run_eval
from .hub import check_push, push
from .loader import BadFiles, EpochSampler, build_loaders, check_strict
from .methods import get_method
from .model import apply_method, check_input_size, count_parameters, load_base_model, load_model_config, load_processor, parameter_report
from .output import METRICS, RUN_CONFIG, adapter_bytes, save_run
from .plots import write_run_plots
from .precision import resolve_precision
from .report import fmt_bytes
from .tracking import resolve_trackers
from .transforms import BatchNormalizer, ImageSpec


# metrics.json fields that measure the machine, not the run: everything else is reproducible
TIMING_FIELDS = ("wall_time_s", "train_images_per_s", "peak_memory_mb")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    model: torch.nn.Module


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    logs = Path(cfg.output_dir) / "logs"
    trackers = resolve_trackers(cfg.report_to, logs)  # checked: accelerate silently drops missing trackers
    # accelerate keeps precision and accumulation in process-wide singletons; several runs in
    # one process (a notebook, `imgtune compare`) each need their own. The distributed state
    # (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        # on a machine without an accelerator, cpu=True is what makes accelerate see a
        # torchrun/`accelerate launch` world as multi-CPU (gloo) rather than N lone processes
        cpu=device_type == "cpu" and not torch.backends.mps.is_available(),
        mixed_precision=resolve_precision(cfg.precision, device_type),
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=trackers or None,
        project_dir=str(logs) if trackers else None,
    )


def is_adalora(model: torch.nn.Module) -> bool:
    return isinstance(model, peft.PeftModel) and isinstance(model.base_model, peft.AdaLoraModel)


def current_rank_pattern(model: torch.nn.Module) -> dict | None:
    return model.peft_config[model.active_adapter].rank_pattern if is_adalora(model) else None


def set_rank_pattern(model: torch.nn.Module, pattern: dict | None) -> None:
    """AdaLoRA saves its pruned shapes from the config's rank pattern: it must match the weights."""
    if is_adalora(model):
        model.peft_config[model.active_adapter].rank_pattern = pattern


def load_state_into(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def find_epoch_sampler(loader) -> EpochSampler:
    """Our sampler, under whatever batch-sampler wrappers accelerate put around it."""
    node = loader
    for _ in range(6):
        node = getattr(node, "batch_sampler", None) or getattr(node, "sampler", None)
        if node is None:
            break
        if isinstance(node, EpochSampler):
            return node
        if isinstance(getattr(node, "sampler", None), EpochSampler):
            return node.sampler
    raise RuntimeError("training loader has no EpochSampler")


def all_bad_files(accelerator: Accelerator, bad: BadFiles) -> dict[str, str]:
    """Each process meets only its shard's bad files: the union over all of them."""
    merged: dict[str, str] = {}
    for reasons in gather_object([bad.reasons]) if accelerator.num_processes > 1 else [bad.reasons]:
        for name, reason in reasons.items():
            merged.setdefault(name, reason)
    return merged


def placeholder_loss(model, normalize: BatchNormalizer, size: int, device) -> torch.Tensor:
    """A zero loss through the real (DDP) forward and backward, for a process whose batch was all
    unreadable files: every process must join each step's gradient all-reduce or the others hang.
    Eval mode, so dropout draws no random numbers and batch-norm statistics stay untouched."""
    model.eval()
    pixels = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)
    loss = model(pixel_values=normalize(pixels), labels=torch.zeros(1, dtype=torch.long, device=device)).loss * 0.0
    model.train()
    return loss


def mean_step_loss(accelerator: Accelerator, loss: torch.Tensor, images: int) -> float | None:
    """The step's training loss over every process's images (None when all batches were empty)."""
    if accelerator.num_processes == 1:
        return loss.item()
    count = torch.tensor(float(images), device=loss.device)
    total = accelerator.reduce(torch.stack([loss.detach().float() * count, count]), reduction="sum")
    return (total[0] / total[1]).item() if total[1] > 0 else None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def epoch_table(history: list[dict]) -> str:
    lines = ["Epoch | Training Loss | Validation Loss | Accuracy", "------|---------------|-----------------|---------"]
    for row in history:
        lines.append(f"{row['epoch']:<5} | {row['train_loss']:<13.6f} | {row['eval_loss']:<15.6f} | {row['eval_accuracy']:.4f}")
    return "\n".join(lines)


def train(cfg: TrainConfig) -> TrainResult:
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)
    accelerator = make_accelerator(cfg)
    say = accelerator.print
    progress = cfg.progress and accelerator.is_local_main_process
    check_settings(cfg)
    if cfg.resume and cfg.resume != "auto":
        find_checkpoint(out, cfg.resume)  # a wrong path fails now, not after the data and model are loaded
    repo_id = check_push(cfg.push_to_hub, cfg.model, cfg.method, cfg.dataset) if cfg.push_to_hub else None

    # data
    with accelerator.main_process_first():  # one process fills datasets' cache, the others read it
        data = load_splits(cfg)
    say(f"data: {cfg.dataset}: {data.summary()}")
    processor = load_processor(cfg.model, load_model_config(cfg.model))
    spec = ImageSpec.from_processor(processor, cfg.image_size)
    with accelerator.local_main_process_first():  # one process per machine builds the --cache, the others read it
        train_loader, eval_loaders = build_loaders(cfg, data, spec, pin_memory=accelerator.device.type == "cuda")
    if cfg.bad_files == "strict":
        check_strict({"train": train_loader.dataset, **{k: v.dataset for k, v in eval_loaders.items()}})

    # model + adapter
    batches_per_process = math.ceil(len(data.train) / (cfg.batch_size * accelerator.num_processes))
    steps_per_epoch = math.ceil(batches_per_process / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    method = get_method(cfg.method)
    base = load_base_model(cfg.model, data.labels)
    if cfg.image_size:
        check_input_size(base, spec.size, cfg.model)
    model = apply_method(base, method, cfg, total_steps)
    trainable, total = count_parameters(model)
    say(parameter_report(model))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    # accelerate steps a prepared scheduler once per process, so it is sized for all of them
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps) * accelerator.num_processes,
                              num_training_steps=total_steps * accelerator.num_processes)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    eval_loaders = {k: accelerator.prepare(v) for k, v in eval_loaders.items()}
    normalize = BatchNormalizer(spec).to(accelerator.device)
    accelerator.init_trackers("imgtune", config={k: v for k, v in cfg.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})

    # resume, then loop
    state = TrainState(run_id=new_run_id(), num_processes=accelerator.num_processes, settings=result_settings(cfg))
    best_state = None
    checkpoint = find_checkpoint(out, cfg.resume) if cfg.resume else None
    if checkpoint is not None:
        state, best_state = load_checkpoint(accelerator, checkpoint, cfg, model, optimizer, scheduler)
        accelerator.step = state.accumulation_step
        if state.global_step:
            set_rank_pattern(accelerator.unwrap_model(model), state.rank_pattern)
        say(f"resuming from {checkpoint} (epoch {state.epoch}, {state.batches_done} batches in, step {state.global_step})")
    else:
        if cfg.resume == "auto":
            say(f"no complete checkpoint in {checkpoint_root(out)}: starting from scratch")
        removed, moved = set_aside_earlier_runs(checkpoint_root(out)) if accelerator.is_main_process else (0, [])
        if removed:
            say(f"removed {removed} checkpoint(s) of a finished earlier run in {checkpoint_root(out)}")
        for aside in moved:
            say(f"note: moved an unfinished earlier run's checkpoints to {aside} and started afresh, as asked "
                f"(no --resume); `--resume {aside}/checkpoint-<step>` goes back to it")
        accelerator.wait_for_everyone()
    bad = BadFiles()
    bad.reasons.update(state.bad_files)

    def checkpoint_now(name: str, best_is_current: bool = False) -> None:
        state.accumulation_step = accelerator.step
        state.bad_files = all_bad_files(accelerator, bad)
        state.rank_pattern = current_rank_pattern(accelerator.unwrap_model(model))
        save_checkpoint(accelerator, out, name, model, optimizer, scheduler, state, best_state, best_is_current,
                        cfg.save_total_limit)

    for epoch in range(state.epoch, cfg.epochs + 1):
        model.train()
        epoch_started = time.perf_counter()
        window: list[float] = []
        # a resumed epoch starts after the batches already consumed (by every process)
        find_epoch_sampler(train_loader).set_position(epoch, state.batches_done * cfg.batch_size * accelerator.num_processes)
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=None if progress else True, leave=False,
                   initial=state.batches_done, total=state.batches_done + len(train_loader))
        for batch in bar:
            state.batches_done += 1
            bad.add(batch.skipped)
            if len(batch) == 0 and accelerator.num_processes == 1:
                continue
            with accelerator.accumulate(model):
                if len(batch):
                    loss = model(pixel_values=normalize(batch.pixel_values), labels=batch.labels).loss
                else:
                    loss = placeholder_loss(model, normalize, spec.size, accelerator.device)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                if accelerator.sync_gradients:
                    state.global_step += 1
                    if is_adalora(accelerator.unwrap_model(model)):
                        # Trainer never does this; without it AdaLoRA keeps init_r everywhere
                        accelerator.unwrap_model(model).base_model.update_and_allocate(state.global_step)
                optimizer.zero_grad()
            state.images_seen += len(batch) * accelerator.num_processes
            step_loss = mean_step_loss(accelerator, loss, len(batch))
            if step_loss is not None:
                state.epoch_loss_sum += step_loss
                state.epoch_loss_count += 1
                window.append(step_loss)
            if accelerator.sync_gradients and state.global_step % cfg.logging_steps == 0 and window:
                lr = scheduler.get_last_lr()[0]
                accelerator.log({"train/loss": sum(window) / len(window), "train/lr": lr}, step=state.global_step)
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", lr=f"{lr:.2e}")
                window = []
            if accelerator.sync_gradients and cfg.save_steps and state.global_step % cfg.save_steps == 0:
                state.train_seconds += time.perf_counter() - epoch_started
                epoch_started = time.perf_counter()
                checkpoint_now(f"checkpoint-{state.global_step}")
        state.train_seconds += time.perf_counter() - epoch_started
        if state.images_seen == 0:
            raise UserError(f"none of the {len(data.train)} training images could be read; {bad.summary()}"
                            f"{CSV_PATHS_HINT if str(cfg.dataset).endswith('.csv') else ''}")

        val = run_eval(model, eval_loaders["validation"], normalize, accelerator, bad, "validation", progress)
        row = {"epoch": epoch, "step": state.global_step,
               "train_loss": state.epoch_loss_sum / max(state.epoch_loss_count, 1),
               **val.metrics("eval_"), "lr": scheduler.get_last_lr()[0]}
        state.history.append(row)
        accelerator.log({"eval/loss": val.loss, "eval/accuracy": val.accuracy, "eval/top5": val.top5},
                        step=state.global_step)
        say(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {val.loss:.4f}, "
            f"val accuracy {val.accuracy:.4f}, top-5 {val.top5:.4f}")
        name = f"checkpoint-{state.global_step}"
        if val.accuracy > state.best_accuracy:
            state.best_accuracy, state.best_epoch, state.best_checkpoint = val.accuracy, epoch, name
            state.best_rank_pattern = current_rank_pattern(accelerator.unwrap_model(model))
            best_state = trainable_state(accelerator.unwrap_model(model))
        state.epoch, state.batches_done, state.epoch_loss_sum, state.epoch_loss_count = epoch + 1, 0, 0.0, 0
        checkpoint_now(name, best_is_current=state.best_checkpoint == name)

    # best epoch back, final figures, output dir
    history, best_epoch, images_seen, train_seconds = state.history, state.best_epoch, state.images_seen, state.train_seconds
    model = accelerator.unwrap_model(model)
    load_state_into(model, best_state)
    set_rank_pattern(model, state.best_rank_pattern)
    final_val = run_eval(model, eval_loaders["validation"], normalize, accelerator, None, "validation", progress)
    test = run_eval(model, eval_loaders["test"], normalize, accelerator, bad, "test", progress) \
        if "test" in eval_loaders else None
    say(epoch_table(history))
    bad.reasons = all_bad_files(accelerator, bad)
    if len(bad):
        say(bad.summary())
    metrics = {
        "method": method.name, "model": cfg.model, "dataset": cfg.dataset, "labels": data.labels,
        "precision": accelerator.mixed_precision, "num_processes": accelerator.num_processes,
        "history": history, "best_epoch": best_epoch,
        "validation": final_val.metrics(), "test": test.metrics() if test else None,
        "trainable_params": trainable, "total_params": total, "trainable_percent": 100 * trainable / total,
        "train_images_per_s": images_seen / train_seconds if train_seconds else 0.0,
        "peak_memory_mb": peak_memory_mb(accelerator.device),
        "bad_files": len(bad), "bad_file_names": sorted(bad.reasons),
        "splits": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test) if data.test else 0},
    }
    evaluated = test or final_val
    metrics["confusion_matrix"] = evaluated.confusion(len(data.labels)).tolist()
    metrics["per_class_accuracy"] = evaluated.per_class_accuracy(len(data.labels))
    if accelerator.is_main_process:
        save_run(out, model, processor)
        cfg.save(out / RUN_CONFIG)
        if len(bad):
            bad.write(out / "bad_files.txt")
        metrics["adapter_bytes"] = adapter_bytes(out)
        metrics["wall_time_s"] = time.perf_counter() - started
        (out / METRICS).write_text(json.dumps(metrics, indent=2))
        write_run_plots(out, metrics)
        say(f"{'test' if test else 'validation'} accuracy {evaluated.accuracy:.4f}; "
            f"saved to {out} ({fmt_bytes(metrics['adapter_bytes'])} of weights)")
        if repo_id:
            say(f"pushed to {push(out, repo_id)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(out, metrics, model)
