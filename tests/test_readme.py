"""The README's Python examples run as written, and each of its shell commands is checked: the
``migu`` commands by migu's own parser (a run's config and overrides as ``migu run`` checks them
before training), the installs against pyproject.toml and .ci/run, and its test command is the
one .ci/run runs."""

import re

from doc_blocks import ROOT, fenced_blocks, migu_arguments, parse_migu, shell_commands

README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
SETUP = {("python3", "-m", "venv", ".venv"), (".", ".venv/bin/activate")}


def blocks(lang):
    return [body for tag, body in fenced_blocks(README.read_text(encoding="utf-8")) if tag == lang]


def test_readme_opens_with_the_library_in_use():
    tag, body = fenced_blocks(README.read_text(encoding="utf-8"))[0]
    assert tag == "python" and "migu.attach(" in body


def test_readme_python_blocks_run():
    found = blocks("python")
    assert found
    for block in found:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})


def ci_words():
    """Every word .ci/run passes to pip, and its pytest command line."""
    pip, pytest_line = set(), None
    for words in shell_commands(CI.read_text(encoding="utf-8")):
        if words[:2] == ["pip", "install"]:
            pip.update(words[2:])
        if words[:3] == ["python", "-m", "pytest"]:
            pytest_line = words
    return pip, pytest_line


def pyproject_extras():
    """The names of the extras in pyproject.toml's ``[project.optional-dependencies]``."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", table, flags=re.MULTILINE))


def extras_of(word):
    """``{"dev", "eval"}`` for ``.[dev,eval]``; None for a word that names no extras."""
    spec = re.fullmatch(r"\.\[([\w,]+)\]", word)
    return set(spec.group(1).split(",")) if spec else None


def check_pip(words, ci_pip, extras):
    """An install of the README: its extras exist, and every package it names is one .ci/run
    installs too (the same pins), so that the README installs what CI tests."""
    for word in words[2:]:
        if word in ("-e", "--no-deps"):
            continue
        named = extras_of(word)
        if named is not None:
            assert not named - extras, f"README: pip install names extras {named - extras} that pyproject.toml lacks"
            ci_extras = set().union(*(extras_of(w) or set() for w in ci_pip))
            assert named <= ci_extras, f"README installs {word}; .ci/run installs the extras {ci_extras}"
            continue
        assert word in ci_pip, f"README installs {word!r}, which .ci/run does not install (as written there)"


def example_parser():
    """The argument parser of examples/trl_sft_migu.py (loaded without running it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("trl_sft_migu", ROOT / "examples" / "trl_sft_migu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def test_readme_commands_are_checked():
    from migu.bench import apply_overrides, load_yaml
    from migu.bench.grid import check_grid

    ci_pip, ci_pytest = ci_words()
    extras = pyproject_extras()
    assert {"dev", "eval", "docs"} <= extras
    seen = set()
    for block in blocks("bash"):
        for words in shell_commands(block):
            seen.add(words[0])
            arguments = migu_arguments(words)
            if tuple(words) in SETUP:
                continue
            if arguments is not None:
                args = parse_migu(arguments)
                if args.command == "run":  # the whole grid, as migu run checks it before training
                    assert check_grid(apply_overrides(load_yaml(ROOT / args.config), args.overrides))
            elif words[:2] == ["pip", "install"]:
                check_pip(words, ci_pip, extras)
            elif words[:2] == ["python", "examples/trl_sft_migu.py"]:  # its options (it runs: test_slow_packaged)
                example_parser().parse_args(words[2:])
            elif words == ["mkdocs", "build", "--strict"]:
                assert (ROOT / "mkdocs.yml").is_file()  # the build itself: tests/test_docs.py
            elif words[:3] == ["python", "-m", "pytest"]:
                assert words == ci_pytest, f"README's test command {words} is not the one .ci/run runs: {ci_pytest}"
            else:
                raise AssertionError(f"README command {' '.join(words)!r} is checked by no test: add a check here")
    assert {"migu", "pip", "python"} <= seen


def test_readme_links_resolve():
    """Every relative link of the README names a file of the repository (and an anchor of a
    Markdown page that it has, as the site's headings slug it)."""
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README links to {link}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), flags=re.MULTILINE)
            slugs = {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", h.lower()).strip()) for h in headings}
            assert anchor in slugs, f"README links to {link}: {path} has no heading {anchor!r}"


def test_readme_lists_every_way_to_choose_rows():
    """The README's table of row choices names every registered method that chooses rows, and
    the freeze-bottom and OSF controls, each with its source."""
    from migu.methods.registry import METHODS

    text = README.read_text(encoding="utf-8")
    section = text.split("## Which rows to update", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(" `"): line for line in section.splitlines() if line.startswith("| `")}
    expected = set(METHODS.with_trait("chooses_rows")) | {"freeze_bottom", "osf"}
    assert set(rows) == expected, f"README's table lists {sorted(rows)}, the registry has {sorted(expected)}"
    assert all(line.rstrip(" |").rsplit("|", 1)[1].strip() for line in rows.values())
