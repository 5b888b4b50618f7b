"""GBNF grammars that force a model's whole answer into the NPC tag format.

A small local model told to "answer in tags" mostly ignores it; llama.cpp can instead constrain
sampling with a grammar, so every token it emits keeps the answer well-formed. The embedded model
server (``providers.local``) accepts such a grammar as a top-level ``"grammar"`` field of a chat request
(sent with the OpenAI SDK's ``extra_body``).

Shape of an answer, for allowed tags T and at most ``max_tags`` tags::

    answer := tag (sep tag)*              1..max_tags tags, each name from T
    tag    := "<" name ">" text "</" name ">"
    text   := 1..max_chars characters without "<", not starting with whitespace or "."
    sep    := up to 3 spaces, tabs or newlines

When ``say`` is allowed the answer must contain a ``say`` tag among its first two: one optional
non-``say`` tag may come first (typically ``thought``), then ``say``, then any allowed tags. So the
NPC always speaks. A text cannot open with "." so that a small model cannot fill a tag with the
placeholder "..." it saw in its instructions. Attributes (``<tool name="...">``) are never
generated: every tag is plain. Nothing may follow the last tag, so the model stops there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from core.spec import SPEECH_TAG
from core.tagstream import is_tag_name

_RULE_UNSAFE = re.compile(r"[^A-Za-z0-9]+")


def tags_grammar(allowed_tags: Sequence[str], *, max_tags: int = 4, max_chars: int = 300) -> str:
    """GBNF for an answer of 1..``max_tags`` tags from ``allowed_tags`` (see the module doc)."""
    tags = tuple(dict.fromkeys(allowed_tags))
    if not tags:
        raise ValueError("tags_grammar needs at least one allowed tag")
    bad = [tag for tag in tags if not is_tag_name(tag)]
    if bad:
        raise ValueError(f"not tag names: {bad!r}")
    if max_tags < 1 or max_chars < 1:
        raise ValueError("max_tags and max_chars must be at least 1")
    return _build(tags, max_tags, max_chars)


@functools.lru_cache(maxsize=64)
def _build(tags: tuple[str, ...], max_tags: int, max_chars: int) -> str:
    rule_of = {tag: f"tag{index}-{_RULE_UNSAFE.sub('-', tag)}" for index, tag in enumerate(tags)}
    rules = [f'{rule_of[tag]} ::= "<{tag}>" text "</{tag}>"' for tag in tags]
    rules.append(f"any ::= {' | '.join(rule_of.values())}")
    if SPEECH_TAG in tags:
        say = rule_of[SPEECH_TAG]
        leads = [rule_of[tag] for tag in tags if tag != SPEECH_TAG]
        alternatives = [say + _more(max_tags - 1)]
        if leads and max_tags > 1:
            rules.append(f"lead ::= {' | '.join(leads)}")
            alternatives.append(f"lead sep {say}{_more(max_tags - 2)}")
        root = " | ".join(alternatives)
    else:
        root = "any" + _more(max_tags - 1)
    rules += [
        r"text ::= [^<. \t\r\n] [^<]" + f"{{0,{max_chars - 1}}}",
        r"sep ::= [ \t\r\n]{0,3}",
    ]
    return "\n".join([f"root ::= {root}", *rules]) + "\n"


def _more(count: int) -> str:
    """Up to ``count`` further tags of any allowed kind, as a root suffix."""
    return f" (sep any){{0,{count}}}" if count > 0 else ""
