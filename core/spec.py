"""The runtime agent spec: the game's ``state`` object, validated, and the dossier the model reads.

Godot sends the spec before every turn, so designers can change an NPC while it plays. They write
it by hand, so slips whose meaning is obvious (one goal given as a string, a number where text is
expected) are accepted, and anything else fails with a ``SpecError`` that names the offending
field, so the designer can fix it instead of watching the NPC quietly misbehave. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import TypeVar

from core.tagstream import TOOL_TAG, is_tag_name

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")  # attribute and tool names
T = TypeVar("T")


class SpecError(ValueError):
    """A ``state`` the server cannot use; the message starts with the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class TagSpec:
    """An output tag the agent may write; ``attrs`` maps attribute name to description."""

    name: str
    description: str
    attrs: dict[str, str]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the agent may call; ``parameters`` is the JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict | None


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One NPC as the game describes it right now."""

    name: str
    description: str
    persona: str
    goals: tuple[str, ...]
    location: str
    inventory: tuple[str, ...]
    relationships: dict[str, str]
    facts: tuple[str, ...]
    system_prompt: str | None
    prompt_parts: tuple[tuple[str, str], ...]
    tags: tuple[TagSpec, ...]
    tools: tuple[ToolSpec, ...]
    groups: tuple[str, ...]  # the groups whose memories the NPC shares (core.memory)
    fallback_lines: tuple[str, ...]  # spoken when no LLM answers (the fallback ladder's last rung)
    model_tier: str | None  # the server's tier of models for this NPC (setting llm_tiers); None: the default
    extra: dict[str, object]

    @property
    def allowed_tags(self) -> tuple[str, ...]:
        """The tag names the agent may write: its tags, plus ``tool`` when it has tools."""
        names = tuple(tag.name for tag in self.tags)
        if self.tools and TOOL_TAG not in (name.lower() for name in names):
            return (*names, TOOL_TAG)
        return names

    @property
    def speech_tag(self) -> str | None:
        """The tag the agent speaks in, ``say`` as the spec spells it, if it has one."""
        return next((tag.name for tag in self.tags if tag.name.lower() == SPEECH_TAG), None)

    @property
    def tool_names(self) -> tuple[str, ...] | None:
        """The tools a ``tool`` tag may call; None when ``tool`` is one of the spec's own tags."""
        if not self.tools and any(tag.name.lower() == TOOL_TAG for tag in self.tags):
            return None
        return tuple(tool.name for tool in self.tools)


SPEECH_TAG = "say"

DEFAULT_TAGS: tuple[TagSpec, ...] = (
    TagSpec("thought", "private reasoning, never shown to anyone", {}),
    TagSpec("say", "words you speak aloud", {}),
    TagSpec("action", "a physical action you perform", {"name": "what the action is, e.g. wave"}),
)


def compact_json(value: object) -> str:
    """JSON without spaces, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def as_text(value: object) -> str:
    """Strings as they are, anything else as compact JSON."""
    return value if isinstance(value, str) else compact_json(value)


# --- parsing ----------------------------------------------------------------------------------


def parse_spec(state: object) -> AgentSpec:
    """Validate the ``state`` object of ``agent_state_snapshot``; raise ``SpecError`` if unusable."""
    state = _object(state, "state")
    spec = AgentSpec(
        name=_name(state.get("name"), "state.name"),
        description=_optional(state, "description", _text, ""),
        persona=_optional(state, "persona", _text, ""),
        goals=_optional(state, "goals", _texts, ()),
        location=_optional(state, "location", _text, ""),
        inventory=_optional(state, "inventory", _inventory, ()),
        relationships=_optional(state, "relationships", _relationships, {}),
        facts=_optional(state, "facts", _texts, ()),
        system_prompt=_optional(state, "system_prompt", _text, "") or None,
        prompt_parts=_optional(state, "prompt_parts", _prompt_parts, ()),
        tags=_optional(state, "tags", _tags, ()) or DEFAULT_TAGS,
        tools=_optional(state, "tools", _tools, ()),
        groups=groups_of(state),
        fallback_lines=_optional(state, "fallback_lines", _fallback_lines, ()),
        model_tier=_optional(state, "model_tier", _name, None),
        extra={key: value for key, value in state.items() if key not in _CONTRACT_KEYS},
    )
    if spec.fallback_lines and spec.speech_tag is None:
        raise SpecError("state.fallback_lines", f"are spoken in a {SPEECH_TAG!r} tag, which state.tags lacks")
    return spec


MAX_GROUPS = 16  # groups one NPC may belong to: each adds an owner to every recall


def groups_of(state: dict) -> tuple[str, ...]:
    """``state.groups``: the names of the groups (a faction, the town guard) the NPC belongs to.
    The gateway reads it from the raw ``state`` too, to look up the groups' memories."""
    groups: tuple[str, ...] = _optional(state, "groups", _texts, ())
    for index, group in enumerate(groups):
        if not group.strip():
            raise SpecError(f"state.groups[{index}]", "must be a non-empty group name")
    if len(groups) > MAX_GROUPS:
        raise SpecError("state.groups", f"names {len(groups)} groups; at most {MAX_GROUPS}")
    return tuple(dict.fromkeys(groups))


_CONTRACT_KEYS = frozenset(field.name for field in fields(AgentSpec)) - {"extra"}


def _optional(state: dict, key: str, parse: Callable[[object, str], T], absent: T) -> T:
    """``state[key]`` parsed, or ``absent`` when the key is missing or null."""
    value = state.get(key)
    return absent if value is None else parse(value, f"state.{key}")


def _is_text(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))


def _text(value: object, field: str) -> str:
    """A string; a number counts as its decimal text."""
    if not _is_text(value):
        raise SpecError(field, "must be a string")
    return str(value)


def _optional_text(value: object, field: str) -> str:
    return "" if value is None else _text(value, field)


def _name(value: object, field: str) -> str:
    if not _is_text(value) or not str(value).strip():
        raise SpecError(field, "must be a non-empty string")
    return str(value)


def _xml_name(value: object, field: str) -> str:
    name = _name(value, field)
    if not NAME.fullmatch(name):
        raise SpecError(field, "must be a name (ASCII letters, digits, _ . : -, not starting with a digit)")
    return name


def _tag_name(value: object, field: str) -> str:
    name = _name(value, field)
    if not is_tag_name(name):
        raise SpecError(field, "must be a tag name (ASCII letters, digits, _ . : -, starting with a letter)")
    return name


def _object(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(field, "must be an object")
    return value


def _key_field(field: str, key: object) -> str:
    """The field of one key of an object, e.g. ``state.relationships["Old Tom"]``."""
    return f"{field}[{json.dumps(key, ensure_ascii=False)}]"


def _one_or_many(value: object) -> object:
    """A lone string or number stands for a one-item list."""
    return [value] if _is_text(value) else value


def _items(value: object, field: str, parse_item: Callable[[object, str], T], what: str) -> tuple[T, ...]:
    """A list, each item parsed under its own index."""
    if not isinstance(value, list):
        raise SpecError(field, f"must be a list of {what}")
    return tuple(parse_item(item, f"{field}[{index}]") for index, item in enumerate(value))


def _unique(specs: tuple, field: str) -> tuple:
    """``specs`` unless two share a name: which one the model meant would be a guess."""
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if spec.name.lower() in seen:  # tags match case-insensitively in the stream
            raise SpecError(f"{field}[{index}]", f"repeats the name {spec.name!r}")
        seen.add(spec.name.lower())
    return specs


def _fields_text(fields: dict) -> str:
    """An object as compact text: ``key: value, key: value``."""
    return ", ".join(f"{key}: {as_text(value)}" for key, value in fields.items())


def _texts(value: object, field: str) -> tuple[str, ...]:
    return _items(_one_or_many(value), field, _text, "strings")


def _inventory(value: object, field: str) -> tuple[str, ...]:
    return _items(_one_or_many(value), field, _inventory_item, "strings or objects")


def _inventory_item(value: object, field: str) -> str:
    """An item as text: a string, or an object's ``name (other: fields)``."""
    if _is_text(value):
        return str(value)
    if not isinstance(value, dict):
        raise SpecError(field, "must be a string or an object")
    name = _name(value.get("name"), f"{field}.name")
    details = {key: detail for key, detail in value.items() if key != "name"}
    return f"{name} ({_fields_text(details)})" if details else name


def _relationships(value: object, field: str) -> dict[str, str]:
    return {
        str(name): _relationship(relation, _key_field(field, name)) for name, relation in _object(value, field).items()
    }


def _relationship(value: object, field: str) -> str:
    if isinstance(value, dict):
        return _fields_text(value)
    if not _is_text(value):
        raise SpecError(field, "must be a string, a number or an object")
    return str(value)


def _prompt_parts(value: object, field: str) -> tuple[tuple[str, str], ...]:
    return _items(value, field, _prompt_part, "objects")


def _prompt_part(value: object, field: str) -> tuple[str, str]:
    part = _object(value, field)
    return _name(part.get("title"), f"{field}.title"), _text(part.get("text"), f"{field}.text")


def _tags(value: object, field: str) -> tuple[TagSpec, ...]:
    return _unique(_items(_one_or_many(value), field, _tag, "tag names or objects"), field)


def _tag(value: object, field: str) -> TagSpec:
    if isinstance(value, str):
        return TagSpec(_tag_name(value, field), "", {})
    if not isinstance(value, dict):
        raise SpecError(field, "must be a tag name or an object")
    return TagSpec(
        name=_tag_name(value.get("name"), f"{field}.name"),
        description=_optional_text(value.get("description"), f"{field}.description"),
        attrs=_attrs(value.get("attrs"), f"{field}.attrs"),
    )


def _attrs(value: object, field: str) -> dict[str, str]:
    """``{attr: description}``, or a list of attribute names without descriptions."""
    if value is None:
        return {}
    if isinstance(value, list):
        return {_xml_name(name, f"{field}[{index}]"): "" for index, name in enumerate(value)}
    if not isinstance(value, dict):
        raise SpecError(field, "must be an object or a list of attribute names")
    return {
        _xml_name(name, _key_field(field, name)): _optional_text(description, _key_field(field, name))
        for name, description in value.items()
    }


MAX_FALLBACK_LINES, MAX_FALLBACK_LINE_CHARS = 100, 1000


def _fallback_lines(value: object, field: str) -> tuple[str, ...]:
    """Plain text lines, each spoken whole in the speech tag (markup in them is spoken as text)."""
    lines = _items(_one_or_many(value), field, _fallback_line, "strings")
    if len(lines) > MAX_FALLBACK_LINES:
        raise SpecError(field, f"must hold at most {MAX_FALLBACK_LINES} lines, got {len(lines)}")
    return lines


def _fallback_line(value: object, field: str) -> str:
    line = _name(value, field)
    if len(line) > MAX_FALLBACK_LINE_CHARS:
        raise SpecError(field, f"must be at most {MAX_FALLBACK_LINE_CHARS} characters long")
    return line


def _tools(value: object, field: str) -> tuple[ToolSpec, ...]:
    return _unique(_items(value, field, _tool, "objects"), field)


def _tool(value: object, field: str) -> ToolSpec:
    tool = _object(value, field)
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise SpecError(f"{field}.parameters", "must be an object (a JSON schema)")
    return ToolSpec(
        name=_xml_name(tool.get("name"), f"{field}.name"),
        description=_optional_text(tool.get("description"), f"{field}.description"),
        parameters=parameters,
    )


# --- dossier ----------------------------------------------------------------------------------


def build_dossier(spec: AgentSpec) -> str:
    """The character sheet the model plays from: a section for each field that is present."""
    sections = [
        ("Description", spec.description),
        ("Persona", spec.persona),
        ("Goals", _bullets(spec.goals)),
        ("Location", spec.location),
        ("Inventory", _bullets(spec.inventory)),
        ("Relationships", _bullets(f"{name}: {relation}" for name, relation in spec.relationships.items())),
        ("Facts", _bullets(spec.facts)),
        ("Groups", _bullets(spec.groups)),
        *spec.prompt_parts,
        ("Other details", _bullets(f"{key}: {as_text(value)}" for key, value in spec.extra.items())),
    ]
    return "\n\n".join([f"# {spec.name}", *(f"## {title}\n{body.strip()}" for title, body in sections if body.strip())])


def _bullets(lines: Iterable[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)
