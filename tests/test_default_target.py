"""Losslessness on the real default target (SmolLM2-135M-Instruct) and real benchmark prompts.

Run in float32, and in bf16 where the CPU computes it natively, unpadded and with every decoding
forward padded to one row count (`--pad-rows 8`): bf16 attends in float64 there and the packed
matmuls round a row alike whatever the row count (`taps.models.padded`). Before both, a 1-token pass
and a 25-token tree pass rounded apart in bf16, and near-tied logits flipped (in CI: 1 prompt in 8).
"""

from dataclasses import replace

import pytest
import torch

from taps.data.benchmarks import BENCHMARKS, load_benchmark
from taps.data.chat import encode_chat
from taps.drafters import looks_up, make_proposer, make_strategy, resolve_drafters, shipped_drafters
from taps.models.drafter import Drafter, DrafterConfig
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import AUTO_SHAPE, DrafterProposer, TreeShape
from tests.conftest import TEST_THREADS, require_default_target

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_target():
    require_default_target()
    from taps.models.catalog import load_target

    torch.set_num_threads(TEST_THREADS)  # in-process CLI tests set torch's threads from their --threads
    return load_target("smollm2-135m", dtype=torch.float32)


@pytest.fixture(scope="module")
def prompts(default_target, data_dir):
    items = [p for b in BENCHMARKS for p in load_benchmark(b, data_dir, limit=2, seed=1)]
    return [encode_chat(default_target.tokenizer, [{"role": "user", "content": p.turns[0]}]) for p in items]


@pytest.fixture(scope="module")
def reference(default_target, prompts):
    cfg = GenerationConfig(max_new_tokens=64)  # no EOS: always 64 tokens, the hardest case
    return [SpeculativeGenerator(default_target.model).generate(p, cfg).tokens for p in prompts]


# prompts holds 2 per benchmark in BENCHMARKS order: one MT-Bench and one GSM8K prompt
_ONE_PER_KIND = [2 * BENCHMARKS.index("mt_bench"), 2 * BENCHMARKS.index("gsm8k")]


def _proposer(name, target):
    if name != "random-drafter":
        return make_proposer(name, target)
    torch.manual_seed(0)
    random = Drafter(DrafterConfig(target.model.shape, draft_vocab_size=4096)).float()
    random.d2t = torch.arange(4096)
    return DrafterProposer(random.requires_grad_(False).attach(target.model), TreeShape(8, 5, 24))


_SHIPPED = shipped_drafters("smollm2-135m")


@pytest.mark.parametrize("name", ["random-drafter", "ngram", *_SHIPPED])
def test_greedy_speculative_equals_plain_greedy_on_real_prompts(default_target, prompts, reference, name):
    """Every proposer on real prompts: the one that rejects the most (a random drafter) and the one that
    drafts least like a drafter (prompt lookup) on one prompt per benchmark each (together all eight),
    each shipped drafter on two, rotated so that together they cover all eight. (Every proposer on all
    eight took 400 s, half the suite; the random drafter alone verifies 64 full trees a prompt.)"""
    assert len(prompts) >= 8
    if name in _SHIPPED:
        first = _SHIPPED.index(name) % len(prompts)
        chosen = [first, (first + len(prompts) // 2) % len(prompts)]
    else:
        chosen = range(name == "ngram", len(prompts), 2)  # prompts hold two per benchmark
    gen = SpeculativeGenerator(default_target.model, _proposer(name, default_target))
    cfg = GenerationConfig(max_new_tokens=64)
    for i in chosen:
        assert gen.generate(prompts[i], cfg).tokens == reference[i], (
            f"{name} diverged from greedy on prompt {i}"
        )


@pytest.mark.parametrize(
    "strategy,shape",
    [(s, TreeShape()) for s in ("average", "route:confidence", "route:entropy", "merged", "merged:cut")]
    + [(s, AUTO_SHAPE) for s in ("route:confidence", "merged")],
    ids=lambda v: getattr(v, "budget", v),
)
def test_combined_shipped_drafters_equal_plain_greedy(default_target, prompts, reference, strategy, shape):
    """Every strategy over the shipped math and chat drafters (stacked where they can be), on one
    GSM8K and one MT-Bench prompt (the full eight run for the single drafters above)."""
    pair = ["eagle2-math", "eagle2-chat"]
    if not all(p in shipped_drafters(default_target.name) for p in pair):
        pytest.skip("the eagle2 math/chat drafters are not shipped")
    gen = SpeculativeGenerator(default_target.model, make_strategy(strategy, pair, default_target, shape))
    cfg = GenerationConfig(max_new_tokens=64)
    for i in _ONE_PER_KIND:
        assert gen.generate(prompts[i], cfg).tokens == reference[i], (
            f"{strategy} diverged from greedy on prompt {i}"
        )


def test_the_default_proposer_equals_plain_greedy(default_target, prompts, reference):
    """What `taps generate` drafts with no options on a CPU: `--drafters auto` (eagle2-mixed) with
    prompt lookup merged in (`--lookup auto`) under the tree budget (`--tree auto`)."""
    names = resolve_drafters(["auto"], default_target.name)
    if names == ["ngram"]:
        pytest.skip("no default drafter is shipped")
    proposer = make_strategy("single", names, default_target, AUTO_SHAPE, lookup="auto")
    assert looks_up(proposer)
    gen = SpeculativeGenerator(default_target.model, proposer)
    cfg = GenerationConfig(max_new_tokens=64)
    for i in _ONE_PER_KIND:
        assert gen.generate(prompts[i], cfg).tokens == reference[i], f"diverged from greedy on prompt {i}"


@pytest.fixture(scope="module", params=[0, 8], ids=["unpadded", "padded-8"])
def bf16_target(request):
    from taps.device import native_bf16

    require_default_target()
    if not native_bf16(torch.device("cpu")):
        pytest.skip(
            "bf16 is emulated on this CPU (no avx512_bf16/AMX): its bf16 matmuls round a row by the row "
            "count (AMD EPYC family 25: 1 of 4 eagle2-math prompts parted at token 38, padded); "
            "float32, the default here, is exact"
        )
    from taps.models.catalog import load_target

    return load_target("smollm2-135m", dtype=torch.bfloat16, pad_rows=request.param)


@pytest.fixture(scope="module")
def bf16_cases(bf16_target, data_dir):
    """Two GSM8K and two MT-Bench prompts with their plain bf16 outputs (on the same target)."""
    items = [p for b in ("gsm8k", "mt_bench") for p in load_benchmark(b, data_dir, limit=2, seed=0)]
    plain = SpeculativeGenerator(bf16_target.model)
    cases = []
    for item in items:
        prompt = encode_chat(bf16_target.tokenizer, [{"role": "user", "content": item.turns[0]}])
        cases.append((item.benchmark, prompt, plain.generate(prompt, BF16_CONFIG).tokens))
    return cases


BF16_CONFIG = GenerationConfig(max_new_tokens=48)


@pytest.mark.parametrize(
    "names,shape,lookup",
    [
        (["eagle2-math"], TreeShape(), "off"),  # padded: 24 fixed nodes asked, 7 verified
        (["ngram"], AUTO_SHAPE, "off"),
        (["eagle2-mixed"], AUTO_SHAPE, "on"),  # the merged tree cut to the padded rows
        # 61 rows: wider than where a kernel changes path (AMX: from 33 rows, `packed.exact_row_range`)
        (["eagle2-math"], TreeShape(8, 6, 60), "off"),
    ],
    ids=["eagle2-math-fixed", "ngram-auto", "eagle2-mixed-auto-lookup", "eagle2-math-60-nodes"],
)
def test_bf16_speculative_equals_plain(bf16_target, bf16_cases, names, shape, lookup):
    """bf16 on a CPU attends in float64 (`taps.models.padded.attention_dtype`) and its packed matmuls
    give a row the same bits whatever the row count: so each tree row rounds as it would in a plain
    step, unpadded (the default) or with every forward padded to the same rows (`--pad-rows 8`), and
    bf16 outputs are the plain decoder's token for token, on this machine's bf16 kernels."""
    from taps.models.padded import invariant_rows

    if not all(n == "ngram" or n in shipped_drafters(bf16_target.name) for n in names):
        pytest.skip(f"{names[0]} is not shipped")
    rows = invariant_rows(bf16_target.model)
    proposer = make_strategy("single", names, bf16_target, shape, lookup=lookup)
    spec = SpeculativeGenerator(bf16_target.model, proposer)
    assert spec.max_nodes == (rows - 1 if rows else 1 << 30)
    for benchmark, prompt, plain in bf16_cases:
        out = spec.generate(prompt, BF16_CONFIG)
        assert max(s.tree_size for s in out.steps) <= spec.max_nodes
        assert out.tokens == plain, f"{names} diverged from plain bf16 decoding on {benchmark}"


def _tree_rows_and_plain_steps(model, prompt: list[int], reply: list[int]):
    """The logits of each plain step after `prompt` while it decodes `reply` (one token a forward),
    and of one verification forward over `reply[:-1]` as a chain (every row a tree node; a 47-token
    chain is wider than the row count where a kernel changes path: AMX from 33 rows)."""
    steps, cache = [], model.new_cache(len(prompt) + len(reply) + 8)
    model(torch.tensor(prompt), cache)
    for token in reply[:-1]:
        steps.append(model.logits(model(torch.tensor([token]), cache)))
    chain = torch.tensor(reply[:-1])
    cache.length = len(prompt)
    mask = torch.ones(len(chain), len(chain), dtype=torch.bool).tril()
    tree = model.logits(model(chain, cache, torch.arange(len(prompt), len(prompt) + len(chain)), mask))
    return torch.cat(steps), tree


def test_bf16_tree_rows_round_as_plain_steps(bf16_target, bf16_cases):
    """The root of bf16 losslessness at its finest: each row of a wide verification forward has the
    logits of the plain step at its place, bit for bit (attention sums in float64 there; with
    `--pad-rows 8` a 47-row forward runs unpadded). Where a kernel computes wide products by another
    path (oneDNN's bf16 on AMX from 33 rows), the target's packed matmuls run them in chunks it
    computes alike (`taps.models.packed.exact_row_range`). (In float32 attention rounds by the row count,
    a few ulps that greedy decoding has not been seen to notice: the tests above hold the tokens.)"""
    _, prompt, plain = bf16_cases[0]
    steps, tree = _tree_rows_and_plain_steps(bf16_target.model, prompt, plain)
    assert torch.equal(tree, steps)


def test_bf16_sampling_emits_plain_samplings_tokens(bf16_target, bf16_cases):
    """At T = 1 and a given seed, `taps generate`'s default (eagle2-mixed + prompt lookup, tree budget)
    emits plain sampling's tokens: each token is the target's draw at its place in the reply, from the
    same probabilities, since in bf16 on a CPU a tree row rounds as a plain step does. (In float32 the
    two differ by rounding, which can move a draw that falls right at a boundary: see the README.)"""
    names = resolve_drafters(["auto"], bf16_target.name)
    proposer = make_strategy("single", names, bf16_target, AUTO_SHAPE, lookup="auto")
    spec, plain = SpeculativeGenerator(bf16_target.model, proposer), SpeculativeGenerator(bf16_target.model)
    for seed, (benchmark, prompt, _) in enumerate(bf16_cases):
        cfg = replace(BF16_CONFIG, temperature=1.0, seed=seed)
        out = spec.generate(prompt, cfg)
        assert out.tokens == plain.generate(prompt, cfg).tokens, f"parted from plain sampling on {benchmark}"
        assert out.tau > 1.0
