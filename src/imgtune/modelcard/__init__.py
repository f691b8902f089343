"""A run directory's documentation: README.md, a Hugging Face model card, and report.html, the same
content as one self-contained page.

Both are built from what the directory already holds (metrics.json, imgtune.yaml, the adapter's config,
the two PNGs), so ``merge`` can write a merged model's card long after training. The metadata is
huggingface_hub's ModelCardData, so the hub reads it as it reads its own cards. A local base model or
dataset is named by its directory name only: a card is published, the trainer's paths are not.

``facts`` reads the directory and builds the metadata, ``sections`` says what the card says, ``document``
writes it as Markdown and as HTML. May import ``imgtune.rundir``, ``imgtune.config``, ``imgtune.compare``'s
plots and report helpers and ``imgtune.tuning``'s method registry and hub naming; never the CLI or the
recipe (the recipe calls this).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from huggingface_hub import ModelCard

from imgtune.compare.plots import CONFUSION_PNG, CURVES_PNG, write_run_plots
from imgtune.modelcard.document import render_html, render_markdown
from imgtune.modelcard.facts import RunFacts, card_data, model_name, read_facts
from imgtune.modelcard.sections import sections
from imgtune.rundir import METRICS

README = "README.md"
RUN_PAGE = "report.html"


def write_card(out: Path, f: RunFacts) -> Path:
    """README.md: the metadata block, then the sections. Replaces whatever card was there (peft's template)."""
    if not ((out / CURVES_PNG).is_file() and (out / CONFUSION_PNG).is_file()):
        write_run_plots(out, f.metrics)  # the card links them
    body = render_markdown(model_name(f), sections(f))
    card = ModelCard(f"---\n{card_data(f).to_yaml()}\n---\n\n{body}")
    card.save(out / README)
    return out / README


def write_run_docs(out: str | Path) -> tuple[Path, Path]:
    """A finished run's README.md (model card) and report.html (the same, one self-contained page)."""
    out = Path(out)
    facts = read_facts(out)
    card = write_card(out, facts)
    page = out / RUN_PAGE
    page.write_text(render_html(model_name(facts), sections(facts), out), encoding="utf-8")
    return card, page


def write_merged_card(run: str | Path, target: str | Path) -> Path | None:
    """The merged model's card, from the run's figures; the run's own card says which ids are the hub's
    (a relative path is judged where training ran, not here). None for a run without metrics.json."""
    run, target = Path(run).expanduser(), Path(target)
    if not (run / METRICS).is_file():
        return None
    facts = read_facts(run, target)
    facts.merged = True
    if (run / README).is_file():
        data = ModelCard.load(run / README).data
        if "imgtune" in (data.tags or []):
            facts.base_id = data.base_model if isinstance(data.base_model, str) else None
            facts.dataset_id = (data.datasets or [None])[0]
    for png in (CURVES_PNG, CONFUSION_PNG):
        if (run / png).is_file():
            shutil.copyfile(run / png, target / png)
    return write_card(target, facts)
