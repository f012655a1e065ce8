"""The task-label-free prompt: instruction, the example's options, its input, an answer cue.

As in the paper's prompts, the candidate labels come with the example; no task id is needed
at test time. Prefixing the task name (the official code does) leaks task identity, so it is
an option, off by default.
"""

from __future__ import annotations

from .tasks import Example

ANSWER_CUE = "Answer:"


def render_prompt(example: Example, with_task_name: bool = False) -> str:
    """``[task]\\n<instruction>\\nOption: a, b, c\\n<input>\\nAnswer:`` (generative models)."""
    head = f"{example.task}\n" if with_task_name else ""
    instruction = f"{example.instruction}\n" if example.instruction else ""
    return f"{head}{instruction}Option: {', '.join(example.options)}\n{example.text.strip()}\n{ANSWER_CUE}"


def render_input(example: Example, with_task_name: bool = False) -> str:
    """The input for encoders, which score the options separately: no option list, no cue."""
    head = f"{example.task}\n" if with_task_name else ""
    instruction = f"{example.instruction}\n" if example.instruction else ""
    return f"{head}{instruction}{example.text.strip()}"
