"""The embedding-geometry diagnostic against brute force, on a collapsed encoder and in a run."""

import math

import pytest
import torch
import torch.nn.functional as F

from migu.bench import run
from migu.data.tasks import Example
from migu.evaluators import EvalContext, build_evaluators
from migu.evaluators.geometry import mean_pairwise_cosine
from migu.formats.options import LABEL_MAX_LENGTH, DecoderFormat, EncoderFormat
from migu.models import load_model
from test_protocol import _jsonl_config, _jsonl_dir

TEXTS = ["a cat sat", "the stock fell", "rain again today", "a goal in the last minute", "new phone out", "tea"]
EXAMPLES = [Example(t, ("good", "bad")[i % 2], ("good", "bad", "fine") if i % 3 else ("good", "bad"))
            for i, t in enumerate(TEXTS)]  # fmt: skip


def _geometry():
    (evaluator,) = build_evaluators(["embedding_geometry"], "options")
    return evaluator


def test_mean_pairwise_cosine_is_the_mean_over_pairs_of_different_rows():
    vectors = F.normalize(torch.randn(7, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    cos = vectors @ vectors.t()
    brute = (cos.sum() - cos.diag().sum()) / (7 * 6)
    assert mean_pairwise_cosine(vectors) == pytest.approx(float(brute), abs=1e-6)
    with pytest.raises(ValueError, match="two vectors"):
        mean_pairwise_cosine(vectors[:1])


def test_scores_match_brute_force_on_a_tiny_encoder_whatever_the_batch_size():
    bundle = load_model("tiny-bert", seed=0)
    fmt = EncoderFormat(bundle.tokenizer, max_length=16)
    with torch.no_grad():
        inputs = fmt.embed(bundle.model.eval(), fmt.batch(EXAMPLES)["texts"], 16)
        labels = fmt.embed(bundle.model, ["bad", "fine", "good"], LABEL_MAX_LENGTH)
    cos = inputs @ inputs.t()
    spread = [max(c) - min(c) for c in ([float(inputs[i] @ labels[["bad", "fine", "good"].index(o)]) for o in e.options]
                                        for i, e in enumerate(EXAMPLES))]  # fmt: skip
    for batch_size in (2, 64):
        scores = _geometry().evaluate(bundle.model, fmt, EXAMPLES, EvalContext(batch_size=batch_size))
        assert scores["input_cosine"] == pytest.approx(float((cos.sum() - cos.diag().sum()) / 30), abs=1e-5)
        lab = labels @ labels.t()
        assert scores["label_cosine"] == pytest.approx(float((lab.sum() - lab.diag().sum()) / 6), abs=1e-5)
        assert scores["option_spread"] == pytest.approx(sum(spread) / len(spread), abs=1e-5)
        assert scores["input_cosine"] < 0.999 and scores["option_spread"] > 1e-4


class _Collapsed(torch.nn.Module):
    """An encoder whose every token gets the same hidden state: every embedding is the same."""

    def __init__(self):
        super().__init__()
        self.state = torch.nn.Parameter(torch.ones(8))

    def forward(self, input_ids, attention_mask, **_):
        return type("Out", (), {"last_hidden_state": self.state.expand(*input_ids.shape, 8)})()


def test_a_collapsed_encoder_scores_cosine_one_and_no_spread():
    fmt = EncoderFormat(load_model("tiny-bert").tokenizer, max_length=16)
    scores = _geometry().evaluate(_Collapsed(), fmt, EXAMPLES, EvalContext(batch_size=4))
    assert scores["input_cosine"] == pytest.approx(1.0) and scores["label_cosine"] == pytest.approx(1.0)
    assert scores["option_spread"] == pytest.approx(0.0, abs=1e-6)
    # what the format's loss is then: ln(options) per example, whatever the label
    loss = fmt.loss(_Collapsed(), fmt.batch(EXAMPLES))
    assert float(loss.detach()) == pytest.approx(
        sum(math.log(len(e.options)) for e in EXAMPLES) / len(EXAMPLES), abs=1e-5
    )


def test_a_decoder_format_is_refused_in_one_line():
    bundle = load_model("tiny-llama")
    with pytest.raises(ValueError, match=r"embedding_geometry needs an encoder.*DecoderFormat"):
        _geometry().evaluate(bundle.model, DecoderFormat(bundle.tokenizer, 32), EXAMPLES, EvalContext())


def test_a_run_records_geometry_matrices_beside_accuracy(tmp_path):
    root = _jsonl_dir(tmp_path / "data", "options")
    config = _jsonl_config(root, tmp_path / "out", "options")
    config.evaluators = {"classification": {}, "embedding_geometry": {}}
    result = run(config)
    assert {"accuracy", "input_cosine", "label_cosine", "option_spread"} <= set(result["score_matrices"])
    matrix = result["score_matrices"]["input_cosine"]
    assert matrix["higher_is_better"] is False
    assert all(-1 - 1e-6 <= v <= 1 + 1e-6 for row in matrix["matrix"] for v in row if v is not None)
