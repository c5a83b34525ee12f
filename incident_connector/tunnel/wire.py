# -*- test-case-name: tests.unit.test_wire -*-
"""
SSH wire encodings (RFC 4251 section 5) and a bounds-checked reader that
turns every malformed message into one L{ProtocolError} naming it, instead of
the C{IndexError}s and C{struct.error}s of slicing by hand.
"""

from __future__ import annotations

import struct

from .errors import ProtocolError

__all__ = [
    "Reader",
    "escape",
    "mpint",
    "printable",
    "string",
    "uint32",
]

_U32 = struct.Struct(">L")


def uint32(value: int) -> bytes:
    return _U32.pack(value)


def string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def mpint(value: int) -> bytes:
    """
    A non-negative integer as an SSH mpint (two's complement, big-endian).
    """
    if value == 0:
        return bytes(4)
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return string(body)


def printable(text: str) -> str:
    """
    C{text} with every character that is not printable escaped, as C{repr}
    does: no newline or ESC from outside reaches a log line.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def escape(text: bytes, limit: int = 200) -> str:
    """
    Text from the relay, fit for one log line: decoded leniently, made
    L{printable}, and cut to C{limit} characters.
    """
    shown = printable(text[: limit * 4].decode("utf-8", "replace"))
    return shown if len(shown) <= limit else shown[:limit] + "..."


class Reader:
    """
    Reads fields off one message; running past its end is a protocol error.

    @ivar data: the message.
    @ivar offset: where the next field starts.
    @ivar what: the message's name, for the error.
    """

    def __init__(self, data: bytes, what: str, offset: int = 0) -> None:
        self.data = data
        self.what = what
        self.offset = offset

    def _fail(self) -> ProtocolError:
        return ProtocolError(f"the relay sent a malformed {self.what} message")

    def take(self, count: int) -> bytes:
        end = self.offset + count
        if count < 0 or end > len(self.data):
            raise self._fail()
        value = self.data[self.offset : end]
        self.offset = end
        return value

    def byte(self) -> int:
        return self.take(1)[0]

    def boolean(self) -> bool:
        return self.byte() != 0

    def uint32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.uint32())

    def mpint(self) -> int:
        body = self.string()
        if body and body[0] & 0x80:
            raise self._fail()
        return int.from_bytes(body, "big")

    def rest(self) -> bytes:
        value = self.data[self.offset :]
        self.offset = len(self.data)
        return value

    def end(self) -> None:
        """
        Nothing may follow the last field.
        """
        if self.offset != len(self.data):
            raise self._fail()
