"""What a person playing an NPC on ``/events`` may do, and what they type, as the NPC's tags.

Why its own module: both sides of a takeover need it (the agent offers the NPC's actions with the
prompt it reports; the feed turns the person's answer into markup), and the conversion must stay
pure. TaleWeave's client shows the actions as buttons (OpenAI tool definitions) and writes a chosen
one as ``~name:param=value,...``; ``player_markup`` turns that, or plain text, into the markup an
LLM would have written, so the turn goes through the same parser and lifecycle as the model's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from xml.sax.saxutils import escape

import orjson

from core.spec import NAME, AgentSpec

TOOL_TAG = "tool"
TEXT_PARAMETER = "text"  # the parameter of a tag's function that goes inside the tag
_BOOLEANS = {"true": True, "yes": True, "y": True, "false": False, "no": False, "n": False}
_ATTR_ESCAPES = {'"': "&quot;"}


def actions_of(spec: AgentSpec) -> list[dict]:
    """What the NPC may do, as the OpenAI tools TaleWeave's client reads: its tags, then its tools.

    A tag is a function whose parameters are its attributes and ``text`` (what goes inside it);
    TaleWeave's client turns a chosen function into ``~name:param=value,...`` input, which
    ``player_markup`` turns back into that tag or tool call.
    """
    tags = [
        _function(
            tag.name,
            tag.description,
            {
                **{attr: {"type": "string", "description": about} for attr, about in tag.attrs.items()},
                TEXT_PARAMETER: {"type": "string", "description": f"the text inside <{tag.name}>"},
            },
            [],
        )
        for tag in spec.tags
    ]
    tools = []
    for tool in spec.tools:
        schema = tool.parameters if isinstance(tool.parameters, dict) else {}
        properties = schema.get("properties")
        required = schema.get("required")
        tools.append(
            _function(
                tool.name,
                tool.description,
                properties if isinstance(properties, dict) else {},
                required if isinstance(required, list) else [],
            )
        )
    return tags + tools


def _function(name: str, description: str, properties: dict, required: list) -> dict:
    """An OpenAI tool; ``description`` is the label of its button in TaleWeave's client, so never empty."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description or name,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


class InputError(ValueError):
    """Input that cannot become the NPC's tags; the message says how to write it."""


def player_markup(
    text: str, allowed_tags: Sequence[str], speech_tag: str, action_tag: str, tools: Sequence[str] = ()
) -> str:
    """A person's input as the markup an LLM would have written for the NPC.

    ``~name:param=value,other=value`` is TaleWeave's way to call one of the prompt's actions:
    the NPC's tool ``name`` becomes a tool call with the parameters as JSON arguments, its tag
    ``name`` that tag (``text`` inside it, the rest as attributes), any other name the action
    tag ``<action name="name" .../>``. A value starting with ``~`` is taken literally, without
    it. Input holding one of the NPC's tags is used as is; anything else is spoken, as the
    speech tag with its entities escaped.
    """
    stripped = text.strip()
    if not stripped:
        raise InputError("input is empty")
    allowed = {name.lower(): name for name in allowed_tags}
    if stripped.startswith("~") and len(stripped) > 1:
        name, params = _pseudo_call(stripped[1:])
        tool = next((tool for tool in tools if tool.lower() == name.lower()), None)
        if tool is not None:
            return _tool_markup(tool, params, _allowed(TOOL_TAG, allowed))
        if name.lower() in allowed and name.lower() != TOOL_TAG:
            return _tag_markup(allowed[name.lower()], params)
        return _action_markup(name, params, _allowed(action_tag, allowed))
    tagged = re.compile(rf"</?(?:{'|'.join(map(re.escape, allowed))})(?=[\s/>])", re.IGNORECASE)
    if allowed and tagged.search(stripped):
        return stripped
    tag = _allowed(speech_tag, allowed)
    return f"<{tag}>{escape(stripped)}</{tag}>"


def _allowed(tag: str, allowed: dict[str, str]) -> str:
    name = allowed.get(tag.lower())
    if name is None:
        raise InputError(f"this character has no {tag!r} tag; it may use: {', '.join(allowed.values())}")
    return name


def _pseudo_call(body: str) -> tuple[str, dict[str, str]]:
    """``give:item=spear,to=Mira`` as ``("give", {"item": "spear", "to": "Mira"})``, values as typed.

    A piece without ``=`` after a parameter continues its value: TaleWeave's client writes
    ``~say:text=Hello, friend`` for the words "Hello, friend".
    """
    name, _, params = body.partition(":")
    name = name.strip()
    if not name:
        raise InputError("an action needs a name: ~action or ~action:param=value,param=value")
    values: dict[str, str] = {}
    key = None
    for pair in params.split(","):
        if not pair.strip():
            continue
        if "=" not in pair and key is not None:
            values[key] += "," + pair
            continue
        key, equals, value = pair.partition("=")
        key = key.strip()
        if not equals or not NAME.fullmatch(key):
            raise InputError(f"bad action parameter {pair.strip()!r}: write param=value, params separated by commas")
        values[key] = value
    return name, {key: value.strip() for key, value in values.items()}


def _attributes(attrs: dict[str, str]) -> str:
    return "".join(f' {key}="{escape(value, _ATTR_ESCAPES)}"' for key, value in attrs.items())


def _action_markup(name: str, params: dict[str, str], tag: str) -> str:
    """``give`` with ``item=spear`` as ``<action name="give" item="spear"/>``."""
    if "name" in params:
        raise InputError("the parameter 'name' is the action's own name: use another parameter name")
    attrs = {"name": name, **{key: value.removeprefix("~") for key, value in params.items()}}
    return f"<{tag}{_attributes(attrs)}/>"


def _tag_markup(tag: str, params: dict[str, str]) -> str:
    """``say`` with ``text=Hello`` as ``<say>Hello</say>``; empty attributes (the defaults of
    TaleWeave's form) are left out."""
    text = params.pop(TEXT_PARAMETER, "").removeprefix("~")
    attrs = {key: value.removeprefix("~") for key, value in params.items() if value}
    if not text and not attrs:
        raise InputError(f"<{tag}> needs some text: ~{tag}:{TEXT_PARAMETER}=...")
    if not text:
        return f"<{tag}{_attributes(attrs)}/>"
    return f"<{tag}{_attributes(attrs)}>{escape(text)}</{tag}>"


def _tool_markup(tool: str, params: dict[str, str], tag: str) -> str:
    """A call of ``tool`` with the parameters as JSON arguments, typed as TaleWeave types them."""
    arguments = orjson.dumps({key: _typed(value) for key, value in params.items()}).decode()
    return f'<{tag} name="{escape(tool, _ATTR_ESCAPES)}">{escape(arguments)}</{tag}>'


def _typed(value: str) -> str | bool | int | float:
    """TaleWeave's reading of a parameter: ``~`` literal, yes/no words, numbers, else text."""
    if value.startswith("~"):
        return value[1:]
    if value.lower() in _BOOLEANS:
        return _BOOLEANS[value.lower()]
    for number in (int, float):
        try:
            parsed = number(value)
        except ValueError:
            continue
        if math.isfinite(parsed):
            return parsed
    return value
