"""The pretrained base model: load it and its processor, find its classification head, resolve target names."""

from __future__ import annotations

import contextlib
from pathlib import Path

import peft
import torch
import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from imgtune.errors import UserError

# transformers 5 renamed ViT-style projections; seeds and older checkpoints use the old names.
TARGET_ALIASES = {
    "query": "q_proj",
    "key": "k_proj",
    "value": "v_proj",
    "attention.output.dense": "o_proj",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
}
TARGET_ALIASES.update({new: old for old, new in list(TARGET_ALIASES.items())})
HEAD_NAMES = ("classifier", "head", "fc", "heads")


@contextlib.contextmanager
def quiet_transformers():
    """Hide the 'newly initialized classifier' notice: a new head is the point of fine-tuning."""
    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def resolve_model_path(name: str) -> str:
    """A local directory (made absolute, so adapter configs point at it from anywhere) or a hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model {name!r} is not a directory holding a saved model (config.json)")
    return name


def load_model_config(name: str, **kwargs):
    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except Exception as err:
        raise UserError(f"cannot load model {name!r}: {str(err).strip().splitlines()[0][:300]}") from None
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise UserError(f"model {name!r} is a {config.model_type!r} model, not an image classifier")
    return config


def load_processor(name: str, config=None):
    """The model's image processor; a model saved without one gets ViT's defaults at its image size."""
    try:
        return AutoImageProcessor.from_pretrained(resolve_model_path(name))
    except Exception:
        size = getattr(config, "image_size", 224) if config is not None else 224
        return transformers.ViTImageProcessor(size={"height": size, "width": size})


def load_base_model(name: str, labels: list[str]) -> torch.nn.Module:
    path = resolve_model_path(name)
    load_model_config(path)
    with quiet_transformers():
        return AutoModelForImageClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )


def check_input_size(model: torch.nn.Module, size: int, name: str) -> None:
    """A user-chosen --image-size the model cannot take (ViT's position embeddings are built for one
    size) fails here, in one line, instead of in the first training step. One forward of a single
    blank image, in eval mode and on a forked RNG so the run's random streams are untouched."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(pixel_values=torch.zeros(1, 3, size, size))
    except (ValueError, RuntimeError) as err:
        native = getattr(model.config, "image_size", None)
        hint = f"leave --image-size out to use its {native}-px input" if native else "leave --image-size out"
        raise UserError(f"{name} cannot take {size}-px images ({str(err).splitlines()[0]}): {hint}") from None
    finally:
        model.train(was_training)


def head_modules(model: torch.nn.Module) -> list[str]:
    """Top-level modules that produce the logits (ViT: ``classifier``), for modules_to_save."""
    num_labels = model.config.num_labels
    heads = []
    for name, module in model.named_children():
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        if name in HEAD_NAMES and any(m.out_features == num_labels for m in linears):
            heads.append(name)
    if not heads:
        raise UserError(f"cannot find the classification head of {type(model).__name__}")
    return heads


def linear_names(model: torch.nn.Module, exclude: list[str]) -> list[str]:
    """Distinct last-component names of Linear layers outside the head (what ``all-linear`` means here:
    peft's own all-linear only excludes language-model output layers, so it would wrap the head)."""
    names = []
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and full.split(".")[0] not in exclude:
            leaf = full.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def resolve_targets(model: torch.nn.Module, requested: list[str], head: list[str]) -> list[str]:
    """Map each requested name onto a module name present in this model (old or new naming)."""
    module_names = [n for n, _ in model.named_modules() if n.split(".")[0] not in head]
    if list(requested) == ["all-linear"]:
        return linear_names(model, head)

    def present(name: str) -> bool:
        return any(n == name or n.endswith("." + name) for n in module_names)

    resolved = []
    for name in requested:
        if present(name):
            resolved.append(name)
        elif name in TARGET_ALIASES and present(TARGET_ALIASES[name]):
            resolved.append(TARGET_ALIASES[name])
        else:
            raise UserError(
                f"target module {name!r} is not in this model: its linear layers are "
                f"{', '.join(linear_names(model, head))} (or use all-linear)"
            )
    return resolved


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) exactly as peft's print_trainable_parameters counts them."""
    if isinstance(model, peft.PeftModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def parameter_report(model: torch.nn.Module) -> str:
    trainable, total = count_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
