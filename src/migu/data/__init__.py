"""Tasks, task sequences, loaders and prompts."""

from . import code_skill  # noqa: F401  (registers the packaged skills source)
from .cl_benchmark import load_orders, load_sequence, load_task
from .prompts import render_input, render_prompt
from .tasks import Example, Task, TaskSequence, make_examples

__all__ = [
    "Example",
    "Task",
    "TaskSequence",
    "load_orders",
    "load_sequence",
    "load_task",
    "make_examples",
    "render_input",
    "render_prompt",
]
