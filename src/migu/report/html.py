"""An offline HTML report: per benchmark folder, the tables ``migu report`` prints and the figures of
``migu plot``, on one self-contained page (images inlined as base64 PNG; no scripts, no CDN, no
external stylesheet), so that it opens in any browser without a network and can be mailed as one file.

Screenshot it headless (Debian's ``chromium`` package):
    chromium --headless --no-sandbox --disable-gpu --screenshot=docs/report.png \\
        --window-size=1200,2400 file://$PWD/report.html
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from .figdata import SettingsOf, load_runs, variant_keys
from .figures import Plotted, plot, slug
from .runs import REQUIRED
from .tables import report_markdown

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.8em; color: #555; }
.grid { display: grid; grid-template-columns: repeat(3, 1fr); gap: 0.3em; }
.grid figure { margin: 0; }
.note { color: #777; font-size: 0.85em; }
"""


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(text: str) -> str:
    """The Markdown that ``report_markdown`` writes as HTML: ``#`` headings, pipe tables (first row
    the header, second the separator) and paragraphs; all text escaped."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            head, body = block[0], [r for r in block[1:] if not set(r.replace("|", "").strip()) <= set("-: ")]
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in _cells(head)) +
                       "</tr></thead><tbody>" +
                       "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>"
                               for r in body) + "</tbody></table>")  # fmt: skip
            continue
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
        i += 1
    return "\n".join(out)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.name)} (numbers: {html.escape(path.with_suffix('.csv').name)})"
            "</figcaption></figure>")  # fmt: skip


def _page(title: str, body: str) -> str:
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>'
    page = f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>"
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head>{page}</html>\n'


def benchmark_page(folder: str | Path, figures_dir: str | Path, by: Sequence[str] = (),
                   settings_of: SettingsOf | None = None, **plot_options: object) -> str:  # fmt: skip
    """One page: the report tables of the runs under ``folder`` and every figure they allow (drawn
    into ``figures_dir``); ``settings_of``: see ``runs.load_results``."""
    runs = load_runs([folder], settings_of)
    with_accuracy = [r for r in runs if all(k in r for k in REQUIRED)]
    parts = []
    if with_accuracy:
        # variants of a method (a threshold sweep, an ablation) are table rows of their own
        keys = tuple(sorted({*variant_keys(with_accuracy), *by}))
        parts.append(markdown_to_html(report_markdown(with_accuracy, "finetune", by=keys, effect_of=("migu",))))
    else:
        parts.append('<p class="note">No run scores accuracy: the tables of migu report are left out.</p>')
    done: Plotted = plot([folder], figures_dir, by=by, settings_of=settings_of, **plot_options)  # type: ignore[arg-type]
    if "ablation" in done.tables:
        parts.append(
            "<h2>Component ablation (AA and BWT per masked-layer choice)</h2>"
            + markdown_to_html(done.tables["ablation"])
        )
    parts.append("<h2>Figures</h2>")
    groups = [("Score matrices", "matrix"), ("Task overlap of the updated rows", "overlap"),
              ("Do the row choices agree?", "agreement"), ("Threshold sweep", "threshold"),
              ("Learning vs forgetting through the rates", "rates"), ("Component ablation", "ablation"),
              ("Stability vs plasticity", "scatter"), ("AA over seeds", "seeds")]  # fmt: skip
    for heading, kind in groups:
        images = "".join(_img(p) for p in done.images if p.stem.split("_")[0] == kind)
        if images:
            # the many small matrices three to a row; the other figures at their own size
            parts.append(f"<h3>{html.escape(heading)}</h3>" + (f'<div class="grid">{images}</div>' if kind == "matrix"
                                                                  else images))  # fmt: skip
    if done.skipped:
        reasons = "; ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in done.skipped.items())
        parts.append(f'<p class="note">Not drawn: {reasons}</p>')
    return _page(f"migu report: {Path(folder).resolve().name} ({len(runs)} runs)", "\n".join(parts))


def write_report(folders: Sequence[str | Path], figures_dir: str | Path, out: str | Path, by: Sequence[str] = (),
                 settings_of: SettingsOf | None = None, **plot_options: object) -> list[Path]:  # fmt: skip
    """Pages for the benchmark ``folders``: with one folder ``out`` is its page; with several, ``out``
    is an index linking one page per folder (``<out stem>-<folder>.html`` beside it), and each
    folder's figures go to ``figures_dir/<folder>``. Returns the pages written, index first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(folders) == 1:
        out.write_text(benchmark_page(folders[0], figures_dir, by, settings_of, **plot_options))
        return [out]
    names = [slug(Path(f).resolve().name) for f in folders]
    if len(set(names)) < len(names):
        raise ValueError(f"benchmark folders must have distinct names for their pages; got {names}")
    pages = []
    for folder, name in zip(folders, names, strict=True):
        page = out.with_name(f"{out.stem}-{name}.html")
        page.write_text(benchmark_page(folder, Path(figures_dir) / name, by, settings_of, **plot_options))
        pages.append(page)
    links = "".join(
        f'<li><a href="{html.escape(p.name)}">{html.escape(n)}</a></li>' for p, n in zip(pages, names, strict=True)
    )
    out.write_text(_page("migu report", f"<ul>{links}</ul>"))
    return [out, *pages]
