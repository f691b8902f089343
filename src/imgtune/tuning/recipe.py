"""The training recipe, top to bottom: data -> model + method -> accelerate loop -> run directory.

The loop is written out (no Trainer) so that a method's per-step hook (AdaLoRA's
``update_and_allocate``) runs after every optimizer step, bad files are skipped and counted, and
``accelerate launch`` scales it. ``train`` reads as the whole story; each step of it is a method of
``Recipe`` that a test can call on its own.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from imgtune.compare.plots import write_run_plots
from imgtune.compare.report import fmt_bytes
from imgtune.config import TrainConfig
from imgtune.data.badfiles import BadFiles, check_strict
from imgtune.data.loading import build_loaders
from imgtune.data.sources import CSV_PATHS_HINT
from imgtune.data.splits import load_splits
from imgtune.data.transforms import BatchNormalizer, ImageSpec
from imgtune.errors import UserError
from imgtune.inference.precision import precision_name
from imgtune.inference.scoring import EvalResult, run_eval
from imgtune.modelcard import write_run_docs
from imgtune.preflight import preflight
from imgtune.rundir import METRICS, RUN_CONFIG, adapter_bytes, publish_run, save_run
from imgtune.tuning.accelerated import (
    all_bad_files,
    find_epoch_sampler,
    make_accelerator,
    mean_step_loss,
    peak_memory_mb,
    placeholder_loss,
)
from imgtune.tuning.autoconfig import fit_to_data, fit_to_model, total_steps
from imgtune.tuning.checkpoint import (
    TrainState,
    checkpoint_root,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    new_run_id,
    save_checkpoint,
    set_aside_earlier_runs,
    trainable_state,
)
from imgtune.tuning.hub import check_push, push
from imgtune.tuning.methods import get_method
from imgtune.tuning.metrics import TIMING_FIELDS, RunMetrics, collect_metrics, epoch_table
from imgtune.tuning.pretrained import (
    check_input_size,
    count_parameters,
    load_base_model,
    load_model_config,
    load_processor,
    parameter_report,
)

__all__ = ["TIMING_FIELDS", "Recipe", "TrainResult", "train"]

log = logging.getLogger(__name__)
# the learning-rate schedule of the seeds' Trainer runs (its default): linear decay after the warm-up
SCHEDULER = "linear"


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict  # what metrics.json holds (RunMetrics.to_dict())
    model: torch.nn.Module


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.dataset`` and write the run directory ``cfg.output_dir``."""
    recipe = Recipe(preflight(cfg))
    recipe.setup()
    recipe.resume()
    for epoch in range(recipe.state.epoch, recipe.cfg.epochs + 1):  # recipe.cfg: auto settings resolved
        recipe.train_epoch(epoch)
        recipe.end_epoch(epoch)
    return recipe.finish()


class Recipe:
    """One run's objects (accelerator, data, model, optimizer, state) and its steps, in order."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.method = get_method(cfg.method)  # an unknown name fails before any loading
        self.started = time.perf_counter()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad = BadFiles()

    def say(self, message: str) -> None:
        if self.accelerator.is_main_process:
            log.info(message)

    # --- setup --------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        set_seed(cfg.seed)
        self.accelerator = make_accelerator(cfg)
        self.progress = cfg.progress and self.accelerator.is_local_main_process
        if cfg.resume and cfg.resume != "auto":
            find_checkpoint(self.out, cfg.resume)  # a wrong path fails now, not after the data and model load
        self.repo_id = check_push(cfg.push_to_hub, cfg.model, cfg.method, cfg.dataset) if cfg.push_to_hub else None
        if not cfg.resume:  # an earlier run's sweep plot must not pass for this run's (rundir keeps unknown files)
            (self.out / "lr_find.png").unlink(missing_ok=True)
        self.setup_data()
        self.setup_model()
        self.setup_optimizer()

    def setup_data(self) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        with accelerator.main_process_first():  # one process fills datasets' cache, the others read it
            self.data = load_splits(cfg)
        self.say(f"data: {cfg.dataset}: {self.data.summary()}")
        self.processor = load_processor(cfg.model, load_model_config(cfg.model))
        self.spec = ImageSpec.from_processor(self.processor, cfg.image_size)
        cfg = self.cfg = fit_to_data(self)  # batch, epochs, crops, flips left to auto: fitted, and said why
        with accelerator.local_main_process_first():  # one process per machine builds the --cache
            self.train_loader, self.eval_loaders = build_loaders(
                cfg, self.data, self.spec, pin_memory=accelerator.device.type == "cuda"
            )
        if cfg.bad_files == "strict":
            check_strict({"train": self.train_loader.dataset, **{k: v.dataset for k, v in self.eval_loaders.items()}})

    def setup_model(self) -> None:
        cfg = self.cfg
        self.total_steps = total_steps(cfg, len(self.data.train), self.accelerator.num_processes)
        base = load_base_model(cfg.model, self.data.labels)
        if cfg.image_size:
            check_input_size(base, self.spec.size, cfg.model)
        self.model = self.method.apply(base, cfg, self.total_steps)
        self.cfg = fit_to_model(self)  # precision and --lr auto, measured on this model
        self.trainable, self.total = count_parameters(self.model)
        self.say(parameter_report(self.model))

    def setup_optimizer(self) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        optimizer = self.method.optimizer(self.model, cfg)
        # accelerate steps a prepared scheduler once per process, so it is sized for all of them
        processes = accelerator.num_processes
        scheduler = get_scheduler(
            SCHEDULER,
            optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * self.total_steps) * processes,
            num_training_steps=self.total_steps * processes,
        )
        self.model, self.optimizer, self.train_loader, self.scheduler = accelerator.prepare(
            self.model, optimizer, self.train_loader, scheduler
        )
        self.eval_loaders = {k: accelerator.prepare(v) for k, v in self.eval_loaders.items()}
        self.normalize = BatchNormalizer(self.spec).to(accelerator.device)
        accelerator.init_trackers(
            "imgtune", config={k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        )

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # --- resume -------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from ``cfg.resume``'s checkpoint, or start afresh (setting earlier runs aside)."""
        cfg, accelerator = self.cfg, self.accelerator
        self.state = TrainState(
            run_id=new_run_id(), num_processes=accelerator.num_processes, settings=cfg.result_settings()
        )
        checkpoint = find_checkpoint(self.out, cfg.resume) if cfg.resume else None
        if checkpoint is None:
            self.start_afresh()
            return
        self.state, self.best_state = load_checkpoint(
            accelerator, checkpoint, cfg, self.model, self.optimizer, self.scheduler, self.method
        )
        accelerator.step = self.state.accumulation_step
        if self.state.global_step:
            self.method.load_state(self.unwrapped, self.state.method_state)
        self.bad.reasons.update(self.state.bad_files)
        self.say(
            f"resuming from {checkpoint} (epoch {self.state.epoch}, {self.state.batches_done} batches in, "
            f"step {self.state.global_step})"
        )

    def start_afresh(self) -> None:
        root = checkpoint_root(self.out)
        if self.cfg.resume == "auto":
            self.say(f"no complete checkpoint in {root}: starting from scratch")
        removed, moved = set_aside_earlier_runs(root) if self.accelerator.is_main_process else (0, [])
        if removed:
            self.say(f"removed {removed} checkpoint(s) of a finished earlier run in {root}")
        for aside in moved:
            self.say(
                f"note: moved an unfinished earlier run's checkpoints to {aside} and started afresh, as asked "
                f"(no --resume); `--resume {aside}/checkpoint-<step>` goes back to it"
            )
        self.accelerator.wait_for_everyone()

    def checkpoint(self, name: str, best_is_current: bool = False) -> None:
        state, accelerator = self.state, self.accelerator
        state.accumulation_step = accelerator.step
        state.bad_files = all_bad_files(accelerator, self.bad)
        state.method_state = self.method.state(self.unwrapped)
        save_checkpoint(
            accelerator,
            self.out,
            name,
            self.model,
            self.optimizer,
            self.scheduler,
            state,
            self.best_state,
            best_is_current,
            self.cfg.save_total_limit,
            self.method,
        )

    # --- the loop -----------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> None:
        """One pass over the training data (from where a resumed run left off)."""
        cfg, state, accelerator = self.cfg, self.state, self.accelerator
        self.model.train()
        started, window = time.perf_counter(), []
        # a resumed epoch starts after the batches already consumed (by every process)
        done = state.batches_done * cfg.batch_size * accelerator.num_processes
        find_epoch_sampler(self.train_loader).set_position(epoch, done)
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=None if self.progress else True,
            leave=False,
            initial=state.batches_done,
            total=state.batches_done + len(self.train_loader),
        )
        for batch in bar:
            state.batches_done += 1
            self.bad.add(batch.skipped)
            if len(batch) == 0 and accelerator.num_processes == 1:
                continue
            step_loss = self.train_step(batch)
            if step_loss is not None:
                state.epoch_loss_sum += step_loss
                state.epoch_loss_count += 1
                window.append(step_loss)
            if not accelerator.sync_gradients:
                continue
            if state.global_step % cfg.logging_steps == 0 and window:
                self.log_training(bar, sum(window) / len(window))
                window = []
            if cfg.save_steps and state.global_step % cfg.save_steps == 0:
                state.train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                self.checkpoint(f"checkpoint-{state.global_step}")
        state.train_seconds += time.perf_counter() - started
        if state.images_seen == 0:
            raise UserError(
                f"none of the {len(self.data.train)} training images could be read; {self.bad.summary()}"
                f"{CSV_PATHS_HINT if str(cfg.dataset).endswith('.csv') else ''}"
            )

    def train_step(self, batch) -> float | None:
        """Forward, backward and (every grad_accum batches) an optimizer step; the batch's mean loss."""
        accelerator, model = self.accelerator, self.model
        with accelerator.accumulate(model):
            if len(batch):
                loss = model(pixel_values=self.normalize(batch.pixel_values), labels=batch.labels).loss
            else:
                loss = placeholder_loss(model, self.normalize, self.spec.size, accelerator.device)
            accelerator.backward(loss)
            if accelerator.sync_gradients and self.cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            if accelerator.sync_gradients:
                self.state.global_step += 1
                self.method.after_step(self.unwrapped, self.state.global_step)
            self.optimizer.zero_grad()
        self.state.images_seen += len(batch) * accelerator.num_processes
        return mean_step_loss(accelerator, loss, len(batch))

    def log_training(self, bar, loss: float) -> None:
        lr = self.scheduler.get_last_lr()[0]
        self.accelerator.log({"train/loss": loss, "train/lr": lr}, step=self.state.global_step)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")

    def evaluate(self, split: str, bad: BadFiles | None = None) -> EvalResult:
        return run_eval(
            self.model, self.eval_loaders[split], self.normalize, self.accelerator, bad, split, self.progress
        )

    def end_epoch(self, epoch: int) -> None:
        """Validate, remember the best epoch's weights, checkpoint."""
        state = self.state
        val = self.evaluate("validation", self.bad)
        row = {
            "epoch": epoch,
            "step": state.global_step,
            "train_loss": state.epoch_loss_sum / max(state.epoch_loss_count, 1),
            **val.metrics("eval_"),
            "lr": self.scheduler.get_last_lr()[0],
        }
        state.history.append(row)
        self.accelerator.log(
            {"eval/loss": val.loss, "eval/accuracy": val.accuracy, "eval/top5": val.top5}, step=state.global_step
        )
        self.say(
            f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {val.loss:.4f}, "
            f"val accuracy {val.accuracy:.4f}, top-5 {val.top5:.4f}"
        )
        name = f"checkpoint-{state.global_step}"
        if val.accuracy > state.best_accuracy:
            state.best_accuracy, state.best_epoch, state.best_checkpoint = val.accuracy, epoch, name
            state.best_method_state = self.method.state(self.unwrapped)
            self.best_state = trainable_state(self.unwrapped)
        state.epoch, state.batches_done, state.epoch_loss_sum, state.epoch_loss_count = epoch + 1, 0, 0.0, 0
        self.checkpoint(name, best_is_current=state.best_checkpoint == name)

    # --- finish -------------------------------------------------------------------------

    def finish(self) -> TrainResult:
        """The best epoch's weights back, final scores, the run directory written."""
        model = self.unwrapped
        load_weights(model, self.best_state, "the best epoch's weights")
        self.method.load_state(model, self.state.best_method_state)
        final_val = self.evaluate("validation")
        test = self.evaluate("test", self.bad) if "test" in self.eval_loaders else None
        self.say(epoch_table(self.state.history))
        self.bad.reasons = all_bad_files(self.accelerator, self.bad)
        if len(self.bad):
            self.say(self.bad.summary())
        metrics = self.run_metrics(final_val, test)
        if self.accelerator.is_main_process:
            self.write_run(model, metrics)
            evaluated = test or final_val
            self.say(
                f"{'test' if test else 'validation'} accuracy {evaluated.accuracy:.4f}; saved to {self.out} "
                f"({fmt_bytes(metrics.adapter_bytes)} of weights)"
            )
            if self.repo_id:
                self.say(f"pushed to {push(self.out, self.repo_id)}")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return TrainResult(self.out, metrics.to_dict(), model)

    def run_metrics(self, final_val: EvalResult, test: EvalResult | None) -> RunMetrics:
        return collect_metrics(self, final_val, test, precision_name(self.accelerator.mixed_precision),
                               peak_memory_mb(self.accelerator.device))  # fmt: skip

    def write_run(self, model: torch.nn.Module, metrics: RunMetrics) -> None:
        """The run directory, published whole (rundir.publish_run): an earlier run's files never survive
        beside ours, and a failure part-way leaves the earlier run as it was."""

        def fill(folder: Path) -> None:
            save_run(folder, model, self.processor, self.method)
            self.cfg.save(folder / RUN_CONFIG)
            if len(self.bad):
                self.bad.write(folder / "bad_files.txt")
            metrics.adapter_bytes = adapter_bytes(folder)
            metrics.wall_time_s = time.perf_counter() - self.started
            (folder / METRICS).write_text(json.dumps(metrics.to_dict(), indent=2))
            write_run_plots(folder, metrics.to_dict())
            write_run_docs(folder)  # after save_run: replaces peft's template README.md

        publish_run(self.out, fill)
