"""MIGU in TRL's ``SFTTrainer``: ``SFTTrainer(..., callbacks=[MiguCallback(threshold=0.7)])``.

On a tiny random Llama (offline), with full finetuning and a PEFT LoRA adapter, gradient
accumulation, packing on and off, and bf16 where this CPU computes it natively:
- masked rows are left as they were (update mode) or get a zero gradient (grad mode);
- the trained weights equal those of a plain PyTorch loop with ``migu.attach`` on the very
  batches the trainer fed (recorded by a forward pre-hook), masked, then clipped, then AdamW.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import PreTrainedTokenizerFast, TrainerCallback

import migu
from migu.train.loop import cpu_has_native_bf16

from tiny import VOCAB, build, weight_rows_changed

trl = pytest.importorskip("trl", reason="TRL is not installed (the dev extra pins it)")
datasets = pytest.importorskip("datasets", reason="datasets is not installed (the eval extra)")

LR = 1e-2
CLIP = 0.5


def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny model's vocabulary (pad 0, eos 2), built offline."""
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t1"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", unk_token="t1", eos_token="t2")


def examples(count: int = 48, seed: int = 0) -> datasets.Dataset:
    """Pre-tokenized examples of different lengths (so batches pad, or pack)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        length = 5 + (i * 3) % 9
        rows.append([*torch.randint(3, VOCAB, (length,), generator=g).tolist(), 2])
    return datasets.Dataset.from_dict({"input_ids": rows})


class Batches:
    """Records every forward's keyword arguments (the batches as the trainer fed them)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[dict] = []
        self._hook = module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        assert not args
        self.calls.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    def remove(self) -> None:
        self._hook.remove()


class Checker(TrainerCallback):
    """After MiguCallback: at each step, the rows MIGU masked have a zero gradient (grad mode:
    AdamW's momentum may still move them) or are left unchanged by the optimizer step (update
    mode), while kept rows have gradients and move."""

    def __init__(self, callback: migu.MiguCallback, mode: str) -> None:
        self.callback, self.mode = callback, mode
        self.steps = 0

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.params = dict(model.named_parameters())  # (the model the trainer trains: TRL may wrap it)

    def _masked(self):
        report = self.callback.handle.report()
        for layer in report.values():
            if layer.kept_rows is None:
                continue
            keep = torch.zeros(layer.rows, dtype=torch.bool)
            keep[layer.kept_rows] = True
            for target in layer.targets:
                yield self.params[f"{target}.weight"], keep

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.before = [(p, keep, p.detach().clone()) for p, keep in self._masked()]
        assert self.before, "MIGU masked no layer"
        if self.mode == "grad":
            kept = 0.0
            for p, keep, _ in self.before:
                rows = p.grad.reshape(p.shape[0], -1)
                assert rows[~keep].abs().sum() == 0
                kept += float(rows[keep].abs().sum())
            assert kept > 0  # (not in every layer: LoRA's A has no gradient while B is still zero)

    def on_optimizer_step(self, args, state, control, **kw):
        if self.mode == "grad":
            self.steps += 1
            return
        moved = False
        for p, keep, before in self.before:
            changed = weight_rows_changed(before, p.detach())
            assert not changed[~keep].any(), "a masked row moved"
            moved = moved or bool(changed[keep].any())
        assert moved
        self.steps += 1


def sft(model, tmp_path, callbacks, *, accumulation=1, packing=False, bf16=False, steps=3, peft_config=None,
        checkpointing=False):  # fmt: skip
    """Train with SFTTrainer; the warnings it gave."""
    config = trl.SFTConfig(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=CLIP,
        optim="adamw_torch",
        packing=packing,
        max_length=24,
        bf16=bf16,
        activation_checkpointing=checkpointing,  # (TRL's default is on)
        seed=0,
        data_seed=0,
        dataloader_drop_last=True,
    )
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=examples(), processing_class=tokenizer(),
                             callbacks=callbacks, peft_config=peft_config)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return trainer, [str(w.message) for w in caught]


def plain_loop(model, calls, accumulation, threshold, mode, clip_first=False):
    """migu.attach in a plain loop over the recorded micro-batches: backward, mask, clip, AdamW
    (``clip_first``: clip, then mask, as MiguCallback does under activation checkpointing).
    The trainer computed the loss with TRL's fused LM head (log-probabilities of the label
    positions only, in tiles): the loop's model gets the same head, so the losses agree."""
    assert all(kwargs.get("fused_lm_head") for kwargs in calls), "TRL no longer computes a fused loss"
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(inner)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    handle = migu.attach(model, threshold=threshold, mask_mode=mode)
    for start in range(0, len(calls), accumulation):
        # TRL's loss of a step: the label tokens' negative log-likelihood summed over the step's
        # micro-batches, over the step's count of label tokens (``num_items_in_batch``)
        outputs = [inner(**kwargs) for kwargs in calls[start : start + accumulation]]
        tokens = sum(out.label_mask.sum() for out in outputs)
        for out in outputs:
            (-out.log_probs.sum() / tokens).backward()
        if clip_first:
            torch.nn.utils.clip_grad_norm_(params, CLIP)
        handle.before_optimizer_step()
        if not clip_first:
            torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        handle.after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)
    handle.remove()


def lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))


@pytest.mark.parametrize(
    ("adapter", "accumulation", "packing", "mode", "checkpointing"),
    [
        ("full", 1, False, "update", False),
        ("full", 2, True, "grad", False),
        ("full", 2, False, "update", True),
        ("lora", 1, True, "update", True),
        ("lora", 2, False, "grad", False),
    ],
)
def test_sft_trainer_masks_as_migu_own_loop(tmp_path, adapter, accumulation, packing, mode, checkpointing):
    model = build("llama")
    if adapter == "lora":
        model = lora(model)
    inner = model.get_base_model() if adapter == "lora" else model
    start = copy.deepcopy(model)
    batches = Batches(inner)
    callback = migu.MiguCallback(threshold=0.7, mask_mode=mode)
    checker = Checker(callback, mode)
    _, caught = sft(model, tmp_path, [callback, checker], accumulation=accumulation, packing=packing,
                    checkpointing=checkpointing)  # fmt: skip
    batches.remove()
    # under activation checkpointing the forwards rerun inside backward: MIGU masks after the clip, and says so
    assert any("after the Trainer's gradient clipping" in w for w in caught) == checkpointing
    assert checker.steps == 3
    assert len(batches.calls) == 3 * accumulation
    assert callback.handle is None  # removed at the end of training

    plain_loop(start, batches.calls, accumulation, 0.7, mode, clip_first=checkpointing)
    trained, replayed = dict(model.named_parameters()), dict(start.named_parameters())
    moved = 0
    for name, p in replayed.items():
        if p.requires_grad:
            # (the trainer's fast path computes kept rows' gradients in another order than the
            # loop's dense-then-mask path, and AdamW scales rounding up: 1e-4 is 1% of one step)
            torch.testing.assert_close(trained[name].detach(), p.detach(), rtol=1e-4, atol=1e-4,
                                       msg=lambda m, name=name: f"{name}: {m}")  # fmt: skip
            moved += 1
    assert moved


def test_sft_trainer_with_peft_config(tmp_path):
    """TRL wraps the model itself (``peft_config=``): MIGU masks the adapter's rows."""
    from peft import LoraConfig

    callback = migu.MiguCallback(threshold=0.7, mask_mode="update")
    checker = Checker(callback, "update")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer, _ = sft(build("llama"), tmp_path, [callback, checker], peft_config=config)
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert checker.steps == 3
    assert callback.handle is None


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU emulates bf16 (no AVX512-BF16 or AMX): too slow")
def test_sft_trainer_bf16(tmp_path):
    model = build("llama")
    callback = migu.MiguCallback(threshold=0.7, mask_mode="update")
    checker = Checker(callback, "update")
    sft(model, tmp_path, [callback, checker], bf16=True, accumulation=2)
    assert checker.steps == 3
