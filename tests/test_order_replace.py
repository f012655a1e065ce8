"""``data.replace``: a stand-in for a missing task, or null to drop it from a named order (orders
4-6 without yahoo, which the local data lacks); results record the sequence actually run."""

import pytest

from migu.bench import run, run_config
from migu.data import load_sequence


def test_null_drops_a_task_from_a_named_order(bench_dir):
    seq = load_sequence(bench_dir, "tiny", n_train=4, n_test=2, replace={"beta": None})
    assert seq.name == "tiny" and seq.names == ["alpha", "gamma"]
    stand_in = load_sequence(bench_dir, "tiny", n_train=4, n_test=2, replace={"Beta": None, "gamma": "beta"})
    assert stand_in.names == ["alpha", "beta"]  # keys match any case; replacements apply to the order


def test_a_stand_in_already_in_the_order_is_refused_with_the_way_out(bench_dir):
    with pytest.raises(ValueError, match=r"would hold \['gamma'\] twice.*drops a task instead"):
        load_sequence(bench_dir, "tiny", replace={"beta": "gamma"})
    with pytest.raises(ValueError, match="replace drops every task"):
        load_sequence(bench_dir, ["alpha"], replace={"alpha": None})
    with pytest.raises(ValueError, match=r"or null to drop it"):
        load_sequence(bench_dir, "bad")


def test_results_record_the_sequence_run(bench_dir, tmp_path):
    config = run_config({
        "model": "tiny-bert", "method": "finetune", "seed": 0,
        "data": {"root": str(bench_dir), "order": "tiny", "replace": {"beta": None}, "n_train": 8, "n_test": 4,
                 "evaluate_tasks": "diagonal"},
        "train": {"batch_size": 8, "micro_batch_size": 8, "max_length": 24, "eval_batch_size": 8},
        "output_dir": str(tmp_path), "progress": False,
    })  # fmt: skip
    assert config.data.replace == {"beta": None}
    result = run(config)
    assert result["sequence"] == ["alpha", "gamma"]
    assert [len(row) for row in result["accuracy_matrix"]] == [2, 2, 2]
    assert result["config"]["data"]["replace"] == {"beta": None}


def test_long_orders_without_yahoo(shared_dir):
    for order, first in (("order4", "mnli"), ("order5", "multirc"), ("order6", "yelp")):
        seq = load_sequence(shared_dir, order, n_train=2, n_test=2, replace={"yahoo": None})
        assert len(seq) == 14 and "yahoo" not in seq.names and seq.names[0] == first
    with pytest.raises(ValueError, match=r"would hold \['yelp'\] twice"):
        load_sequence(shared_dir, "order4", replace={"yahoo": "yelp"})
