"""Reference decoders from `transformers`, timed on the same prompts as ours: plain `generate`,
assisted generation with a smaller assistant model, and prompt-lookup decoding."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from taps.device import synchronize
from taps.errors import TapsError

HF_BASELINES = ("hf", "hf-prompt-lookup", "hf-assisted")


@dataclass
class HFResult:
    tokens: list[int]
    wall_ms: float
    text: str


class HFDecoder:
    """One of HF_BASELINES over a loaded target (the HF model is read from the same converted folder)."""

    def __init__(self, kind: str, target, assistant=None):
        from transformers import AutoModelForCausalLM

        if kind not in HF_BASELINES:
            raise TapsError(f"unknown baseline {kind!r}: use one of {', '.join(HF_BASELINES)}")
        if kind == "hf-assisted" and assistant is None:
            raise TapsError(
                "hf-assisted needs an assistant model: pass --assistant TARGET (e.g. smollm2-135m for a "
                "larger target)"
            )
        self.kind, self.target = kind, target
        self.device = target.model.device
        self.model = (
            AutoModelForCausalLM.from_pretrained(str(target.path), dtype=target.model.dtype)
            .to(self.device)
            .eval()
        )
        self.assistant = None
        if assistant is not None:
            self.assistant = (
                AutoModelForCausalLM.from_pretrained(str(assistant.path), dtype=target.model.dtype)
                .to(self.device)
                .eval()
            )
            self.assistant_tokenizer = assistant.tokenizer

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, temperature: float, seed: int) -> HFResult:
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            eos_token_id=list(self.target.eos_token_ids),
            pad_token_id=self.target.eos_token_ids[0],
        )
        kwargs |= (
            dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            if temperature > 0
            else dict(do_sample=False)
        )
        if self.kind == "hf-prompt-lookup":
            kwargs["prompt_lookup_num_tokens"] = 10
        elif self.kind == "hf-assisted":
            kwargs["assistant_model"] = self.assistant
            if self.assistant_tokenizer.get_vocab() != self.target.tokenizer.get_vocab():
                kwargs |= dict(tokenizer=self.target.tokenizer, assistant_tokenizer=self.assistant_tokenizer)
        torch.manual_seed(seed)
        start = time.perf_counter()
        out = self.model.generate(torch.tensor([prompt_ids], device=self.device), **kwargs)
        synchronize(self.device)
        wall = (time.perf_counter() - start) * 1000
        tokens = out[0, len(prompt_ids) :].tolist()
        return HFResult(tokens, wall, self.target.tokenizer.decode(tokens, skip_special_tokens=True))
