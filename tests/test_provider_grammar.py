"""The tag grammar: llama.cpp parses it, and it accepts exactly the answers it documents.

Parsing uses llama.cpp's own parser through ``providers.local.check_grammar`` (in llama-cpp-python
0.3.36 ``LlamaGrammar.from_string`` stores the text without parsing it). Acceptance is checked
token by token with llama.cpp's grammar sampler over the model's vocabulary (loaded alone: fast).
"""

from __future__ import annotations

import ctypes
import math

import llama_cpp
import pytest

from providers.grammar import tags_grammar
from providers.local import check_grammar, model_path

NPC_TAGS = ["thought", "say", "action"]


@pytest.mark.parametrize(
    "tags, max_tags",
    [
        (NPC_TAGS, 4),
        (["say"], 1),
        (["thought", "say"], 1),
        (["thought", "say", "action", "tool", "emote"], 6),
        (["mood", "gesture"], 3),
        (["inner-voice", "say_loud", "look.at", "look:at"], 2),
    ],
)
def test_llama_cpp_parses_the_grammar(tags: list[str], max_tags: int) -> None:
    check_grammar(tags_grammar(tags, max_tags=max_tags))


def test_an_invalid_grammar_is_refused() -> None:
    with pytest.raises(ValueError):
        check_grammar('root ::= "<say>" undefined-rule')


@pytest.mark.parametrize("tags", [[], [""], ["two words"], ['say"'], ["1st"], ["a<b"]])
def test_unusable_tag_names_are_refused(tags: list[str]) -> None:
    with pytest.raises(ValueError):
        tags_grammar(tags)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        tags_grammar(["say"], max_tags=0)
    with pytest.raises(ValueError):
        tags_grammar(["say"], max_chars=0)


def test_grammars_are_cached_by_tags() -> None:
    assert tags_grammar(["thought", "say"]) is tags_grammar(("thought", "say", "thought"))


@pytest.fixture(scope="module")
def vocab_model() -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(model_path()), vocab_only=True, verbose=False)


def accepts(model: llama_cpp.Llama, grammar: str, answer: str) -> bool:
    """Whether llama.cpp's grammar sampler lets the model write ``answer`` and then stop."""
    vocab = llama_cpp.llama_model_get_vocab(model.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, "grammar did not parse"
    try:
        tokens = model.tokenize(answer.encode(), add_bos=False)
        for token in [*tokens, model.token_eos()]:
            candidate = (llama_cpp.llama_token_data * 1)((token, 0.0, 0.0))
            candidates = llama_cpp.llama_token_data_array(candidate, 1, -1, False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
            if candidate[0].logit == -math.inf:
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize(
    "answer",
    [
        "<say>Hello there, traveller.</say>",
        "<thought>A customer.</thought>\n<say>What do you need?</say>",
        "<action>wipes the anvil</action> <say>Yes?</say>\n\n<thought>Odd one.</thought>",
        "<thought>Hm.</thought><say>Fine.</say><action>nods</action><say>Go on.</say>",
        '<say>Café 🐉 — 1 > 0 & "quotes" fine.\nSecond line.</say>',
    ],
)
def test_well_formed_answers_are_accepted(vocab_model: llama_cpp.Llama, answer: str) -> None:
    assert accepts(vocab_model, tags_grammar(NPC_TAGS), answer)


@pytest.mark.parametrize(
    "answer",
    [
        "Hello there.",  # no tags
        "<thought>Only a thought.</thought>",  # never speaks
        "<thought>One.</thought><action>Two.</action><say>Late.</say>",  # say not among first two
        "<say>One</say><say>Two</say><say>Three</say><say>Four</say><say>Five</say>",  # > max_tags
        "<shout>Hey!</shout>",  # tag not allowed
        "<say></say>",  # empty text
        "<say> leading space</say>",
        "<say>...</say>",  # placeholder
        "<say>a <b>bold</b> claim</say>",  # '<' inside text
        "<say>Hi.</say> and then some prose",  # nothing after the last tag
        "<say>Unclosed",
    ],
)
def test_other_answers_are_refused(vocab_model: llama_cpp.Llama, answer: str) -> None:
    assert not accepts(vocab_model, tags_grammar(NPC_TAGS), answer)


def test_text_length_is_bounded(vocab_model: llama_cpp.Llama) -> None:
    grammar = tags_grammar(["say"], max_chars=10)
    assert accepts(vocab_model, grammar, "<say>0123456789</say>")
    assert not accepts(vocab_model, grammar, "<say>0123456789X</say>")


def test_without_say_any_allowed_tags_will_do(vocab_model: llama_cpp.Llama) -> None:
    grammar = tags_grammar(["mood", "look.at"], max_tags=2)
    assert accepts(vocab_model, grammar, "<look.at>the door</look.at>")
    assert accepts(vocab_model, grammar, "<mood>calm</mood>\n<mood>tired</mood>")
    assert not accepts(vocab_model, grammar, "<mood>a</mood><mood>b</mood><mood>c</mood>")
