"""The card's sections: base model, data, method and settings, per-epoch results, per-class
scores, how to use it."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from imgtune.compare.plots import CONFUSION_PNG, CURVES_PNG
from imgtune.compare.report import fmt_bytes, fmt_seconds
from imgtune.config import TrainConfig
from imgtune.modelcard.document import Block, Code, Figure, Section, Table
from imgtune.modelcard.facts import RunFacts, evaluated, short_name
from imgtune.tuning.methods import METHODS, Method

ADAPTER_SHAPE = ("rank", "alpha", "dropout", "target_modules", "method_options")
SHOWN_ELSEWHERE = ("model", "dataset", "method")
MAX_LISTED_CLASSES = 50


def hub_link(hub_id: str, kind: str = "") -> str:
    return f"[`{hub_id}`](https://huggingface.co/{kind}{hub_id})"


def base_text(f: RunFacts) -> str:
    if f.base_id:
        return hub_link(f.base_id)
    return f"a local model directory `{short_name(f.metrics['model'])}`"


def dataset_text(f: RunFacts) -> str:
    spec = f.metrics["dataset"]
    if f.dataset_id:
        split = spec.partition(":")[2]
        return hub_link(f.dataset_id, "datasets/") + (f" (split `{split}`)" if split else "")
    if spec == "digits":
        return "scikit-learn's digits"
    kind = "CSV file" if spec.lower().endswith(".csv") else "image folder"
    return f"a local {kind} `{short_name(spec)}`"


def intro(f: RunFacts) -> list[Block]:
    method = method_of_facts(f)
    text = (
        f"An image classifier: {base_text(f)} fine-tuned with **{f.method}** ({method.summary}) "
        f"on {dataset_text(f)}, trained with imgtune."
    )
    if not f.merged:
        return [text]
    return [
        text,
        f"This is the **merged** model of that run (`imgtune merge`): the {f.method} adapter folded into the "
        "base weights, a plain transformers model that loads without peft and runs at the base model's speed.",
    ]


def base_section(f: RunFacts) -> list[Block]:
    return [
        [
            f"Base model: {base_text(f)}",
            f"Architecture: `{f.architecture}`, {f.metrics['total_params']:,} parameters (with this run's head)",
            f"Input size: {f.input_size}",
        ]
    ]


def method_of_facts(f: RunFacts) -> Method:
    # a run of a method this version no longer has still gets a card, without the method's blurb
    return METHODS.get(f.method) or Method(f.method, "a method this imgtune version does not know")


def data_section(f: RunFacts) -> list[Block]:
    m = f.metrics
    labels = m["labels"]
    listed = ", ".join(f"`{c}`" for c in labels[:MAX_LISTED_CLASSES])
    more = f" and {len(labels) - MAX_LISTED_CLASSES} more" if len(labels) > MAX_LISTED_CLASSES else ""
    facts = [f"Dataset: {dataset_text(f)}", f"{len(labels)} classes: {listed}{more}"]
    if m.get("bad_files"):
        facts.append(f"{m['bad_files']} unreadable image(s) skipped")
    splits = Table(["split", "images"], [[k, f"{v:,}"] for k, v in m["splits"].items() if v])
    return [facts, splits]


def setting_value(f: RunFacts, key: str, value) -> str:
    if key == "cache":  # a path of this machine; that there was one is what shaped the run
        return "yes" if value else "no"
    if value is None and key in ADAPTER_SHAPE and f.peft_type:
        default = getattr(method_of_facts(f), key, None)
        default = ", ".join(default) if isinstance(default, tuple) else default
        return f"{default} ({f.method} default)"
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def hyperparameters(f: RunFacts) -> Table:
    """Every setting that shapes what a run learns (TrainConfig's result settings), as imgtune.yaml has it."""
    shaping = {x.name for x in fields(TrainConfig) if x.metadata.get("result", True)}
    skipped = set(SHOWN_ELSEWHERE) | (set() if f.peft_type else set(ADAPTER_SHAPE))
    rows = [[k, setting_value(f, k, v)] for k, v in f.settings.items() if k in shaping and k not in skipped]
    m = f.metrics
    rows += [["mixed precision (as run)", m["precision"]], ["processes", str(m["num_processes"])]]
    return Table(["setting", "value"], rows, numbers=False)


def training_section(f: RunFacts) -> list[Block]:
    m = f.metrics
    weights = "the adapter, classifier head included" if f.peft_type else "the whole model"
    facts = [
        f"Method: `{f.method}`" + (f" (peft `{f.peft_type}`)" if f.peft_type else ""),
        f"Trainable parameters: {m['trainable_params']:,} of {m['total_params']:,} ({m['trainable_percent']:.3f}%)",
        f"Weights on disk: {fmt_bytes(m.get('adapter_bytes'))} ({weights})",
        f"Wall time: {fmt_seconds(m.get('wall_time_s'))}; best epoch: {m['best_epoch']} (its weights are saved)",
    ]
    return [facts, hyperparameters(f)]


def epoch_rows(m: dict) -> Table:
    header = ["epoch", "step", "training loss", "validation loss", "validation accuracy", "top-5", "learning rate"]
    rows = [
        [
            f"{r['epoch']}{' (best)' if r['epoch'] == m['best_epoch'] else ''}",
            str(r["step"]),
            f"{r['train_loss']:.4f}",
            f"{r['eval_loss']:.4f}",
            f"{r['eval_accuracy']:.4f}",
            f"{r['eval_top5']:.4f}",
            f"{r['lr']:.2e}",
        ]
        for r in m["history"]
    ]
    return Table(header, rows)


def class_scores(m: dict) -> Table | None:
    """Per-class precision, recall and F1 of the evaluated split, from its confusion matrix: each cell
    (true i, predicted j) stands for that many images, which is all scikit-learn needs."""
    cm = np.asarray(m["confusion_matrix"], dtype=np.int64)
    if not cm.sum():
        return None
    true, pred = np.nonzero(cm)
    y_true, y_pred = np.repeat(true, cm[true, pred]), np.repeat(pred, cm[true, pred])
    n = len(m["labels"])
    p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=list(range(n)), zero_division=0)
    predicted = cm.sum(axis=0)
    rows = [
        [
            m["labels"][i],
            f"{p[i]:.4f}" if predicted[i] else "-",  # never predicted: precision is undefined
            f"{r[i]:.4f}" if support[i] else "-",  # not in the split: recall is undefined
            f"{f1[i]:.4f}" if support[i] or predicted[i] else "-",
            str(support[i]),
        ]
        for i in range(n)
    ]
    macro = precision_recall_fscore_support(y_true, y_pred, labels=list(range(n)), average="macro", zero_division=0)
    rows.append(["macro average", *(f"{v:.4f}" for v in macro[:3]), str(int(support.sum()))])
    return Table(["class", "precision", "recall", "F1", "images"], rows)


def evaluation_section(f: RunFacts) -> list[Block]:
    split, s = evaluated(f.metrics)
    blocks: list[Block] = [
        f"On the {split} split ({s['count']:,} images), with the best epoch's weights: accuracy "
        f"**{s['accuracy']:.4f}**, top-5 accuracy {s['top5']:.4f}, loss {s['loss']:.4f}."
    ]
    if split == "test":
        blocks.append(f"Validation accuracy: {f.metrics['validation']['accuracy']:.4f}.")
    scores = class_scores(f.metrics)
    blocks += [scores] if scores else ["No image of the split could be scored."]
    return [*blocks, Figure(CONFUSION_PNG, f"confusion matrix ({split})")]


PEFT_SNIPPET = """
import torch
from peft import PeftConfig, PeftModel
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

run = "{folder}"  # this directory, or the hub repo it was pushed to
image = "img.jpg"
labels = AutoConfig.from_pretrained(run)  # this run's id2label / label2id
base = PeftConfig.from_pretrained(run).base_model_name_or_path
model = AutoModelForImageClassification.from_pretrained(
    base, id2label=labels.id2label, label2id=labels.label2id, ignore_mismatched_sizes=True
)
model = PeftModel.from_pretrained(model, run).eval()
processor = AutoImageProcessor.from_pretrained(run)
inputs = processor(Image.open(image).convert("RGB"), return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
print(labels.id2label[logits.argmax(-1).item()])
"""

PLAIN_SNIPPET = """
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

run = "{folder}"  # this directory, or the hub repo it was pushed to
image = "img.jpg"
model = AutoModelForImageClassification.from_pretrained(run).eval()
processor = AutoImageProcessor.from_pretrained(run)
inputs = processor(Image.open(image).convert("RGB"), return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
print(model.config.id2label[logits.argmax(-1).item()])
"""


def usage_section(f: RunFacts) -> list[Block]:
    blocks: list[Block] = ["With the imgtune command line:", Code(f"imgtune predict {f.folder} img.jpg", "bash")]
    if f.library == "peft":
        blocks += [
            "With peft and transformers (the base model is downloaded, the adapter and head applied to it):",
            Code(PEFT_SNIPPET.format(folder=f.folder)),
            f"`imgtune merge {f.folder} --to merged` folds the adapter in: a plain model that needs no peft.",
        ]
    else:
        what = "the merged model" if f.merged else "the whole fine-tuned model"
        blocks += [f"With transformers alone ({what}, no peft):", Code(PLAIN_SNIPPET.format(folder=f.folder))]
    return blocks


def sections(f: RunFacts) -> list[Section]:
    return [
        ("", intro(f)),
        ("Base model", base_section(f)),
        ("Data", data_section(f)),
        ("Training", training_section(f)),
        ("Training results", [epoch_rows(f.metrics), Figure(CURVES_PNG, "loss and validation accuracy per epoch")]),
        ("Evaluation", evaluation_section(f)),
        ("How to use", usage_section(f)),
    ]
