"""``migu eval RUN_DIR``: a finished run's saved model, loaded back, scores what the run's last
evaluation scored (full model and LoRA adapter), and ``--base`` the model it started from as its
before-training point did; overrides change the evaluation; a run without a model or results is
one line and exit 2."""

import json

from migu.bench import run, run_config
from migu.cli import main


def _run(bench_dir, out, model, method, save=True):
    config = run_config({
        "model": model, "method": method, "seed": 0, "save_model": save,
        "data": {"root": str(bench_dir), "order": ["alpha", "beta"], "n_train": 8, "n_test": 4},
        "train": {"lr": 1e-2, "batch_size": 8, "micro_batch_size": 8, "max_length": 24, "eval_batch_size": 4},
        "output_dir": str(out), "progress": False,
    })  # fmt: skip
    return run(config), out / config.run_name()


def _final_row(result, score, row=-1):
    entry = result["score_matrices"][score]
    return dict(zip(entry["columns"], entry["matrix"][row], strict=True))


def test_saved_models_score_as_the_run_did(bench_dir, tmp_path, capsys):
    for model, method in (("tiny-bert", "finetune+migu"), ("tiny-llama", "lora+migu")):
        result, run_dir = _run(bench_dir, tmp_path / model, model, method)
        out = tmp_path / f"{model}.json"
        assert main(["eval", str(run_dir), "--out", str(out)]) == 0
        scored = json.loads(out.read_text())
        for score in ("accuracy", "macro_f1"):
            assert scored["scores"][score] == _final_row(result, score), (model, score)
        assert "accuracy: alpha" in capsys.readouterr().out
        # --base: the model the run started from scores as the run's before-training row
        assert main(["eval", str(run_dir), "--base", "--out", str(out)]) == 0
        scored = json.loads(out.read_text())
        assert scored["model"] == "base"
        for score in ("accuracy", "macro_f1"):
            assert scored["scores"][score] == _final_row(result, score, row=0), (model, score)
        if model == "tiny-bert":  # (the tiny decoder's generations score 0 before and after)
            assert scored["scores"]["accuracy"] != _final_row(result, "accuracy")  # not the trained model
    # an override changes the evaluation of the same model: here, which tasks are scored
    assert main(["eval", str(run_dir), "data.order=[beta]", "--out", str(tmp_path / "beta.json")]) == 0
    scored = json.loads((tmp_path / "beta.json").read_text())
    assert scored["overrides"] == ["data.order=[beta]"]
    assert set(scored["scores"]["accuracy"]) == {"beta"} != set(_final_row(result, "accuracy"))


def test_a_run_without_a_model_or_results_is_one_line(bench_dir, tmp_path, capsys):
    _, run_dir = _run(bench_dir, tmp_path, "tiny-bert", "finetune", save=False)
    capsys.readouterr()  # (the run's own log)
    damaged = tmp_path / "damaged"
    (damaged / "model").mkdir(parents=True)
    (damaged / "results.json").write_text("{}")
    for folder, needle in ((run_dir, "save_model=true"), (tmp_path / "nothing", "results.json does not exist"),
                           (damaged, "not a migu results file")):  # fmt: skip
        assert main(["eval", str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
