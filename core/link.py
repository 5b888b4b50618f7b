"""The per-worker stream between the gateway and one worker: its handshake and its records.

Why a stream of our own: a Thespian message between two processes costs about a millisecond of
CPU, and every NPC token crossed two of them. Thespian still creates, places, supervises and
replaces the workers; the NPC traffic of one worker travels on one persistent stream (a Unix socket
on the leader's machine, TCP on a worker node's address), whose end of file also tells either side
at once that the other is gone.

The stream admits only the server's own processes: before anything is decoded, both sides prove
they hold the secret the gateway made for this start (it reaches the workers inside their
``ConfigureWorker``), bound to the worker's index and generation, so a stale worker of an older
generation cannot be taken for its replacement. Records are length-prefixed pickles of item
lists; only an authenticated peer's records are ever unpickled.

Sans-I/O: bytes in, bytes and items out; the asyncio shell is ``actors/link.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import secrets
import struct
from typing import Final

MAGIC: Final = b"NPCLINK1"
NONCE_BYTES: Final = 32
SERVER_HELLO_BYTES: Final = len(MAGIC) + NONCE_BYTES
CLIENT_ANSWER_BYTES: Final = len(MAGIC) + NONCE_BYTES + 8 + hashlib.sha256().digest_size
SERVER_PROOF_BYTES: Final = hashlib.sha256().digest_size
MAX_RECORD_BYTES: Final = 256 << 20  # one batch of items; far above any real one
_LENGTH: Final = struct.Struct(">I")
_IDENTITY: Final = struct.Struct(">II")


class LinkRefused(Exception):
    """The peer is not the server's own process, or not the worker generation expected."""


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def _mac(secret: bytes, role: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, role + b"".join(parts), hashlib.sha256).digest()


def server_hello() -> tuple[bytes, bytes]:
    """The worker's first bytes and the nonce they carry."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return MAGIC + nonce, nonce


def client_answer(secret: bytes, hello: bytes, index: int, generation: int) -> tuple[bytes, bytes]:
    """The gateway's answer to ``hello`` and the proof it must get back from the worker."""
    if len(hello) != SERVER_HELLO_BYTES or not hello.startswith(MAGIC):
        raise LinkRefused("not a worker link")
    server_nonce, client_nonce = hello[len(MAGIC) :], secrets.token_bytes(NONCE_BYTES)
    identity = _IDENTITY.pack(index, generation)
    answer = MAGIC + client_nonce + identity + _mac(secret, b"gateway", server_nonce, client_nonce, identity)
    return answer, _mac(secret, b"worker", client_nonce, server_nonce, identity)


def server_check(secret: bytes, nonce: bytes, answer: bytes, index: int, generation: int) -> bytes:
    """The worker's check of the gateway's answer; returns the worker's proof, or raises."""
    if len(answer) != CLIENT_ANSWER_BYTES or not answer.startswith(MAGIC):
        raise LinkRefused("not a gateway answer")
    start = len(MAGIC)
    client_nonce = answer[start : start + NONCE_BYTES]
    identity = answer[start + NONCE_BYTES : start + NONCE_BYTES + 8]
    proof = answer[start + NONCE_BYTES + 8 :]
    if not hmac.compare_digest(proof, _mac(secret, b"gateway", nonce, client_nonce, identity)):
        raise LinkRefused("the gateway's proof does not match this start's secret")
    if _IDENTITY.unpack(identity) != (index, generation):
        raise LinkRefused(f"the gateway asked for worker {_IDENTITY.unpack(identity)}, this is {(index, generation)}")
    return _mac(secret, b"worker", client_nonce, nonce, identity)


def client_check(expected: bytes, proof: bytes) -> None:
    if not hmac.compare_digest(expected, proof):
        raise LinkRefused("the worker's proof does not match this start's secret")


def encode(items: list) -> bytes:
    """One record: everything queued for the other side since the last write."""
    payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class Records:
    """Splits an authenticated stream back into the item lists ``encode`` made."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list]:
        buffer = self._buffer
        buffer += data
        batches, start = [], 0
        while len(buffer) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if size > MAX_RECORD_BYTES:
                raise LinkRefused(f"a record of {size} bytes is larger than {MAX_RECORD_BYTES}")
            end = start + _LENGTH.size + size
            if len(buffer) < end:
                break
            batches.append(pickle.loads(memoryview(buffer)[start + _LENGTH.size : end]))
            start = end
        if start:
            del buffer[:start]
        return batches
