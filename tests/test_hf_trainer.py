"""MIGU in the Hugging Face Trainer, with gradient accumulation."""

import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

import migu

from tiny import ReferenceStatistic, batch, build, expected_layers, weight_rows_changed


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
        norm = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in self.params.values() if p.grad is not None])
        )
        self.norms.append(norm.item())
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


MAX_NORM = 1e-3  # below every step's gradient norm: the clip always acts


@pytest.mark.parametrize("accumulation", [1, 2, 3])
def test_trainer_with_gradient_accumulation(tmp_path, accumulation):
    model = build("bert")
    data = batch("bert", size=16, length=8)
    dataset = [{k: v[i] for k, v in data.items()} for i in range(16)]
    callback = migu.MiguCallback(threshold=0.7, mask_mode="update")
    checker = Checker(callback, model, expected_layers("bert", "all_linear"))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
        max_steps=4,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        max_grad_norm=MAX_NORM,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback, checker])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
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
        grads = [p.grad.norm() for p in self.params if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack(grads)).item())


def _lora_llama():
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(build("llama"), config)


@pytest.mark.parametrize(
    "arch, accumulation, examples, checkpointing",
    [
        ("llama+lora", 1, 8, False),  # LoRA layers are off the fast path: masked in backward
        ("bert", 3, 14, False),  # 7 micro-batches: steps of 3, 3 and a last one of 1
        ("bert", 2, 8, True),  # checkpointing: masked at the step, after the clip, with a warning
    ],
)
def test_trainer_masks_before_the_clip(tmp_path, arch, accumulation, examples, checkpointing):
    model = _lora_llama() if arch == "llama+lora" else build(arch)
    data = batch(arch.removesuffix("+lora"), size=examples, length=8)
    dataset = [{k: v[i] for k, v in data.items()} for i in range(examples)]
    callback = migu.MiguCallback(threshold=0.7)
    norms = Norms(model)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        max_grad_norm=MAX_NORM,
        gradient_checkpointing=checkpointing,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback, norms])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    warned = any("after the Trainer's gradient clipping" in str(w.message) for w in caught)
    assert warned == checkpointing
    assert len(norms.norms) == -(-examples // (2 * accumulation))
    if checkpointing:  # the clip saw the dense gradient, the mask removed part of it
        assert all(n < 0.99 * MAX_NORM for n in norms.norms)
    else:
        assert norms.norms == pytest.approx([MAX_NORM] * len(norms.norms), rel=1e-4)
