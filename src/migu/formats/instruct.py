"""Instruction tuning of decoders: prompt/response pairs, loss on the response tokens only.

A pair is rendered with the tokenizer's chat template when it has one (``apply_chat_template``:
the prompt as the user turn, the response as the assistant turn, so the model also learns the
template's end-of-turn token), else with a plain template (``PLAIN_TEMPLATE``) ending in the
tokenizer's EOS. The prompt part is everything up to and including the assistant header (what
``add_generation_prompt=True`` renders); the response part is the rest. Labels are -100 on the
prompt and on padding, so the training loss, ``token_loss`` (held-out loss, through the
``lm_loss`` evaluator) and the learning signal all cover exactly the response tokens; the
vocabulary logits are computed at those positions only (``migu.formats.causal``).

Too long a pair is cut to ``max_length`` keeping the response: the prompt loses its beginning
(after a leading BOS token, which is kept), so the question's end and the assistant header stay
next to the response; only a response longer than ``max_length - MIN_PROMPT`` tokens loses its end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from ..data.tasks import InstructionExample
from .base import Batch, register_format, unwrap
from .causal import label_losses
from .generation import greedy, plain_greedy

PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
MIN_PROMPT = 16
"""Prompt tokens kept at least when a response alone nearly fills ``max_length``."""


@dataclass
class InstructionFormat:
    """Collates ``InstructionExample`` s for a causal LM (see the module docstring)."""

    tokenizer: Any
    max_length: int = 512
    with_task_name: bool = False
    system: str | None = None
    """A system message for chat templates (None: the template's default, if any)."""
    chat_template: bool | None = None
    """Use the tokenizer's chat template: None = when it has one; False = the plain template."""
    _cache: dict[tuple[str, str, str], tuple[list[int], list[int]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if self.chat_template and not has_template:
            raise ValueError("chat_template=True, but the tokenizer has no chat template")
        self.use_chat = has_template if self.chat_template is None else bool(self.chat_template)

    # --- rendering ---------------------------------------------------------------------------

    def _user_text(self, example: InstructionExample) -> str:
        return f"{example.task}\n{example.prompt}" if self.with_task_name else example.prompt

    def _messages(self, example: InstructionExample) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*head, {"role": "user", "content": self._user_text(example)}]

    def _ids(self, rendered: Any) -> list[int]:
        ids = rendered["input_ids"] if isinstance(rendered, dict) or hasattr(rendered, "keys") else rendered
        return list(ids)

    def prompt_ids(self, example: InstructionExample) -> list[int]:
        """The prompt's tokens, ending where the response starts (the generation prompt)."""
        if self.use_chat:
            return self._ids(self.tokenizer.apply_chat_template(self._messages(example), add_generation_prompt=True,
                                                                tokenize=True))  # fmt: skip
        return self.tokenizer(PLAIN_TEMPLATE.format(prompt=self._user_text(example)))["input_ids"]

    def encode(self, example: InstructionExample) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids), uncut; the response ids end with the end-of-turn/EOS token."""
        key = (example.task, example.prompt, example.response)
        if key in self._cache:
            return self._cache[key]
        prompt = self.prompt_ids(example)
        if self.use_chat:
            messages = [*self._messages(example), {"role": "assistant", "content": example.response}]
            full = self._ids(self.tokenizer.apply_chat_template(messages, tokenize=True))
            if full[: len(prompt)] != prompt:
                raise ValueError("the tokenizer's chat template renders the prompt differently with and without the "
                                 "response; use chat_template=False (the plain template)")  # fmt: skip
            response = full[len(prompt) :]
        else:
            response = self.tokenizer(example.response, add_special_tokens=False)["input_ids"]
            response = [*response, self.tokenizer.eos_token_id]
        if not response:
            raise ValueError(f"an example of task {example.task!r} has an empty response")
        self._cache[key] = (prompt, response)
        return prompt, response

    def _cut(self, prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
        limit = self.max_length
        if len(prompt) + len(response) <= limit:
            return prompt, response
        response = response[: max(1, limit - min(len(prompt), MIN_PROMPT))]
        room = limit - len(response)
        bos = self.tokenizer.bos_token_id
        head = prompt[:1] if bos is not None and prompt[:1] == [bos] and room > 1 else []
        tail = prompt[len(prompt) - (room - len(head)) :] if room - len(head) > 0 else []
        return head + tail, response

    def eval_length(self, example: InstructionExample) -> int:
        """The example's tokens in a batch (without padding): evaluators batch by it."""
        return sum(map(len, self._cut(*self.encode(example))))

    # --- the Format protocol -----------------------------------------------------------------

    def batch(self, examples: list[InstructionExample]) -> Batch:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 outside responses)."""
        rows = [self._cut(*self.encode(e)) for e in examples]
        width = max(len(p) + len(r) for p, r in rows)
        pad = self.tokenizer.pad_token_id
        ids, mask, labels = [], [], []
        for prompt, response in rows:
            fill = width - len(prompt) - len(response)
            ids.append(prompt + response + [pad] * fill)
            mask.append([1] * (len(prompt) + len(response)) + [0] * fill)
            labels.append([-100] * len(prompt) + response + [-100] * fill)
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over the batch's response tokens (logits computed there only: ``causal``)."""
        return label_losses(model, batch).mean()

    def token_loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over the response tokens and their count (token-weighted means)."""
        losses = label_losses(model, batch)
        return losses.sum(), losses.numel()

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        examples: list[InstructionExample],
        max_new_tokens: int = 256,
        stop: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Greedy responses to the examples' prompts (each cut to its last ``max_length`` tokens),
        up to ``max_new_tokens`` each, decoded without special tokens; a response also ends as soon
        as ``stop(text so far)`` is true (e.g. a closed code block: no tokens spent on prose after it).
        Each row ends on its own and leaves the batch (``generation.greedy``), unless the model's
        generation settings ask for more than greedy decoding (then Transformers' ``generate``)."""
        keep = self.max_length  # a longer prompt keeps its end (the question's end, the assistant header)
        prompts = [p[len(p) - keep :] if len(p) > keep else p for p in map(self.prompt_ids, examples)]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        device = next(model.parameters()).device
        inner, eos = unwrap(model), self.tokenizer.eos_token_id
        if plain_greedy(inner):
            decode = self.tokenizer.decode

            def done(row: int, tokens: list[int]) -> bool:
                return stop is not None and stop(decode(tokens, skip_special_tokens=True))

            rows = greedy(inner, ids.to(device), mask.to(device), max_new_tokens, eos, done if stop else None)
            return [decode(tokens, skip_special_tokens=True) for tokens in rows]
        out = inner.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                             stopping_criteria=StoppingCriteriaList([_TextStop(self.tokenizer, width, stop)])
                             if stop is not None else None)  # fmt: skip
        return self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


class _TextStop(StoppingCriteria):
    """Ends each generated row once ``stop`` holds for its decoded new text."""

    def __init__(self, tokenizer: Any, start: int, stop: Callable[[str], bool]) -> None:
        self.tokenizer, self.start, self.stop = tokenizer, start, stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([self.stop(t) for t in texts], dtype=torch.bool, device=input_ids.device)


def instruction_format(
    tokenizer: Any, max_length: int, with_task_name: bool = False, **options: Any
) -> InstructionFormat:
    """The ``(instruction, decoder)`` format factory (``make_format(..., kind="instruction")``)."""
    return InstructionFormat(tokenizer, max_length, with_task_name, **options)


register_format("instruction", "decoder", instruction_format)
