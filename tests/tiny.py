"""Tiny random Hugging Face models built from configs, and batches for them (offline)."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 96


def build(arch: str, seed: int = 0) -> torch.nn.Module:
    """A 2-layer model of the given architecture with random weights and no dropout."""
    torch.manual_seed(seed)
    if arch in ("bert", "roberta"):
        cls_cfg, cls_model = {
            "bert": (tf.BertConfig, tf.BertForMaskedLM),
            "roberta": (tf.RobertaConfig, tf.RobertaForMaskedLM),
        }[arch]
        config = cls_cfg(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=1 if arch == "roberta" else 0,
        )
        model = cls_model(config)
    elif arch in ("t5", "t5_gated"):
        config = tf.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            decoder_start_token_id=0,
            pad_token_id=0,
            feed_forward_proj="gated-gelu" if arch == "t5_gated" else "relu",
        )
        model = tf.T5ForConditionalGeneration(config)
    elif arch == "llama":
        config = tf.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=True,
            pad_token_id=0,
        )
        model = tf.LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = tf.GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    model.train()
    return model


def lora_llama() -> torch.nn.Module:
    """The tiny Llama with a PEFT LoRA adapter (r 8, alpha 32) on q and v, B not zero."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(build("llama"), config)


def batch(arch: str, seed: int = 0, size: int = 4, length: int = 10, pad: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids; the last ``pad`` positions of every row are padding (mask 0, label -100)."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randint(2, VOCAB, (size, length), generator=g)
    ids = torch.cat([real, torch.full((size, pad), 1 if arch == "roberta" else 0)], dim=1)
    mask = torch.cat([torch.ones_like(real), torch.zeros(size, pad, dtype=torch.long)], dim=1)
    labels = ids.masked_fill(mask == 0, -100)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if arch.startswith("t5"):
        target = torch.randint(2, VOCAB, (size, 6), generator=g)
        out["labels"] = torch.cat([target, torch.full((size, pad), -100)], dim=1)
    return out


# Expected MIGU target names per architecture, written out by hand (not derived from migu).
def expected_layers(arch: str, preset: str) -> list[str]:
    layers = range(2)
    if arch in ("bert", "roberta"):
        p = "bert" if arch == "bert" else "roberta"
        attn = [
            f"{p}.encoder.layer.{i}.attention.{n}"
            for i in layers
            for n in ("self.query", "self.key", "self.value", "output.dense")
        ]
        ffn = [f"{p}.encoder.layer.{i}.{n}" for i in layers for n in ("intermediate.dense", "output.dense")]
        extra = ["cls.predictions.transform.dense"] if arch == "bert" else ["lm_head.dense"]
    elif arch.startswith("t5"):
        wi = ("wi_0", "wi_1", "wo") if arch == "t5_gated" else ("wi", "wo")
        attn = [f"encoder.block.{i}.layer.0.SelfAttention.{n}" for i in layers for n in "qkvo"]
        attn += [
            f"decoder.block.{i}.layer.{j}.{kind}.{n}"
            for i in layers
            for j, kind in ((0, "SelfAttention"), (1, "EncDecAttention"))
            for n in "qkvo"
        ]
        ffn = [f"encoder.block.{i}.layer.1.DenseReluDense.{n}" for i in layers for n in wi]
        ffn += [f"decoder.block.{i}.layer.2.DenseReluDense.{n}" for i in layers for n in wi]
        extra = []
    elif arch == "llama":
        attn = [f"model.layers.{i}.self_attn.{n}_proj" for i in layers for n in "qkvo"]
        ffn = [f"model.layers.{i}.mlp.{n}_proj" for i in layers for n in ("gate", "up", "down")]
        extra = []
    elif arch == "gpt2":
        attn = [f"transformer.h.{i}.attn.{n}" for i in layers for n in ("c_attn", "c_proj")]
        ffn = [f"transformer.h.{i}.mlp.{n}" for i in layers for n in ("c_fc", "c_proj")]
        extra = []
    else:
        raise ValueError(arch)
    return {"attention": attn, "ffn": ffn, "all_linear": attn + ffn + extra}[preset]


def weight_rows_changed(before: torch.Tensor, after: torch.Tensor, rows_last: bool = False) -> torch.Tensor:
    """Boolean per output channel: did any weight in that row change?"""
    diff = before != after
    return diff.any(0) if rows_last else diff.any(1)
