"""Build hooks of the documentation site (``hooks:`` in mkdocs.yml).

Pages made at build time, so that they cannot drift from their sources:

- ``reference/configuration.md`` and ``reference/cli.md``: ``migu.docgen`` renders them from the
  config dataclasses and the argparse parser of this checkout (``src/`` comes first on the path);
- ``benchmarks.md``: BENCHMARKS.md at the repository's root, included as it is; only its links
  into ``docs/`` (the figures) are made relative to the site.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def benchmarks_page() -> str:
    """BENCHMARKS.md with its ``docs/...`` links relative to the site's root (where the page is)."""
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    return re.sub(r"(\]\()docs/", r"\1", text)


def generated_pages() -> dict[str, str]:
    from migu import docgen

    return {
        "reference/configuration.md": docgen.config_reference(),
        "reference/cli.md": docgen.cli_reference(),
        "benchmarks.md": benchmarks_page(),
    }


def on_files(files: Files, config: Any) -> Files:
    for uri, content in generated_pages().items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    for path in (ROOT / "BENCHMARKS.md", ROOT / "src" / "migu"):
        server.watch(str(path))
    return server
