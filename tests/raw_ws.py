"""A WebSocket client on a plain socket, for clients the server must defend against: it upgrades,
sends what it is told and reads only when told, through a tiny receive window that fills at once."""

from __future__ import annotations

import base64
import os
import socket
import struct

import orjson

OP_TEXT, OP_CLOSE = 0x1, 0x8


class RawWebSocket:
    def __init__(self, port: int, path: str, rcvbuf: int = 4096, timeout: float = 30) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_json(self, frame: dict) -> None:
        """One masked text frame, as a client must send."""
        payload = orjson.dumps(frame)
        mask = os.urandom(4)
        n = len(payload)
        length = bytes([0x80 | n]) if n < 126 else b"\xfe" + struct.pack("!H", n) if n < 65536 else None
        assert length is not None, "keep test frames under 64 KiB"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | OP_TEXT]) + length + mask + masked)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            piece = self.sock.recv(n - len(data))
            if not piece:
                raise EOFError("the server closed the connection")
            data += piece
        return data

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked): its opcode and payload."""
        first, second = self._read(2)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return first & 0x0F, self._read(n)

    def read_until_close(self) -> tuple[int, int]:
        """Read everything until the close frame: (frames before it, its close code)."""
        count = 0
        while True:
            opcode, payload = self.read_frame()
            if opcode == OP_CLOSE:
                return count, struct.unpack("!H", payload[:2])[0]
            count += 1

    def close(self) -> None:
        self.sock.close()
