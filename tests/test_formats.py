"""Each model kind's format trains a step and evaluates, with no task id at test time."""

import pytest
import torch

from migu.data import Example
from migu.evaluators import EvalContext
from migu.evaluators.classification import label_scores
from migu.formats import make_format, normalize_answer
from migu.methods import TaskContext, build_methods
from migu.models import load_model
from migu.train import TrainConfig, make_accelerator, train_task

OPTIONS = ("cats", "dogs")
EXAMPLES = [Example(f"text {i} about {OPTIONS[i % 2]}", OPTIONS[i % 2], OPTIONS, "Topic?", "alpha") for i in range(8)]


class _Task:
    name = "alpha"


@pytest.mark.parametrize(
    "model, options",
    [("tiny-bert", {}), ("tiny-roberta", {}), ("tiny-t5", {}), ("tiny-llama", {}), ("tiny-gpt2", {}),
     ("tiny-llama", {"evaluation": "rank"})],
)  # fmt: skip
def test_format_trains_and_evaluates(model, options):
    bundle = load_model(model)
    fmt = make_format(bundle.arch, bundle.tokenizer, 48, **options)
    config = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=4, max_length=48)
    methods = build_methods("finetune+migu")
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    ctx = TaskContext(1, _Task(), 2, 0)  # second task: MIGU masks
    for m in methods:
        m.before_task(bundle.model, ctx)
    stats = train_task(bundle.model, fmt, EXAMPLES, methods, ctx, config, make_accelerator(config), progress=False)
    assert stats["steps"] == 2 and torch.isfinite(torch.tensor(stats["mean_loss"]))
    changed = [n for n, p in bundle.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    assert methods[-1].after_task(bundle.model, ctx)["masked"]
    acc = label_scores(bundle.model, fmt, EXAMPLES, EvalContext(batch_size=4))["accuracy"]
    assert 0.0 <= acc <= 100.0
    assert bundle.model.training  # mode restored


def test_decoder_loss_only_on_answer_tokens():
    bundle = load_model("tiny-llama")
    fmt = make_format("decoder", bundle.tokenizer, 64)
    batch = fmt.batch(EXAMPLES[:2])
    for row in range(2):
        answer = batch["labels"][row][batch["labels"][row] != -100].tolist()
        expected = bundle.tokenizer(" " + EXAMPLES[row].label, add_special_tokens=False)["input_ids"]
        assert answer == [*expected, bundle.tokenizer.eos_token_id]


def test_encoder_scores_only_own_candidates():
    bundle = load_model("tiny-bert")
    fmt = make_format("encoder", bundle.tokenizer, 32)
    mixed = [EXAMPLES[0], Example("sunny", "good", ("good", "bad", "meh"), "Sentiment?", "beta")]
    batch = fmt.batch(mixed)
    assert batch["labels"] == sorted({"cats", "dogs", "good", "bad", "meh"})  # each label string encoded once
    assert batch["options"][0].tolist()[2] == -1  # padded: the first example has two candidates
    predictions = fmt.predict(bundle.model, mixed)
    assert predictions[0] in OPTIONS and predictions[1] in ("good", "bad", "meh")


def test_normalize_answer():
    assert normalize_answer("  Positive\nmore text") == "positive"
