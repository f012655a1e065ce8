"""The documentation site: ``mkdocs build --strict`` succeeds offline into a temporary folder, the
pages load nothing from the internet, every link between them (page and anchor) exists, the
generated references hold every config key and command, and the guides' examples run.

Needs the ``docs`` extra (``pip install -e ".[docs]"``; .ci/run installs it).
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from doc_blocks import ROOT, fenced_blocks, is_placeholder, migu_arguments, parse_migu, shell_commands

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]'; .ci/run installs it)")
pytest.importorskip("material", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed (pip install -e '.[docs]')")

DOCS = ROOT / "docs"
SOURCES = sorted(p for p in DOCS.rglob("*.md") if "figures" not in p.parts)
LANGUAGES = {"python", "bash", "text", "yaml"}
"""``python`` blocks run; ``bash`` blocks' ``migu`` commands are parsed; ``text`` and ``yaml`` are shown."""


def environment() -> dict[str, str]:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


class Page(HTMLParser):
    """The ids a page defines and the URLs it refers to, by tag and attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            if name in ("href", "src"):
                self.urls.append((tag, name, value))


def read_pages(site: Path) -> dict[Path, Page]:
    pages = {}
    for path in site.rglob("*.html"):
        page = Page()
        page.feed(path.read_text(encoding="utf-8"))
        pages[path] = page
    return pages


def test_the_site_builds_strictly_with_every_page(site: Path) -> None:
    for page in ("index.html", "guide/how-migu-works/index.html", "reference/configuration/index.html",
                 "reference/cli/index.html", "reference/api/migu/index.html", "reference/api/core/index.html",
                 "reference/api/integrations/index.html", "benchmarks/index.html"):  # fmt: skip
        assert (site / page).is_file(), page


def test_the_site_loads_nothing_from_the_internet(site: Path) -> None:
    for path in site.rglob("*"):
        if path.suffix in (".html", ".css", ".js"):
            text = path.read_text(encoding="utf-8", errors="replace")
            assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, path
    for path, page in read_pages(site).items():
        for tag, attribute, url in page.urls:
            loads = (tag, attribute) != ("a", "href")  # a link is followed by the reader; the rest loads
            where = f"{path.relative_to(site)}: <{tag} {attribute}={url}>"
            assert not (loads and re.match(r"(https?:)?//", url)), where


def test_every_internal_link_and_anchor_exists(site: Path) -> None:
    pages = read_pages(site)
    broken = []
    for path, page in pages.items():
        for tag, _, url in page.urls:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//"):
                continue
            base = site if parts.path.startswith("/") else path.parent  # (404.html links from the site's root)
            target = (base / unquote(parts.path).lstrip("/")).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{path.relative_to(site)}: <{tag}> {url} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                anchor = unquote(parts.fragment)
                if anchor not in pages[target].ids:
                    broken.append(f"{path.relative_to(site)}: <{tag}> {url} (no id {anchor!r})")
    assert not broken, "\n".join(broken)


def test_the_configuration_reference_holds_every_key(site: Path) -> None:
    from migu import docgen

    text = html.unescape((site / "reference/configuration/index.html").read_text(encoding="utf-8"))
    for section in docgen.config_sections():
        prefix = f"{section.key}." if section.key else ""
        for key in docgen.keys_of(section):
            assert f"{prefix}{key.name}" in text, f"{prefix}{key.name}"


def test_the_cli_reference_holds_every_command(site: Path) -> None:
    text = html.unescape((site / "reference/cli/index.html").read_text(encoding="utf-8"))
    for command in ("run", "report", "plot", "magnitudes", "eval", "curves"):
        assert f"migu {command}" in text
    for option in ("--effect-of", "--mean-of", "--html", "--per-task", "--base", "--learning"):
        assert option in text


def test_the_api_reference_renders_the_docstrings(site: Path) -> None:
    import migu
    from migu.integrations.hf_trainer import MiguCallback

    api = site / "reference" / "api"
    pages = {name: html.unescape((api / name / "index.html").read_text(encoding="utf-8"))
             for name in ("migu", "core", "integrations")}  # fmt: skip
    for obj, page in ((migu.attach, "migu"), (migu.MiguConfig, "migu"), (migu.MiguHandle, "migu"),
                      (migu.core.magnitude_keep, "core"), (MiguCallback, "integrations")):  # fmt: skip
        first_line = " ".join((obj.__doc__ or "").split("\n\n")[0].split()).replace("``", "")[:60]
        assert first_line and first_line in re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", pages[page])), obj


def test_the_benchmarks_page_is_benchmarks_md(site: Path) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", "", (site / "benchmarks/index.html").read_text(encoding="utf-8")))
    headings = re.findall(r"^#{2,3} (.+)$", (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert headings
    for heading in headings:
        assert heading.replace("`", "").strip() in text, heading
    images = re.findall(r'<img[^>]+src="([^"]+)"', (site / "benchmarks/index.html").read_text(encoding="utf-8"))
    assert len(images) >= 5  # the figures, resolved by the link test


def test_every_code_block_says_what_it_is() -> None:
    """A ``python`` block runs, a ``bash`` block's ``migu`` commands are parsed; anything that cannot
    run is tagged ``text`` (and says why) or ``yaml``."""
    for path in SOURCES:
        for lang, _ in fenced_blocks(path.read_text(encoding="utf-8")):
            assert lang in LANGUAGES, f"{path.relative_to(ROOT)}: a ```{lang or ''} block (use one of {LANGUAGES})"


def test_the_migu_commands_of_the_guides_parse() -> None:
    """Every ``migu`` command in a ``bash`` block parses with migu's own parser, and names config
    files that exist (placeholders such as ``CONFIG.yaml`` apart)."""
    count = 0
    for path in SOURCES:
        for lang, body in fenced_blocks(path.read_text(encoding="utf-8")):
            for words in shell_commands(body) if lang == "bash" else []:
                arguments = migu_arguments(words)
                if arguments is None:
                    continue
                args = parse_migu(arguments)
                count += 1
                config = getattr(args, "config", None)
                if config is not None and not is_placeholder(config):
                    assert (ROOT / config).is_file(), f"{path.relative_to(ROOT)}: migu {' '.join(arguments)}"
    assert count >= 10


def python_blocks(page: Path) -> list[str]:
    return [body for lang, body in fenced_blocks(page.read_text(encoding="utf-8")) if lang == "python"]


PAGES_WITH_PYTHON = [p for p in SOURCES if python_blocks(p)]

RUNNER = """
import json, sys, traceback
failed = []
for page, blocks in json.load(open(sys.argv[1])):
    namespace = {"__name__": "__main__"}  # a page's blocks share one namespace, in order
    try:
        for number, block in enumerate(blocks, 1):
            exec(compile(block, f"{page} (python block {number})", "exec"), namespace)
    except BaseException:
        failed.append(page)
        traceback.print_exc()
print("FAILED PAGES:", failed, file=sys.stderr)
sys.exit(1 if failed else 0)
"""


def test_the_python_blocks_of_the_guides_run(tmp_path: Path) -> None:
    """Every page's ``python`` blocks, in order, in one fresh process (plug-ins a page registers
    stay out of the test process); each page starts from an empty namespace."""
    pages = [(str(p.relative_to(ROOT)), python_blocks(p)) for p in PAGES_WITH_PYTHON]
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps(pages), encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", RUNNER, str(spec)], cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-8000:]}"


def test_the_guides_have_python_to_run() -> None:
    names = {p.relative_to(DOCS).as_posix() for p in PAGES_WITH_PYTHON}
    assert {"guide/how-migu-works.md", "guide/library.md", "guide/extending.md", "guide/runs.md"} <= names
