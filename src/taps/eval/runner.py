"""Run one proposer over benchmark prompts and record what happened, prompt by prompt.

Multi-turn prompts (MT-Bench) are asked turn by turn: the second question follows the model's own
first answer, as in the benchmark. A record sums all turns of one prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from taps.data.chat import encode_chat
from taps.spec.generate import GenerationConfig, SpeculativeGenerator, StepRecord


@dataclass
class PromptRecord:
    prompt_id: str
    benchmark: str
    category: str | None
    proposer: str
    temperature: float
    new_tokens: int
    target_steps: int
    wall_ms: float
    draft_ms: float
    verify_ms: float
    accept_lengths: list[int] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # per-step node stats (confidence, entropy, accepted, source)
    text: list[str] = field(default_factory=list)

    @property
    def tau(self) -> float:
        return sum(a + 1 for a in self.accept_lengths) / len(self.accept_lengths) if self.accept_lengths else 1.0

    def to_json(self) -> dict:
        return asdict(self) | {"tau": self.tau}


def run_prompt(generator: SpeculativeGenerator, tokenizer, prompt, proposer_name: str, config: GenerationConfig,
               keep_steps: bool = False) -> PromptRecord:
    messages: list[dict[str, str]] = []
    rec = PromptRecord(prompt.id, prompt.benchmark, prompt.category, proposer_name, config.temperature, 0, 0, 0.0, 0.0, 0.0)
    for turn in prompt.turns:
        messages.append({"role": "user", "content": turn})
        out = generator.generate(encode_chat(tokenizer, messages), config, tokenizer)
        messages.append({"role": "assistant", "content": out.text})
        rec.text.append(out.text)
        rec.new_tokens += len(out.tokens)
        rec.target_steps += len(out.steps) + 1  # + the prefill forward
        rec.wall_ms += out.wall_ms
        rec.draft_ms += sum(s.draft_ms for s in out.steps)
        rec.verify_ms += sum(s.verify_ms for s in out.steps)
        rec.accept_lengths += [s.accepted for s in out.steps]
        if keep_steps:
            rec.steps += [_step_json(s) for s in out.steps]
    return rec


def _step_json(s: StepRecord) -> dict:
    return {
        "accepted": s.accepted,
        "confidence": [round(c, 5) for c in s.node_confidence],
        "entropy": [round(e, 4) for e in s.node_entropy],
        "node_accepted": s.node_accepted,
        "source": s.node_source,
        "accepted_sources": s.accepted_sources,
    }
