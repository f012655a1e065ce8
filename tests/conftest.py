"""Shared fixtures: a small CL-benchmark folder written by the tests, the real shared folder."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(os.environ.get("MIGU_CL_BENCHMARK", Path(__file__).parents[2] / "shared" / "data" / "cl_benchmark"))

TOPICS = {
    "alpha": ("TC", ["cats", "dogs"], ["the cat sat and purred", "a dog barked at the mailman"]),
    "beta": ("SC", ["good", "bad"], ["what a lovely sunny day", "this was a terrible awful film"]),
    "gamma": ("TC", ["red", "blue"], ["fire trucks and ripe tomatoes", "the deep sea and a clear sky"]),
}


def write_corpus(root: Path, rows: int = 6) -> Path:
    """Two tiny unlabelled domains (d1, d2) as the jsonl source reads them (corpus tasks)."""
    for domain, words in (("d1", "cats purr softly"), ("d2", "stocks fell sharply")):
        (root / domain).mkdir(parents=True)
        for split in ("train", "test"):
            lines = [{"text": f"{words} {i} {words}"} for i in range(rows)]
            (root / domain / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


def write_benchmark(root: Path, n_train: int = 24, n_test: int = 8) -> Path:
    """A tiny benchmark in the shared layout: three two-label tasks with learnable texts."""
    instructions = {"TC": [{"instruction": "What is the topic? Choose one from the option.\n"}],
                    "SC": [{"instruction": "What is the sentiment? Choose one from the option.\n"}]}  # fmt: skip
    (root).mkdir(parents=True, exist_ok=True)
    (root / "instruction_config.json").write_text(json.dumps(instructions))
    (root / "orders.json").write_text(json.dumps({"tiny": ["alpha", "beta", "gamma"], "bad": ["alpha", "zeta"]}))
    for name, (category, labels, texts) in TOPICS.items():
        folder = root / category / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "labels.json").write_text(json.dumps(labels))
        for split, n in (("train", n_train), ("test", n_test)):
            rows = [{"sentence": f"{texts[i % 2]} number {i}", "label": labels[i % 2]} for i in range(n)]
            (folder / f"{split}.json").write_text(json.dumps(rows))
    return root


@pytest.fixture
def bench_dir(tmp_path):
    return write_benchmark(tmp_path / "cl_benchmark")


@pytest.fixture
def shared_dir():
    if not (SHARED / "orders.json").is_file():
        pytest.skip(f"the shared CL benchmark is not at {SHARED} (set MIGU_CL_BENCHMARK)")
    return SHARED
