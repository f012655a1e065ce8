"""``migu forgetting BEFORE AFTER``: a model against itself changes by exactly 0, perturbed weights
move the scores, adapter folders load on their base, bad input is one line and exit 2 with nothing
written, the suites are the instruction setting's evaluators, and a saved run of that setting
re-scores to ``migu eval``'s numbers."""

import json
import math
from pathlib import Path

import pytest
import torch

from migu.bench import apply_overrides, load_yaml, run, run_config
from migu.bench.forgetting import (
    INSTRUCT_DATA,
    INSTRUCT_EVALUATORS,
    INSTRUCT_TRAIN,
    SUITES,
    Suite,
    compare,
    format_table,
    load,
    paired_stderr,
    resolve_model,
    score,
    stderr_of,
    suite_config,
)
from migu.cli import main
from migu.evaluators import build_evaluators
from migu.models import load_model

pytest.importorskip("lm_eval")

INSTRUCT_YAML = Path(__file__).parents[1] / "configs" / "cpu" / "instruct_smollm2.yaml"
QUICK = Suite("quick", {"pass_at_1": {"max_new_tokens": 16, "limit": 3},
                        "lm_eval": {"tasks": ["arc_challenge", "winogrande"], "limit": 8}})  # fmt: skip
"""Fast on the tiny decoder (the held-out loss, ~10 s for its 30k-token vocabulary, is in the instruct test)."""


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random decoder saved as a folder, a copy with perturbed weights, a LoRA adapter on
    it (B not zero) and the adapter merged into a full model."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("models")
    bundle = load_model("tiny-llama", seed=0)
    out = {"base": _save(bundle.model, bundle.tokenizer, root / "base")}
    noisy = load_model(out["base"]).model
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.detach().std().clamp_min(1e-3))
    out["perturbed"] = _save(noisy, bundle.tokenizer, root / "perturbed")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft = get_peft_model(load_model(out["base"]).model, lora)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=gen)
    peft.save_pretrained(root / "adapter")
    out["adapter"] = str(root / "adapter")
    out["merged"] = _save(peft.merge_and_unload(), bundle.tokenizer, root / "merged")
    return out


def _changes(result):
    return {(name, column): row for name, rows in result["scores"].items() for column, row in rows.items()}


def test_a_model_against_itself_changes_by_exactly_zero(models):
    result = compare(models["base"], models["base"], QUICK)
    rows = _changes(result)
    assert {name for name, _ in rows} == {"pass@1", "lm_eval/acc", "lm_eval/acc_norm"}
    for key, row in rows.items():
        assert row["before"] == row["after"] and row["change"] == 0.0, key
        if row["n"] is not None:
            assert row["se_change"] == 0.0 and row["se_before"] == row["se_after"], key
    assert rows[("lm_eval/acc", "arc_challenge")]["n"] == 8 and rows[("pass@1", "code_mbpp")]["n"] == 3
    assert rows[("lm_eval/acc", "mean")]["n"] == 16 and rows[("lm_eval/acc_norm", "mean")]["n"] == 8
    table = format_table(result)
    assert "| lm_eval/acc | arc_challenge |" in table and "paired" in table and "binomial" in table


def test_perturbed_weights_move_the_scores(models):
    result = compare(models["base"], models["perturbed"], QUICK)
    rows = _changes(result)
    moved = [key for key, row in rows.items() if key[0].startswith("lm_eval") and row["change"] != 0.0]
    assert moved, rows
    for key in moved:
        row = rows[key]
        assert row["change"] == pytest.approx(row["after"] - row["before"])
        assert row["se_change"] > 0, key


def test_kept_samples_are_the_scored_items(models):
    """The per-item values behind the standard errors average to the evaluators' own scores."""
    config = suite_config(QUICK, seed=0)
    evaluators = build_evaluators(config.evaluators, "instruction")
    point = score(resolve_model(models["perturbed"], "AFTER"), config, evaluators, "after")
    for name in ("pass@1", "lm_eval/acc", "lm_eval/acc_norm"):
        columns = point["specs"][name]["columns"]
        for column, items in point["samples"][name].items():
            value = point["values"][name][columns.index(column)]
            assert sum(items) / len(items) == pytest.approx(value), (name, column)
    assert all(getattr(e, "samples", None) is None for e in evaluators)  # (not kept beyond the comparison)


def test_standard_errors_by_hand():
    before, after = [100.0, 0.0, 100.0, 0.0], [100.0, 100.0, 0.0, 0.0]
    assert paired_stderr(before, after) == pytest.approx(math.sqrt((100**2 * 2 / 3) / 4))  # diffs 0, 100, -100, 0
    assert paired_stderr(before, before) == 0.0
    assert paired_stderr([1.0], [2.0]) is None
    assert stderr_of([100.0, 0.0, 0.0, 0.0], "binomial") == pytest.approx(100 * math.sqrt(0.25 * 0.75 / 4))
    assert stderr_of([100.0, 0.0, 0.0, 0.0], "lm_eval") == pytest.approx(25.0)  # sample sd 50 / sqrt(4)


def _logits(spec):
    model = load(spec)[0].eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])).logits


def test_an_adapter_folder_loads_on_its_base(models, tmp_path):
    spec = resolve_model(models["adapter"], "AFTER")
    assert spec.base == models["base"]  # adapter_config.json's base_model_name_or_path
    adapted = _logits(spec)
    assert torch.allclose(adapted, _logits(resolve_model(models["merged"], "AFTER")), atol=1e-4)
    assert not torch.allclose(adapted, _logits(resolve_model(models["base"], "BEFORE")), atol=1e-2)
    # an adapter whose config names no base (a tiny model's, a run's model/task0) takes --adapter-base
    nameless = tmp_path / "run" / "model" / "task0"
    nameless.mkdir(parents=True)
    adapter_config = json.loads((Path(models["adapter"]) / "adapter_config.json").read_text())
    (nameless / "adapter_config.json").write_text(json.dumps(adapter_config | {"base_model_name_or_path": None}))
    weights = "adapter_model.safetensors"
    (nameless / weights).write_bytes((Path(models["adapter"]) / weights).read_bytes())
    with pytest.raises(ValueError, match="--adapter-base"):
        resolve_model(str(nameless.parent), "AFTER")
    spec = resolve_model(str(nameless.parent), "AFTER", adapter_base=models["base"])
    assert torch.equal(_logits(spec), adapted)


def test_bad_input_is_one_line_exit_2_and_nothing_written(models, tmp_path, capsys):
    out = tmp_path / "out.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    no_base = tmp_path / "no_base"
    no_base.mkdir()
    (no_base / "adapter_config.json").write_text('{"base_model_name_or_path": ""}')
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "adapter_config.json").write_text("{not json")
    cases = [
        ([str(tmp_path / "missing"), models["base"]], "BEFORE"),
        ([models["base"], str(tmp_path / "missing")], "no such folder"),
        ([models["base"], models["base"], "--suite", "everything"], "unknown suite 'everything'"),
        ([models["base"], models["base"], "--limit", "0"], "--limit"),
        ([models["base"], "tiny-bert"], "encoder"),
        ([models["base"], str(empty)], "neither config.json"),
        ([models["base"], str(no_base)], "base_model_name_or_path"),
        ([models["base"], str(damaged)], "not valid JSON"),
        ([models["base"], "no-such-model"], "no-such-model"),
    ]
    for argv, needle in cases:
        assert main(["forgetting", *argv, "--out", str(out)]) == 2, argv
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("migu: error:") and needle in err[0], (argv, err)
        assert not captured.out and not out.exists(), argv
    assert main(["forgetting", models["base"], models["base"], "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_help_lists_every_suite_on_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["forgetting", "--help"])
    lines = capsys.readouterr().out.splitlines()
    for name, suite in SUITES.items():
        (line,) = [x for x in lines if x.split()[:1] == [name]]
        assert suite.summary in line


def test_the_suites_are_the_instruction_settings_evaluators():
    raw = load_yaml(INSTRUCT_YAML)
    assert raw["evaluators"] == INSTRUCT_EVALUATORS
    assert {k: raw["data"][k] for k in INSTRUCT_DATA} == INSTRUCT_DATA
    assert {k: raw["train"][k] for k in INSTRUCT_TRAIN} == INSTRUCT_TRAIN
    assert SUITES["instruct"].evaluators == INSTRUCT_EVALUATORS
    assert SUITES["general"].settings(7) == {"lm_eval": INSTRUCT_EVALUATORS["lm_eval"] | {"limit": 7}}
    assert SUITES["code"].settings(3)["pass_at_1"]["limit"] == 3
    assert "limit" not in SUITES["code"].settings()["pass_at_1"]  # (the suite's own: every held-out problem)


def test_a_saved_instruct_run_rescores_as_migu_eval(tmp_path, capsys):
    """The instruction setting's config, on the tiny decoder with LoRA (its adapter saved in
    model/task0, naming no base): ``migu forgetting --suite instruct --limit 2`` gives ``migu eval``'s
    scores of the saved model (after) and the run's own scores of its base model (before)."""
    limit = 2
    raw = apply_overrides(load_yaml(INSTRUCT_YAML), [
        "model=tiny-llama", "method=lora", "data.n_train=4", "data.evaluate_every=task", "train.epochs=1",
        "train.batch_size=4", "train.micro_batch_size=4", f"output_dir={tmp_path}", "progress=false",
        *(f"evaluators.{name}.limit={limit}" for name in ("lm_eval", "humaneval", "pass_at_1")),
    ])  # fmt: skip
    config = run_config(raw)
    run(config)
    run_dir = tmp_path / config.run_name()
    assert main(["eval", str(run_dir), "--out", str(tmp_path / "after.json")]) == 0
    out = tmp_path / "forgetting.json"
    assert main(["forgetting", "tiny-llama", str(run_dir / "model"), "--adapter-base", "tiny-llama",
                 "--suite", "instruct", "--limit", str(limit), "--out", str(out)]) == 0  # fmt: skip
    assert "| lm_eval/acc | hellaswag |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    names = {"loss", "perplexity", "pass@1", "humaneval/pass@1", "lm_eval/acc", "lm_eval/acc_norm"}
    # after: migu eval's scores of the saved model; before: the run's own before-training row, which
    # migu eval --base reproduces (tests/test_eval_saved.py)
    after = json.loads((tmp_path / "after.json").read_text())["scores"]
    before = json.loads((run_dir / "results.json").read_text())["score_matrices"]
    assert set(after) == set(before) == set(result["scores"]) == names
    for name, rows in result["scores"].items():
        assert {c: r["after"] for c, r in rows.items()} == after[name], name
        assert [r["before"] for r in rows.values()] == before[name]["matrix"][0], name
        assert list(rows) == before[name]["columns"], name
    assert result["scores"]["loss"]["code_mbpp"]["change"] != 0.0  # the run trained its adapter
    assert result["after"] == {"model": str(run_dir / "model"), "adapter_on": "tiny-llama"}


@pytest.mark.slow
def test_packaged_smollm2_against_itself():
    result = compare("smollm2", "smollm2", "general", limit=4)
    rows = _changes(result)
    assert {c for name, c in rows if name == "lm_eval/acc"} == {"hellaswag", "winogrande", "arc_challenge", "piqa",
                                                               "mean"}  # fmt: skip
    assert all(row["change"] == 0.0 and row["se_change"] == 0.0 for row in rows.values())
