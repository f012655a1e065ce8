"""The first task must not depend on the gradient method: MIGU (and its random-rows control)
trains it unmasked (``skip_first_task``), so X, X+migu and X+random_update must end it with
bit-identical trained parameters, the same training loss and the same scores, for every
registered method X, on the encoder and the decoder formats.

The models are loaded from a folder, as pretrained models are (unseeded: only the runner's own
seeding decides what methods draw), and each run starts from a different global random state, as
the runs of a sweep do in one process (each leaves behind whatever it drew)."""

import gc
import random

import numpy as np
import pytest
import torch

from conftest import TOPICS
from migu.bench import run, run_config
from migu.methods import METHODS, build_methods

GRADIENT = tuple(n for n in METHODS if METHODS.trait(n, "chooses_rows"))
# the methods that decide what trains alone; the others composed onto finetune
BASES = [n for n in METHODS if n not in GRADIENT and METHODS.trait(n, "masks_rows") is not False]
SPECS = [n if build_methods(n)[0].name == n else f"finetune+{n}" for n in BASES]
ARCHES = ("encoder", "decoder")


def _tokenizer():
    """A word-level tokenizer of the fixture benchmark's words: a vocabulary of about 60, so that
    embeddings and output layers stay tiny (the packaged MiniLM tokenizer has 30522 words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for _, labels, sentences in TOPICS.values() for t in (*labels, *sentences)]
    texts += [f"number {i} What is the topic sentiment? Choose one from the option. Option: Answer:" for i in range(10)]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


@pytest.fixture(autouse=True)
def fast(request):
    """Tiny matrices: one thread is faster, and far faster when other processes load the cores;
    the objects alive before the test are left out of the full garbage collection that each
    task's end runs (Accelerate's ``free_memory``), which otherwise costs more than the training."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Tiny random models saved as pretrained folders, with dropout (so that training draws)."""
    import transformers as tf

    tokenizer = _tokenizer()
    common = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
    }
    torch.manual_seed(3)
    models = {
        "encoder": tf.BertModel(tf.BertConfig(**common)),
        "decoder": tf.LlamaForCausalLM(tf.LlamaConfig(**common, num_key_value_heads=2, attention_dropout=0.1,
                                                      eos_token_id=tokenizer.eos_token_id)),
    }  # fmt: skip
    folders = {}
    for arch, model in models.items():
        folders[arch] = tmp_path_factory.mktemp(arch)
        model.save_pretrained(folders[arch])
        tokenizer.save_pretrained(folders[arch])
    return folders


class _FirstTaskDone(Exception):
    """Raised by the task-end hook: the second task (there so that MIGU may skip the first, as
    it does only in a sequence of several) need not train."""


def _first_task(bench_dir, out, model, method, micro_batch_size, prior):
    """A run stopped after its first task: its trained parameters (the checkpoint after the
    task), scores and training loss."""
    config = run_config({
        "model": str(model), "method": method, "seed": 0,
        "data": {"root": str(bench_dir), "order": ["alpha", "beta"], "n_train": 8, "n_test": 4,
                 "evaluate_tasks": "diagonal"},
        "train": {"lr": 1e-2, "batch_size": 8, "micro_batch_size": micro_batch_size, "max_length": 24,
                  "eval_batch_size": 8},
        "methods": {"ewc": {"fisher_examples": 2}},
        "output_dir": str(out), "progress": False,
    })  # fmt: skip
    # whatever an earlier run in this process left behind
    torch.manual_seed(prior)
    torch.rand(prior)
    random.seed(prior)
    np.random.seed(prior)
    saved = {}

    def keep_first_task(index, state):
        path = out / config.run_name() / "state" / state["checkpoint"]
        saved["model"] = torch.load(path, weights_only=False)["model"]
        saved["row"] = state["scores"]["rows"]["accuracy"][0]
        (timing,) = [t for t in state["timings"] if t.get("task") == "alpha"]
        saved["loss"] = timing["mean_loss"]
        raise _FirstTaskDone

    with pytest.raises(_FirstTaskDone):
        run(config, on_task_end=keep_first_task)
    return saved["model"], saved["row"], saved["loss"]


# under finetune one micro-batch per step (MIGU's fast path would apply), else two (accumulation,
# the reference path), so that both are covered
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("spec", SPECS)
def test_first_task_is_the_same_with_and_without_migu(bench_dir, tmp_path, pretrained, spec, arch):
    micro = 8 if spec.startswith("finetune") else 4
    base = _first_task(bench_dir, tmp_path / "base", pretrained[arch], spec, micro, prior=1)
    for prior, gradient in enumerate(GRADIENT, start=2):
        method = f"{spec}+{gradient}"
        state, row, loss = _first_task(bench_dir, tmp_path / gradient, pretrained[arch], method, micro, prior)
        assert sorted(state) == sorted(base[0]), method
        changed = [k for k in state if not torch.equal(state[k], base[0][k])]
        assert not changed, f"{method}: {len(changed)} trained tensors differ after task 1, e.g. {changed[:3]}"
        assert loss == base[2], f"{method}: task-1 training loss {loss} vs {base[2]}"
        assert row == base[1], f"{method}: task-1 scores {row} vs {base[1]}"


def test_a_one_task_sequence_needs_migu_to_mask_its_first_task(bench_dir, tmp_path):
    """Skipping the first task of a one-task sequence (instruction tuning) would leave MIGU
    nothing to do, and X+migu would train exactly as X: the runner refuses before it writes
    anything (the CLI's check, in test_cli, says so before any run of a grid starts); told not to
    skip, MIGU masks from the first step."""
    raw = {
        "model": "tiny-bert", "method": "finetune+migu", "seed": 0,
        "data": {"root": str(bench_dir), "order": ["alpha"], "n_train": 8, "n_test": 4},
        "train": {"lr": 1e-2, "batch_size": 8, "micro_batch_size": 8, "max_length": 24, "eval_batch_size": 8},
        "output_dir": str(tmp_path / "out"), "progress": False,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"methods\.migu\.skip_first_task is true .* one task"):
        run(run_config(raw))
    assert not (tmp_path / "out").exists()
    masked = run(run_config({**raw, "methods": {"migu": {"skip_first_task": False}}}))
    (diagnostics,) = masked["diagnostics"]
    assert diagnostics["migu"]["masked"] and 0.2 < diagnostics["migu"]["kept_fraction"] < 0.4
