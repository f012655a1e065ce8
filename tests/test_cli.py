"""The CLI as a new user meets it: each mistake is one line on stderr naming the key or file, exit
status 2, no traceback and nothing written; a grid is checked whole before its first run; YAML
numbers and booleans read as meant; effective method settings; report options and scores."""

import json

import pytest
import yaml

from migu.bench import apply_overrides, load_yaml, run_config
from migu.bench.grid import check_grid, expand
from migu.cli import main
from migu.methods import build_methods
from migu.methods.registry import effective_method_settings, method_settings


@pytest.fixture
def config_file(bench_dir, tmp_path):
    raw = {
        "model": "tiny-bert",
        "method": "finetune",
        "seed": 0,
        "data": {"root": str(bench_dir), "order": "tiny", "n_train": 8, "n_test": 4},
        "train": {"lr": 1e-3, "batch_size": 4, "micro_batch_size": 4, "max_length": 16, "eval_batch_size": 8},
        "output_dir": str(tmp_path / "out"),
        "progress": False,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _fails(capsys, argv, *needles) -> str:
    """``migu argv`` exits 2 with exactly one line on stderr holding every needle, no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("migu: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _nothing_written(tmp_path):
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["method=finetune+migu", "methods.migu.threshold=abc"], ["methods.migu.threshold", "'abc'"]),
        (["data.n_train=abc"], ["data.n_train", "integer"]),
        (["seed=abc"], ["seed must be an integer", "'abc'"]),
        (["seed=0,1,x"], ["seed must be an integer", "'x'"]),
        (
            ["method=finetune+migu", "methods.migu.skip_first_task=maybe"],
            ["methods.migu.skip_first_task", "true or false"],
        ),
        (["data.with_task_name=maybe"], ["data.with_task_name", "true or false"]),
        (["data.with_task_name=yes"], ["data.with_task_name", "true or false"]),
        (["progress=1"], ["progress", "true or false"]),
        (["train.lr=fast"], ["train.lr must be a number"]),
        (["train.epochs=1.5"], ["train.epochs must be an integer"]),
        # an unknown key or method under methods: is an error also for a method the run does not use
        (["methods.replay.fractoin=0.1"], ["methods.replay", "fractoin"]),
        (["methods.migu.treshold=0.5"], ["methods.migu", "treshold"]),
        (["methods.mgu.threshold=0.5"], ["methods.mgu", "unknown method"]),
        (["methods.migu.mask_mode=sometimes"], ["methods.migu.mask_mode", "grad, update"]),
        (["name=[oops"], ["override 'name=[oops'", "not valid YAML"]),
        (["trian.lr=1e-4"], ["unknown key(s) ['trian']"]),
        (["model=no-such-model"], ["'no-such-model'", "minilm, smollm2, tiny-*"]),
        (["model=tiny-bart"], ["'tiny-bart'", "tiny-bert, tiny-roberta"]),
        (["evaluators=[nope]"], ["evaluator 'nope'"]),
        (["evaluators=[lm_loss]"], ["lm_loss", "options"]),
        # the second method of the grid is wrong: the first must not run either
        (["method=finetune,finetune+mgu"], ["mgu", "unknown method"]),
        (["method=finetune,finetune+migu", "methods.migu.threshold=1.5"], ["methods.migu", "threshold", "1.5"]),
        (
            ["method=finetune,finetune+migu", "methods.migu.include=[nothing_like_this]"],
            ["methods.migu on tiny-bert", "include pattern 'nothing_like_this' matches no layer"],
        ),
        (
            ["method=finetune,lora+migu", "methods.migu.exclude=[^encoder]"],
            ["methods.migu", "exclude pattern '^encoder'"],
        ),  # under LoRA the layers are PEFT's base_model.model...
        (
            ["method=finetune,finetune+random_update", "methods.random_update.threshold=-0.1"],
            ["methods.random_update", "threshold"],
        ),
        # one task and MIGU told to skip the first: it would never act (the run = finetune's)
        (
            ["method=finetune,finetune+migu", "data.order=[alpha]"],
            ["methods.migu.skip_first_task is true", "one task", "skip_first_task=false"],
        ),
        (
            ["method=lora+random_update", "data.order=[alpha,beta]", "data.replace={beta: null}"],
            ["methods.random_update.skip_first_task", "one task"],
        ),
        # a string order that its source reads as one task (jsonl, skills, hub), not a named order
        (
            ["method=finetune,finetune+migu", "data.source=jsonl", "data.order=alpha"],
            ["methods.migu.skip_first_task is true", "one task"],
        ),
        # MoELoRA's own layers would not load back from the saved model
        (["method=finetune,moelora", "save_model=true"], ["save_model: moelora", "cannot load back"]),
    ],
)
def test_a_mistake_is_one_line_and_exit_2_before_anything_runs(config_file, tmp_path, capsys, overrides, needles):
    _fails(capsys, ["run", config_file, *overrides], *needles)
    _nothing_written(tmp_path)


def test_a_grid_is_checked_whole_before_its_first_run(config_file, tmp_path, monkeypatch):
    import migu.bench.grid as grid

    monkeypatch.setattr(grid, "run_one", lambda *a, **k: pytest.fail("a run started"))
    raw = apply_overrides(
        load_yaml(config_file), ["method=finetune,lora+migu", "seed=0,1", "methods.migu.include=[query]"]
    )
    configs = check_grid(raw)
    assert [(c.method, c.seed) for c in configs] == [
        ("finetune", 0),
        ("finetune", 1),
        ("lora+migu", 0),
        ("lora+migu", 1),
    ]
    assert len(expand({"method": ["a", "b"], "seed": "0, 1, 2"})) == 6
    with pytest.raises(ValueError, match=r"methods\.migu on tiny-bert: include pattern 'nope'"):
        check_grid({**raw, "methods": {"migu": {"include": ["nope"]}}})


def test_config_files_are_checked_too(config_file, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_file.read_text() + "methods:\n  migu:\n    skip_first_task: maybe\n")
    _fails(capsys, ["run", bad], "methods.migu.skip_first_task must be true or false, got 'maybe'")
    bad.write_text("model: [unclosed")
    _fails(capsys, ["run", bad], str(bad), "not valid YAML")
    _fails(capsys, ["run", tmp_path / "missing.yaml"], "missing.yaml", "does not exist")
    _nothing_written(tmp_path)


def test_a_label_outside_labels_json_is_found_in_the_whole_file(config_file, bench_dir, tmp_path, capsys):
    path = bench_dir / "SC" / "beta" / "train.json"
    rows = json.loads(path.read_text())
    rows[20]["label"] = "meh"  # the run samples 8 of 24 rows: the row is found wherever it is
    path.write_text(json.dumps(rows))
    _fails(capsys, ["run", config_file], "beta/train.json: example 20 has label 'meh'", "labels.json")
    _nothing_written(tmp_path)


def test_yaml_numbers_and_booleans_read_as_meant(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "train: {lr: 1e-4, weight_decay: 1E-2, mixed_precision: no}\n"
        "methods: {migu: {threshold: 7e-1, skip_first_task: false}, replay: {fraction: 5e-2}}\n"
    )
    raw = load_yaml(path)
    assert raw["train"]["lr"] == 1e-4 and raw["train"]["weight_decay"] == 0.01
    assert raw["train"]["mixed_precision"] == "no"  # text, not YAML 1.1's false
    config = run_config(raw)
    assert config.methods["migu"]["threshold"] == 0.7
    # a dict from another YAML reader (1e-4 as text) is converted where it is read, methods included
    config = run_config({"train": {"lr": "1e-4"}, "methods": {"migu": {"threshold": "7e-1"}, "ewc": {"weight": "5e3"}}})
    assert config.train.lr == 1e-4
    settings = effective_method_settings("ewc+migu", config.methods)
    assert settings["migu"]["threshold"] == 0.7 and settings["ewc"]["weight"] == 5000.0
    assert run_config(apply_overrides({}, ["data.n_train=1e3"])).data.n_train == 1000
    with pytest.raises(ValueError, match="skip_first_task must be true or false"):
        build_methods("migu", {"migu": {"skip_first_task": "yes"}})


def test_effective_settings_hold_every_default():
    settings = effective_method_settings("lora+replay+migu", {"migu": {"include": ["query"]}})
    assert set(settings) == {"lora", "replay", "migu"}
    assert settings["migu"]["threshold"] == 0.4  # the paper's T with replay
    assert settings["migu"]["skip_first_task"] is True and settings["migu"]["mask_mode"] == "grad"
    assert settings["lora"] == {"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": None}
    assert effective_method_settings("olora+migu")["migu"]["threshold"] == 0.1
    control = effective_method_settings("random_update", {"random_update": {"threshold": 0.5}})
    assert control["finetune"] == {} and control["random_update"]["selection"] == "random"
    assert control["random_update"]["threshold"] == 0.5
    assert method_settings(build_methods("migu"))["migu"]["threshold"] == 0.7
    json.dumps(settings)  # as results.json stores them


def _results(tmp_path, name, method, config=None, sequence=("a", "b"), **extra):
    matrix = [[50.0, 50.0], [80.0, 50.0], [70.0, 90.0]] if len(sequence) == 2 else None
    run = {"model": "m", "method": method, "seed": 0, "sequence": list(sequence),
           "config": {"data": {"order": "o1"}, **(config or {})}, **extra}  # fmt: skip
    if matrix is not None and "score_matrices" not in extra:
        run["accuracy_matrix"] = matrix
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    (tmp_path / name / "results.json").write_text(json.dumps(run))


def test_report_mistakes(tmp_path, capsys):
    _results(tmp_path, "a", "finetune")
    _results(tmp_path, "b", "finetune+migu")
    _fails(capsys, ["report", tmp_path, "--by", "train.lrr"], "--by train.lrr", "no run sets")
    _fails(capsys, ["report", tmp_path, "--effect-of", "mgu"], "--effect-of mgu", "finetune, migu")
    _fails(capsys, ["report", tmp_path, "--baseline", "fine"], "--baseline fine", "finetune, finetune+migu")
    _fails(capsys, ["report", tmp_path, "--score", "bleu"], "--score bleu", "accuracy")
    (tmp_path / "b" / "results.json").write_text('{"model": "m", ')
    line = _fails(capsys, ["report", tmp_path], str(tmp_path / "b" / "results.json"), "not valid JSON")
    assert "delete it and rerun" in line
    _fails(capsys, ["report", tmp_path / "nowhere"], "nowhere")


def test_report_by_a_method_setting_falls_back_to_the_combination_default(tmp_path, capsys):
    _results(tmp_path, "a", "finetune+replay+migu")  # an old file: MIGU's threshold not recorded
    _results(tmp_path, "b", "finetune+migu", {"methods": {"migu": {"threshold": 0.5}}})
    _results(tmp_path, "c", "finetune+migu")
    assert main(["report", str(tmp_path), "--by", "methods.migu.threshold", "--baseline", ""]) == 0
    out = capsys.readouterr().out
    assert "| finetune+replay+migu [methods.migu.threshold=0.4] |" in out
    assert "| finetune+migu [methods.migu.threshold=0.5] |" in out
    assert "| finetune+migu [methods.migu.threshold=0.7] |" in out


def test_report_tables_any_score_matrix(tmp_path, capsys):
    # a new-style file scoring loss only (lower is better), beside an old-style accuracy file
    loss = {"higher_is_better": False, "matrix": [[3.0, 3.0], [1.0, 3.0], [None, 1.0]]}
    _results(tmp_path, "a", "finetune", score_matrices={"loss": loss})
    _results(tmp_path, "c", "finetune")
    # the diagonal schedule: forgetting is not measured and prints as "–"
    diag = {
        "higher_is_better": True,
        "matrix": [[None] * 3, [80.0, None, None], [None, 70.0, None], [60.0, 65.0, 90.0]],
    }
    _results(tmp_path, "b", "finetune+migu", sequence=("a", "b", "c"), score_matrices={"accuracy": diag})
    assert main(["report", str(tmp_path), "--matrices", "--baseline", ""]) == 0  # accuracy by default
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| m | o1 | finetune+migu |"))
    assert row.split(" | ")[3:7] == ["71.67", "-12.50", "–", "80.00"]
    assert "| (start) | – | – | – |" in out and "forgetting –" in out
    assert "1 run(s) without the score accuracy left out: finetune" in out
    # a loss matrix without the entries AA needs is an error naming the file, not a traceback
    _fails(capsys, ["report", tmp_path / "a", "--score", "loss"], "a/results.json", "score 'loss' has no AA")
    loss["matrix"][2][0] = 2.0
    _results(tmp_path, "a", "finetune", score_matrices={"loss": loss})
    assert main(["report", str(tmp_path / "a"), "--matrices"]) == 0  # no accuracy: the first score
    out = capsys.readouterr().out
    assert "## Summary of loss (lower is better" in out and "## loss matrices" in out
    row = next(line for line in out.splitlines() if line.startswith("| m | o1 | finetune |"))
    assert row.split(" | ")[3:5] == ["1.50", "-1.00"]  # AA (2 + 1) / 2; BWT: the loss on a rose from 1 to 2


def test_version_and_run_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("migu 0.")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    needles = ("data.*", "train.*", "methods.<name>.*", "lora+replay+migu", "migu: skip_first_task=true threshold=0.7",
               "minilm", "smollm2", "tiny-gpt2", "classification", "jsonl")  # fmt: skip
    for needle in needles:
        assert needle in out, needle
    with pytest.raises(SystemExit) as done:
        main(["report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and "paths" in err[0]
