"""One registration style for every plug-in kind: a name, a factory, a typed config, traits."""

from dataclasses import dataclass

import pytest

from migu.data import SOURCES
from migu.evaluators import EVALUATORS, build_evaluators
from migu.formats import FORMATS
from migu.methods import METHODS
from migu.registry import Registry


@dataclass
class _Settings:
    size: int = 2
    mode: str = "a"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be at least 1, got {self.size}")


def test_register_build_and_refuse():
    things: Registry[tuple] = Registry("thing", "things")
    things.register("pair", lambda s: ("pair", s.size), _Settings, heavy=True)
    things.register("bare", lambda: ("bare",))
    assert things.build("pair", {"size": 3}) == ("pair", 3) and things.build("bare") == ("bare",)
    assert things.trait("pair", "heavy") and things.with_trait("heavy") == ["pair"]
    with pytest.raises(ValueError, match="thing 'pair' is registered already"):
        things.register("pair", lambda s: None, _Settings)
    with pytest.raises(ValueError, match=r"unknown thing 'triple'; known: bare, pair"):
        things.build("triple")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sise'\] in things.pair"):
        things.build("pair", {"sise": 3})
    with pytest.raises(ValueError, match=r"things.pair.size must be an integer"):
        things.build("pair", {"size": "big"})
    with pytest.raises(ValueError, match=r"things.pair: size must be at least 1"):  # the dataclass's own check
        things.build("pair", {"size": 0})
    with pytest.raises(ValueError, match=r"things.bare takes no settings"):
        things.build("bare", {"size": 1})


def test_every_plugin_kind_uses_the_one_registry():
    for registry, names in ((METHODS, {"finetune", "migu", "random_update", "lora", "ewc"}),
                            (EVALUATORS, {"classification", "lm_loss", "answer_share", "end_task"}),
                            (SOURCES, {"cl_benchmark", "jsonl", "das_cpu", "skills"}),
                            (FORMATS, {"options/encoder", "corpus/decoder", "instruction/decoder"})):  # fmt: skip
        assert isinstance(registry, Registry) and names <= set(registry.names())
    deciding = ["finetune", "freeze_bottom", "inc_lora", "lora", "moelora", "olora", "osf"]
    assert METHODS.with_trait("decides_training") == deciding
    assert METHODS.with_trait("chooses_rows") == ["fisher", "gradient", "migu", "random_update"]
    assert SOURCES.trait("das_cpu", "kinds") == ("corpus",)


def test_a_new_evaluator_is_one_file_and_one_registration(bench_dir, tmp_path):
    """``answer_share`` (evaluators/answer_share.py) is the smallest complete evaluator: a run that
    names it gets its score matrix, with its direction, beside the default accuracy."""
    from migu.bench import run, run_config

    (share,) = build_evaluators(["answer_share"], "options")
    assert share.specs()[0].higher_is_better is False
    data = {"root": str(bench_dir), "order": "tiny", "n_train": 8, "n_test": 8}
    train = {"batch_size": 8, "micro_batch_size": 8, "max_length": 32}
    config = run_config({"model": "tiny-bert", "method": "finetune", "data": data, "train": train,
                         "evaluators": ["classification", "answer_share"], "output_dir": str(tmp_path),
                         "progress": False})  # fmt: skip
    result = run(config)
    entry = result["score_matrices"]["answer_share"]
    assert entry["higher_is_better"] is False
    final = entry["matrix"][-1]
    assert all(100 / 3 <= v <= 100 for v in final)  # (the tiny tasks have at most three labels)


def test_a_section_that_is_not_a_mapping_is_one_line():
    from migu.methods import build_methods

    for value in (5, [1, 2], "x"):
        with pytest.raises(ValueError, match=r"methods\.replay must be a mapping of settings"):
            build_methods("lora+replay", {"replay": value})
