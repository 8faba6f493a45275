"""The OpenAI-compatible server, driven over loopback by the `openai` client and raw HTTP.

A tiny random llama (vocabulary of the default target, so its real tokenizer and chat template
apply) keeps generation fast; one slow test serves the real default target with a shipped drafter.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
import uvicorn

from taps.data.chat import encode_chat
from taps.models.catalog import LoadedTarget
from taps.models.checkpoint import save_drafter
from taps.models.target import TargetModel
from taps.serve.app import create_app
from taps.serve.engine import Engine, Route
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from tests.conftest import random_drafter, require_default_target, tiny_hf_model

SMOLLM_VOCAB = 49152


class RunningServer:
    """uvicorn on a free loopback port, in a background thread."""

    def __init__(self, engine: Engine):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.engine, self.url = engine, f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", timeout=120, max_retries=0)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.close()


@pytest.fixture(scope="module")
def tokenizer():
    require_default_target()
    from transformers import AutoTokenizer

    from taps.models.catalog import resolve_target

    return AutoTokenizer.from_pretrained(str(resolve_target("smollm2-135m")))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer) -> LoadedTarget:
    folder = tmp_path_factory.mktemp("tiny-served")
    model = tiny_hf_model("llama", vocab=SMOLLM_VOCAB)
    model.config.max_position_embeddings = 4096
    model.save_pretrained(str(folder))
    return LoadedTarget("tiny", folder, TargetModel.from_dir(folder, dtype=torch.float32), tokenizer)


@pytest.fixture(scope="module")
def drafter_dirs(tiny, tmp_path_factory) -> list[str]:
    out = []
    for seed in (1, 2):
        path = tmp_path_factory.mktemp(f"drafter{seed}") / "d"
        save_drafter(random_drafter(tiny.model, seed=seed, draft_vocab=512), path, tiny.model.fingerprint())
        out.append(str(path))
    return out


@pytest.fixture(scope="module")
def server(tiny, drafter_dirs):
    running = RunningServer(Engine(tiny, Route("single", ("ngram",)), extra_drafters=tuple(drafter_dirs)))
    yield running
    running.stop()


def reference(target: LoadedTarget, messages=None, prompt_ids=None, max_tokens=24, stop=()) -> str:
    """What `taps generate` prints: plain greedy decoding of the same prompt, decoded."""
    ids = prompt_ids or encode_chat(target.tokenizer, messages)
    config = GenerationConfig(max_tokens, 0.0, eos_token_ids=target.eos_token_ids, stop=tuple(stop))
    return SpeculativeGenerator(target.model, None).generate(ids, config, target.tokenizer).text


MESSAGES = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]


def test_models_lists_the_target(server):
    assert [m.id for m in server.client().models.list().data] == ["tiny"]


def test_health_says_whether_the_worker_takes_jobs(tiny):
    running = RunningServer(Engine(tiny, Route("single", ("ngram",))))
    try:
        ok = httpx.get(f"{running.url}/health", timeout=10)
        assert ok.status_code == 200 and ok.json()["status"] == "ok" and ok.json()["waiting"] == 0
        running.engine.close()
        running.engine._worker.join(timeout=10)
        down = httpx.get(f"{running.url}/health", timeout=10)
        assert down.status_code == 503 and down.json()["status"] == "down"
    finally:
        running.stop()


def test_chat_equals_generate_streamed_or_not(server, tiny):
    client, expected = server.client(), reference(tiny, MESSAGES)
    assert expected
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0)
    assert whole.choices[0].message.content == expected
    assert whole.usage.prompt_tokens == len(encode_chat(tiny.tokenizer, MESSAGES))
    assert whole.model_extra["taps"]["tau"] >= 1.0
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=24, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("keep", [True, False])
def test_a_conversations_next_turn_reads_only_its_new_tokens(tiny, keep, caplog):
    """The server keeps the last request's cache: the second turn finds the first turn's prompt and
    reply in it (OpenAI's `cached_tokens`) and still replies as plain decoding of the whole turn;
    with `--keep-prefix off` every prompt is read whole."""
    caplog.set_level("INFO", logger="taps.serve")
    server = RunningServer(Engine(tiny, Route("single", ("ngram",)), keep_prefix=int(keep)))
    try:
        client = server.client()
        first, second, turn = two_turns(client)
    finally:
        server.stop()
    cached = second.usage.prompt_tokens_details.cached_tokens
    if keep:
        assert len(encode_chat(tiny.tokenizer, MESSAGES)) < cached < second.usage.prompt_tokens
    else:
        assert cached == 0
    assert second.choices[0].message.content == reference(tiny, turn, max_tokens=16)
    # the operator's line for each finished request
    lines = [r.getMessage() for r in caplog.records if r.name == "taps.serve"]
    assert len(lines) == 2 and f"prompt {second.usage.prompt_tokens} tokens ({cached} kept)" in lines[1]


def two_turns(client):
    first = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0)
    turn = [*MESSAGES, {"role": "assistant", "content": first.choices[0].message.content}]
    turn.append({"role": "user", "content": "And how many would he have after eating two?"})
    second = client.chat.completions.create(model="tiny", messages=turn, max_tokens=16, temperature=0)
    return first, second, turn


def test_completions_equal_generate(server, tiny):
    prompt = "The capital of France is"
    expected = reference(tiny, prompt_ids=tiny.tokenizer(prompt)["input_ids"])
    client = server.client()
    assert (
        client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0).choices[0].text
        == expected
    )
    streamed = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=24, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_stop_string_cuts_both_ways(server, tiny):
    full = reference(tiny, MESSAGES, max_tokens=32)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), "pick a stop string from the middle of the reply"
    expected = reference(tiny, MESSAGES, max_tokens=32, stop=[stop])
    assert expected == full[: full.find(stop)]
    client = server.client()
    whole = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=32, temperature=0, stop=[stop]
    )
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == (expected, "stop")
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=32, temperature=0, stop=stop, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


def test_request_picks_strategy_and_drafters(server, tiny, drafter_dirs):
    expected = reference(tiny, MESSAGES)
    client = server.client()
    for taps in (
        {"strategy": "merged", "drafters": drafter_dirs},
        {"strategy": "route:confidence", "drafters": drafter_dirs},
        {"drafters": [drafter_dirs[0]]},
        {"drafters": ["none"]},
    ):
        reply = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=24, temperature=0, extra_body={"taps": taps}
        )
        assert reply.choices[0].message.content == expected, taps
        stats = reply.model_extra["taps"]
        assert stats["drafters"] == taps["drafters"]
        if taps["drafters"] != ["none"]:
            assert set(stats["accepted_by_drafter"]) == set(taps["drafters"])


def test_prompt_lookup_joins_the_served_drafter(tiny, drafter_dirs):
    """`taps serve --lookup on`: the reply is still plain decoding's, and the stats count what prompt
    lookup's nodes got accepted beside the drafter's."""
    running = RunningServer(Engine(tiny, Route("single", (drafter_dirs[0],)), lookup="on"))
    try:
        looping = [{"role": "user", "content": "one two three one two three one two three one two"}]
        reply = running.client().chat.completions.create(
            model="tiny", messages=looping, max_tokens=24, temperature=0
        )
        assert reply.choices[0].message.content == reference(tiny, looping)
        stats = reply.model_extra["taps"]
        assert stats["lookup"] is True and set(stats["accepted_by_drafter"]) == {drafter_dirs[0], "ngram"}
    finally:
        running.stop()


def test_n_replies_are_the_samples_of_consecutive_seeds(server):
    """`n` draws the replies one after another with seeds seed, seed + 1, ...: each equals a request
    of its own with that seed, streamed or not; usage counts the prompt once and every reply."""
    client = server.client()
    asked = dict(model="tiny", messages=MESSAGES, max_tokens=12, temperature=1.0)
    alone = [client.chat.completions.create(**asked, seed=7 + i) for i in range(3)]
    together = client.chat.completions.create(**asked, seed=7, n=3)
    assert [c.index for c in together.choices] == [0, 1, 2]
    assert [c.message.content for c in together.choices] == [r.choices[0].message.content for r in alone]
    assert together.usage.completion_tokens == sum(r.usage.completion_tokens for r in alone)
    assert together.usage.prompt_tokens == alone[0].usage.prompt_tokens
    streamed = ["", "", ""]
    for chunk in client.chat.completions.create(**asked, seed=7, n=3, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == [c.message.content for c in together.choices]


def test_n_completions_count_their_offsets_each(server):
    asked = dict(
        model="tiny", prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=1, n=2
    )
    first, second = server.client().completions.create(**asked).choices
    assert first.text == second.text and first.logprobs.text_offset == second.logprobs.text_offset
    assert first.logprobs.text_offset[0] == 0


def test_echo_scores_the_prompt_as_lm_eval_asks(server, tiny):
    """lm-eval's loglikelihood requests: token ids, echo, logprobs 1, max_tokens 1. The prompt comes
    back first, every token after its first scored as a forward over the prompt scores it (the first
    has none), then the reply's token; lm-eval sums [context:-1] and checks greedy against top."""
    ids = tiny.tokenizer("The capital of France is Paris")["input_ids"]
    body = {"model": "tiny", "prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    scores, tops = choice["logprobs"]["token_logprobs"], choice["logprobs"]["top_logprobs"]
    assert len(scores) == len(ids) + 1 and scores[0] is None and tops[0] is None
    assert choice["text"].startswith(tiny.tokenizer.decode(ids))
    hidden = tiny.model(torch.tensor(ids), tiny.model.new_cache(len(ids)))
    want = torch.log_softmax(tiny.model.logits(hidden[:-1]).float(), -1)[torch.arange(len(ids) - 1), ids[1:]]
    torch.testing.assert_close(torch.tensor(scores[1 : len(ids)]), want, atol=1e-4, rtol=0)
    greedy = [tok == max(top.values()) for tok, top in zip(scores[1:-1], tops[1:-1])]
    assert (
        greedy
        == (want >= torch.log_softmax(tiny.model.logits(hidden[:-1]).float(), -1).max(-1).values).tolist()
    )
    streamed = list(
        server.client().completions.create(
            model="tiny", prompt="Hi there", echo=True, max_tokens=4, stream=True, temperature=0
        )
    )
    whole = server.client().completions.create(
        model="tiny", prompt="Hi there", echo=True, max_tokens=4, temperature=0
    )
    assert streamed[0].choices[0].text == "Hi there" and whole.choices[0].text.startswith("Hi there")
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_sampling_is_seeded(server):
    client = server.client()
    replies = [
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=16, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert replies[0] == replies[1]
    # null sampling fields mean the defaults (T = 1, top-p 1), as OpenAI's API takes them
    nulls = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": MESSAGES,
            "max_tokens": 16,
            "temperature": None,
            "top_p": None,
            "seed": 7,
            "logprobs": False,
            "frequency_penalty": 0,  # neutral values of what taps does not do are fine
            "presence_penalty": None,
            "response_format": {"type": "text"},
        },
        timeout=60,
    )
    ones = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "tiny", "messages": MESSAGES, "max_tokens": 16, "temperature": 1.0, "seed": 7},
        timeout=60,
    )
    assert nulls.status_code == 200 and nulls.json()["choices"] == ones.json()["choices"]


def scored_reference(target: LoadedTarget, ids: list[int], top: int, stop=(), max_tokens=24):
    """Plain decoding of the prompt with each token's log-probability: what the server must report."""
    config = GenerationConfig(
        max_tokens, 0.0, eos_token_ids=target.eos_token_ids, stop=tuple(stop), logprobs=top
    )
    return SpeculativeGenerator(target.model, None).generate(ids, config, target.tokenizer)


def assert_scores(logprobs: list[float], reference) -> None:
    assert len(logprobs) == len(reference.logprobs)
    want = torch.tensor([e.logprob for e in reference.logprobs])
    torch.testing.assert_close(torch.tensor(logprobs), want, atol=1e-4, rtol=0)


def test_token_bytes_spell_characters_split_over_tokens(tokenizer):
    from taps.serve.logprobs import token_bytes

    text = "h\u00e9llo w\u00f6rld \u4f60\u597d \U0001f642 <|im_end|>"
    ids = tokenizer(text)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids), "some token should hold part of a character"
    assert b"".join(token_bytes(tokenizer, i) for i in ids) == text.encode()


@pytest.mark.parametrize("stop", [False, True])
def test_chat_logprobs_are_the_targets_own_streamed_or_not(server, tiny, stop):
    ids = encode_chat(tiny.tokenizer, MESSAGES)
    full = scored_reference(tiny, ids, 2)
    stops = [full.text[len(full.text) // 2 : len(full.text) // 2 + 3]] if stop else []
    expected = scored_reference(tiny, ids, 2, stops)
    asked = dict(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0, logprobs=True, top_logprobs=2)
    whole = server.client().chat.completions.create(**asked, stop=stops or None)
    content = whole.choices[0].logprobs.content
    assert_scores([c.logprob for c in content], expected)
    assert [len(c.top_logprobs) for c in content] == [2] * len(content)
    assert all(c.top_logprobs[0].logprob >= c.logprob for c in content)
    # the bytes of the tokens spell the reply (a character split over tokens is whole again)
    spelled = b"".join(bytes(c.bytes) for c in content).decode("utf-8", errors="replace")
    assert spelled.startswith(whole.choices[0].message.content)
    chunks = list(server.client().chat.completions.create(**asked, stop=stops or None, stream=True))
    streamed = [c for step in scored_chunks(chunks) for c in step]
    assert [(c.token, c.logprob) for c in streamed] == [(c.token, c.logprob) for c in content]


def test_completion_logprobs_in_openais_columns(server, tiny):
    prompt = "The capital of France is"
    expected = scored_reference(tiny, tiny.tokenizer(prompt)["input_ids"], 3)
    asked = dict(model="tiny", prompt=prompt, max_tokens=24, temperature=0, logprobs=3)
    whole = server.client().completions.create(**asked).choices[0].logprobs
    assert_scores(whole.token_logprobs, expected)
    assert len(whole.tokens) == len(whole.token_logprobs)
    assert all(
        len(top) <= 3 and max(top.values()) >= lp for top, lp in zip(whole.top_logprobs, whole.token_logprobs)
    )
    assert whole.text_offset[0] == 0 and whole.text_offset == sorted(whole.text_offset)
    chunks = list(server.client().completions.create(**asked, stream=True))
    assert [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens] == whole.tokens
    offsets = [o for c in chunks if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offsets == whole.text_offset


BAD_REQUESTS = [
    ("chat/completions", b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
    ("chat/completions", b'["a", "list"]', 400, "must be a JSON object"),
    ("chat/completions", {"model": "gpt-4", "messages": MESSAGES}, 404, "not served here"),
    ("chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
    ("chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "  "}]}, 400, "empty"),
    ("chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": -5}, 400, "max_tokens"),
    ("chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 10_000}, 400, "context"),
    ("chat/completions", {"model": "tiny", "messages": MESSAGES, "n": 17}, 400, "n"),
    ("chat/completions", {"model": "tiny", "messages": MESSAGES, "top_p": 0}, 400, "top_p"),
    ("chat/completions", {"model": "tiny", "messages": MESSAGES, "seed": 1 << 70}, 400, "seed"),
    (
        "chat/completions",
        {"model": "tiny", "messages": MESSAGES, "taps": {"strategy": "vote"}},
        400,
        "unknown strategy",
    ),
    (
        "chat/completions",
        {"model": "tiny", "messages": MESSAGES, "taps": {"drafters": ["nope"]}},
        400,
        "unknown drafter",
    ),
    (
        "chat/completions",
        {"model": "tiny", "messages": MESSAGES, "taps": {"drafters": ["/etc"]}},
        400,
        "on this server",
    ),
    ("chat/completions", {"model": "tiny", "messages": MESSAGES, "top_logprobs": 2}, 400, "needs logprobs"),
    (
        "chat/completions",
        {"model": "tiny", "messages": MESSAGES, "logprobs": True, "top_logprobs": 21},
        400,
        "top_logprobs",
    ),
    ("completions", {"model": "tiny", "prompt": "hi", "logprobs": 6}, 400, "logprobs"),
    (
        "chat/completions",
        {"model": "tiny", "messages": MESSAGES, "frequency_penalty": 0.5},
        400,
        "frequency_penalty",
    ),
    ("chat/completions", {"model": "tiny", "messages": MESSAGES, "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ("completions", {"model": "tiny", "prompt": "hi", "top_k": 20}, 400, "top_k is not supported"),
    (
        "chat/completions",
        {"model": "tiny", "messages": MESSAGES, "response_format": {"type": "json_object"}},
        400,
        "response_format",
    ),
    ("chat/completions", {"model": "tiny"}, 400, "messages"),
    ("completions", {"model": "tiny", "prompt": ""}, 400, "empty"),
    ("completions", {"model": "tiny", "prompt": ["a", "b"]}, 400, "one prompt"),
    ("completions", {"model": "tiny", "prompt": [SMOLLM_VOCAB + 5]}, 400, "token ids"),
]


@pytest.mark.parametrize(("path", "body", "status", "says"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors(server, path, body, status, says):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        f"{server.url}/v1/{path}", content=content, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error["message"] and error["type"]


def test_openai_client_raises_on_bad_input(server):
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=-1)
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="other", messages=MESSAGES)


def test_client_gone_mid_stream_frees_the_model(server):
    engine, before = server.engine, dict(server.engine.stats)
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 3500,
        "temperature": 0,
        "stream": True,
        "taps": {"drafters": ["none"]},
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    deadline = time.monotonic() + 60
    while engine.stats["cancelled"] == before["cancelled"]:
        assert time.monotonic() < deadline, "the abandoned job was never cancelled"
        time.sleep(0.05)
    assert engine.stats["completed"] == before["completed"]
    reply = server.client().chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=4, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_concurrent_clients_all_complete(server):
    client = server.client()

    def session(i: int) -> list[str]:
        reasons = []
        for j in range(4):
            messages = [{"role": "user", "content": f"Client {i}, request {j}: count to five."}]
            if (i + j) % 2:
                chunks = list(
                    client.chat.completions.create(
                        model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True
                    )
                )
                reasons.append(chunks[-1].choices[0].finish_reason)
            else:
                reasons.append(
                    client.chat.completions.create(
                        model="tiny", messages=messages, max_tokens=12, temperature=0
                    )
                    .choices[0]
                    .finish_reason
                )
        return reasons

    with ThreadPoolExecutor(16) as pool:
        results = [f.result(timeout=300) for f in [pool.submit(session, i) for i in range(16)]]
    reasons = [r for rs in results for r in rs]
    assert len(reasons) == 64 and set(reasons) <= {"stop", "length"}


@pytest.mark.slow
def test_default_target_served_losslessly_with_a_shipped_drafter():
    require_default_target()
    from taps.models.catalog import load_target
    from taps.spec.propose import AUTO_SHAPE

    target = load_target("smollm2-135m", dtype=torch.float32)
    # under the auto tree budget, as `taps serve` runs by default
    running = RunningServer(Engine(target, Route("single", ("eagle2-math",)), AUTO_SHAPE))
    asked = dict(model="smollm2-135m", messages=MESSAGES, max_tokens=32, temperature=0)
    try:
        reply = running.client().chat.completions.create(**asked)
        steps = scored_chunks(running.client().chat.completions.create(**asked, logprobs=True, stream=True))
        # a stop string completed by the 2nd token of a step that commits 3 or more: the scores end there
        before = sum(len(step) for step in steps[: next(i for i, s in enumerate(steps) if len(s) >= 3)])
        stop = b"".join(bytes(c.bytes) for c in [c for step in steps for c in step][: before + 2]).decode()
        usage = {"include_usage": True}
        chunks = list(
            running.client().chat.completions.create(
                **asked, stop=stop, logprobs=True, stream=True, stream_options=usage
            )
        )
    finally:
        running.stop()
    assert reply.choices[0].message.content == reference(target, MESSAGES, max_tokens=32)
    assert reply.model_extra["taps"]["tau"] > 1.0
    expected = scored_reference(target, encode_chat(target.tokenizer, MESSAGES), 0, [stop], max_tokens=32)
    assert len(expected.tokens) == before + 2
    assert_scores([c.logprob for step in scored_chunks(chunks) for c in step], expected)
    assert chunks[-1].usage.completion_tokens == before + 2  # the tokens past the stop are not counted


def scored_chunks(chunks) -> list[list]:
    """The logprobs entries of each streamed chunk that has any: one list per target forward."""
    return [c.choices[0].logprobs.content for c in chunks if c.choices and c.choices[0].logprobs]
