"""The comparison report: one Markdown file and one self-contained HTML file.

Both are built from the ``metrics.json`` of each run. The Markdown links the PNGs in
``plots/``; the HTML carries the same PNGs inline as base64 and its CSS in a <style>
block, so it is a single file that opens offline (no external CSS, fonts or scripts).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from imgtune.compare import plots

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"


@dataclass
class MethodRun:
    """One method of a comparison: its metrics when it finished, else why it did not."""

    name: str
    metrics: dict | None = None
    error: str | None = None
    reused: bool = False  # finished by an earlier, interrupted comparison


@dataclass
class Figures:
    """PNG bytes by file name (under plots/), in report order."""

    pngs: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, fig) -> str:
        self.pngs[name] = plots.png_bytes(fig)
        return name


# --- formatting ---------------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:02.0f} s"


def fmt_acc(metrics: dict | None) -> str:
    return "-" if not metrics else f"{metrics['accuracy']:.4f}"


def table_rows(runs: list[MethodRun]) -> tuple[list[str], list[list[str]]]:
    header = [
        "method",
        "trainable params",
        "trainable %",
        "weights on disk",
        "best val. accuracy",
        "test accuracy",
        "train images/s",
        "peak memory",
        "wall time",
    ]
    rows = []
    for run in runs:
        m = run.metrics
        if m is None:
            why = run.error or "no metrics"
            rows.append(
                [run.name, why if why.startswith("not finished") else f"failed: {why}"] + [""] * (len(header) - 2)
            )
            continue
        rows.append(
            [
                run.name,
                f"{m['trainable_params']:,}",
                f"{m['trainable_percent']:.3f}%",
                fmt_bytes(m.get("adapter_bytes")),
                fmt_acc(m["validation"]),
                fmt_acc(m.get("test")),
                f"{m['train_images_per_s']:.1f}",
                fmt_bytes(m["peak_memory_mb"] * 2**20),
                fmt_seconds(m.get("wall_time_s")),
            ]
        )
    return header, rows


def final_accuracy(metrics: dict) -> float:
    return (metrics.get("test") or metrics["validation"])["accuracy"]


def best_methods(runs: list[MethodRun]) -> set[str]:
    """Every method that reaches the highest final accuracy (test, else validation): ties all count."""
    done = [r for r in runs if r.metrics]
    if not done:
        return set()
    top = max(final_accuracy(r.metrics) for r in done)
    return {r.name for r in done if final_accuracy(r.metrics) == top}


# --- building -----------------------------------------------------------------------------


def make_figures(runs: list[MethodRun]) -> tuple[Figures, dict[str, str]]:
    """(figures, confusion-matrix figure name by method) for every finished run."""
    finished = {r.name: r.metrics for r in runs if r.metrics}
    figs = Figures()
    confusion = {}
    if finished:
        figs.add("loss.png", plots.comparison_curves(finished, "loss"))
        figs.add("accuracy.png", plots.comparison_curves(finished, "accuracy"))
        figs.add("accuracy_vs_params.png", plots.accuracy_vs_parameters(finished))
        figs.add("per_class_accuracy.png", plots.per_class_heatmap(finished))
        for name, metrics in finished.items():
            confusion[name] = figs.add(f"confusion_{name}.png", plots.confusion_matrix(metrics, name))
    return figs, confusion


SECTIONS = [  # (heading, figure, alt text) shown when at least one run finished
    ("Loss and accuracy per epoch", "loss.png", "training and validation loss per epoch, all methods"),
    (None, "accuracy.png", "validation accuracy per epoch, all methods"),
    ("Accuracy against trainable parameters", "accuracy_vs_params.png", "accuracy against trainable parameters"),
    ("Per-class accuracy", "per_class_accuracy.png", "per-class accuracy of each method"),
]


def settings_lines(settings: dict) -> list[tuple[str, str]]:
    return [
        (k, ", ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in settings.items() if v is not None
    ]


def render_markdown(
    title: str, settings: dict, runs: list[MethodRun], confusion: dict[str, str], notes: list[str]
) -> str:
    header, rows = table_rows(runs)
    best = best_methods(runs)
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in settings_lines(settings)]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in row]  # a '|' in an error message would split the cell
        cells = [
            f"**{c}**" if row[0] in best and i in (0, 5) and c not in ("", "-") else c for i, c in enumerate(cells)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for note in notes:
        lines += [note, ""]
    if confusion:
        for heading, fig, alt in SECTIONS:
            lines += ([f"## {heading}", ""] if heading else []) + [f"![{alt}]({PLOTS_DIR}/{fig})", ""]
        lines += ["## Confusion matrices", ""]
        lines += [f"![{name}: confusion matrix]({PLOTS_DIR}/{fig})" for name, fig in confusion.items()] + [""]
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: .15rem 1rem; font-size: .9rem; }
dl.settings dt { font-weight: 600; } dl.settings dd { margin: 0; }
table { border-collapse: collapse; font-size: .9rem; margin: 1rem 0; }
th, td { padding: .35rem .6rem; border-bottom: 1px solid #e3e3e3; }
th { background: #f4f6f8; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #eef7ee; font-weight: 600; } td.failed { color: #a40000; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0 1.5rem; }
.note { color: #555; font-size: .85rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: .5rem 1rem; }
.grid img { margin: 0; }
"""


def img_tag(png: bytes, alt: str) -> str:
    """A PNG inline as base64: the page stays one file."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _img(figs: Figures, name: str, alt: str) -> str:
    return img_tag(figs.pngs[name], alt)


def page_head(title: str, css: str = CSS) -> list[str]:
    """The opening of a self-contained page: its CSS in a <style> block, nothing fetched."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{css}</style></head><body>",
    ]


def render_html(
    title: str, settings: dict, runs: list[MethodRun], figs: Figures, confusion: dict[str, str], notes: list[str]
) -> str:
    esc = html.escape
    header, rows = table_rows(runs)
    best = best_methods(runs)
    parts = [*page_head(title), f"<h1>{esc(title)}</h1>", '<dl class="settings">']
    parts += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in settings_lines(settings)]
    parts += ["</dl>", "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for run, row in zip(runs, rows):
        if run.metrics is None:
            parts.append(
                f'<tr><td>{esc(row[0])}</td><td class="failed" colspan="{len(header) - 1}">{esc(row[1])}</td></tr>'
            )
            continue
        cells = [f"<td>{esc(row[0])}</td>"] + [f'<td class="num">{esc(c)}</td>' for c in row[1:]]
        parts.append(f"<tr{' class=best' if row[0] in best else ''}>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    parts += [f'<p class="note">{esc(n)}</p>' for n in notes]
    if confusion:
        for heading, fig, alt in SECTIONS:
            parts += ([f"<h2>{esc(heading)}</h2>"] if heading else []) + [_img(figs, fig, alt)]
        parts += ["<h2>Confusion matrices</h2>", '<div class="grid">']
        parts += [_img(figs, fig, f"{name}: confusion matrix") for name, fig in confusion.items()]
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


NOTES = [
    "Highlighted: the highest test accuracy (validation accuracy when there is no test split).",
    "Best val. accuracy: the best epoch's validation accuracy (that epoch's weights are the ones saved). "
    "Test accuracy: the held-out test split, '-' when the data has none.",
    "Weights on disk: the adapter file (with the classifier head) for adapter methods, "
    "the whole model for full/linear.",
    "Peak memory: the training process's peak resident memory on a CPU, peak allocated GPU memory on a GPU. "
    "Wall time: the whole run, from loading data to writing the output directory.",
]


def write_report(out: str | Path, runs: list[MethodRun], settings: dict, title: str) -> tuple[Path, Path]:
    """Write DIR/report.md (+ DIR/plots/*.png) and the self-contained DIR/report.html."""
    out = Path(out)
    figs, confusion = make_figures(runs)
    plot_dir = out / PLOTS_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    for name, data in figs.pngs.items():
        (plot_dir / name).write_bytes(data)
    md, page = out / REPORT_MD, out / REPORT_HTML
    md.write_text(render_markdown(title, settings, runs, confusion, NOTES))
    page.write_text(render_html(title, settings, runs, figs, confusion, NOTES), encoding="utf-8")
    return md, page
