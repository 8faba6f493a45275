"""taps from Python: a target with its drafters, generating replies as `taps generate` does.

    from taps import Decoder

    decoder = Decoder.load("smollm2-135m", drafters="eagle2-mixed")
    out = decoder.generate("What is 12 times 7?", max_new_tokens=64)
    print(out.text, out.tau, out.tokens_per_s)

The defaults are the CLI's: the target's shipped eagle2-mixed (else prompt lookup), prompt lookup
merged in on a CPU, the tree budget, the device's fast dtype. Output is lossless whatever is chosen:
at temperature 0 the target's own greedy reply, above it a sample of the target's distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from taps.errors import TapsError
from taps.models.catalog import DEFAULT_TARGET, LoadedTarget
from taps.spec.generate import Generation, GenerationConfig, SpeculativeGenerator
from taps.spec.propose import AUTO_SHAPE, TreeShape

Prompt = str | Sequence[dict] | Sequence[int]


@dataclass
class Decoder:
    """A loaded target and the proposer that drafts for it; `label` names them for stats lines."""

    target: LoadedTarget
    generator: SpeculativeGenerator
    label: str

    @classmethod
    def load(
        cls,
        target: str = DEFAULT_TARGET,
        drafters: str | Sequence[str] = "auto",
        strategy: str = "single",
        *,
        lookup: str = "auto",
        shape: TreeShape = AUTO_SHAPE,
        device: str = "auto",
        dtype=None,
        keep_prefix: int = 1,
    ) -> Decoder:
        """Load a target (a name from `taps setup`, a model folder or a .gguf file) and its drafters
        (shipped names, drafter folders, `ngram`, or `none` for plain decoding)."""
        from taps.models.catalog import load_target

        loaded = load_target(target, dtype=dtype, device=device)
        return cls.around(loaded, drafters, strategy, lookup, shape, keep_prefix)

    @classmethod
    def around(
        cls,
        target: LoadedTarget,
        drafters: str | Sequence[str] = "auto",
        strategy: str = "single",
        lookup: str = "auto",
        shape: TreeShape = AUTO_SHAPE,
        keep_prefix: int = 1,
    ) -> Decoder:
        """A decoder for a target already loaded (several decoders can share one target).
        `keep_prefix`: how many sequences' caches to keep (0: none), so that a prompt starting with a
        kept prompt and reply (a conversation's next turn) reads only its new tokens
        (`taps.spec.prefix`)."""
        from taps.drafters import looks_up, make_strategy, resolve_drafters
        from taps.spec.prefix import PrefixCache

        names = [n.strip() for n in drafters.split(",")] if isinstance(drafters, str) else list(drafters)
        names = resolve_drafters(names, target.name)
        proposer = make_strategy(strategy, names, target, shape, lookup=lookup)
        label = f"{strategy} {','.join(names)}" + (" + prompt lookup" if looks_up(proposer) else "")
        prefix = PrefixCache(keep_prefix) if keep_prefix else None
        return cls(target, SpeculativeGenerator(target.model, proposer, prefix=prefix), label)

    def encode(self, prompt: Prompt, system: str | None = None) -> list[int]:
        """A user message (str) or a conversation (role/content dicts) through the chat template;
        token ids as they are."""
        from taps.data.chat import encode_chat

        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        elif not prompt:
            raise TapsError("the prompt is empty; give a message, a conversation or token ids")
        if all(isinstance(p, int) for p in prompt):
            if system is not None:
                raise TapsError("a system message needs a text prompt or a conversation, not token ids")
            return list(prompt)
        if not all(isinstance(p, dict) and {"role", "content"} <= p.keys() for p in prompt):
            raise TapsError("a conversation is a list of {'role': ..., 'content': ...} messages")
        system_turn = [{"role": "system", "content": system}] if system is not None else []
        return encode_chat(self.target.tokenizer, [*system_turn, *prompt])

    def generate(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] = (),
        logprobs: int | None = None,
        system: str | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """One reply: `.text`, `.tokens`, `.tau`, `.tokens_per_s`, `.logprobs` (with `logprobs=k`, each
        token's log-probability and the k likeliest beside it); `on_text` gets the text as it comes."""
        config = GenerationConfig(
            max_new_tokens,
            temperature,
            top_p,
            seed,
            self.target.eos_token_ids,
            tuple(stop),
            logprobs,
        )
        return self.decode(self.encode(prompt, system), config, on_text)

    def decode(
        self, ids: list[int], config: GenerationConfig, on_text: Callable[[str], None] | None = None
    ) -> Generation:
        """The reply to encoded `ids` under `config`, which stops at the target's EOS tokens too."""
        eos = tuple(sorted({*config.eos_token_ids, *self.target.eos_token_ids}))
        return self.generator.generate(
            ids, replace(config, eos_token_ids=eos), self.target.tokenizer, on_text
        )
