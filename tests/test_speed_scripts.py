"""The speed benchmark's scripts run end to end on tiny sizes (their numbers are not tested here:
they are measurements, made by their own commands on a quiet machine)."""

import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from migu.train.loop import cpu_has_native_bf16

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_gpu_speed_check_runs_on_cpu_tiny():
    lines = _load("gpu_speed_check").main(
        ["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--rounds", "2"]
    )
    rows = [line for line in lines if line.startswith("| block_tiny") or line.startswith("| llama_tiny")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2].split()[0]) > 0  # step time, ratio


def test_flop_limit_of_a_block_matches_a_hand_count():
    speed = _load("speed")
    torch.manual_seed(0)
    d, tokens = 32, 64
    model = speed.BlockStack(d, 4 * d, 1)
    x = torch.randn(1, tokens, d)  # no gradient for x: the first layers compute no input gradient
    limit = speed.flop_limit(model, {"x": x}, None, 0.5)
    shapes = [(d, d)] * 4 + [(d, 4 * d), (4 * d, d)]  # q, k, v, o, up, down as (in, out)
    weight_grad = sum(2 * tokens * i * o for i, o in shapes)
    forward = weight_grad
    input_grad = weight_grad - 3 * 2 * tokens * d * d  # q, k and v read x, which needs no gradient
    total = forward + weight_grad + input_grad
    saved = sum(2 * tokens * i * o * (-(-0.5 * (o - 1) // 1)) / o for i, o in shapes)
    assert limit["flop_limit"] == pytest.approx((total - saved) / total)


def test_profile_breakdown_charges_migu_scopes():
    profile_step = _load("profile_step")
    out = profile_step.profile_case("block_width256_tokens1024", steps=1, warmup=1, repeats=1, threshold=0.7)
    assert set(out) == {"plain", "migu", "migu_dense"}
    assert not any(k.startswith(("statistic", "fast.", "mask")) for k in out["plain"]["parts_ms"])
    migu_parts = out["migu"]["parts_ms"]
    assert migu_parts["statistic"] > 0 and migu_parts["fast.weight_grad: matmul"] > 0
    assert "fast.weight_grad: matmul" not in out["migu_dense"]["parts_ms"] and out["migu_dense"]["parts_ms"]["mask"] > 0


def test_table_names_the_optimizer_of_time_and_memory(tmp_path):
    """A memory-only rerun with another optimizer keeps the earlier timings: the table says which
    optimizer each came from; rows from before ``train.optim`` read as torch's loop."""
    speed = _load("speed")
    row = {"plain_step_s": 1.0, "time_ratio": 0.9, "dense_time_ratio": 1.0, "memory_ratio": 1.0,
           "dense_memory_ratio": 1.0}  # fmt: skip
    rows = {
        "_meta": {"cpu": "test cpu", "date": "today", "torch": "x"},
        "old": row,
        "fused": {**row, "optim": "adamw_torch_fused", "memory_optim": "adamw_torch_fused"},
        "mixed": {**row, "optim": "adamw_torch", "memory_optim": "adamw_torch_fused"},
    }
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(rows))
    lines = {line.split(" | ")[0].strip("| `"): line for line in speed.table(str(path)).splitlines()}
    assert lines["old"].endswith("| adamw_torch |")
    assert lines["fused"].endswith("| adamw_torch_fused |")
    assert lines["mixed"].endswith("| time: adamw_torch, memory: adamw_torch_fused |")


def _row(ratio):
    return {"plain_step_s": 1.0, "time_ratio": ratio, "dense_time_ratio": 1.0, "memory_ratio": 1.0,
            "dense_memory_ratio": 1.0}  # fmt: skip


def test_batch_cases_are_named_with_the_issue_targets(tmp_path):
    """Issue 40: MiniLM, the blocks and SmolLM2 LoRA at micro-batch 8 and 16, fp32 and bf16 (the
    groups take bf16 only where the CPU computes it natively); the table prints each target and
    marks a miss."""
    cases = _load("speed_cases")
    assert cases.groups(native_bf16=False) == {
        "batch8": ["minilm_full_b8", "block_d1024_b8", "smollm2_lora_b8"],
        "batch16": ["minilm_full_b16", "block_d1024_b16", "smollm2_lora_b16"],
    }
    native = cases.groups(native_bf16=True)
    assert native["batch8"][3:] == ["minilm_full_b8_bf16", "block_d1024_b8_bf16", "smollm2_lora_b8_bf16"]
    expected = {"minilm_full_b8": 1.0, "block_d1024_b8": 1.0, "minilm_full_b16": 0.95, "block_d1024_b16": 0.95,
                "smollm2_lora_b8": 1.0, "smollm2_lora_b16": 1.0, "minilm_full_b8_bf16": 1.0,
                "minilm_full_b16_bf16": 1.0, "smollm2_lora_b16_bf16": 1.0}  # fmt: skip
    for group in native.values():
        for name in group:
            assert name in cases.CASES and cases.TARGETS[name][0] == expected.get(name, 1.0), name
    speed = _load("speed")
    rows = {"_meta": {"cpu": "test cpu"}, "minilm_full_b8": _row(0.99), "minilm_full_b16": _row(0.96),
            "smollm2_lora_b16": _row(1.01), "minilm_full_b8_bf16": _row(0.98)}  # fmt: skip
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(rows))
    lines = {line.split(" | ")[0].strip("| `"): line.split(" | ") for line in speed.table(str(path)).splitlines()}
    assert lines["minilm_full_b8"][2:4] == ["0.990 ✓", "1.0"]
    assert lines["minilm_full_b16"][2:4] == ["0.960 ✗", "0.95"]
    assert lines["smollm2_lora_b16"][2:4] == ["1.010 ✗", "1.0"]
    assert lines["minilm_full_b8_bf16"][2:4] == ["0.980 ✓", "1.0"]


def _check_selections(selections, variants):
    """Each MIGU variant ranked rows by its own score, kept ~30% of them (T = 0.7), and only
    magnitude took the fast path; the given (Fisher) scores are fixed, random ones are not."""
    assert set(selections) == set(variants)
    for variant, s in selections.items():
        assert s["selection"] == {"migu": "magnitude", "migu_dense": "magnitude"}.get(variant, variant)
        assert (s["fast_path_layers"] > 0) == (variant == "migu"), variant
        assert 0.25 < s["kept_share"] < 0.4, variant
    if "given" in selections:
        assert selections["given"]["mean_jaccard"] == 1.0
    if "random" in selections:
        assert selections["random"]["mean_jaccard"] < 0.5


BATCH_CASES = [
    "minilm_full_b8",
    "block_d1024_b16",
    pytest.param("minilm_full_b16_bf16", marks=pytest.mark.skipif(not cpu_has_native_bf16(), reason="emulated bf16")),
    pytest.param("smollm2_lora_b8", marks=pytest.mark.slow),  # 135M parameters: a few copies, ~20 s
]


@pytest.mark.parametrize("name", BATCH_CASES)
def test_batch_cases_train_tiny(name):
    """Each model of the batch cases trains a step with and without MIGU at 4 tokens a sequence,
    with the case's micro-batch; MIGU's fast path covers its layers."""
    speed = _load("speed")
    out = speed.measure_time(name, repeats=1, warmup=0, threshold=0.7, variants=("migu",), seq=4)
    batch = int(name.split("_b")[1].split("_")[0])
    assert out["batch_shape"][:2] == [batch, 4]
    assert out["plain_step_s"] > 0 and math.isfinite(out["time_ratio"]) and 0 < out["flop_limit"] <= 1
    _check_selections(out["selections"], ["migu"])


def test_score_variants_run_in_rounds_and_tabulate(tmp_path, bench_dir, monkeypatch):
    """Issue 38: the step time of each row score against plain steps (random, gradient, the
    Fisher method's given scores) beside MIGU's, in a fresh process per round; and the Fisher
    estimate's time per task, with plain steps of that task; both in the table."""
    monkeypatch.setenv("MIGU_CL_BENCHMARK", str(bench_dir))
    speed = _load("speed")

    def child(*args):  # the round's child, run here (a fresh interpreter costs seconds of imports)
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            speed.main([str(a) for a in args])
        return json.loads(text.getvalue().strip().splitlines()[-1])

    monkeypatch.setattr(speed, "_child", child)
    out = tmp_path / "speed.json"
    speed.main(["--cases", "block_width256_tokens1024", "--seq", "8", "--rounds", "1", "--repeats", "1",
                "--warmup", "1", "--scores", "--no-memory", "--fisher", "--fisher-task", "alpha",
                "--fisher-examples", "2", "--out", str(out)])  # fmt: skip
    results = json.loads(out.read_text())
    row = results["block_width256_tokens1024"]
    assert row["seq"] == 8 and row["batch_shape"] == [128, 8, 256]
    for key in ("time_ratio", "dense_time_ratio", "random_time_ratio", "gradient_time_ratio", "given_time_ratio"):
        assert row[key] > 0 and len(row[f"{key}_rounds"]) == 1, key
    _check_selections(row["selections"], ["migu", "migu_dense", "random", "gradient", "given"])
    fisher = results["_fisher"]
    assert fisher["examples"] == 2 and fisher["fisher_batch_size"] == 1 and fisher["task"] == "alpha"
    assert fisher["fisher_s"] > 0 and fisher["plain_step_s"] > 0 and fisher["task_steps"] == 125  # 1000 / 8
    text = speed.table(str(out))
    scores = next(line for line in text.splitlines() if line.startswith("| `block_width256_tokens1024` (seq 8)")
                  and line.count("|") == 9)  # fmt: skip
    assert all(cell.strip() for cell in scores.strip("|").split("|")), scores  # every score has its ratio
    assert "Fisher estimate per task (`empirical_fisher` of the masked weights on 2 examples of alpha" in text
    for measured in (row, fisher):  # provenance: a shared machine's load says how far to trust a row
        assert "commit" in measured and "--scores" in measured["command"] and len(measured["load_average"]) == 2
    assert "Load average (1 min) before and after the rows: " in text


def test_memory_child_takes_the_sequence_length(capsys):
    speed = _load("speed")
    speed.main(["--memory-child", "block_width256_tokens1024", "migu", "0.7", "adamw_torch", "8"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["peak_growth_kb"] >= 0


REFERENCE_FIELDS = {"passed", "layers", "fast_path_layers", "layers_identical", "rows_differing", "worst_tie_rel",
                    "tie_rtol", "worst_grad_rel", "grad_rtol", "layers_with_masked_gradient",
                    "layers_without_gradient"}  # fmt: skip
TIMING_FIELDS = {"step_s", "time_ratio", "time_ratio_min", "time_ratio_max", "dense_time_ratio",
                 "dense_time_ratio_min", "dense_time_ratio_max", "peak_gb", "kernels"}  # fmt: skip


def test_gpu_check_dry_run_writes_every_field(tmp_path):
    """``gpu_check.sh --device cpu --tiny``: every section and field in the JSON, every check passed."""
    out = tmp_path / "gpu_check.json"
    args = ["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--rounds", "1", "--out", str(out)]
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))] == [
        f"PASS {key}" for key in [*result["reference"], *result["update_mode"]]
    ]
    models = ["minilm_l6", "smollm2_135m", "llama_1b"]
    assert set(result["environment"]) == {"device", "device_type", "torch", "transformers", "cuda", "python", "commit"}
    assert result["tiny"] is True and result["skipped"] == [] and result["passed"] is True
    assert set(result["reference"]) == {f"{m}/{d}" for m in models for d in ("fp32", "bf16")}
    for check in result["reference"].values():
        assert set(check) == REFERENCE_FIELDS and check["passed"] and check["layers"] == check["fast_path_layers"] > 0
    assert set(result["update_mode"]) == set(models)
    for check in result["update_mode"].values():
        assert check["passed"] and len(check["steps"]) == 3
        assert all(s["masked_rows_unchanged"] == s["kept_rows_moved"] == s["layers"] > 0 for s in check["steps"])
    assert set(result["timing"]) == {f"{m}/b{b}" for m in models for b in (8, 64)}
    for row in result["timing"].values():
        assert set(row) == TIMING_FIELDS
        assert all(row["step_s"][v] > 0 for v in ("plain", "migu", "migu_dense")) and row["time_ratio"] > 0
        assert row["peak_gb"] == {"plain": None, "migu": None, "migu_dense": None}  # CUDA only
    assert set(result["seconds"]) >= {"all", *(f"checks {m}" for m in models)}


def test_gpu_checks_fail_when_they_should():
    """The checks can fail: reference rows of another threshold, masked rows moved in grad mode."""
    gpu_check = _load("gpu_check")
    cpu = torch.device("cpu")
    shape = gpu_check.TINY["smollm2_135m"]
    model = gpu_check.build("smollm2_135m", shape, cpu)
    batch = gpu_check.make_batch("smollm2_135m", shape, 8, cpu)
    assert gpu_check.reference_check(model, batch, cpu, "fp32")["passed"]
    wrong = gpu_check.reference_check(model, batch, cpu, "fp32", reference_threshold=0.5)
    assert not wrong["passed"] and wrong["rows_differing"] > 0
    assert gpu_check.update_mode_check(model, "smollm2_135m", shape, cpu)["passed"]
    grad_mode = gpu_check.update_mode_check(model, "smollm2_135m", shape, cpu, mode="grad")
    assert not grad_mode["passed"] and grad_mode["steps"][0]["masked_rows_unchanged"] < grad_mode["steps"][0]["layers"]
