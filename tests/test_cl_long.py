"""The long benchmark's queue (benchmarks/cl_long.py) takes a folder's results as its run's only
when they are of the same config; nothing here trains."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cl_long():
    spec = importlib.util.spec_from_file_location("cl_long", BENCHMARKS / "cl_long.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_run(cl_long, out):
    from migu.bench import apply_overrides, load_yaml, run_config

    config_path, method, order, seed = cl_long.queue()[0]
    rates = json.loads(cl_long.CHOICE.read_text())
    overrides = cl_long._overrides(config_path, method, order, seed, rates, out)
    return run_config(apply_overrides(load_yaml(config_path), overrides))


def test_finished_results_count_only_for_the_same_config(cl_long, tmp_path, capsys):
    from migu.bench import config_fingerprint

    config = _first_run(cl_long, tmp_path)
    folder = tmp_path / config.run_name()
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"fingerprint": config_fingerprint(config)}))
    cl_long.main(["--out", str(tmp_path), "--list"])
    assert f"{tmp_path.name}/{config.run_name()}  lr 0.001  [done]" in capsys.readouterr().out
    # a changed key (--set) makes them another config's results: refused before anything trains
    with pytest.raises(SystemExit) as stop:
        cl_long.main(["--out", str(tmp_path), "--set", "data.n_test=400"])
    assert stop.value.code == 2
    assert f"{folder} holds a run of a different config" in capsys.readouterr().err
    cl_long.main(["--out", str(tmp_path), "--list", "--set", "data.n_test=400"])
    assert f"{tmp_path.name}/{config.run_name()}  lr 0.001  [different config]" in capsys.readouterr().out


def test_rate_of_another_method_and_its_folder(cl_long, tmp_path, capsys):
    """``X@Y`` trains X at Y's rate: beside the main folder when X has a chosen rate of its own
    (the main report keeps one rate per method), in it when X has none (a control such as
    inc_lora+random_update at inc_lora+migu's rate); ``--only`` narrows the queue."""
    rates = {"finetune": "1e-4", "finetune+migu": "3e-4", "inc_lora+migu": "3e-3"}
    out = tmp_path / "long"
    keys = dict(k.split("=", 1) for k in cl_long._overrides(cl_long.MINILM, "finetune+migu@finetune", "order4", 0,
                                                            rates, out))  # fmt: skip
    assert keys["train.lr"] == "1e-4" and keys["output_dir"] == str(tmp_path / "long_at_baseline_rate")
    keys = dict(k.split("=", 1) for k in cl_long._overrides(cl_long.MINILM, "inc_lora+random_update@inc_lora+migu",
                                                            "order6", 0, rates, out))  # fmt: skip
    assert keys["method"] == "inc_lora+random_update" and keys["train.lr"] == "3e-3"
    assert keys["output_dir"] == str(out) and keys["methods.random_update.threshold"] == "0.7"
    cl_long.main(["--out", str(out), "--list", "--only", "inc_lora+random_update"])
    assert capsys.readouterr().out.count("== ") == 1
    # the folder tells a run from its same-rate twin: --only matches the name as --list prints it
    cl_long.main(["--out", str(out), "--list", "--only", "long_at_baseline_rate/minilm_lora+migu_order5"])
    assert capsys.readouterr().out.count("== ") == 1
    with pytest.raises(SystemExit) as stop:
        cl_long.main(["--out", str(out), "--list", "--only", "no such run"])
    assert stop.value.code == 2 and "no run of the queue matches" in capsys.readouterr().err


def test_a_refused_run_does_not_stop_the_queue(cl_long, tmp_path, monkeypatch, capsys):
    """A run the runner refuses (e.g. its folder holds a run on other data) is reported, the
    rest of the queue goes on, and the queue ends with status 2."""
    calls = []

    def refuse(config, on_task_end=None):
        calls.append(config.run_name())
        raise ValueError(f"{config.run_name()} holds a run on other data")

    monkeypatch.setattr("migu.bench.queue.run", refuse)
    with pytest.raises(SystemExit) as stop:
        cl_long.main(["--out", str(tmp_path / "long"), "--only", "long/minilm_lora"])
    assert stop.value.code == 2 and len(calls) > 1  # (seeds 0 and 1 of three orders)
    captured = capsys.readouterr()
    assert captured.out.count("refused: ") == len(calls) and "run(s) refused" in captured.err
