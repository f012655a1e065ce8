"""The generated references (``migu.docgen``) follow the code: a field added to a config
dataclass, or an option added to the parser, appears in them with no other change."""

import argparse
import dataclasses

from migu import docgen
from migu.train.config import TrainConfig


def with_train_class(monkeypatch, cls):
    """The generator's list of sections, its ``train`` section read from ``cls``."""
    original = docgen.config_sections

    def sections():
        return [dataclasses.replace(s, cls=cls) if s.key == "train" else s for s in original()]

    monkeypatch.setattr(docgen, "config_sections", sections)


def test_a_field_added_to_a_config_dataclass_appears_in_the_reference(monkeypatch):
    help_text = "Steps of linear warm-up before the constant rate."
    extended = dataclasses.make_dataclass(
        "TrainConfig",
        [("warmup_steps", int | None, dataclasses.field(default=10, metadata={"help": help_text}))],
        bases=(TrainConfig,),
    )
    before = docgen.config_reference()
    assert "train.warmup_steps" not in before
    with_train_class(monkeypatch, extended)
    page = docgen.config_reference()
    row = "| <code>train.warmup_steps</code> | <code>int &#124; null</code> | <code>10</code> | " + help_text + " |"
    assert row in page.splitlines()
    # the inherited fields keep their help, read from TrainConfig's source
    assert any(line.startswith("| <code>train.lr</code> | <code>float</code> | <code>0.0001</code> | AdamW")
               for line in page.splitlines())  # fmt: skip
    assert len(page.splitlines()) == len(before.splitlines()) + 1


def test_a_field_without_help_shows_a_dash():
    bare = dataclasses.make_dataclass("Bare", [("depth", int, dataclasses.field(default=3))])
    page = docgen.config_reference([docgen.Section("bare", bare, "bare")])
    assert "| <code>bare.depth</code> | <code>int</code> | <code>3</code> | – |" in page


def test_every_key_of_a_run_config_has_a_help_text():
    """A new setting documents itself: its docstring (or ``metadata["help"]``) is its help."""
    missing = [f"{s.key}.{k.name}" for s in docgen.config_sections() for k in docgen.keys_of(s) if not k.help]
    assert not missing, f"config keys without a help text (add a docstring under the field): {missing}"


def test_the_reference_covers_every_registered_plug_in():
    from migu.evaluators import EVALUATORS
    from migu.formats.base import FORMATS
    from migu.methods import METHODS

    page = docgen.config_reference()
    for name in METHODS.names():
        assert f"methods.{name}" in page or f"`{name}`" in page, name
    for name in EVALUATORS.names():
        assert f"evaluators.{name}" in page or f"`{name}`" in page, name
    for name in FORMATS.names():
        kind = name.split("/")[0]
        assert f"## format ({kind} tasks on" in page
    # methods.migu is read flat: MiguConfig's fields sit beside skip_first_task
    assert "## methods.gradient, methods.migu, methods.random_update" in page
    assert "<code>methods.&lt;name&gt;.threshold</code>" in page and "<code>methods.&lt;name&gt;.core" not in page
    assert "the default <code>threshold</code>" in page or "the default `threshold`" in page  # replay, olora


def test_types_and_defaults_read_as_yaml():
    assert docgen.type_text(bool | None) == "bool | null"
    assert docgen.yaml_text((1, "a")) == "[1, a]" and docgen.yaml_text(None) == "null" and docgen.yaml_text("") == "''"
    field = dataclasses.fields(dataclasses.make_dataclass("X", [("t", tuple, dataclasses.field(default=()))]))[0]
    assert docgen.default_text(field) == "[]"


def test_the_cli_reference_follows_the_parser(monkeypatch):
    import migu.cli

    page = docgen.cli_reference()
    parser = migu.cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, subparser in sub.choices.items():
        assert f"## migu {name}" in page
        for action in subparser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert all(f"<code>{option}" in page for option in action.option_strings), (name, action)
    assert "methods (compose with +" in page  # migu run --help's epilog, from the registries

    original = migu.cli.build_parser

    def with_dry_run():
        parser = original()
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sub.choices["run"].add_argument("--dry-run", action="store_true", help="check the grid, train nothing")
        return parser

    monkeypatch.setattr(migu.cli, "build_parser", with_dry_run)
    assert "| <code>--dry-run</code> |  | check the grid, train nothing |" in docgen.cli_reference()
