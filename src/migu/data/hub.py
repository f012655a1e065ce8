"""The benchmark's 15 tasks from the Hugging Face hub, for online users.

Each hub row becomes the same ``sentence``/``label`` text as the local JSON layout, so results
from either source are comparable. Needs ``pip install datasets`` and network access.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .tasks import Task, TaskSequence, make_examples, sample_splits

Row = dict[str, Any]
INSTRUCTIONS = {
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.",
    "TC": "What is the topic of the following paragraph? Choose one from the option.",
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? '
    "Choose one from the option.",
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? Choose one from the option.',
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.",
    "MultiRC": "According to the following passage and question, is the candidate answer true or false? "
    "Choose one from the option.",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in both sentence? "
    "Choose one from the option.",
}
STARS = ("very negative", "negative", "neutral", "positive", "very positive")
YAHOO = (
    "Society & Culture",
    "Science & Mathematics",
    "Health",
    "Education & Reference",
    "Computers & Internet",
    "Sports",
    "Business & Finance",
    "Entertainment & Music",
    "Family & Relationships",
    "Politics & Government",
)
DBPEDIA = (
    "Company",
    "Educational Institution",
    "Artist",
    "Athlete",
    "Office Holder",
    "Mean of Transportation",
    "Building",
    "Natural Place",
    "Village",
    "Animal",
    "Plant",
    "Album",
    "Film",
    "Written Work",
)


@dataclass(frozen=True)
class HubTask:
    path: str
    config: str | None
    category: str
    labels: tuple[str, ...]
    text: Callable[[Row], str]
    label_field: str = "label"
    label_names: tuple[str, ...] | None = None  # hub label index -> label string (default: labels)
    test_split: str = "test"


def _pair(a: str, b: str, x: str, y: str) -> Callable[[Row], str]:
    return lambda r: f"{a}: {r[x]}\n{b}: {r[y]}"


HUB_TASKS: dict[str, HubTask] = {
    "dbpedia": HubTask(
        "fancyzhx/dbpedia_14", None, "TC", DBPEDIA, lambda r: f"Title: {r['title']}\nText: {r['content']}"
    ),
    "agnews": HubTask(
        "fancyzhx/ag_news", None, "TC", ("World", "Sports", "Business", "Science or Technology"), lambda r: r["text"]
    ),
    "yahoo": HubTask(
        "community-datasets/yahoo_answers_topics",
        None,
        "TC",
        YAHOO,
        lambda r: f"{r['question_title']}\n{r['question_content']}\n{r['best_answer']}",
        "topic",
    ),
    "yelp": HubTask("Yelp/yelp_review_full", None, "SC", STARS, lambda r: r["text"]),
    "amazon": HubTask("SetFit/amazon_reviews_multi_en", None, "SC", STARS, lambda r: r["text"]),
    "imdb": HubTask("stanfordnlp/imdb", None, "SC", ("Good", "Bad"), lambda r: r["text"], label_names=("Bad", "Good")),
    "sst-2": HubTask(
        "nyu-mll/glue",
        "sst2",
        "SC",
        ("Good", "Bad"),
        lambda r: f"Text: {r['sentence']}",
        label_names=("Bad", "Good"),
        test_split="validation",
    ),
    "mnli": HubTask(
        "nyu-mll/glue",
        "mnli",
        "NLI",
        ("neutral", "entailment", "contradiction"),
        _pair("sentence 1", "sentence 2", "premise", "hypothesis"),
        label_names=("entailment", "neutral", "contradiction"),
        test_split="validation_matched",
    ),
    "cb": HubTask(
        "aps/super_glue",
        "cb",
        "NLI",
        ("entailment", "contradiction", "neutral"),
        _pair("sentence 1", "sentence 2", "premise", "hypothesis"),
        test_split="validation",
    ),
    "rte": HubTask(
        "aps/super_glue",
        "rte",
        "NLI",
        ("contradiction", "entailment"),
        _pair("sentence 1", "sentence 2", "premise", "hypothesis"),
        label_names=("entailment", "contradiction"),
        test_split="validation",
    ),
    "qqp": HubTask(
        "nyu-mll/glue",
        "qqp",
        "QQP",
        ("False", "True"),
        _pair("first sentence", "second sentence", "question1", "question2"),
        test_split="validation",
    ),
    "boolqa": HubTask(
        "aps/super_glue",
        "boolq",
        "BoolQA",
        ("True", "False"),
        _pair("question", "passage", "question", "passage"),
        label_names=("False", "True"),
        test_split="validation",
    ),
    "multirc": HubTask(
        "aps/super_glue",
        "multirc",
        "MultiRC",
        ("False", "True"),
        lambda r: f"paragraph: {r['paragraph']}\nquestion: {r['question']}\nanswer: {r['answer']}",
        test_split="validation",
    ),
    "wic": HubTask(
        "aps/super_glue",
        "wic",
        "WiC",
        ("True", "False"),
        lambda r: f"word: {r['word']}\n{r['sentence1']}\n{r['sentence2']}",
        label_names=("False", "True"),
        test_split="validation",
    ),
    "copa": HubTask(
        "aps/super_glue",
        "copa",
        "COPA",
        ("A", "B"),
        lambda r: (
            f'Which sentence is the {r["question"]} of "{r["premise"]}"? Choose one between A and B.'
            f"\nA: {r['choice1']}\nB: {r['choice2']}"
        ),
        label_names=("A", "B"),
        test_split="validation",
    ),
}


def convert(name: str, rows: Iterable[Row]) -> list[tuple[str, str]]:
    """Hub rows of task ``name`` -> (sentence, label) pairs in the local layout's wording."""
    spec = HUB_TASKS[name]
    names = spec.label_names or spec.labels
    out = []
    for index, row in enumerate(rows):
        label = row[spec.label_field]
        if not isinstance(label, int) or not 0 <= label < len(names):
            raise ValueError(f"{spec.path}: row {index} has label {label!r}, expected 0..{len(names) - 1}")
        out.append((spec.text(row), names[label]))
    return out


def _hub_loader(path: str, config: str | None, split: str) -> Iterable[Row]:
    try:
        import datasets
    except ImportError as err:
        raise ModuleNotFoundError("loading tasks from the hub needs: pip install datasets") from err
    return datasets.load_dataset(path, config, split=split)


def load_hub_task(
    name: str,
    n_train: int | None = 1000,
    n_test: int | None = 1000,
    n_validation: int = 0,
    seed: int = 0,
    loader: Callable[[str, str | None, str], Iterable[Row]] = _hub_loader,
) -> Task:
    """One task from the hub (``loader(path, config, split)`` returns its rows)."""
    key = name.lower()
    if key not in HUB_TASKS:
        raise ValueError(f"unknown hub task {name!r}; known: {', '.join(sorted(HUB_TASKS))}")
    spec = HUB_TASKS[key]
    rng = random.Random(f"{seed}:{key}")
    train_all = convert(key, loader(spec.path, spec.config, "train"))
    test_all = convert(key, loader(spec.path, spec.config, spec.test_split))
    if not train_all or not test_all:
        raise ValueError(f"hub task {name!r} has an empty split")
    train, validation, test = sample_splits(train_all, test_all, n_train, n_test, n_validation, rng)
    instruction, where = INSTRUCTIONS.get(spec.category, INSTRUCTIONS["TC"]), f"hub {spec.path}"
    return Task(
        name=key,
        instruction=instruction,
        labels=spec.labels,
        category=spec.category,
        train=make_examples(train, spec.labels, where, instruction, key),
        test=make_examples(test, spec.labels, where, instruction, key),
        validation=make_examples(validation, spec.labels, where, instruction, key),
    )


def load_hub_sequence(
    names: list[str],
    n_train: int | None = 1000,
    n_test: int | None = 1000,
    n_validation: int = 0,
    seed: int = 0,
    loader: Callable[[str, str | None, str], Iterable[Row]] = _hub_loader,
) -> TaskSequence:
    unknown = [n for n in names if n.lower() not in HUB_TASKS]
    if unknown:
        raise ValueError(f"unknown hub task(s) {unknown}; known: {', '.join(sorted(HUB_TASKS))}")
    return TaskSequence("hub", [load_hub_task(n, n_train, n_test, n_validation, seed, loader) for n in names])
