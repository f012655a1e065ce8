"""A protocol written once (``extends``), the official task and dataset names in the input, and
the paper protocol's configs: what the fair comparison (issue 37) runs on."""

from pathlib import Path

import pytest

from migu.bench import apply_overrides, load_yaml, run_config
from migu.bench.fingerprint import config_fingerprint
from migu.bench.runner import load_tasks
from migu.data import load_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_extends_lays_a_file_over_its_parents_in_order(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "seed: 1\ntrain: {lr: 1.0e-3, batch_size: 64}\nmethods: {migu: {threshold: 0.5}}\n"
    )
    (tmp_path / "proto.yaml").write_text("protocol: p\ntrain: {batch_size: 8}\nmethods: {migu: {threshold: 0.7}}\n")
    (tmp_path / "run.yaml").write_text("extends: [base.yaml, proto.yaml]\nseed: 3\n")
    raw = load_yaml(tmp_path / "run.yaml")
    assert raw == {"seed": 3, "protocol": "p", "train": {"lr": 1e-3, "batch_size": 8},
                   "methods": {"migu": {"threshold": 0.7}}}  # fmt: skip
    (tmp_path / "one.yaml").write_text("extends: base.yaml\n")
    assert load_yaml(tmp_path / "one.yaml")["train"] == {"lr": 1e-3, "batch_size": 64}


@pytest.mark.parametrize(
    "text, message",
    [
        ("extends: run.yaml\n", "makes a loop"),
        ("extends: missing.yaml\n", "extends missing.yaml, which does not exist"),
        ("extends: {a: 1}\n", "extends must be a file name or a list"),
    ],
)
def test_bad_extends_is_one_line_naming_the_file(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        load_yaml(tmp_path / "run.yaml")
    assert "run.yaml" in str(err.value) and "\n" not in str(err.value)


def test_a_loop_through_another_file_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="makes a loop"):
        load_yaml(tmp_path / "a.yaml")


def test_official_names_lead_the_instruction(bench_dir):
    plain = load_task(bench_dir, "alpha", n_train=4, n_test=2)
    named = load_task(bench_dir, "alpha", n_train=4, n_test=2, names_in_input=True)
    assert named.instruction == f"Task:{plain.category}\nDataset:alpha\n{plain.instruction}"
    assert [e.instruction for e in named.train] == [named.instruction] * 4
    assert [e.text for e in named.train] == [e.text for e in plain.train]  # the same examples


def test_names_in_input_changes_the_data_digest_and_fingerprint(bench_dir, tmp_path):
    raw = {"model": "tiny-bert", "data": {"root": str(bench_dir), "order": ["alpha", "beta"], "n_train": 4,
                                           "n_test": 2}, "output_dir": str(tmp_path)}  # fmt: skip
    plain = run_config(raw)
    named = run_config(apply_overrides(raw, ["data.names_in_input=true"]))
    assert load_tasks(plain).digest() != load_tasks(named).digest()
    assert config_fingerprint(plain) != config_fingerprint(named)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.source=bbc", "data.names_in_input=true"], "only the cl_benchmark source"),
        (["data.with_task_name=true", "data.names_in_input=true"], "choose one"),
        (["data.names_in_input=maybe"], "data.names_in_input must be true or false"),
    ],
)
def test_names_in_input_refused_where_it_cannot_apply(overrides, message):
    with pytest.raises(ValueError, match=message):
        run_config(apply_overrides({}, overrides))


@pytest.mark.parametrize("name", ["minilm_standard_paper.yaml", "minilm_long_paper.yaml"])
def test_paper_configs_share_one_protocol(name):
    """Each paper config is its benchmark's config with the protocol's settings: batch 8, one
    rate for every method, names in the input, recorded as protocol ``paper``."""
    raw = load_yaml(CONFIGS / "cpu" / name)
    base = load_yaml(CONFIGS / "cpu" / name.replace("_paper", ""))
    raw.pop("method", None)
    for method in ("finetune", "finetune+migu", "finetune+random_update", "lora", "lora+migu"):
        config = run_config(apply_overrides(raw, [f"method={method}"]))
        assert config.protocol == "paper" and config.data.names_in_input
        assert (config.train.lr, config.train.batch_size, config.train.micro_batch_size) == (1e-4, 8, 8)
        assert (config.train.epochs, config.train.schedule, config.train.warmup_ratio) == (1, "constant", 0.0)
        assert config.methods["migu"] == {"threshold": 0.7, "skip_first_task": True}
        assert config.data.order == base["data"]["order"] and config.data.n_test == base["data"]["n_test"]
