"""The GPU check: one command, one JSON file, for the first GPU the project gets (issue 40).

    bash benchmarks/gpu_check.sh --out gpu_check.json          # one GPU (H200: under 8 minutes)
    python benchmarks/gpu_check.py --device cpu --tiny --out x.json  # the dry run the tests run

Models are built from configs of real shapes with random weights, on the device (nothing is
downloaded): ``minilm_l6`` (BertModel: hidden 384, 6 layers, 12 heads, FFN 1536, vocabulary
30,522; loss: mean squares of the token states and the pooled output), ``smollm2_135m`` (Llama: 576, 30 layers, 9
heads, 3 KV heads, FFN 1536, vocabulary 49,152, tied head) and ``llama_1b`` (Llama: 2048, 16
layers, 32 heads, 8 KV heads, FFN 8192, vocabulary 128,256, tied head, as Llama-3.2-1B); the two
Llamas learn next-token prediction on random tokens. ``--tiny`` keeps the structure at toy sizes.

Sections, each written to ``--out`` as soon as it is done (a run cut short keeps what it has):

- ``reference``: per model, in fp32 and under bf16 autocast, one MIGU step on the fast path
  (``micro_batches_per_step=1``: weight gradients of kept rows only) against
  ``migu.core.reference.reference_step`` (the algorithm stated plainly: float64 statistic,
  ``torch.quantile``, dense gradient masked) from the same weights and batch. Passes when every
  row kept by one and not the other lies at the cut (its statistic within ``TIE_RTOL`` of the
  layer's cut value: the two sums add the same outputs in another order and precision), the
  gradients of rows both keep agree (``GRAD_RTOL`` of the layer's largest gradient), and rows
  neither keeps have a zero gradient on both.
- ``update_mode``: ``mask_mode="update"`` with AdamW (weight decay 0.1), bf16 autocast, three
  steps: every masked row of every layer bit-identical after each step, kept rows moved.
- ``timing``: plain, MIGU (fast path) and MIGU (dense reference path) step times at batch 8 and
  64 under bf16 autocast (``gpu_speed_check.time_variant``: forward, backward, AdamW step,
  synchronized; median of ``--steps`` after ``--warmup``, ``--rounds`` rounds), their ratios
  with the min-max over rounds, and each variant's peak allocated memory during its steps (its
  weights, gradients, AdamW state and activations; CUDA only, else null). The model waits on the
  CPU meanwhile: each variant's copy is alone on the device. Timing cases that would start past
  ``--budget`` seconds are skipped and listed in ``skipped``.

``passed`` is true when every check passed; the exit status is 1 otherwise. Written for torch
2.11 and later with any transformers 5.x (plain configs and constructors, no newer API). Not yet
run on a GPU by the project (no GPU in its sessions): the code paths are device-generic.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

import migu
from migu.bench.provenance import cpu_name
from migu.core.reference import reference_step
from migu.core.selection import cut_index

sys.path.insert(0, str(Path(__file__).parent))
from gpu_speed_check import VARIANTS, time_variant

THRESHOLD = 0.7
TIE_RTOL = 1e-3
GRAD_RTOL = {"fp32": 1e-4, "bf16": 3e-2}
SHAPES: dict[str, dict[str, Any]] = {  # real shapes, and toy ones of the same structure (--tiny)
    "minilm_l6": {"hidden": 384, "layers": 6, "heads": 12, "ffn": 1536, "vocab": 30522, "seq": 128},
    "smollm2_135m": {"hidden": 576, "layers": 30, "heads": 9, "kv": 3, "ffn": 1536, "vocab": 49152, "seq": 512},
    "llama_1b": {"hidden": 2048, "layers": 16, "heads": 32, "kv": 8, "ffn": 8192, "vocab": 128256, "seq": 256},
}
TINY: dict[str, dict[str, Any]] = {
    "minilm_l6": {"hidden": 32, "layers": 2, "heads": 4, "ffn": 64, "vocab": 128, "seq": 16},
    "smollm2_135m": {"hidden": 48, "layers": 2, "heads": 3, "kv": 1, "ffn": 64, "vocab": 256, "seq": 16},
    "llama_1b": {"hidden": 64, "layers": 2, "heads": 4, "kv": 2, "ffn": 128, "vocab": 512, "seq": 16},
}
Case = tuple[nn.Module, Callable[[], dict], Callable[[nn.Module, dict], torch.Tensor]]


def build(name: str, shape: dict[str, Any], device: torch.device) -> nn.Module:
    """The model with random weights, initialized on ``device``, in train mode without dropout."""
    import transformers as tf

    torch.manual_seed(0)
    if name == "minilm_l6":
        config: Any = tf.BertConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                                    num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                                    intermediate_size=shape["ffn"], hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0)  # fmt: skip
        cls: Any = tf.BertModel
    else:
        config = tf.LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                                num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                                num_key_value_heads=shape["kv"], intermediate_size=shape["ffn"],
                                max_position_embeddings=max(2048, shape["seq"]), tie_word_embeddings=True)  # fmt: skip
        cls = tf.LlamaForCausalLM
    with device:  # parameters made on the device: no CPU init of a billion weights
        model = cls(config)
    return model.train()


def make_batch(name: str, shape: dict[str, Any], size: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, shape["vocab"], (size, shape["seq"]), generator=g).to(device)
    if name == "minilm_l6":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"input_ids": ids, "labels": ids}


def loss_of(model: nn.Module, batch: dict) -> torch.Tensor:
    """The Llamas' next-token loss; for the encoder, the mean squares of its token states and of
    its pooled output (so that every layer, the pooler's too, gets a gradient)."""
    out = model(**batch)
    if "labels" in batch:
        return out.loss
    return out.last_hidden_state.float().pow(2).mean() + out.pooler_output.float().pow(2).mean()


def _autocast(device: torch.device, dtype: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def reference_check(
    model: nn.Module, batch: dict, device: torch.device, dtype: str, reference_threshold: float = THRESHOLD
) -> dict[str, Any]:
    """One fast-path MIGU step against ``reference_step`` from the same weights (module docstring);
    ``reference_threshold`` other than ``THRESHOLD`` shows that the check fails (the tests)."""
    fast, plain = copy.deepcopy(model), copy.deepcopy(model)
    handle = migu.attach(fast, threshold=THRESHOLD, micro_batches_per_step=1)
    names = handle.layer_names
    on_fast = len(handle.fast_path_layers)
    with _autocast(device, dtype):
        loss = loss_of(fast, batch)
    loss.backward()
    handle.before_optimizer_step()
    stats = handle.statistics()
    kept_fast = {n: r.kept_rows for n, r in handle.report().items()}

    def ref_loss(m: nn.Module) -> torch.Tensor:
        with _autocast(device, dtype):
            return loss_of(m, batch)

    kept_ref = reference_step(plain, ref_loss, names, reference_threshold, torch.optim.SGD(plain.parameters(), lr=0))
    fast_modules, ref_modules = dict(fast.named_modules()), dict(plain.named_modules())
    identical, worst_tie, worst_grad, masked_nonzero, differing, no_grad = 0, 0.0, 0.0, 0, 0, 0
    for name in names:
        stat = stats[name].float()
        a = torch.zeros(stat.numel(), dtype=torch.bool, device=stat.device)
        b = a.clone()
        a[kept_fast[name].to(stat.device)] = True
        b[kept_ref[name].to(stat.device)] = True
        cut = stat.sort().values[cut_index(stat.numel(), THRESHOLD)]
        off = a ^ b
        identical += int(not off.any())
        differing += int(off.sum())
        if off.any():
            worst_tie = max(worst_tie, float(((stat[off] - cut).abs() / cut.abs().clamp(min=1e-30)).max()))
        g_fast, g_ref = fast_modules[name].weight.grad, ref_modules[name].weight.grad
        if g_fast is None or g_ref is None:
            no_grad += 1
            continue
        both, neither = a & b, ~(a | b)
        scale = float(g_ref.abs().max().clamp(min=1e-30))
        worst_grad = max(worst_grad, float((g_fast[both] - g_ref[both]).abs().max()) / scale)
        masked_nonzero += int((g_fast[neither] != 0).any() or (g_ref[neither] != 0).any())
    handle.remove()
    del fast, plain
    passed = (worst_tie <= TIE_RTOL and worst_grad <= GRAD_RTOL[dtype] and masked_nonzero == 0 and no_grad == 0
              and on_fast == len(names))  # fmt: skip
    return {"passed": passed, "layers": len(names), "fast_path_layers": on_fast, "layers_identical": identical,
            "rows_differing": differing, "worst_tie_rel": worst_tie, "tie_rtol": TIE_RTOL,
            "worst_grad_rel": worst_grad, "grad_rtol": GRAD_RTOL[dtype],
            "layers_with_masked_gradient": masked_nonzero, "layers_without_gradient": no_grad}  # fmt: skip


def update_mode_check(
    model: nn.Module, name: str, shape: dict, device: torch.device, mode: str = "update"
) -> dict[str, Any]:
    """Three bf16 AdamW steps in ``update`` mode: masked rows bit-identical, kept rows moved
    (``mode="grad"``, where weight decay and momentum move masked rows, shows that it can fail)."""
    m = copy.deepcopy(model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)
    handle = migu.attach(m, threshold=THRESHOLD, optimizer=opt, mask_mode=mode, micro_batches_per_step=1)
    targets = {t.name: t for s in handle.sources for t in s.targets}
    steps = []
    for step in range(3):
        before = {n: t.weight.detach().clone() for n, t in targets.items()}
        with _autocast(device, "bf16"):
            loss = loss_of(m, make_batch(name, shape, 8, device, seed=100 + step))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        kept = {n: r.kept_rows for n, r in handle.report().items()}
        unchanged = moved = 0
        for n, t in targets.items():
            masked = torch.ones(t.weight.shape[0], dtype=torch.bool, device=t.weight.device)
            masked[kept[n].to(masked.device)] = False
            w = t.weight.detach()
            unchanged += int(torch.equal(w[masked], before[n][masked]))
            moved += int(bool((w[~masked] != before[n][~masked]).any()))
        steps.append({"layers": len(targets), "masked_rows_unchanged": unchanged, "kept_rows_moved": moved})
    handle.remove()
    del m, opt
    passed = all(s["masked_rows_unchanged"] == s["layers"] == s["kept_rows_moved"] for s in steps)
    return {"passed": passed, "steps": steps}


def timing(case: Case, device: torch.device, steps: int, warmup: int, rounds: int) -> dict[str, Any]:
    """Plain, fast-path and dense MIGU step times under bf16 autocast (``time_variant``)."""
    runs = [{v: time_variant(case, v, device, steps, warmup, THRESHOLD) for v in VARIANTS} for _ in range(rounds)]
    fast = [r["migu"]["step_s"] / r["plain"]["step_s"] for r in runs]
    dense = [r["migu_dense"]["step_s"] / r["plain"]["step_s"] for r in runs]
    return {
        "step_s": {v: statistics.median(r[v]["step_s"] for r in runs) for v in VARIANTS},
        "time_ratio": statistics.median(fast), "time_ratio_min": min(fast), "time_ratio_max": max(fast),
        "dense_time_ratio": statistics.median(dense), "dense_time_ratio_min": min(dense),
        "dense_time_ratio_max": max(dense),
        "peak_gb": {v: runs[-1][v]["peak_gb"] for v in VARIANTS},
        "kernels": sorted({k for r in runs for k in r["migu"]["kernels"]}),
    }  # fmt: skip


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None  # fmt: skip
    except OSError:
        commit = None
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "device_type": device.type, "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda if cuda else None, "python": platform.python_version(), "commit": commit,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file (rewritten after every section)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (the dry run without a GPU)")
    parser.add_argument("--models", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--batches", default="8,64", help="batch sizes of the timing section")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=float, default=400.0, help="seconds after which timing cases are skipped")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu --tiny for the dry run")
    shapes = TINY if args.tiny else SHAPES
    models = args.models.split(",")
    for name in models:
        if name not in SHAPES:
            parser.error(f"unknown model {name!r}; choose from {', '.join(SHAPES)}")
    start = time.perf_counter()
    result: dict[str, Any] = {"environment": environment(device), "tiny": args.tiny, "threshold": THRESHOLD,
                              "shapes": {n: shapes[n] for n in models}, "reference": {}, "update_mode": {},
                              "timing": {}, "skipped": [], "seconds": {}}  # fmt: skip

    def save(section: str) -> None:
        result["seconds"][section] = round(time.perf_counter() - start, 1)
        checks = [*result["reference"].values(), *result["update_mode"].values()]
        result["passed"] = bool(checks) and all(c["passed"] for c in checks)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"{section} done at {result['seconds'][section]} s", flush=True)

    for name in models:
        model = build(name, shapes[name], device)
        batch = make_batch(name, shapes[name], 8, device)
        for dtype in ("fp32", "bf16"):
            result["reference"][f"{name}/{dtype}"] = reference_check(model, batch, device, dtype)
        result["update_mode"][name] = update_mode_check(model, name, shapes[name], device)
        save(f"checks {name}")
        model = model.to("cpu")  # each timed variant takes its own copy to the device, alone there
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for size in map(int, args.batches.split(",")):
            key = f"{name}/b{size}"
            if time.perf_counter() - start > args.budget:
                result["skipped"].append(key)
                continue
            case = (model, lambda size=size, name=name: make_batch(name, shapes[name], size, device), loss_of)
            result["timing"][key] = timing(case, device, args.steps, args.warmup, args.rounds)
            save(f"timing {key}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    save("all")
    for key, check in [*result["reference"].items(), *result["update_mode"].items()]:
        print(f"{'PASS' if check['passed'] else 'FAIL'} {key}")
    for key, row in result["timing"].items():
        print(f"{key}: MIGU/plain {row['time_ratio']:.3f}, dense/plain {row['dense_time_ratio']:.3f}, "
              f"peak GB {row['peak_gb']}")  # fmt: skip
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
