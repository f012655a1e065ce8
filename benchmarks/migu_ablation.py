"""Why does MIGU help or not on the CPU-scale benchmark? Variants compared on validation data only.

    python benchmarks/migu_ablation.py --out benchmarks/results/minilm_standard/ablation [--variants a,b]
    migu report benchmarks/results/minilm_standard/ablation benchmarks/results/minilm_standard/lr_select \\
        --baseline '' --by train.lr --by train.batch_size \\
        --by methods.migu.threshold --by methods.migu.mask_mode --by methods.migu.ignore_padding \\
        --by methods.migu.layers --by methods.migu.skip_first_task

Every run trains on the training sample of the standard protocol and is evaluated on the
validation split held out of the training files (``data.evaluate_on=validation``); test examples
are never read. The baselines (finetune, finetune+migu, finetune+random_update at each rate of the
grid, order 1, seed 0) are the learning-rate selection runs of ``cl_standard.py``; the variants
here default to the same order and seed and MIGU's chosen rate. Resumable: rerun the same command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from migu import metrics
from migu.bench import apply_overrides, load_yaml, run, run_config

CONFIG = Path(__file__).parents[1] / "configs" / "cpu" / "minilm_standard.yaml"

# name -> (method, overrides); every MIGU variant changes one thing of the default
# (T = 0.7, grad mask, padding counted, all linear layers, first task unmasked, batch 64, --lr)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "ft": ("finetune", []),
    "migu": ("finetune+migu", []),
    "random": ("finetune+random_update", []),
    "migu_t0.5": ("finetune+migu", ["methods.migu.threshold=0.5"]),
    "migu_t0.3": ("finetune+migu", ["methods.migu.threshold=0.3"]),
    "migu_t0.9": ("finetune+migu", ["methods.migu.threshold=0.9"]),
    "migu_update": ("finetune+migu", ["methods.migu.mask_mode=update"]),
    "migu_nopad": ("finetune+migu", ["methods.migu.ignore_padding=true"]),
    "migu_attention": ("finetune+migu", ["methods.migu.layers=attention"]),
    "migu_ffn": ("finetune+migu", ["methods.migu.layers=ffn"]),
    "migu_mask_first": ("finetune+migu", ["methods.migu.skip_first_task=false"]),
    "ft_b16": ("finetune", ["train.batch_size=16", "train.micro_batch_size=16"]),
    "migu_b16": ("finetune+migu", ["train.batch_size=16", "train.micro_batch_size=16"]),
}
DEFAULT = "migu_t0.5,migu_update,migu_mask_first,migu_nopad,migu_t0.9,migu_attention,migu_ffn,migu_t0.3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/minilm_standard/ablation")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--variants", default=DEFAULT, help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--orders", default="order1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--n-validation", type=int, default=200)
    parser.add_argument("--lr", default="3e-4", help="learning rate of every variant (MIGU's choice on validation)")
    args = parser.parse_args()
    raw = load_yaml(args.config)
    raw.pop("method", None)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    for seed in args.seeds.split(","):
        for order in args.orders.split(","):
            for name in args.variants.split(","):
                method, overrides = VARIANTS[name]
                config = run_config(apply_overrides(raw, [
                    f"method={method}", f"train.lr={args.lr}", *overrides, f"seed={seed}", f"data.order={order}",
                    "data.evaluate_on=validation", f"data.n_validation={args.n_validation}",
                    f"output_dir={args.out}", f"name={name}_lr{args.lr}_{order}_seed{seed}",
                ]))  # fmt: skip
                result = run(config)
                m = metrics.summary(result["accuracy_matrix"])
                print(f"{name:>16} {order} seed {seed}: AA {m['aa']:.2f}  BWT {m['bwt']:.2f}", flush=True)


if __name__ == "__main__":
    main()
