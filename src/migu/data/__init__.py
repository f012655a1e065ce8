"""Tasks, task sequences, data sources and prompts. Importing the package registers every source
(``migu.data.base.SOURCES``): cl_benchmark, bbc, hub, jsonl (``sources``), das_cpu, skills and
hub_instruct (``code_skill``)."""

from . import code_skill, das_cpu, sources  # noqa: F401  (each registers its sources)
from .base import SOURCES, load_source, register_source
from .cl_benchmark import load_orders, load_sequence, load_task
from .prompts import render_input, render_prompt
from .tasks import Example, Task, TaskSequence, make_examples

__all__ = [
    "SOURCES",
    "Example",
    "Task",
    "TaskSequence",
    "load_orders",
    "load_sequence",
    "load_source",
    "load_task",
    "make_examples",
    "register_source",
    "render_input",
    "render_prompt",
]
