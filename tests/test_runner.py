"""The runner: results file, resume after a kill, no partial results on bad input; the CLI."""

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from migu.bench import RunConfig, RunInProgress, apply_overrides, load_tasks, load_yaml, run, run_config
from migu.bench.provenance import cpu_name
from migu.bench.queue import run_status
from migu.bench.store import RunStore
from migu.cli import main
from migu.methods import build_methods
from migu.report import load_results
from migu.report.tables import format_matrix

REQUIRED = {"model", "method", "seed", "sequence", "accuracy_matrix"}


def _config_data(bench_dir):
    return {"root": str(bench_dir), "order": "tiny", "n_train": 16, "n_test": 8}


def _config(bench_dir, out, **extra):
    raw = {
        "model": "tiny-bert",
        "method": "finetune+migu",
        "seed": 0,
        "data": _config_data(bench_dir),
        "train": {"lr": 1e-3, "batch_size": 8, "micro_batch_size": 4, "max_length": 32, "eval_batch_size": 8},
        "output_dir": str(out),
        "progress": False,
    }
    raw.update(extra)
    return run_config(raw)


def test_results_file(bench_dir, tmp_path):
    result = run(_config(bench_dir, tmp_path))
    path = tmp_path / "tiny-bert_finetune+migu_tiny_seed0" / "results.json"
    on_disk = json.loads(path.read_text())
    assert set(on_disk) >= REQUIRED
    assert on_disk["sequence"] == ["alpha", "beta", "gamma"]
    assert len(on_disk["accuracy_matrix"]) == 4 and all(len(r) == 3 for r in on_disk["accuracy_matrix"])
    assert on_disk["method"] == "finetune+migu" and on_disk["accuracy_matrix"] == result["accuracy_matrix"]
    assert on_disk["diagnostics"][0]["migu"] == {"masked": False}  # first task unmasked
    assert on_disk["diagnostics"][1]["migu"]["masked"] and 0 < on_disk["diagnostics"][1]["migu"]["kept_fraction"] < 1
    assert on_disk["diagnostics"][1]["migu"]["fast_path_layers"] == 0  # 2 micro-batches per step: reference path
    assert on_disk["versions"]["torch"].startswith("2.13.0")
    trained = [t for t in on_disk["timings"] if t["task"] is not None]
    assert [t["task"] for t in trained] == ["alpha", "beta", "gamma"]
    assert all(0 < t["median_step_seconds"] <= t["seconds"] for t in trained)
    assert all(t["cpu_seconds"] > 0 and "load_average" in t for t in trained)
    [code] = on_disk["code"]  # which code trained the tasks: one start, in this checkout
    assert code["from_task"] == 1 and code["migu"] == on_disk["versions"]["migu"] and code["cpu"] == cpu_name()
    assert code["source"] is None or len(code["source"].split("+")[0]) == 12
    assert not (path.parent / "state").exists()
    # a finished run is not redone
    assert run(_config(bench_dir, tmp_path))["finished"] == on_disk["finished"]


class Killed(Exception):
    pass


def test_resume_after_kill_gives_same_numbers(bench_dir, tmp_path):
    full = run(_config(bench_dir, tmp_path / "a"))

    def kill_after_second(index, state):
        if index == 1:
            raise Killed

    config = _config(bench_dir, tmp_path / "b")
    with pytest.raises(Killed):
        run(config, on_task_end=kill_after_second)
    run_dir = tmp_path / "b" / config.run_name()
    assert not (run_dir / "results.json").exists()
    progress = json.loads((run_dir / "state" / "progress.json").read_text())
    assert progress["completed"] == 2 and len(progress["scores"]["rows"]["accuracy"]) == 3
    finished = []
    resumed = run(config, on_task_end=lambda index, state: finished.append(index))
    assert finished == [2]  # only the third task was trained again
    assert resumed["resumed_at"] == [2]
    assert [c["from_task"] for c in resumed["code"]] == [1, 3]  # the start and the resume
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]


def test_a_lock_file_removed_between_open_and_lock_is_opened_again(tmp_path):
    """A holder that ends between this process's open and lock removes the file it locked; a lock
    on that removed file would let a third process take the run at the same time."""
    fcntl = pytest.importorskip("fcntl")
    store = RunStore(tmp_path / "run")
    path = store.dir / "run.lock"
    locked = []

    class HolderEndsFirst:  # fcntl, but the other holder removes its lock file just before our first lock
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        @staticmethod
        def flock(handle, op):
            if not locked:
                os.unlink(path)
            locked.append(os.fstat(handle.fileno()).st_ino)
            fcntl.flock(handle, op)

    with store._lock_file(path, HolderEndsFirst) as handle:
        assert len(locked) == 2  # opened again (the new file may reuse the freed inode number)
        assert os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino  # the lock is on the file in place
        with open(path) as third, pytest.raises(BlockingIOError):
            fcntl.flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_run_held_by_another_process_is_refused_and_then_resumed(bench_dir, tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    config = _config(bench_dir, tmp_path)
    run_dir = tmp_path / config.run_name()
    run_dir.mkdir()
    with open(run_dir / "run.lock", "w") as other:  # an open file description of its own, like another process
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunInProgress, match="is being run by another process"):
            run(config)
        assert not (run_dir / "state").exists()
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(config.to_dict()))
        assert main(["run", str(cfg)]) == 3
        assert "1 run(s) skipped, another process is running them" in capsys.readouterr().err
    with pytest.raises(Killed):  # the lock file goes when the holder stops, even by an exception
        run(config, on_task_end=lambda i, s: (_ for _ in ()).throw(Killed()))
    assert not (run_dir / "run.lock").exists() and (run_dir / "state").exists()
    assert run(config)["resumed_at"] == [1]
    assert not (run_dir / "run.lock").exists()  # finished runs keep only their results


def test_a_queue_listing_names_the_process_running_a_run(bench_dir, tmp_path):
    config = _config(bench_dir, tmp_path)
    store = RunStore(tmp_path / config.run_name())
    assert store.holder() is None and run_status(config) == "pending"
    with store.exclusive():
        me = f"pid {os.getpid()} on {platform.node()}"
        assert store.holder() == me and run_status(config) == f"pending, running ({me})"
    assert store.holder() is None
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store.dir.mkdir()
    (store.dir / "run.lock").write_text(f"pid {ended.stdout.strip()} on {platform.node()}\n")
    assert store.holder() is None  # left by a killed process: nobody holds it


def test_resume_refuses_other_config(bench_dir, tmp_path):
    config = _config(bench_dir, tmp_path)
    with pytest.raises(Killed):
        run(config, on_task_end=lambda i, s: (_ for _ in ()).throw(Killed()))
    other = _config(bench_dir, tmp_path, name=config.run_name())
    other.train.lr = 5e-4
    with pytest.raises(ValueError, match="unfinished run of a different config"):
        run(other)


def test_a_run_resumes_with_its_data_moved_and_refuses_other_data(bench_dir, tmp_path):
    """The data is identified by what it holds, not by the folder named in data.root: a run
    carried to another machine (the data at another path) resumes, other data is refused."""
    from conftest import write_benchmark

    config = _config(bench_dir, tmp_path / "runs")
    with pytest.raises(Killed):
        run(config, on_task_end=lambda i, s: (_ for _ in ()).throw(Killed()))
    moved = shutil.copytree(bench_dir, tmp_path / "elsewhere" / "data")
    other = write_benchmark(tmp_path / "other", n_train=30)  # the same tasks, other training examples
    with pytest.raises(ValueError, match="holds a run on other data"):
        run(_config(other, tmp_path / "runs"))
    result = run(_config(moved, tmp_path / "runs"))
    assert result["resumed_at"] == [1] and result["data_digest"] == load_tasks(config).digest()
    assert run(_config(moved, tmp_path / "runs"))["finished"] == result["finished"]  # reloaded
    with pytest.raises(ValueError, match="holds a run on other data"):
        run(_config(other, tmp_path / "runs"))


def test_an_older_state_moves_with_its_data_once_resumed(bench_dir, tmp_path):
    """A state from before data digests (its fingerprint hashed data.root) resumes at the same
    root only; resumed once, it is identified as a new state and can move."""
    from migu.bench.fingerprint import config_fingerprint

    def kill_after(task):
        def hook(index, state):
            if index + 1 == task:
                raise Killed

        return hook

    config = _config(bench_dir, tmp_path / "runs")
    with pytest.raises(Killed):
        run(config, on_task_end=kill_after(1))
    progress = tmp_path / "runs" / config.run_name() / "state" / "progress.json"
    state = json.loads(progress.read_text())
    del state["data_digest"]
    state["fingerprint"] = config_fingerprint(config, with_data_root=True)  # as an older migu wrote it
    progress.write_text(json.dumps(state))
    moved = shutil.copytree(bench_dir, tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="unfinished run of a different config"):
        run(_config(moved, tmp_path / "runs"))
    with pytest.raises(Killed):
        run(config, on_task_end=kill_after(2))
    assert json.loads(progress.read_text())["fingerprint"] == config_fingerprint(config)
    assert run(_config(moved, tmp_path / "runs"))["resumed_at"] == [1, 2]


def test_the_data_digest_covers_end_tasks_and_not_key_order():
    from migu.data.tasks import Example, InstructionExample, Task, TaskSequence, TextExample

    def corpus(end_labels):
        train, test = [Example("t", end_labels[0], end_labels)], [Example("u", end_labels[1], end_labels)]
        end = Task("end", "Which?", end_labels, train, test)
        docs = [TextExample("a document")]
        return TaskSequence("s", [Task("c", "", (), docs, docs, kind="corpus", extras={"end_task": end})])

    def instruction(meta):
        examples = [InstructionExample("p", "r", meta=meta)]
        return TaskSequence("s", [Task("i", "", (), examples, examples, kind="instruction")])

    assert corpus(("a", "b")).digest() != corpus(("b", "a")).digest()  # an end task relabelled
    assert instruction({"x": 1, "y": 2}).digest() == instruction({"y": 2, "x": 1}).digest()  # (key order)
    assert instruction({"x": 1}).digest() != instruction({"x": 2}).digest()


def test_evaluating_seen_tasks_only_keeps_every_metric_but_fwt(bench_dir, tmp_path):
    full = run(_config(bench_dir, tmp_path / "all"))
    seen = run(_config(bench_dir, tmp_path / "seen", data={**_config_data(bench_dir), "evaluate_tasks": "seen"}))
    matrix = seen["accuracy_matrix"]
    assert matrix[0] == [None, None, None] and matrix[1][1:] == [None, None] and matrix[2][2] is None
    for i, row in enumerate(matrix):  # evaluation draws nothing: the trained entries are the same
        assert row[:i] == full["accuracy_matrix"][i][:i]
    assert seen["metrics"]["fwt"] is None and full["metrics"]["fwt"] is not None
    for key in ("aa", "bwt", "learning_accuracy", "final_accuracy"):
        assert seen["metrics"][key] == full["metrics"][key]
    assert seen["timings"][0]["eval_seconds"] < 0.1  # nothing evaluated before training
    assert "–" in format_matrix(seen)


def test_committed_results_keep_their_fingerprints():
    # every committed run is still recognised as finished by this version's config
    from migu.bench.fingerprint import fingerprint_matches

    files = sorted((Path(__file__).parents[1] / "benchmarks" / "results").rglob("results.json"))
    assert files
    for path in files:
        saved = json.loads(path.read_text())
        assert fingerprint_matches(saved, run_config(saved["config"])), path


def test_a_setting_added_later_at_its_default_keeps_old_fingerprints(bench_dir, tmp_path):
    from migu.bench.fingerprint import config_fingerprint

    config = _config(bench_dir, tmp_path)
    assert config.data.evaluate_tasks == "all"
    not_identity = ("progress", "output_dir", "save_model", "log_with", "keep_samples")
    old = {k: v for k, v in config.to_dict().items() if k not in not_identity}
    # what an earlier version hashed
    del old["data"]["evaluate_tasks"], old["data"]["kind"], old["data"]["evaluate_every"], old["evaluators"]
    del old["train"]["dropout"], old["train"]["optim"], old["format"]
    del old["data"]["names_in_input"], old["protocol"]
    expected = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert config_fingerprint(config, with_data_root=True) == expected
    del old["data"]["root"]  # (since 2026-12-02 the data is identified by its digest, not its folder)
    expected = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert config_fingerprint(config) == expected
    assert config_fingerprint(replace(config, train=replace(config.train, optim="adamw_torch_fused"))) != expected
    assert config_fingerprint(replace(config, save_model=True)) == expected  # not part of the run's identity
    assert config_fingerprint(replace(config, log_with=["tensorboard"])) == expected  # (nor are trackers)
    assert config_fingerprint(replace(config, protocol="paper")) != expected
    assert config_fingerprint(replace(config, data=replace(config.data, names_in_input=True))) != expected
    config.data.evaluate_tasks = "seen"
    assert config_fingerprint(config) != expected
    with pytest.raises(ValueError, match=r"data\.evaluate_tasks must be one of all, seen, diagonal"):
        _config(bench_dir, tmp_path, data={**_config_data(bench_dir), "evaluate_tasks": "unseen"})


@pytest.mark.parametrize(
    "break_data, message",
    [
        (lambda d: (d / "TC" / "alpha" / "train.json").write_text("{"), "not valid JSON"),
        (lambda d: (d / "SC" / "beta" / "labels.json").unlink(), "missing file"),
        (lambda d: (d / "TC" / "gamma" / "test.json").write_text("[]"), "empty test split"),
    ],
)
def test_bad_data_leaves_no_result_file(bench_dir, tmp_path, break_data, message):
    break_data(bench_dir)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run(_config(bench_dir, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_config_values():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\] in train"):
        run_config({"train": {"learning_rate": 1e-4}})
    with pytest.raises(ValueError, match="'lr' belongs under train"):
        run_config({"lr": 1e-4})
    with pytest.raises(ValueError, match="unknown key"):
        run_config({"modle": "minilm"})
    with pytest.raises(ValueError, match=r"train\.optim must be one of adamw_torch, adamw_torch_fused; got 'adam'"):
        run_config({"train": {"optim": "adam"}})
    with pytest.raises(ValueError, match="must be a multiple of micro_batch_size"):
        run_config({"train": {"batch_size": 64, "micro_batch_size": 24}})
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['magic'\]"):
        build_methods("finetune+magic")
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        build_methods("migu", {"migu": {"threshold": 1.2}})
    with pytest.raises(ValueError, match=r"unknown MIGU setting\(s\) \['treshold'\]"):
        build_methods("migu", {"migu": {"treshold": 0.5}})
    assert RunConfig().run_name() == "minilm_finetune_order1_seed0"


def test_cli_run_and_report(bench_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_config(bench_dir, tmp_path / "runs").to_dict()))
    assert main(["run", str(cfg), "method=finetune,finetune+random_update", "data.n_train=8"]) == 0
    out = capsys.readouterr().out
    assert "finetune+random_update" in out and "AA" in out and "| (start) |" in out
    runs = load_results([tmp_path / "runs"])
    assert sorted(r["method"] for r in runs) == ["finetune", "finetune+random_update"]
    assert main(["report", str(tmp_path / "runs"), "--matrices"]) == 0
    report = capsys.readouterr().out
    assert "Paired differences against finetune" in report and "### tiny-bert" in report


def test_cli_errors(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    assert main(["run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_numbers_written_as_1e_minus_4():
    from migu.bench import apply_overrides

    assert run_config(apply_overrides({}, ["train.lr=1e-4"])).train.lr == 1e-4
    assert run_config(yaml.safe_load("train: {lr: 3e-5}")).train.lr == 3e-5
    with pytest.raises(ValueError, match=r"train\.lr must be a number"):
        run_config({"train": {"lr": "fast"}})


def test_mixed_precision_no_survives_yaml():
    # YAML 1.1 reads a bare `no` as false, in a file and in a key=value override alike
    assert run_config(apply_overrides({}, ["train.mixed_precision=no"])).train.mixed_precision == "no"
    assert run_config(apply_overrides({}, ["train.mixed_precision=bf16"])).train.mixed_precision == "bf16"
    with pytest.raises(ValueError, match="mixed_precision"):
        run_config(apply_overrides({}, ["train.mixed_precision=fp16"]))


SKIP = ("accelerate", "protocols")  # Accelerate's configs; protocols that run configs extend
RUN_CONFIGS = [p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml") if p.parent.name not in SKIP]


@pytest.mark.parametrize("path", sorted(str(p) for p in RUN_CONFIGS))
def test_shipped_configs_are_valid(path):
    # every run config in configs/ (configs/accelerate/ holds Accelerate's) parses into a full run
    # config for each of its methods, whose methods can act on its sequence (a one-task
    # instruction config once left MIGU skipping its only task)
    from migu.bench.grid import _check_methods

    raw = load_yaml(path)
    methods = raw.pop("method")
    for method in methods if isinstance(methods, list) else [methods]:
        config = run_config(apply_overrides(raw, [f"method={method}"]))
        built = build_methods(config.method, config.methods)
        assert built
        _check_methods(config, built)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, recwarn, native):
    # emulated bf16 costs 14-20x an fp32 step (BENCHMARKS.md): say so instead of running slowly in silence
    from migu.train import TrainConfig, loop

    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    loop.make_accelerator(TrainConfig(mixed_precision="bf16"))
    loop.make_accelerator(TrainConfig(mixed_precision="no"))
    slow = [w for w in recwarn if "without native bf16" in str(w.message)]
    assert len(slow) == (0 if native else 1)


def test_fused_adamw_trains_as_torch_default_up_to_rounding(bench_dir, tmp_path):
    from migu.train import TrainConfig, make_optimizer

    layer = torch.nn.Linear(4, 4)
    assert make_optimizer(list(layer.parameters()), TrainConfig(optim="adamw_torch_fused")).defaults["fused"]
    assert not make_optimizer(list(layer.parameters()), TrainConfig()).defaults["fused"]
    train = {"lr": 1e-3, "batch_size": 8, "micro_batch_size": 4, "max_length": 32, "eval_batch_size": 8}
    loop = run(_config(bench_dir, tmp_path / "loop"))
    fused = run(_config(bench_dir, tmp_path / "fused", train={**train, "optim": "adamw_torch_fused"}))
    assert fused["config"]["train"]["optim"] == "adamw_torch_fused"
    losses = [[t["mean_loss"] for t in r["timings"] if t["task"] is not None] for r in (loop, fused)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_cpu_name_tells_generations_and_native_bf16_apart(tmp_path):
    """Results name the CPU that trained them: one model name covers several generations (the
    family and model numbers tell them apart), and the features say whether bf16 is native."""
    block = "processor\t: {n}\nmodel name\t: AMD EPYC\ncpu family\t: {family}\nmodel\t\t: {model}\nflags\t\t: {flags}\n"
    zen3 = tmp_path / "zen3"
    zen3.write_text("\n".join(block.format(n=n, family=25, model=1, flags="fpu sse2 avx avx2 fma") for n in (0, 1)))
    zen5 = tmp_path / "zen5"
    zen5.write_text(block.format(n=0, family=26, model=2, flags="avx2 avx512f avx512bw avx512_bf16 avx512_vnni"))
    assert cpu_name(zen3) == "AMD EPYC (family 25, model 1; AVX2 only)"
    assert cpu_name(zen5) == "AMD EPYC (family 26, model 2; avx512f, avx512_bf16)"
    assert cpu_name(tmp_path / "missing")  # no /proc/cpuinfo (macOS): what platform knows
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n")
    assert cpu_name(arm) and "family" not in cpu_name(arm)
