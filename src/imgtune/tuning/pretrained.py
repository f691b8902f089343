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
from imgtune.preflight import looks_like_path

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
    if looks_like_path(name):
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
        processor = AutoImageProcessor.from_pretrained(resolve_model_path(name))
    except Exception:
        size = getattr(config, "image_size", 224) if config is not None else 224
        return transformers.ViTImageProcessor(size={"height": size, "width": size})
    data = getattr(processor, "data_config", None)
    if isinstance(data, dict) and {"input_size", "mean", "std"} <= set(data):
        # timm's processor keeps its size and normalisation in data_config, where imgtune's transforms do not
        # look (they would use 224 px and 0.5), and refuses save_pretrained: the same numbers, in ViT's form
        _, height, width = data["input_size"]
        return transformers.ViTImageProcessor(
            size={"height": height, "width": width}, image_mean=list(data["mean"]), image_std=list(data["std"])
        )
    return processor


def load_base_model(name: str, labels: list[str]) -> torch.nn.Module:
    path = resolve_model_path(name)
    load_model_config(path)
    with quiet_transformers():
        model = AutoModelForImageClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    # A timm checkpoint's preprocessing travels in config.json (pretrained_cfg), and AutoImageProcessor reads it
    # from there before any preprocessor_config.json: a run or merged directory, whose config.json is this one,
    # would then be read with timm's settings instead of those it was trained with (load_processor's).
    if getattr(model.config, "model_type", None) == "timm_wrapper" and hasattr(model.config, "pretrained_cfg"):
        del model.config.pretrained_cfg
    return model


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


def is_head_name(part: str) -> bool:
    """A module name that marks a classifier (``classifier``, ``head``, ``fc``; also ``classifier_distill``)."""
    return part in HEAD_NAMES or part.startswith(("classifier", "head"))


def is_under(name: str, prefixes: list[str]) -> bool:
    """Whether the module or parameter ``name`` is one of ``prefixes`` or lies inside one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def head_modules(model: torch.nn.Module) -> list[str]:
    """The Linear layers of the classification head, by full module name, for modules_to_save: ViT's
    ``classifier``, ResNet's ``classifier.1`` (Flatten + Linear), a timm model's ``timm_model.head``,
    ``timm_model.head.fc`` or ``timm_model.fc``. The Linear layers rather than the whole head block:
    peft's non-LoRA unload (LoHa, LoKr, IA3, OFT...) copies the saved module's ``.weight`` back, which a
    Sequential or timm head does not have, so merging would fail."""
    num_labels = model.config.num_labels
    blocks: list[str] = []  # outermost head-named modules holding a Linear that gives the logits
    for name, module in model.named_modules():
        if not name or is_under(name, blocks) or not is_head_name(name.rsplit(".", 1)[-1]):
            continue
        if any(isinstance(m, torch.nn.Linear) and m.out_features == num_labels for m in module.modules()):
            blocks.append(name)
    heads = [
        f"{block}.{inner}" if inner else block
        for block in blocks
        for inner, m in model.get_submodule(block).named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    if not heads:
        raise UserError(f"cannot find the classification head of {type(model).__name__}")
    return heads


def head_blocks(head: list[str]) -> list[str]:
    """The head-named module around each head Linear (ResNet: ``classifier`` for ``classifier.1``): no
    adapter target is taken from inside it, a hidden head layer included."""
    blocks = []
    for path in head:
        parts = path.split(".")
        first = next((i for i, part in enumerate(parts) if is_head_name(part)), len(parts) - 1)
        blocks.append(".".join(parts[: first + 1]))
    return blocks


def layer_names(model: torch.nn.Module, exclude: list[str], kind: type = torch.nn.Linear) -> list[str]:
    """Distinct names of ``kind`` layers outside the head: the last dotted part (two for a Sequential's
    ``downsample.0``), or the full name where that part also names a head layer (peft matches by suffix,
    so a bare ``fc`` would wrap the head too)."""
    blocks = head_blocks(exclude)
    names = []
    for full, module in model.named_modules():
        if isinstance(module, kind) and not is_under(full, blocks):
            parts = full.split(".")
            leaf = ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]
            name = full if any(h == leaf or h.endswith("." + leaf) for h in exclude) else leaf
            if name not in names:
                names.append(name)
    return names


def linear_names(model: torch.nn.Module, exclude: list[str]) -> list[str]:
    """What ``all-linear`` means here: peft's own all-linear only excludes language-model output layers,
    so it would wrap the head."""
    return layer_names(model, exclude, torch.nn.Linear)


def layers_summary(model: torch.nn.Module, head: list[str]) -> str:
    """The layer names an adapter can target, for error messages."""
    found = [
        f"{label} layers are {', '.join(names)}"
        for label, kind in (("Linear", torch.nn.Linear), ("Conv2d", torch.nn.Conv2d))
        if (names := layer_names(model, head, kind))
    ]
    return "its " + "; its ".join(found) if found else "it has no Linear or Conv2d layers outside its head"


def target_layers(model: torch.nn.Module, name: str, head: list[str]) -> list[torch.nn.Module]:
    """The layers outside the head that peft matches for target ``name`` (the name or a dotted suffix)."""
    blocks = head_blocks(head)
    return [m for n, m in model.named_modules() if (n == name or n.endswith("." + name)) and not is_under(n, blocks)]


def find_target(model: torch.nn.Module, name: str, head: list[str]) -> str | None:
    """``name`` or its other spelling (query <-> q_proj), whichever this model has outside its head."""
    for candidate in (name, TARGET_ALIASES.get(name)):
        if candidate and target_layers(model, candidate, head):
            return candidate
    return None


def resolve_targets(model: torch.nn.Module, requested: list[str], head: list[str]) -> list[str]:
    """Map each requested name onto a module name present in this model (old or new naming)."""
    if list(requested) == ["all-linear"]:
        names = linear_names(model, head)
        if not names:
            raise UserError(
                f"all-linear: this model has no Linear layers outside its head; {layers_summary(model, head)}"
            )
        return names
    resolved = []
    for name in requested:
        found = find_target(model, name, head)
        if found is None:
            raise UserError(
                f"target module {name!r} is not in this model: {layers_summary(model, head)} (or use all-linear)"
            )
        resolved.append(found)
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
