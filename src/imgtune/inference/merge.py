"""``imgtune merge``: fold an adapter into its base model and save a plain transformers model.

The merged directory loads with ``AutoModelForImageClassification.from_pretrained`` alone (no peft)
and runs at the base model's speed; peft's ``merge_and_unload`` does the arithmetic for every method.
"""

from __future__ import annotations

from pathlib import Path

import peft
import torch

from imgtune.errors import UserError
from imgtune.modelcard import write_merged_card
from imgtune.rundir import LoadedRun, load_run


def fold_adapter(model):
    """peft's ``merge_and_unload``, checked: the plain model, or a UserError saying why this adapter
    cannot be merged (peft raises for some methods and silently leaves layers behind for others)."""
    method = next(iter(model.peft_config.values())).peft_type
    try:
        merged = model.merge_and_unload()
    except (NotImplementedError, ValueError, AttributeError, TypeError) as err:
        raise UserError(
            f"peft cannot merge a {method} adapter ({err}): serve it unmerged with `imgtune serve`"
        ) from None
    leftovers = [name for name, m in merged.named_modules() if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)]
    if leftovers or isinstance(merged, peft.PeftModel):
        raise UserError(
            f"peft left {method} layers after merging ({', '.join(leftovers[:3])}): this method cannot be merged"
        )
    return merged


def try_merge(model):
    """``model`` with its adapter folded in, or ``model`` itself where peft cannot merge that method."""
    try:
        return fold_adapter(model)
    except UserError:
        return model


def merged_model(run: LoadedRun) -> torch.nn.Module:
    """The plain merged model of a loaded adapter run, in eval mode; refuses non-adapter runs."""
    if not run.is_adapter:
        raise UserError(
            f"{run.path} is a full/linear run, already a plain transformers model: "
            "load it with from_pretrained as it is, there is nothing to merge"
        )
    return fold_adapter(run.model).eval()


def merge(out: str | Path, to: str | Path, base: str | None = None) -> Path:
    """Save the run's adapter folded into its base (or ``base``) as a plain transformers model in ``to``."""
    target = Path(to).expanduser()
    if target.resolve() == Path(out).expanduser().resolve():
        raise UserError("--to must be a new directory, not the run's own output directory")
    run = load_run(out, base)
    model, processor = merged_model(run), run.processor
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)  # config.json carries id2label/label2id
    processor.save_pretrained(target)
    write_merged_card(out, target)
    return target
