"""MIGU in the Hugging Face Trainer, with gradient accumulation."""

import warnings

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

import migu
from migu.core.reference import ReferenceStatistic

from tiny import batch, build, expected_layers, lora_llama, weight_rows_changed

MAX_NORM = 1e-3  # below every step's gradient norm: the clip always acts


def grad_norm(params):
    """The norm of all gradients together, as the Trainer's clip computes it."""
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item()


def train(tmp_path, model, examples, callbacks, arch, **overrides):
    """Train ``model`` with the Trainer on ``examples`` tiny examples; the warnings it gave."""
    data = batch(arch, size=examples, length=8)
    dataset = [{k: v[i] for k, v in data.items()} for i in range(examples)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        max_grad_norm=MAX_NORM,
        **overrides,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return caught


class Checker(TrainerCallback):
    """Runs after MiguCallback: checks the mask against the test's own statistic of every
    micro-batch of the step, and that masked rows did not move while kept rows did."""

    def __init__(self, migu_callback, model, names):
        self.migu = migu_callback
        self.names = names
        self.ref = ReferenceStatistic(model, names)
        self.params = dict(model.named_parameters())
        self.steps = 0
        self.micro_batches = 0
        self.norms = []

    def on_step_begin(self, args, state, control, **kw):
        self.micro_batches += 1

    def on_substep_end(self, args, state, control, **kw):
        self.micro_batches += 1

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.fast_layers = self.migu.handle.fast_path_layers
        # the Trainer has clipped by now: had MIGU masked after the clip, the norm would be less
        self.norms.append(grad_norm(self.params.values()))
        report = self.migu.handle.report()
        self.keep = {}
        for name in self.names:
            expected = self.ref.kept_rows(name, 0.7)
            assert torch.equal(report[name].kept_rows, expected), name
            keep = torch.zeros(report[name].rows, dtype=torch.bool)
            keep[expected] = True
            self.keep[name] = keep
        self.before = {n: self.params[f"{n}.weight"].detach().clone() for n in self.names}
        self.ref.sums = dict.fromkeys(self.names)

    def on_optimizer_step(self, args, state, control, **kw):
        for name in self.names:
            changed = weight_rows_changed(self.before[name], self.params[f"{name}.weight"].detach())
            assert changed[self.keep[name]].all(), name
            assert not changed[~self.keep[name]].any(), name
        self.steps += 1


@pytest.mark.parametrize("accumulation", [1, 2, 3])
def test_trainer_with_gradient_accumulation(tmp_path, accumulation):
    model = build("bert")
    callback = migu.MiguCallback(threshold=0.7, mask_mode="update")
    checker = Checker(callback, model, expected_layers("bert", "all_linear"))
    caught = train(
        tmp_path,
        model,
        16,
        [callback, checker],
        "bert",
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
        max_steps=4,
        learning_rate=1e-2,
        weight_decay=0.1,
    )
    # masked, then clipped (the official order), with or without accumulation: nothing to warn of
    assert not any("clipping" in str(w.message) for w in caught)
    assert checker.norms == pytest.approx([MAX_NORM] * 4, rel=1e-4)
    assert checker.steps == 4
    assert checker.micro_batches == 4 * accumulation  # the statistic of each step covered them all
    # one micro-batch per step: kept rows' gradients only (fast path); else dense, then masked
    assert bool(checker.fast_layers) == (accumulation == 1)
    assert callback.handle is None  # removed at the end of training
    assert not any(m._forward_hooks for n, m in model.named_modules() if n not in checker.names)


class Norms(TrainerCallback):
    """The gradient norm as the optimizer will see it (after the Trainer's clip and MIGU)."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.norms.append(grad_norm(self.params))


@pytest.mark.parametrize(
    "arch, accumulation, examples, checkpointing",
    [
        ("llama+lora", 1, 8, False),  # LoRA layers are off the fast path: masked in backward
        ("bert", 3, 14, False),  # 7 micro-batches: steps of 3, 3 and a last one of 1
        ("bert", 2, 8, True),  # checkpointing: masked at the step, after the clip, with a warning
    ],
)
def test_trainer_masks_before_the_clip(tmp_path, arch, accumulation, examples, checkpointing):
    model = lora_llama() if arch == "llama+lora" else build(arch)
    norms = Norms(model)
    caught = train(
        tmp_path,
        model,
        examples,
        [migu.MiguCallback(threshold=0.7), norms],
        arch.removesuffix("+lora"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,
        learning_rate=1e-3,
        gradient_checkpointing=checkpointing,
    )
    warned = any("after the Trainer's gradient clipping" in str(w.message) for w in caught)
    assert warned == checkpointing
    assert len(norms.norms) == -(-examples // (2 * accumulation))
    if checkpointing:  # the clip saw the dense gradient, the mask removed part of it
        assert all(n < 0.99 * MAX_NORM for n in norms.norms)
    else:
        assert norms.norms == pytest.approx([MAX_NORM] * len(norms.norms), rel=1e-4)
