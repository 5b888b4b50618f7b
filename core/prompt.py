"""The prompt of one turn: a system message (instructions, output format, dossier, what the NPC
remembers: ``core.recall``), then history.

It runs before every turn of every NPC, so trimming the history to its budget is one linear pass
over whole entries, newest first. The result always has the shape chat models expect: the system
message, then a user message, and a user message last. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.history import entry_size, to_messages
from core.recall import Recall, remembered
from core.spec import AgentSpec, TagSpec, ToolSpec, build_dossier, compact_json
from core.summary import shown

DEFAULT_INSTRUCTIONS = (
    "You are the character described below, in a video game. Stay in character: speak and act only as "
    "this character would, knowing only what they know. Answer ONLY with the allowed tags listed under "
    "Output format; never narrate or write anything outside them. Keep each turn short."
)
CONTINUE_NOTE = "[continue]"
OMITTED_NOTE = "[earlier history omitted]"


JSON_ANSWER_NOTE = (
    'Your turn is sent as JSON: {"tags": [{"tag": "say", "text": "..."}, ...]}, one item per tag in order, '
    'attributes in "attrs" ({"tag": "action", "attrs": {"name": "wave"}, "text": ""}), text written plainly.'
)


def output_format(spec: AgentSpec, *, json_answer: bool = False) -> str:
    """How to write a turn: the allowed tags and, when the agent has tools, how to call them; the
    tags are still explained as markup when the answer is JSON (``json_answer``), as history shows them."""
    lines = [
        "# Output format",
        f"Write your whole turn as a sequence of these tags and nothing else: {', '.join(spec.allowed_tags)}.",
        'Write a tag as <tag>text</tag>, attributes in double quotes: <tag attr="value">text</tag>; a tag '
        'without text may close itself: <tag attr="value"/>. Inside text write & as &amp; and < as &lt;.',
        *map(_tag_lines, spec.tags),
    ]
    if spec.tools:
        lines += [
            "",
            "## Tools",
            'Call a tool with <tool name="NAME" call_id="UNIQUE_ID">{JSON arguments}</tool>, using a call_id '
            "you have not used before. After your tool calls, stop and end your turn: the results come back "
            "in the next message.",
            *map(_tool_lines, spec.tools),
        ]
    if json_answer:
        lines += ["", JSON_ANSWER_NOTE]
    return "\n".join(lines)


def _tag_lines(tag: TagSpec) -> str:
    """``- <action name="...">...</action>: description``, then one line per attribute."""
    attrs = "".join(f' {name}="..."' for name in tag.attrs)
    head = _described(f"- <{tag.name}{attrs}>...</{tag.name}>", tag.description)
    return "\n".join([head, *(_described(f"  - {name}", about) for name, about in tag.attrs.items())])


def _tool_lines(tool: ToolSpec) -> str:
    """``- name: description``, then its parameters schema."""
    parameters = compact_json(tool.parameters) if tool.parameters else "none, write {}"
    return f"{_described(f'- {tool.name}', tool.description)}\n  parameters: {parameters}"


def _described(label: str, description: str) -> str:
    return f"{label}: {description}" if description else label


def build_messages(
    spec: AgentSpec,
    history: Sequence[dict],
    *,
    budget_chars: int,
    json_answer: bool = False,
    start: int | None = None,
    summary: str | None = None,
    recall: Recall | None = None,
    recall_budget_chars: int = 0,
) -> list[dict]:
    """The chat messages of the agent's next turn, history trimmed to ``budget_chars`` (or from
    ``start``, as ``window_start`` gave it); the NPC's ``summary`` of older history after the
    dossier; what ``recall`` found and the window does not show, in ``recall_budget_chars``."""
    entries = list(history)
    start = window_start(entries, budget_chars) if start is None else start
    entries = entries[start:]
    memory = remembered(recall, entries, recall_budget_chars) if recall is not None else ""
    messages = to_messages(entries)
    if not messages or messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": CONTINUE_NOTE})
    if start:
        messages[0] = {"role": "user", "content": f"{OMITTED_NOTE}\n{messages[0]['content']}"}
    parts = [
        spec.system_prompt or DEFAULT_INSTRUCTIONS,
        output_format(spec, json_answer=json_answer),
        build_dossier(spec),
    ]
    if summary:
        parts.append(shown(summary))
    if memory:
        parts.append(memory)
    return [{"role": "system", "content": "\n\n".join(parts)}, *messages]


def window_start(entries: Sequence[dict], budget: int) -> int:
    """Where the prompt's history starts: the newest entries that fit ``budget``, starting with a
    user-side one; everything before it is left out (and may be summarised: core.summary).

    The last user-side entry (what the agent reacts to) and everything after it are kept whatever
    their size. Entry sizes are upper bounds (``entry_size``), and room is kept for the notes added
    here.
    """
    user_side = [index for index, entry in enumerate(entries) if entry["kind"] != "turn"]
    first_user, last_user = (user_side[0], user_side[-1]) if user_side else (len(entries), len(entries))
    sizes = [entry_size(entry) for entry in entries]
    if not entries or entries[-1]["kind"] == "turn":
        budget -= len(CONTINUE_NOTE)
    if first_user == 0 and sum(sizes) <= budget:
        return 0
    budget -= len(OMITTED_NOTE) + 1
    start = len(entries)
    while start > first_user and sizes[start - 1] <= budget:
        start -= 1
        budget -= sizes[start]
    start = min(start, last_user)
    while start < last_user and entries[start]["kind"] == "turn":
        start += 1
    return start
