"""Loaders: a fixture folder, the real shared folder, the hub conversion, and bad input."""

import json

import pytest

from migu.data import load_sequence, load_task
from migu.data.bbc import bbc_sequence
from migu.data.hub import HUB_TASKS, convert, load_hub_sequence


def test_fixture_task(bench_dir):
    task = load_task(bench_dir, "alpha", n_train=10, n_test=4, n_validation=3, seed=1)
    assert (len(task.train), len(task.test), len(task.validation)) == (10, 4, 3)
    assert task.labels == ("cats", "dogs") and task.category == "TC"
    assert task.instruction == "What is the topic? Choose one from the option."
    assert not {e.text for e in task.train} & {e.text for e in task.validation}
    assert all(e.options == ("cats", "dogs") and e.task == "alpha" for e in task.train)
    again = load_task(bench_dir, "alpha", n_train=10, n_test=4, n_validation=3, seed=1)
    assert [e.text for e in again.train] == [e.text for e in task.train]  # seeded
    other = load_task(bench_dir, "alpha", n_train=10, n_test=4, n_validation=3, seed=2)
    assert [e.text for e in other.train] != [e.text for e in task.train]


def test_fixture_order(bench_dir):
    seq = load_sequence(bench_dir, "tiny", n_train=None, n_test=None)
    assert seq.names == ["alpha", "beta", "gamma"]
    assert len(seq[0].train) == 24 and len(seq[0].test) == 8


def test_real_shared_folder(shared_dir):
    seq = load_sequence(shared_dir, "order1", n_train=50, n_test=20, replace={"yahoo": "yelp"})
    assert seq.names == ["dbpedia", "amazon", "yelp", "agnews"]
    assert len(seq[0].labels) == 14 and all(len(t.train) == 50 and len(t.test) == 20 for t in seq)
    cb = load_task(shared_dir, "cb", n_train=None, n_test=None)
    assert len(cb.train) == 250 and len(cb.test) == 56  # all of them where a task has fewer
    sst = load_task(shared_dir, "sst-2", n_train=5, n_test=5)
    assert sst.labels == ("Good", "Bad") and sst.category == "SC"


def test_real_shared_folder_yahoo_missing(shared_dir):
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['yahoo'\]"):
        load_sequence(shared_dir, "order1")


def test_bbc_tasks():
    seq = bbc_sequence(n_train=20, n_test=10)
    assert len(seq) == 3 and all(len(t.train) == 20 and len(t.test) == 10 for t in seq)
    texts = [e.text for t in seq for e in t.train + t.test]
    assert len(texts) == len(set(texts))  # a topic shared by two tasks gets disjoint articles
    with pytest.raises(ValueError, match="a BBC task needs"):
        bbc_sequence(tasks=[("business", "weather")])


# -- malformed input --------------------------------------------------------------------------


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sequence(tmp_path / "nowhere", "tiny")


def test_bad_json(bench_dir):
    (bench_dir / "TC" / "alpha" / "train.json").write_text("[{oops")
    with pytest.raises(ValueError, match=r"alpha/train.json is not valid JSON"):
        load_task(bench_dir, "alpha")


def test_missing_labels(bench_dir):
    (bench_dir / "SC" / "beta" / "labels.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing file .*beta/labels.json"):
        load_task(bench_dir, "beta")


def test_label_not_in_labels(bench_dir):
    path = bench_dir / "TC" / "gamma" / "test.json"
    rows = json.loads(path.read_text())
    rows[3]["label"] = "green"
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"gamma/test.json: example \d+ has label 'green', which is not in"):
        load_task(bench_dir, "gamma", n_test=None)


def test_empty_task(bench_dir):
    (bench_dir / "TC" / "alpha" / "train.json").write_text("[]")
    with pytest.raises(ValueError, match="task 'alpha' has an empty train split"):
        load_task(bench_dir, "alpha")


def test_unknown_task_in_order(bench_dir):
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['zeta'\] in order 'bad'"):
        load_sequence(bench_dir, "bad")
    with pytest.raises(ValueError, match="unknown order 'order9'"):
        load_sequence(bench_dir, "order9")


def test_row_without_sentence(bench_dir):
    (bench_dir / "TC" / "alpha" / "test.json").write_text(json.dumps([{"text": "x", "label": "cats"}]))
    with pytest.raises(ValueError, match="example 0 needs a string 'sentence'"):
        load_task(bench_dir, "alpha")


# -- hub ----------------------------------------------------------------------------------------


def test_hub_conversion_on_rows_the_test_makes():
    rows = {
        "train": [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3} for i in range(12)],
        "validation_matched": [{"premise": "p", "hypothesis": "h", "label": 2}] * 4,
    }
    calls = []

    def loader(path, config, split):
        calls.append((path, config, split))
        return rows[split]

    seq = load_hub_sequence(["mnli"], n_train=6, n_test=3, n_validation=2, loader=loader)
    task = seq[0]
    assert calls == [("nyu-mll/glue", "mnli", "train"), ("nyu-mll/glue", "mnli", "validation_matched")]
    assert (len(task.train), len(task.validation), len(task.test)) == (6, 2, 3)
    assert task.test[0].label == "contradiction" and task.test[0].text == "sentence 1: p\nsentence 2: h"
    assert set(task.labels) == {"neutral", "entailment", "contradiction"}


def test_hub_label_mapping_and_errors():
    assert convert("imdb", [{"text": "great", "label": 1}]) == [("great", "Good")]
    assert convert("dbpedia", [{"title": "T", "content": "C", "label": 13}]) == [("Title: T\nText: C", "Written Work")]
    with pytest.raises(ValueError, match="row 0 has label 7"):
        convert("agnews", [{"text": "x", "label": 7}])
    with pytest.raises(ValueError, match="unknown hub task"):
        load_hub_sequence(["nope"], loader=lambda *a: [])
    assert len(HUB_TASKS) == 15
