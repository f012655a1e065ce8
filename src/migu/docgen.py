"""Reference pages generated from the code for the documentation site, so that they cannot drift.

``config_reference()`` renders every key of a run's config (the settings dataclasses of the run,
of every registered method, evaluator and task format) with its type, default and help text;
``cli_reference()`` renders the ``migu`` command line from its argparse parser. The site's build
hook (``docs/hooks.py``) calls both on every build. A field's help text is its attribute
docstring (the string literal under the field, as the config classes write them) or, for a
dataclass made without source (``dataclasses.make_dataclass``), ``field(metadata={"help": ...})``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import html
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from typing import Any

FORMAT_ARGS = ("tokenizer", "max_length", "with_task_name", "evaluation")
"""Fields of a task format that come from elsewhere in the config (``train.max_length``,
``data.with_task_name``, the top-level ``evaluation``), not from its ``format:`` section."""


@dataclasses.dataclass(frozen=True)
class Section:
    """A block of config keys: ``key`` is its dotted prefix (``""`` for the top level), ``cls`` the
    settings dataclass, ``names`` the plug-ins sharing it, ``note`` a line shown under its title."""

    key: str
    cls: type | None
    title: str
    note: str = ""
    skip: tuple[str, ...] = ()
    flatten: bool = False
    """Nested dataclass fields are read flat in the section (``methods.migu.threshold``, not
    ``methods.migu.core.threshold``): the class reads its own mapping with ``from_dict``."""


@dataclasses.dataclass(frozen=True)
class Key:
    """One documented config key."""

    name: str
    type: str
    default: str
    help: str


def config_sections() -> list[Section]:
    """Every section of a run's config, from the config classes and the plug-in registries."""
    from .bench.config import RunConfig
    from .evaluators import EVALUATORS
    from .formats.base import FORMATS
    from .methods import METHODS

    out = list(_nested_sections(RunConfig, "", "Top level"))
    out += _registry_sections(METHODS, "methods", _method_note)
    out += _registry_sections(EVALUATORS, "evaluators", lambda name: "")
    for name in FORMATS.names():
        cls = _format_class(FORMATS.entry(name).factory)
        kind, arch = name.split("/")
        skip = tuple(f.name for f in dataclasses.fields(cls) if f.name in FORMAT_ARGS or f.name.startswith("_"))
        model = arch.replace("_", "-")
        article = "an" if model[0] in "aeiou" else "a"
        out.append(Section("format", cls, f"format ({kind} tasks on {article} {model} model)", skip=skip))
    return out


def _nested_sections(cls: type, key: str, title: str) -> Iterator[Section]:
    nested = [f for f in dataclasses.fields(cls) if _dataclass_of(cls, f) is not None]
    yield Section(key, cls, title, skip=tuple(f.name for f in nested))
    for f in nested:
        inner = _dataclass_of(cls, f)
        assert inner is not None
        sub = f"{key}.{f.name}" if key else f.name
        yield from _nested_sections(inner, sub, f"{sub}")


def _registry_sections(registry: Any, where: str, note: Callable[[str], str]) -> list[Section]:
    """One section per settings class, naming every plug-in that shares it; one for those with none."""
    by_class: dict[type, list[str]] = {}
    without: list[str] = []
    for name in registry.names():
        cls = registry.entry(name).config_cls
        if cls is None:
            without.append(name)
        else:
            by_class.setdefault(cls, []).append(name)
    out = []
    for cls, names in by_class.items():
        notes = [n for n in (note(name) for name in names) if n]
        title = ", ".join(f"{where}.{n}" for n in names)
        key = f"{where}.{names[0]}" if len(names) == 1 else f"{where}.<name>"
        if len(names) > 1:
            notes.insert(0, f"Shared by {len(names)} {registry.kind}s: `<name>` is {_either(names)}.")
        out.append(Section(key, cls, title, " ".join(notes), flatten=hasattr(cls, "from_dict")))
    if without:
        out.append(Section(where, None, f"{where}: no settings", ", ".join(f"`{n}`" for n in without) + "."))
    return out


def _either(names: Sequence[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def _method_note(name: str) -> str:
    from .methods import METHODS

    threshold = METHODS.trait(name, "migu_threshold")
    if threshold is None:
        return ""
    return f"With `{name}` in a combination, the default `threshold` of a row score (`migu`, ...) is {threshold}."


def _format_class(factory: Any) -> type:
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return factory
    made = typing.get_type_hints(factory).get("return")
    if not (isinstance(made, type) and dataclasses.is_dataclass(made)):
        raise TypeError(f"format factory {factory!r} has no dataclass return annotation")
    return made


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve here: the text as written
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _dataclass_of(cls: type, f: dataclasses.Field[Any]) -> type | None:
    hint = _hints(cls).get(f.name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def keys_of(section: Section) -> list[Key]:
    """The documented keys of a section, in field order (a flattened nested class in place)."""
    return [] if section.cls is None else list(_keys(section.cls, section.skip, section.flatten))


def _keys(cls: type, skip: Sequence[str], flatten: bool) -> Iterator[Key]:
    hints = _hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        inner = _dataclass_of(cls, f)
        if inner is not None and flatten:
            yield from _keys(inner, (), False)
            continue
        help_text = f.metadata.get("help") or docs.get(f.name, "")
        yield Key(f.name, type_text(hints.get(f.name, f.type)), default_text(f), _one_paragraph(help_text))


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases (the nearest class wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(_own_field_docs(klass))
    return out


@cache
def _own_field_docs(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # made at run time (make_dataclass), a builtin: no source
        return {}
    tree = ast.parse(source)
    node = tree.body[0]
    if not isinstance(node, ast.ClassDef):
        return {}
    out = {}
    for here, after in zip(node.body, node.body[1:], strict=False):
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(here, ast.AnnAssign) and isinstance(here.target, ast.Name) and is_doc:
            value = after.value.value  # type: ignore[attr-defined]
            if isinstance(value, str):
                out[here.target.id] = inspect.cleandoc(value)
    return out


def _one_paragraph(text: str) -> str:
    return " ".join(text.split())


def type_text(annotation: Any) -> str:
    """An annotation as a config author reads it (``null`` for None, a Literal's values)."""
    if isinstance(annotation, str):
        return annotation
    if annotation is Any:
        return "any"
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin in (list, tuple):
        item = args[0] if args and (len(args) == 1 or args[1] is Ellipsis) else Any
        return f"list[{type_text(item)}]"
    if origin is dict or annotation is dict:
        return f"mapping[{type_text(args[0])}, {type_text(args[1])}]" if args else "mapping"
    return getattr(annotation, "__name__", str(annotation))


def default_text(f: dataclasses.Field[Any]) -> str:
    """A field's default as it is written in a YAML config."""
    if f.default is not dataclasses.MISSING:
        return yaml_text(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return yaml_text(f.default_factory())
    return "(required)"


def yaml_text(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if value and value.strip() == value and value[0] not in "[{&*!|>'\"%@`" else repr(value)
    return str(value)


def _cell(text: str) -> str:
    """Text for a Markdown table cell: ``code`` as <code>, HTML escaped, no bare ``|``."""
    parts = re.split(r"``(.+?)``", text)
    out = []
    for i, part in enumerate(parts):
        escaped = html.escape(part, quote=False).replace("|", "&#124;")
        if i % 2:
            out.append(f"<code>{escaped}</code>")
        else:
            out.append(escaped.replace("*", "&#42;").replace("[", "&#91;").replace("_", "&#95;"))
    return "".join(out)


def _code_cell(text: str) -> str:
    return f"<code>{html.escape(text, quote=False).replace('|', '&#124;')}</code>"


def section_markdown(section: Section) -> str:
    lines = [f"## {section.title}", ""]
    doc = _class_doc(section.cls) if section.cls is not None else ""
    intro = " ".join(x for x in (doc, section.note) if x)
    if intro:
        lines += [intro, ""]
    keys = keys_of(section)
    if keys:
        prefix = f"{section.key}." if section.key else ""
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for k in keys:
            cells = (_code_cell(prefix + k.name), _code_cell(k.type), _code_cell(k.default), _cell(k.help) or "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    elif section.cls is not None:
        lines += ["No settings.", ""]
    return "\n".join(lines)


def _class_doc(cls: type) -> str:
    """The docstring of ``cls``, or of its nearest documented base (a subclass made to add a field)."""
    for klass in cls.__mro__[:-1]:
        doc = klass.__dict__.get("__doc__") or ""
        if doc and not doc.startswith(f"{klass.__name__}("):  # (dataclass writes the signature when undocumented)
            return _cell(_one_paragraph(inspect.cleandoc(doc)))
    return ""


CONFIG_INTRO = """\
# Configuration reference

Every key of a run's config, generated from the settings dataclasses when the site is built
(`migu.docgen`): a key written in a YAML file (`train: {lr: 3e-5}`) or as an override on the
command line (`train.lr=3e-5`). Values are checked against these types when the config loads
(`migu.settings`): an unknown key or a value of the wrong type is one error naming the key,
before anything runs. `migu run --help` prints the same sections with their defaults.
"""


def config_reference(sections: Sequence[Section] | None = None) -> str:
    """The configuration reference page (Markdown)."""
    chosen = config_sections() if sections is None else sections
    return CONFIG_INTRO + "\n" + "\n".join(section_markdown(s) for s in chosen)


CLI_INTRO = """\
# Command-line reference

Generated from the argparse parser of `migu` (`migu.cli.build_parser`) when the site is built.
A mistake in the arguments or the config is one line on stderr, `migu: error: ...`, and exit
status 2; a grid partly run by another process exits with status 3.
"""


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        metavar = action.metavar if action.metavar is not None else action.dest.upper()
        shown = " ".join(metavar) if isinstance(metavar, tuple) else str(metavar)
        if action.option_strings:
            name = ", ".join(action.option_strings) + ("" if action.nargs == 0 else f" {shown}")
            unset = action.default in (None, False, [], argparse.SUPPRESS)
            default = "" if unset else _code_cell(str(action.default))
        else:
            many = action.nargs in ("*", "+")
            name = (str(action.metavar) if action.metavar else action.dest) + (" ..." if many else "")
            default = ""
        rows.append(f"| {_code_cell(name)} | {default} | {_cell(action.help or '')} |")
    return rows


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The CLI reference page (Markdown)."""
    from .cli import build_parser

    parser = parser or build_parser()
    lines = [CLI_INTRO, "## migu", "", "```text", parser.format_usage().strip(), "```", ""]
    lines += ["| argument | default | meaning |", "| --- | --- | --- |", *_argument_rows(parser), ""]
    for name, summary, sub in _subcommands(parser):
        lines += [f"## migu {name}", "", _cell(summary) + ".", "", "```text", sub.format_usage().strip(), "```", ""]
        lines += ["| argument | default | meaning |", "| --- | --- | --- |", *_argument_rows(sub), ""]
        epilog = sub.epilog() if callable(sub.epilog) else sub.epilog
        if epilog:
            lines += [f"`migu {name} --help` adds:", "", "```text", epilog.strip(), "```", ""]
    return "\n".join(lines)
