"""Default adapter targets per backbone family: what a method wraps when no --target-modules is given
and the method's own ViT defaults (``query,value``; IA3's ``key,value,fc2``) are not in the model.

A model belongs to the first family below whose layer names it has (names match the way peft matches
them: a module's full name or its last dotted parts), so one entry covers every size of a family and
transformers and timm spellings alike; a family keeps those of its names the model has. docs/methods.md
("Backbones") shows this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from imgtune.errors import UserError
from imgtune.tuning.pretrained import find_target, layers_summary, resolve_targets, target_layers

OFT_CHANNELS_LAST = "peft's OFT reads every 4-D input as a conv's (N, C, H, W), and these MLP layers take (N, H, W, C)"


@dataclass(frozen=True)
class Family:
    name: str
    targets: tuple[str, ...]
    examples: str
    marker: str | None = None  # a layer the model must also have: tells apart families sharing target names
    refuse: dict[str, str] = field(default_factory=dict)  # methods peft breaks on this family, and why


FAMILIES = (
    # LoRA's own choice for attention (Hu et al.): query and value; old checkpoints' query/value resolve too
    Family("attention", ("q_proj", "v_proj"), "ViT, DeiT, BEiT, DINOv2, Swin, MobileViT (its transformer blocks)"),
    # timm computes q, k and v in one Linear: wrapping it adapts all three at the cost of one layer
    Family("fused attention", ("qkv",), "timm ViT, DeiT, BEiT, EVA, Swin"),
    # the pointwise MLP holds almost all of a block's weights, and is Linear, so most methods take it;
    # the 7x7 depthwise conv has 49 weights per channel, too few to gain from a low-rank update
    Family("convnext", ("pwconv1", "pwconv2"), "ConvNeXt, ConvNeXt V2", refuse={"oft": OFT_CHANNELS_LAST}),
    # the same MLP in timm's naming (Linear, or 1x1 Conv2d in models built with conv_mlp)
    Family("convnext (timm)", ("fc1", "fc2"), "timm ConvNeXt", marker="conv_dw", refuse={"oft": OFT_CHANNELS_LAST}),
    # any other block MLP
    Family("mlp", ("fc1", "fc2"), "other models with fc1/fc2 MLPs"),
    # every conv inside the residual blocks; the stem (3 input channels, a 3*7*7 kernel no OFT/BOFT block
    # size divides) and the 1x1 shortcuts are left out
    Family("resnet", ("layer.0.convolution", "layer.1.convolution", "layer.2.convolution"), "ResNet"),
    # timm's residual blocks; its names cannot leave the stem (also ``conv1``) out
    Family("resnet (timm)", ("conv1", "conv2", "conv3"), "timm ResNet, ResNeXt"),
    # the inverted-residual blocks' 1x1 expand and project convs: most of the weights (the depthwise
    # convs, like ConvNeXt's, have few)
    Family(
        "efficientnet",
        ("expand_conv", "project_conv"),
        "EfficientNet",
        refuse={"boft": "peft's BOFT Conv2d layer cannot take the 'same' padding of EfficientNet's convs"},
    ),
    Family("efficientnet (timm)", ("conv_pw", "conv_pwl"), "timm EfficientNet, MobileNetV3"),
)

# methods whose peft layer takes Linear only, each with the reason
LINEAR_ONLY = {
    "vera": "peft has no VeRA layer for Conv2d",
    "pissa": "peft's PiSSA initialisation is for Linear layers only",
    "oft": "peft's OFT Conv2d layer changes the output even untrained",
}


def family_of(model: torch.nn.Module, head: list[str]) -> tuple[Family, list[str]] | None:
    """The model's family and the spelling of its targets this model has, or None for an unknown model."""
    for family in FAMILIES:
        found = [t for t in (find_target(model, name, head) for name in family.targets) if t]
        if found and (family.marker is None or find_target(model, family.marker, head)):
            return family, list(dict.fromkeys(found))
    return None


def only_linear(model: torch.nn.Module, name: str, head: list[str]) -> bool:
    return all(isinstance(m, torch.nn.Linear) for m in target_layers(model, name, head))


def other_methods(family: Family | None, convs: bool, adapters: list[str]) -> str:
    """The adapter methods (of ``adapters``, the registry's) that work on this family (on its Conv2d
    layers, with ``convs``)."""
    refused = family.refuse if family else {}
    return ", ".join(n for n in adapters if n not in refused and not (convs and n in LINEAR_ONLY))


def choose_targets(
    model: torch.nn.Module,
    method: str,
    requested: list[str] | None,
    defaults: list[str],
    head: list[str],
    adapters: list[str],
) -> list[str]:
    """The target names for ``method``: the user's, else the method's ViT defaults where this model has
    them all (the seeds' behaviour, unchanged), else the model's family defaults."""
    family, family_targets = family_of(model, head) or (None, [])
    if family and method in family.refuse:
        raise UserError(
            f"{method} does not work on {family.name} models ({family.refuse[method]}): "
            f"use --method {other_methods(family, False, adapters)}"
        )
    if requested:
        targets = resolve_targets(model, list(requested), head)
        convs = [t for t in targets if not only_linear(model, t, head)]
        if method in LINEAR_ONLY and convs:
            raise UserError(
                f"{method} wraps Linear layers only ({LINEAR_ONLY[method]}); {', '.join(convs)} are not Linear: "
                f"{layers_summary(model, head)}"
            )
        return targets
    try:
        return resolve_targets(model, list(defaults), head)
    except UserError:
        pass
    if family is None:
        raise UserError(
            f"{method} has no default targets for {type(model).__name__}: pass --target-modules NAMES "
            f"({layers_summary(model, head)}) or all-linear"
        )
    if method not in LINEAR_ONLY:
        return family_targets
    linear = [t for t in family_targets if only_linear(model, t, head)]
    if not linear:
        raise UserError(
            f"{method} wraps Linear layers only ({LINEAR_ONLY[method]}) and this {family.name} model's default "
            f"targets {', '.join(family_targets)} are Conv2d: use --method "
            f"{other_methods(family, True, adapters)}, or name "
            f"Linear layers with --target-modules ({layers_summary(model, head)})"
        )
    return linear
