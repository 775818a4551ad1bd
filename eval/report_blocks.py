"""The report's content as plain blocks, written out as Markdown and as an HTML page.

The evaluation decides *what* the report says once (``eval/report.py``); these blocks say it
twice: ``report.md`` for a repository or a terminal, ``report.html`` for a browser. The page is
self-contained except for its figures, which it links by relative path, so the report folder
can be moved or zipped whole. Image grids of tiny models are pre-enlarged with nearest
neighbour; the page also asks the browser not to smooth them.
"""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[tuple[str, str]]  # (bold lead or "", text)


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the report folder, with forward slashes
    alt: str
    caption: str = ""
    pixelated: bool = False  # an enlarged grid of small images: keep its pixels square


Block = Heading | Text | Bullets | Table | Figure


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"- **{lead}**: {text}" if lead else f"- {text}" for lead, text in block.items] + [""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Figure):
            if block.caption:
                lines += [f"**{block.caption}**", ""]
            lines += [f"![{block.alt}]({block.path})", ""]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
figure { margin: 1em 0; overflow-x: auto; }
figcaption { font-weight: 600; margin-bottom: .4em; }
img { max-width: none; }
img.pixelated { image-rendering: pixelated; }
"""


def to_html(blocks: list[Block], title: str) -> str:
    esc = html.escape
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = [
                f"<li><strong>{esc(lead)}</strong>: {esc(text)}</li>" if lead else f"<li>{esc(text)}</li>"
                for lead, text in block.items
            ]
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(cell)}</th>" for cell in block.header)
            rows = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>")
        elif isinstance(block, Figure):
            caption = f"<figcaption>{esc(block.caption)}</figcaption>" if block.caption else ""
            css = ' class="pixelated"' if block.pixelated else ""
            body.append(f'<figure>{caption}<img src="{esc(block.path)}" alt="{esc(block.alt)}"{css}></figure>')
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
