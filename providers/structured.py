"""Structured output: making the provider itself keep the model's answer in the NPC's format.

Small and mid-size models break the tag format often; a provider that constrains sampling makes
a malformed answer impossible. Providers differ in what they can enforce, so the mode is chosen
per endpoint (setting ``llm_structured``):

- ``grammar``: the GBNF of ``providers.grammar`` as a top-level ``grammar`` field; llama.cpp's
  server, llama-cpp-python's server and the embedded model read it. The answer is markup.
- ``json_schema``: OpenAI's ``response_format: {"type": "json_schema", ...}`` (OpenAI, vLLM,
  Ollama, ...) with the schema of ``core.tagjson.answer_schema``; the answer is JSON, read by
  ``core.tagjson.TagJsonReader`` into the same tag events.
- ``off``: nothing is sent; the model is only asked, in the prompt, to write tags.
- ``auto``: the embedded model gets ``grammar``; an endpoint is asked once at start-up
  (``GET /models``) who serves it, by the ``owned_by`` its models report.
"""

from __future__ import annotations

import urllib.request

import orjson
from loguru import logger

from core.metrics import endpoint_label
from core.spec import AgentSpec
from core.tagjson import answer_schema
from core.tagstream import TOOL_TAG
from providers.grammar import tags_grammar

MODES = ("auto", "grammar", "json_schema", "off")
GRAMMAR_MAX_TAGS, GRAMMAR_MAX_CHARS = 3, 200  # short, snappy turns from a grammar-bound model

# ``owned_by`` of the servers whose mode is known: llama.cpp's server, llama-cpp-python's,
# vLLM, Ollama, OpenAI.
_MODE_OF_OWNER = {
    "llamacpp": "grammar",
    "me": "grammar",
    "vllm": "json_schema",
    "library": "json_schema",
    "openai": "json_schema",
    "system": "json_schema",
    "openai-internal": "json_schema",
}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def detect(base_url: str, api_key: str, timeout_s: float = 5.0) -> str:
    """The mode for the endpoint at ``base_url``, from the ``owned_by`` of its models; ``off``
    when it cannot tell. The key goes in the request header only, never to a log."""
    request = urllib.request.Request(base_url.rstrip("/") + "/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    loopback = request.host.split(":")[0] in ("127.0.0.1", "localhost", "::1")
    opener = _NO_PROXY if loopback else urllib.request.build_opener()
    try:
        with opener.open(request, timeout=timeout_s) as response:
            models = orjson.loads(response.read()).get("data") or []
        owners = {model.get("owned_by") for model in models if isinstance(model, dict)}
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning(
            "cannot ask {} which structured output it supports ({}): llm_structured off", endpoint_label(base_url), exc
        )
        return "off"
    modes = {_MODE_OF_OWNER[owner] for owner in owners if owner in _MODE_OF_OWNER}
    mode = modes.pop() if len(modes) == 1 else "off"
    logger.info(
        "llm_structured auto: {} for {} (models owned by {})", mode, endpoint_label(base_url), sorted(map(str, owners))
    )
    return mode


def request_fields(mode: str, spec: AgentSpec) -> dict | None:
    """The chat request fields that make the provider enforce the agent's answer format."""
    if mode == "grammar":
        return {"grammar": tags_grammar(spec.allowed_tags, max_tags=GRAMMAR_MAX_TAGS, max_chars=GRAMMAR_MAX_CHARS)}
    if mode == "json_schema":
        attrs = {tag.name: tuple(tag.attrs) for tag in spec.tags}
        if TOOL_TAG in spec.allowed_tags and TOOL_TAG not in attrs:
            attrs[TOOL_TAG] = ()
        schema = answer_schema(attrs, spec.tool_names)
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "npc_turn", "strict": True, "schema": schema},
            }
        }
    return None
