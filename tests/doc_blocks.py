"""Code blocks of Markdown pages (README.md, docs/): fenced blocks by language, and the shell
commands of ``bash`` blocks, for the tests that run or check them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\S*)[ \t]*$")
PLACEHOLDER = re.compile(r"^\[?[A-Z][A-Z0-9_]*(\.\w+)?/?(\.\.\.)?\]?$")
"""A word that stands for the reader's own value (``CONFIG.yaml``, ``RESULTS_DIR...``, ``FIGURES/``)."""


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block (fences at the start of a line); an unclosed
    fence is an error."""
    out: list[tuple[str, str]] = []
    lang, body, start = None, [], 0
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if lang is None and match:
            lang, body, start = match.group(1), [], number
        elif lang is not None and line.rstrip() == "```":
            out.append((lang, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    if lang is not None:
        raise ValueError(f"a ``` block opened at line {start} is never closed")
    return out


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a shell block, as words: comments dropped, continued lines joined, one
    entry per command of an ``&&`` chain."""
    joined = re.sub(r"\\\n", " ", block)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def migu_arguments(words: list[str]) -> list[str] | None:
    """The arguments of a ``migu`` command (also ``torchrun ... -m migu ...`` and ``accelerate
    launch ... -m migu ...``); None for any other command."""
    if words[0] == "migu":
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "migu":
            return words[i + 2 :]
    return None


def is_placeholder(word: str) -> bool:
    return bool(PLACEHOLDER.search(word))


def parse_migu(arguments: list[str]) -> object:
    """The command parsed by migu's own parser (``migu.cli.build_parser``); a mistake fails with
    argparse's message instead of exiting."""
    import contextlib
    import io

    from migu.cli import build_parser

    arguments = [word.removeprefix("[").removesuffix("]") for word in arguments]  # optional parts, parsed too
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(arguments)
    except SystemExit:
        raise AssertionError(f"migu {' '.join(arguments)}: {err.getvalue().strip()}") from None
