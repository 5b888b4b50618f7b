"""The pure measuring of the load test: percentiles, and the checks that every frame of every turn
arrived once, in the protocol's order, with the text the scripted LLM sent.

No I/O and no clock (times come in as arguments), so the checks are unit-tested on hand-made frame
sequences. The generator runs them on every frame it receives while sharing the machine with the
server it measures, so they cost a few comparisons per frame and allocate nothing on the way.

Every problem falls in one of four counts, each with its first few descriptions:

- ``lost``: something that should have arrived did not (a chunk's token, a tag's close, a turn's
  start or end frame, a tag index skipped);
- ``duplicated``: something arrived twice (a turn start, a tag opened or closed again, a token
  again, a second end frame);
- ``out_of_order``: something arrived where the protocol forbids it (a frame of a turn after its
  end, a chunk outside its open tag, a token after later ones);
- ``corrupted``: a chunk's text is not what the scripted LLM wrote.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable
from typing import Final

from loadtest.specs import EVENT_MARK

LOST: Final = "lost"
DUPLICATED: Final = "duplicated"
OUT_OF_ORDER: Final = "out_of_order"
CORRUPTED: Final = "corrupted"
KINDS: Final = (LOST, DUPLICATED, OUT_OF_ORDER, CORRUPTED)
EXAMPLES_KEPT: Final = 10
RECENT_TURNS_KEPT: Final = 16  # ended turns remembered per agent, to tell a late frame from a stray one
STAMP_DIGITS: Final = 16  # providers.scripted.stamp_token: " w<seq>@<16-digit microseconds>"


def percentiles(values: Iterable[float]) -> dict:
    """``{"p50", "p95", "p99", "max", "n"}`` of ``values`` by nearest rank (None when empty), in the
    values' unit, rounded to 3 decimals."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * n) - 1)], 3)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": round(ordered[-1], 3), "n": n}


def summary(values: list[float]) -> dict:
    """`percentiles` plus the mean."""
    result = percentiles(values)
    result["mean"] = round(sum(values) / len(values), 3) if values else None
    return result


class Problems:
    """Counts of integrity problems by kind, with the first descriptions."""

    __slots__ = ("counts", "examples")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(KINDS, 0)
        self.examples: list[str] = []

    def add(self, kind: str, what: str, count: int = 1) -> None:
        self.counts[kind] += count
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(f"{kind}: {what}")

    def merge(self, counts: dict, examples: list[str]) -> None:
        """Add another generator's problems."""
        for kind in KINDS:
            self.counts[kind] += counts[kind]
        self.examples.extend(examples[: EXAMPLES_KEPT - len(self.examples)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class AgentOrder:
    """The frame order one agent's turns must follow (docs/protocol.md, section 6).

    ``agent_turn_started`` first; then tags opened with indexes 0, 1, 2... one at a time, each
    chunk inside its open tag, each tag closed before the next opens or the turn ends; exactly one
    end frame (``agent_turn_interrupted`` or ``agent_turn_finished``), nothing of the turn after
    it; and a turn starts only after the previous one ended. Each method takes one received frame
    and returns whether it belongs to the agent's live turn (a frame that does not is reported and
    should be ignored by the caller).

    A frame found missing (a close before the next open or the end, a start, an open, an end) may
    only be late: it is held as missing, counted out of order if it turns up, and lost only if it
    has not when the run ends (``finish``).
    """

    __slots__ = ("agent_id", "problems", "turn_id", "live", "open_index", "next_index", "ended", "missing")

    def __init__(self, agent_id: str, problems: Problems) -> None:
        self.agent_id = agent_id
        self.problems = problems
        self.turn_id: str | None = None
        self.live = False
        self.open_index = -1  # the open tag's index, -1 when none is open
        self.next_index = 0
        self.ended: deque[str | None] = deque(maxlen=RECENT_TURNS_KEPT)
        self.missing: dict[tuple, str] = {}  # ("start"|"open"|"close"|"end", turn_id[, index]) -> what

    def started(self, turn_id: str) -> bool:
        if turn_id == self.turn_id or turn_id in self.ended:
            if not self._late(("start", turn_id)):
                self._problem(DUPLICATED, f"agent_turn_started again for turn {turn_id}")
            return False
        self._begin(turn_id)
        return True

    def tag_open(self, turn_id: str, index: int) -> bool:
        if self._late(("open", turn_id, index)) or not self._in_turn(turn_id, "agent_tag_open"):
            return False
        if index < self.next_index:
            self._problem(DUPLICATED, f"tag #{index} of turn {turn_id} opened again")
            return False
        if self.open_index >= 0:
            self._missing(
                ("close", turn_id, self.open_index),
                f"agent_tag_close of tag #{self.open_index} of turn {turn_id}, due before tag #{index} opened",
            )
        self._skipped_opens(turn_id, index)
        self.open_index, self.next_index = index, index + 1
        return True

    def tag_chunk(self, turn_id: str, index: int) -> bool:
        if not self._in_turn(turn_id, "agent_tag_chunk"):
            return False
        if index == self.open_index:
            return True
        if self.open_index < 0 and index >= self.next_index:
            self._skipped_opens(turn_id, index + 1)
            self.open_index, self.next_index = index, index + 1
            return True
        self._problem(
            OUT_OF_ORDER,
            f"chunk of tag #{index} of turn {turn_id} while "
            + (f"tag #{self.open_index} is open" if self.open_index >= 0 else "no tag is open"),
        )
        return False

    def tag_close(self, turn_id: str, index: int) -> bool:
        if self._late(("close", turn_id, index)) or not self._in_turn(turn_id, "agent_tag_close"):
            return False
        if index == self.open_index:
            self.open_index = -1
            return True
        if self.open_index < 0 and index == self.next_index - 1:
            self._problem(DUPLICATED, f"tag #{index} of turn {turn_id} closed again")
            return False
        if self.open_index < 0 and index >= self.next_index:
            self._skipped_opens(turn_id, index + 1)
            self.next_index = index + 1
            return True
        self._problem(
            OUT_OF_ORDER,
            f"close of tag #{index} of turn {turn_id} while "
            + (f"tag #{self.open_index} is open" if self.open_index >= 0 else "no tag is open"),
        )
        return False

    def end(self, turn_id: str, kind: str) -> bool:
        """An ``agent_turn_interrupted`` or ``agent_turn_finished`` frame (``kind``)."""
        if self._late(("end", turn_id)):
            return False
        if turn_id in self.ended:
            self._problem(DUPLICATED, f"{kind} after turn {turn_id} had already ended")
            return False
        if not self._in_turn(turn_id, kind):
            return False
        if self.open_index >= 0:
            self._missing(
                ("close", turn_id, self.open_index),
                f"agent_tag_close of tag #{self.open_index} of turn {turn_id}, due before its {kind}",
            )
        self._retire()
        return True

    def finish(self) -> bool:
        """The run is over: what is still missing is lost. Returns whether a turn was still live
        (slow or lost: the caller tells which)."""
        for what in self.missing.values():
            self._problem(LOST, f"{what} never arrived")
        self.missing.clear()
        live, self.live = self.live, False
        return live

    def _in_turn(self, turn_id: str, kind: str) -> bool:
        if turn_id == self.turn_id and self.live:
            return True
        if turn_id in self.ended:
            self._problem(OUT_OF_ORDER, f"{kind} after the end of turn {turn_id}")
            return False
        self._missing(("start", turn_id), f"agent_turn_started of turn {turn_id}, due before its {kind}")
        self._begin(turn_id)
        return True

    def _begin(self, turn_id: str) -> None:
        if self.live:
            self._missing(("end", self.turn_id), f"end frame of turn {self.turn_id}, due before turn {turn_id} started")
            self._retire()
        self.turn_id, self.live, self.open_index, self.next_index = turn_id, True, -1, 0

    def _retire(self) -> None:
        self.live, self.open_index = False, -1
        self.ended.append(self.turn_id)

    def _skipped_opens(self, turn_id: str, present: int) -> None:
        """The opens of the tags before index ``present`` that never came are missing."""
        for index in range(self.next_index, present):
            self._missing(("open", turn_id, index), f"agent_tag_open of tag #{index} of turn {turn_id}")

    def _missing(self, key: tuple, what: str) -> None:
        self.missing[key] = what

    def _late(self, key: tuple) -> bool:
        """Whether the frame ``key`` was found missing before: it is late, not lost."""
        what = self.missing.pop(key, None) if self.missing else None
        if what is None:
            return False
        self._problem(OUT_OF_ORDER, f"{what} arrived late")
        return True

    def _problem(self, kind: str, what: str, count: int = 1) -> None:
        self.problems.add(kind, f"{self.agent_id}: {what}", count)


class StampedText:
    """One turn's stamped tokens (``providers.scripted.stamp_token``): numbered 0, 1, 2... across its
    tags, each whole, none missing, repeated or late; and how long each took to arrive.

    ``feed`` takes a chunk's text, which normally is exactly one token, but a token cut between
    chunks is put together again (the stamp's fixed width tells a whole token from a cut one).
    Missing tokens count as lost only when ``settle`` is called (the run is over or the turn long
    past). A token in a frame ``AgentOrder`` already reported (a chunk after its turn's end, or
    outside its tag) is fed with ``reported=True``: it only stops being missing.
    """

    __slots__ = ("problems", "where", "next_seq", "missing", "carry", "ended")

    def __init__(self, problems: Problems, where: str) -> None:
        self.problems = problems
        self.where = where  # names the turn in problem descriptions
        self.next_seq = 0
        self.missing: set[int] = set()
        self.carry = ""
        self.ended = False

    def feed(self, text: str, received_us: int, latencies_ms: array, reported: bool = False) -> int:
        """Check the tokens ``text`` completes and append their latencies (ms) to ``latencies_ms``;
        return how many there were."""
        if self.carry:
            text, self.carry = self.carry + text, ""
        size, pos, count = len(text), 0, 0
        while pos < size:
            at = text.find("@", pos)
            if at < 0 or at + 1 + STAMP_DIGITS > size:
                self.carry = text[pos:]  # cut: the rest comes with the next chunk
                break
            end = at + 1 + STAMP_DIGITS
            seq, stamp = text[pos + 2 : at], text[at + 1 : end]
            if not (text.startswith(" w", pos) and seq.isdigit() and stamp.isdigit()):
                self.problems.add(CORRUPTED, f"{self.where}: unexpected chunk text {text[pos : pos + 40]!r}")
                return count
            self._token(int(seq), reported or self.ended)
            latencies_ms.append((received_us - int(stamp)) / 1000)
            pos, count = end, count + 1
        return count

    def tag_closed(self) -> None:
        """A token never spans tags: a cut one left over at a tag's close is a broken token."""
        if self.carry:
            self.problems.add(CORRUPTED, f"{self.where}: tag closed inside the token {self.carry!r}")
            self.carry = ""

    def turn_ended(self, expected_tokens: int | None) -> None:
        """The turn's end frame arrived; ``expected_tokens`` is how many tokens a complete turn has
        (None when it was interrupted: any prefix is then whole)."""
        self.tag_closed()
        self.ended = True
        if expected_tokens is not None:
            if self.next_seq < expected_tokens:
                self.missing.update(range(self.next_seq, expected_tokens))
                self.next_seq = expected_tokens
            elif self.next_seq > expected_tokens:
                self.problems.add(CORRUPTED, f"{self.where}: {self.next_seq} tokens, the LLM sent {expected_tokens}")

    def settle(self) -> None:
        """Tokens still missing now are lost."""
        if self.missing:
            self.problems.add(LOST, f"{self.where}: {len(self.missing)} token(s) never arrived", len(self.missing))
            self.missing.clear()

    def _token(self, seq: int, reported: bool) -> None:
        if seq == self.next_seq:
            self.next_seq += 1
        elif seq > self.next_seq:
            self.missing.update(range(self.next_seq, seq))
            self.next_seq = seq + 1
        elif seq in self.missing:
            self.missing.discard(seq)
            if not reported:
                self.problems.add(OUT_OF_ORDER, f"{self.where}: token {seq} after token {self.next_seq - 1}")
        elif not reported:
            self.problems.add(DUPLICATED, f"{self.where}: token {seq} again")


def interrupt_close_ms(records: Iterable[dict], interrupts: Iterable[tuple[str, float]]) -> list[float]:
    """For each interrupted turn, how long after the interrupting event was sent the scripted LLM saw
    the turn's stream closed.

    ``records`` are the scripted LLM's request records (``GET /_control/requests``), oldest first;
    ``interrupts`` are (event id that started the cut turn, when the interrupting event was sent).
    A turn's request is the first one whose newest event is the turn's event (event texts name
    their ids, ``specs.event_text``); a request that completed before the interruption reached it
    is left out.
    """
    first_request: dict[str, dict] = {}
    for record in records:
        body = record.get("body")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            continue
        event_id = _newest_event(messages)
        if event_id is not None:
            first_request.setdefault(event_id, record)
    closes = []
    for event_id, sent_at in interrupts:
        answer = first_request.get(event_id)
        if answer is not None and answer.get("end") == "client_closed" and answer.get("closed_at"):
            closes.append((answer["closed_at"] - sent_at) * 1000)
    return closes


def _newest_event(messages: list) -> str | None:
    for message in reversed(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and message.get("role") == "user":
            marks = EVENT_MARK.findall(content)
            if marks:
                return marks[-1]
    return None
