"""A page as sections of blocks, written as Markdown (the model card) and as HTML (the run's
self-contained report.html), so the two always say the same."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

from imgtune.compare.report import CSS, img_tag, page_head

PAGE_CSS = (
    CSS
    + """
pre { background: #f6f8fa; padding: .6rem .8rem; overflow-x: auto; font-size: .85rem; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
ul { padding-left: 1.3rem; }
"""
)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numbers: bool = True  # columns after the first are figures, aligned right


@dataclass
class Code:
    text: str
    lang: str = "python"


@dataclass
class Figure:
    file: str  # a PNG in the same directory
    alt: str


# a block is a paragraph (str, with `code`, **bold** and [links](url)), a bullet list, or one of the above
Block = str | list | Table | Code | Figure
Section = tuple[str, list[Block]]


def md_block(block: Block) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, list):
        return "\n".join(f"- {item}" for item in block)
    if isinstance(block, Code):
        return f"```{block.lang}\n{block.text.strip()}\n```"
    if isinstance(block, Figure):
        return f"![{block.alt}]({block.file})"
    cells = [[c.replace("|", "\\|") for c in row] for row in [block.header, *block.rows]]
    rule = "|" + "|".join("---:" if i and block.numbers else "---" for i in range(len(block.header))) + "|"
    return "\n".join(["| " + " | ".join(cells[0]) + " |", rule] + ["| " + " | ".join(r) + " |" for r in cells[1:]])


def render_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for heading, blocks in sections:
        parts += ([f"## {heading}"] if heading else []) + [md_block(b) for b in blocks]
    return "\n\n".join(parts) + "\n"


def inline_html(text: str) -> str:
    """The page shows a link's text only: a self-contained page points nowhere."""
    text = html.escape(re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text), quote=False)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def html_block(block: Block, folder: Path) -> str:
    if isinstance(block, str):
        return f"<p>{inline_html(block)}</p>"
    if isinstance(block, list):
        return "<ul>" + "".join(f"<li>{inline_html(item)}</li>" for item in block) + "</ul>"
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text.strip())}</code></pre>"
    if isinstance(block, Figure):
        return img_tag((folder / block.file).read_bytes(), block.alt)
    head = "".join(f"<th>{inline_html(h)}</th>" for h in block.header)
    rows = [
        "<tr>"
        + "".join(f"<td{' class=num' if i and block.numbers else ''}>{inline_html(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in block.rows
    ]
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(title: str, sections: list[Section], folder: Path) -> str:
    parts = [*page_head(title, PAGE_CSS), f"<h1>{html.escape(title)}</h1>"]
    for heading, blocks in sections:
        parts += ([f"<h2>{html.escape(heading)}</h2>"] if heading else []) + [html_block(b, folder) for b in blocks]
    parts.append("</body></html>")
    return "\n".join(parts)
