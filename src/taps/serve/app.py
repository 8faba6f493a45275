"""OpenAI-compatible HTTP API over the engine: /v1/models, /v1/chat/completions, /v1/completions.

Requests are validated here so that every mistake comes back as a 4xx with an OpenAI-style error
body (`{"error": {"message", "type", "param", "code"}}`); the engine only ever sees well-formed
jobs. A request may pick its own combination of drafters with the extension field
`"taps": {"strategy": "merged", "drafters": ["eagle2-math", "eagle2-chat"]}`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from taps.data.chat import encode_chat
from taps.errors import TapsError
from taps.serve.engine import Delta, Engine, Job, Route, ServerBusy
from taps.serve.logprobs import CompletionLogprobs, Namer, chat_logprobs
from taps.spec.generate import GenerationConfig
from taps.spec.logprobs import MAX_TOP_LOGPROBS

DEFAULT_MAX_TOKENS = 256


class TapsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: str | None = None
    drafters: list[str] | str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields both endpoints share; unknown OpenAI fields are ignored, unsupported ones rejected."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)  # null = the default, 1, as OpenAI's
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=1 << 63)  # what a torch generator takes
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=16)  # replies drawn one after another (seeds seed, seed + 1, ...)
    taps: TapsOptions | None = None
    # OpenAI's (and vLLM's) other ways to reshape the distribution: accepted at their neutral values
    # only, since the verifier samples the target's distribution under temperature and top_p alone
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    top_k: int | None = None
    min_p: float | None = None
    response_format: dict | None = None
    tools: list | None = None

    def unsupported(self) -> str | None:
        """The first field set to something other than its neutral value, if any."""
        neutral = {
            "presence_penalty": (None, 0),
            "frequency_penalty": (None, 0),
            "repetition_penalty": (None, 1),
            "top_k": (None, 0, -1),
            "min_p": (None, 0),
            "tools": (None, []),
            "logit_bias": (None, {}),
        }
        for name, values in neutral.items():
            if getattr(self, name) not in values:
                return name
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        return None

    def top_logprobs_asked(self) -> int | None:
        """None: no log-probabilities; k: each token's, with the k most likely beside it."""
        return None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def top_logprobs_asked(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs set to true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False  # the prompt comes back before the reply, with its tokens' scores if asked
    logprobs: int | None = Field(default=None, ge=0, le=5)  # OpenAI's limit for completions

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="taps", summary="Task-aware speculative decoding, OpenAI-compatible")
    model_id = engine.target.name

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("the request body is not valid JSON"), status_code=400)
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if param is None:
            return JSONResponse(
                error_body("the request body must be a JSON object (send Content-Type: application/json)"),
                status_code=400,
            )
        return JSONResponse(
            error_body(f"{param or 'body'}: {first.get('msg')}", param=param), status_code=400
        )

    @app.get("/health")
    async def health():
        """For load balancers and readiness probes: the model is loaded and the worker takes jobs."""
        body = {"model": model_id, "waiting": engine.waiting(), **engine.stats}
        if not engine.working():
            return JSONResponse({"status": "down", **body}, status_code=503)
        return {"status": "ok", **body}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "taps"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        ids = _checked(
            lambda: encode_chat(engine.target.tokenizer, [m.as_dict() for m in body.messages]), "messages"
        )
        return await _respond(engine, body, ids, request, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        ids = _prompt_ids(engine, body.prompt)
        echo = None
        if body.echo:  # the prompt's own text where it came as text, else its tokens decoded
            text = body.prompt if isinstance(body.prompt, str) else None
            if isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], str):
                text = body.prompt[0]
            echo = text if text is not None else engine.target.tokenizer.decode(ids)
        return await _respond(engine, body, ids, request, chat=False, echo=echo)

    return app


def _checked(make, param: str):
    try:
        return make()
    except TapsError as exc:
        raise ApiError(400, str(exc), param) from None


def _prompt_ids(engine: Engine, prompt) -> list[int]:
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):  # a batch of ids
        if len(prompt) != 1:
            raise ApiError(400, f"send one prompt per request, got {len(prompt)}", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        vocab = engine.target.model.shape.vocab_size
        if any(not 0 <= p < vocab for p in prompt):
            raise ApiError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
        return list(prompt)
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, f"send one prompt per request, got {len(prompt)}", "prompt")
        prompt = prompt[0]
    if not prompt.strip():
        raise ApiError(400, "the prompt is empty; give at least one token of input", "prompt")
    return engine.target.tokenizer(prompt)["input_ids"]


def _route(engine: Engine, options: TapsOptions | None) -> Route:
    if options is None or (options.strategy is None and options.drafters is None):
        return engine.default
    drafters = options.drafters if options.drafters is not None else list(engine.default.drafters)
    names = tuple(n.strip() for n in (drafters.split(",") if isinstance(drafters, str) else drafters))
    strategy = options.strategy or ("single" if len(names) == 1 else engine.default.strategy)
    return Route(strategy, names)


def _config(engine: Engine, body: SamplingRequest) -> GenerationConfig:
    if (field := body.unsupported()) is not None:
        raise ApiError(
            400,
            f"{field} is not supported here: taps samples the target's own distribution under temperature "
            f"and top_p only, which is what keeps speculative decoding exact; leave {field} unset",
            field,
        )
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "stop takes up to 4 non-empty strings", "stop")
    max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
    seed = body.seed if body.seed is not None else secrets.randbits(31)
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    return GenerationConfig(
        max_tokens, temperature, top_p, seed, engine.target.eos_token_ids, stops, body.top_logprobs_asked()
    )


async def _respond(
    engine: Engine,
    body: SamplingRequest,
    ids: list[int],
    request: Request,
    chat: bool,
    echo: str | None = None,
):
    if body.model != engine.target.name:
        raise ApiError(
            404,
            f"model {body.model!r} is not served here; this server serves {engine.target.name!r}",
            "model",
            "model_not_found",
        )
    config, route = _config(engine, body), _route(engine, body.taps)
    try:
        job = engine.submit(ids, config, route, body.n, echo)
    except ServerBusy as exc:
        raise ApiError(503, str(exc), kind="server_overloaded") from None
    except TapsError as exc:
        raise ApiError(400, str(exc), "taps" if body.taps else None) from None
    reply = _Reply(engine.target.name, chat, len(ids), body.n, _scorer(engine, body, chat))
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_sse(engine, job, reply, usage), media_type="text/event-stream")
    watcher = asyncio.create_task(_cancel_when_gone(request, job))
    try:
        pieces = [d async for d in engine.events(job)]
    finally:
        watcher.cancel()
    return reply.whole(pieces)


def _scorer(engine: Engine, body: SamplingRequest, chat: bool):
    """What makes, for each reply, the function that turns its pieces' TokenLogprobs into their
    `logprobs` field (None: not asked for)."""
    top = body.top_logprobs_asked()
    if top is None:
        return None
    name = Namer(engine.target.tokenizer)
    if chat:
        return lambda: lambda entries: chat_logprobs(name, entries)
    return lambda: CompletionLogprobs(name, top)  # its text offsets count on within one reply


async def _cancel_when_gone(request: Request, job: Job) -> None:
    while not job.cancelled.is_set():
        if await request.is_disconnected():
            job.cancelled.set()
            return
        await asyncio.sleep(0.25)


async def _sse(engine: Engine, job: Job, reply: _Reply, include_usage: bool):
    """Server-sent events; when the client goes away the generator is closed and the job cancelled."""
    try:
        if reply.chat:
            for index in range(reply.replies):
                yield _event(reply.chunk({"role": "assistant", "content": ""}, index=index))
        async for delta in engine.events(job):
            yield _event(reply.chunk(delta.text, delta, delta.index))
        if include_usage:
            yield _event({**reply.head("chunk"), "choices": [], "usage": reply.usage(delta)})
    except Exception as exc:  # headers are sent: report in-band, as OpenAI does
        yield _event(error_body(f"generation failed: {exc}", kind="server_error"))
    yield "data: [DONE]\n\n"


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Reply:
    """Response objects in the OpenAI shapes for chat and text completions."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int, replies: int = 1, scorer=None):
        self.model, self.chat, self.prompt_tokens, self.replies = model, chat, prompt_tokens, replies
        self.scorers = [scorer() for _ in range(replies)] if scorer is not None else None
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def head(self, kind: str) -> dict:
        obj = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if kind == "chunk" and self.chat else ""
        )
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage(self, last: Delta) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": last.completion_tokens,
            "total_tokens": self.prompt_tokens + last.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": last.cached_tokens},
        }

    def logprobs(self, pieces: list[Delta], index: int) -> dict | None:
        if self.scorers is None:
            return None
        return self.scorers[index]([e for d in pieces for e in d.logprobs])

    def chunk(self, content, piece: Delta | None = None, index: int = 0) -> dict:
        finish = piece.finish_reason if piece else None
        logprobs = self.logprobs([piece], index) if piece else None
        if self.chat:
            delta = content if isinstance(content, dict) else ({"content": content} if content else {})
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": content, "logprobs": logprobs, "finish_reason": finish}
        out = {**self.head("chunk"), "choices": [choice]}
        if finish is not None:
            out["taps"] = piece.stats
        return out

    def whole(self, pieces: list[Delta]) -> dict:
        choices = [self._choice([d for d in pieces if d.index == i], i) for i in range(self.replies)]
        last = pieces[-1]
        return {**self.head("whole"), "choices": choices, "usage": self.usage(last), "taps": last.stats}

    def _choice(self, pieces: list[Delta], index: int) -> dict:
        text, finish, logprobs = (
            "".join(d.text for d in pieces),
            pieces[-1].finish_reason,
            self.logprobs(pieces, index),
        )
        if self.chat:
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
