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
