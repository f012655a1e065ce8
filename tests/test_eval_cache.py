"""The evaluation before training, shared by the runs of a grid (``migu.bench.eval_cache``)."""

import json
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest
import torch

from migu.bench import load_tasks, run
from migu.bench import runner as runner_module
from migu.bench.eval_cache import FOLDER, EvalCache, before_training_key, digest
from migu.evaluators import EVALUATORS
from migu.evaluators.classification import Classification
from migu.methods import METHODS, Method
from migu.methods.compose import MethodStack
from migu.methods.registry import build_methods
from migu.models import load_model
from migu.registry import Entry

from test_runner import _config, _config_data

ACCELERATOR = SimpleNamespace(num_processes=1, distributed_type="NO", device=torch.device("cpu"), is_main_process=True)


@pytest.fixture
def counted(monkeypatch):
    """The descriptions of every classification call (``alpha (before training)``, ...)."""
    calls = []
    original = Classification.evaluate

    def evaluate(self, model, fmt, examples, ctx):
        calls.append(ctx.desc)
        return original(self, model, fmt, examples, ctx)

    monkeypatch.setattr(Classification, "evaluate", evaluate)
    return calls


def _before(calls):
    return [c for c in calls if c.endswith("(before training)")]


def _scores(result):
    return {k: result[k] for k in ("score_matrices", "score_metrics", "metrics", "accuracy_matrix")}


def test_a_grid_evaluates_before_training_once_with_the_same_scores(bench_dir, tmp_path, counted, monkeypatch):
    cached = [run(_config(bench_dir, tmp_path / "cached", method=m)) for m in ("finetune", "finetune+migu")]
    assert len(_before(counted)) == 3  # the first run's three tasks; the second run read them back
    first, second = (r["timings"][0]["eval_cache"] for r in cached)
    assert first == {"digest": first["digest"], "hit": False}
    assert second["hit"] and second["digest"] == first["digest"] and second["run"] == "tiny-bert_finetune_tiny_seed0"
    assert second["seconds"] > 0
    assert [p.name for p in (tmp_path / "cached" / FOLDER).iterdir()] == [f"{first['digest']}.json"]

    counted.clear()
    monkeypatch.setattr(runner_module, "_shared_evaluation", lambda *args: None)  # no cache at all
    plain = [run(_config(bench_dir, tmp_path / "plain", method=m)) for m in ("finetune", "finetune+migu")]
    assert len(_before(counted)) == 6
    assert "eval_cache" not in plain[1]["timings"][0]
    for with_cache, without in zip(cached, plain, strict=True):
        assert _scores(with_cache) == _scores(without)
    assert not (tmp_path / "plain" / FOLDER).exists()


def test_other_data_or_another_seed_evaluate_again(bench_dir, tmp_path, counted):
    run(_config(bench_dir, tmp_path, method="finetune"))
    run(_config(bench_dir, tmp_path, method="finetune+migu", data={**_config_data(bench_dir), "n_test": 6}))
    assert len(_before(counted)) == 6
    run(_config(bench_dir, tmp_path, method="finetune+migu", seed=1))
    assert len(_before(counted)) == 9
    assert len(list((tmp_path / FOLDER).iterdir())) == 3


@dataclass
class ScaledConfig:
    scale: float = 1.0


class ScaledAccuracy:
    """Accuracy times ``scale``: an evaluator with a setting."""

    name = "scaled"
    per_task = True
    final_only = False

    def __init__(self, config=None):
        self.config = config or ScaledConfig()

    def specs(self):
        return Classification().specs()[:1]

    def evaluate(self, model, fmt, examples, ctx):
        result = Classification().evaluate(model, fmt, examples, ctx)
        return {"accuracy": result["accuracy"] * self.config.scale}


@pytest.fixture
def scaled():
    EVALUATORS._entries["scaled"] = Entry("scaled", ScaledAccuracy, ScaledConfig, {"kinds": ("options",)})
    yield
    del EVALUATORS._entries["scaled"]


def test_another_evaluator_setting_evaluates_again(bench_dir, tmp_path, counted, scaled):
    one = run(_config(bench_dir, tmp_path, method="finetune", evaluators={"scaled": {"scale": 1.0}}))
    two = run(_config(bench_dir, tmp_path, method="finetune+migu", evaluators={"scaled": {"scale": 2.0}}))
    assert len(_before(counted)) == 6
    assert two["accuracy_matrix"][0] == [2 * a for a in one["accuracy_matrix"][0]]
    run(_config(bench_dir, tmp_path, method="finetune+migu", name="again", evaluators={"scaled": {"scale": 2.0}}))
    assert len(_before(counted)) == 6  # (the same setting: shared)


class KeptAccuracy(ScaledAccuracy):
    """Accuracy that keeps its per-item results (``KeepsSamples``): here the accuracy, twice."""

    name = "kept"
    samples = None

    def evaluate(self, model, fmt, examples, ctx):
        result = super().evaluate(model, fmt, examples, ctx)
        if self.samples is not None:
            self.samples.setdefault("accuracy", {})[ctx.task.name] = [result["accuracy"]] * 2
        return result


@pytest.fixture
def kept():
    EVALUATORS._entries["kept"] = Entry("kept", KeptAccuracy, ScaledConfig, {"kinds": ("options",)})
    yield
    del EVALUATORS._entries["kept"]


def test_a_run_that_keeps_per_item_results_gets_those_of_the_shared_evaluation_too(bench_dir, tmp_path, counted, kept):
    config = {"evaluators": {"kept": {}}, "keep_samples": True}
    plain = run(_config(bench_dir, tmp_path, method="finetune", evaluators={"kept": {}}))  # keeps none
    first = run(_config(bench_dir, tmp_path, method="finetune+migu", **config))
    assert not first["timings"][0]["eval_cache"]["hit"]  # the entry had no per-item results: computed again
    assert len(_before(counted)) == 6
    second = run(_config(bench_dir, tmp_path, method="finetune+migu", name="second", **config))
    assert second["timings"][0]["eval_cache"]["hit"] and len(_before(counted)) == 6
    before = first["samples"][0]
    assert (before["task_index"], before["epoch"]) == (0, 0) and second["samples"][0] == before
    assert before["scores"]["accuracy"] == {
        t: [a, a] for t, a in zip(("alpha", "beta", "gamma"), plain["accuracy_matrix"][0], strict=True)
    }
    third = run(_config(bench_dir, tmp_path, method="finetune", name="third", evaluators={"kept": {}}))
    assert third["timings"][0]["eval_cache"]["hit"] and "samples" not in third  # (and none kept for it)


def test_a_damaged_cache_file_is_computed_again(bench_dir, tmp_path, counted):
    first = run(_config(bench_dir, tmp_path, method="finetune"))
    path = tmp_path / FOLDER / f"{first['timings'][0]['eval_cache']['digest']}.json"
    good = json.loads(path.read_text())
    for damage in ("{not json", "", json.dumps({**good, "values": {"accuracy": [0.5]}}), "[]",
                   json.dumps({**good, "key": {**good["key"], "seed": 5}}),
                   json.dumps({**good, "samples": {"accuracy": {"alpha": ["x"]}}})):  # fmt: skip
        path.write_text(damage)
        counted.clear()
        again = run(_config(bench_dir, tmp_path, method="finetune+migu", name="again"))
        assert len(_before(counted)) == 3 and not again["timings"][0]["eval_cache"]["hit"]
        assert again["accuracy_matrix"][0] == first["accuracy_matrix"][0]
        assert json.loads(path.read_text())["values"] == good["values"]  # written whole again
        (tmp_path / "again" / "results.json").unlink()
    path.write_bytes(b"\xff\xfe\x00")
    assert EvalCache(tmp_path / FOLDER, good["key"], ACCELERATOR).load() is None


def _key(config, methods=None):
    sequence = load_tasks(config)
    stack = MethodStack(build_methods(config.method, config.methods)) if methods is None else methods
    return before_training_key(config, sequence, stack, ACCELERATOR)


def test_the_key_holds_what_decides_the_evaluation_and_not_the_method(bench_dir, tmp_path):
    base = _config(bench_dir, tmp_path)
    key = digest(_key(base))
    same = [replace(base, method=m) for m in ("finetune", "lora", "inc_lora", "olora", "replay+migu", "moelora",
                                               "osf", "ewc", "derpp", "freeze_bottom")]  # fmt: skip
    same += [replace(base, train=replace(base.train, lr=0.5, epochs=3)), replace(base, name="x", output_dir="y")]
    for config in same:
        assert digest(_key(config)) == key, config.method
    train, data = base.train, base.data
    other = [
        replace(base, model="tiny-roberta"),
        replace(base, seed=1),
        replace(base, data=replace(data, n_test=6)),
        replace(base, data=replace(data, evaluate_tasks="diagonal")),
        replace(base, data=replace(data, with_task_name=True)),
        replace(base, evaluators=["classification", "answer_share"]),
        replace(base, evaluation="rank"),
        replace(base, format={"scale": 10.0}),
        replace(base, train=replace(train, max_length=16)),
        replace(base, train=replace(train, eval_batch_size=4)),
        replace(base, train=replace(train, mixed_precision="bf16")),
    ]
    keys = {digest(_key(config)) for config in other}
    assert key not in keys and len(keys) == len(other)


class Doubled(Method):
    """A method whose setup changes what the model computes (and does not declare otherwise)."""

    name = "doubled"
    stage = "data"

    def setup(self, model):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(2)
        return model


def test_a_method_whose_setup_changes_the_model_keys_on_itself(bench_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS._entries, "doubled", Entry("doubled", Doubled, None, {}))
    base = _config(bench_dir, tmp_path)
    assert not MethodStack(build_methods("finetune+doubled")).setup_keeps_function
    doubled = _key(replace(base, method="finetune+doubled"))
    assert doubled["method"]["method"] == "finetune+doubled"
    assert digest(doubled) != digest(_key(base))
    assert digest(_key(replace(base, method="finetune+doubled"))) == digest(doubled)


SETTINGS = {"freeze_bottom": {"freeze_bottom": {"blocks": 1}}}


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-bert"])
def test_methods_that_share_the_evaluation_keep_the_model_exactly(model_name):
    """The rule the key relies on: for every registered method whose stack says its setup keeps
    the model's function, the model computes bit for bit what it did before ``setup``."""
    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    checked = []
    for name in METHODS:
        methods = MethodStack(build_methods(name, SETTINGS.get(name)))
        if not methods.setup_keeps_function:
            continue
        model = load_model(model_name, seed=0).model.eval()
        with torch.no_grad():
            before = _output(model, ids)
            after = _output(methods.setup(model).eval(), ids)
        assert torch.equal(before, after), name
        checked.append(name)
    assert {"finetune", "lora", "inc_lora", "olora", "freeze_bottom", "migu", "moelora", "osf"} <= set(checked)


def _output(model, ids):
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
