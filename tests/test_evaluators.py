"""Evaluators against hand computations; metrics of a lower-is-better score matrix."""

import math

import pytest
import torch
import torch.nn.functional as F

from migu import metrics
from migu.data.tasks import Example, TextExample
from migu.evaluators import EvalContext, build_evaluators, check_evaluators, macro_f1
from migu.models import load_model


def test_macro_f1_against_a_hand_made_confusion():
    # gold a a a b b c ; predicted a a b b c c
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    # a: tp 2 fp 0 fn 1 -> 4/5; b: tp 1 fp 1 fn 1 -> 2/4; c: tp 1 fp 1 fn 0 -> 2/3
    assert macro_f1(gold, pred, ["a", "b", "c", "d"]) == pytest.approx(100 * (4 / 5 + 1 / 2 + 2 / 3) / 3)


class _Fixed:
    """A format that answers from a lookup table (the model is not used)."""

    def __init__(self, answers):
        self.answers = answers

    def predict(self, model, examples):
        return [self.answers[e.text] for e in examples]


def test_classification_scores_accuracy_and_macro_f1_of_the_predictions():
    model = torch.nn.Linear(2, 2)
    rows = [("x1", "yes", "yes"), ("x2", "yes", "no"), ("x3", "no", "no"), ("x4", "no", "no")]
    examples = [Example(t, g, ("yes", "no")) for t, g, _ in rows]
    fmt = _Fixed({t: p for t, _, p in rows})
    (evaluator,) = build_evaluators(None, "options")
    scores = evaluator.evaluate(model, fmt, examples, EvalContext(batch_size=3))
    assert scores["accuracy"] == 75.0
    assert scores["macro_f1"] == pytest.approx(100 * (2 / 3 + 4 / 5) / 2)  # yes: tp1 fn1; no: tp2 fp1


class _CausalFormat:
    """A minimal LM format: whole texts, loss on every real token after the first."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def batch(self, examples):
        enc = self.tokenizer([e.text for e in examples], padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return {**enc, "labels": labels}

    def token_loss(self, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        return loss, int((labels != -100).sum())


def test_perplexity_is_exp_of_the_mean_token_loss_over_the_whole_split():
    bundle = load_model("tiny-llama", seed=0)
    texts = ["the cat sat", "a dog barked at the moon", "hello", "one two three four five six"]
    examples = [TextExample(t) for t in texts]
    fmt = _CausalFormat(bundle.tokenizer)
    (evaluator,) = build_evaluators(["lm_loss"], "corpus")
    scores = evaluator.evaluate(bundle.model, fmt, examples, EvalContext(batch_size=3))  # batches of 3 and 1
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:  # by hand: one text at a time, no padding
            ids = bundle.tokenizer(t, return_tensors="pt")["input_ids"]
            logits = bundle.model(input_ids=ids).logits
            total += float(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    assert scores["loss"] == pytest.approx(total / count, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert [s.higher_is_better for s in evaluator.specs()] == [False, False]


def test_unknown_evaluators_and_settings_are_refused_at_check_time():
    with pytest.raises(ValueError, match="unknown evaluator 'bleu'"):
        check_evaluators(["bleu"], "options")
    with pytest.raises(ValueError, match=r"evaluators\.classification takes no settings"):
        check_evaluators({"classification": {"limit": 3}}, "options")
    with pytest.raises(ValueError, match="scores corpus, instruction tasks, not options tasks"):
        check_evaluators(["lm_loss"], "options")


# perplexity after each of three domains: lower is better
PPL = [
    [30.0, 40.0, 50.0],
    [10.0, 38.0, 49.0],
    [14.0, 12.0, 45.0],
    [16.0, 13.0, 11.0],
]


def test_metrics_of_a_lower_is_better_matrix_read_like_accuracy():
    assert metrics.average_accuracy(PPL) == pytest.approx((16 + 13 + 11) / 3)
    # final - just learned: (16 - 10) and (13 - 12), negated: getting worse is negative
    assert metrics.backward_transfer(PPL, higher_is_better=False) == pytest.approx(-(6 + 1) / 2)
    # before learning - untrained: (38 - 40) and (45 - 50), negated: earlier domains helped
    assert metrics.forward_transfer(PPL, higher_is_better=False) == pytest.approx((2 + 5) / 2)
    # final - best (lowest) since learned: 16 - 10, 13 - 12
    assert metrics.forgetting_per_task(PPL, higher_is_better=False) == [6.0, 1.0]
    assert metrics.learning_accuracy(PPL) == pytest.approx((10 + 12 + 11) / 3)
    s = metrics.summary(PPL, higher_is_better=False)
    assert s["forgetting"] == pytest.approx(3.5) and s["bwt"] == pytest.approx(-3.5)


def test_a_diagonal_schedule_gives_aa_bwt_and_learning_accuracy_but_no_forgetting():
    full = [[50.0, 50.0, 50.0], [80.0, 55.0, 50.0], [70.0, 90.0, 52.0], [60.0, 85.0, 95.0]]
    diagonal = [[None] * 3, [80.0, None, None], [None, 90.0, None], [60.0, 85.0, 95.0]]
    a, b = metrics.summary(full), metrics.summary(diagonal)
    for key in ("aa", "bwt", "learning_accuracy", "final_accuracy"):
        assert a[key] == b[key]
    assert b["forgetting"] is None and b["fwt"] is None
