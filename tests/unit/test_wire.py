"""
SSH wire encodings, and the reader that turns malformed input into one
protocol error; relay text made fit for a log line.
"""

from __future__ import annotations

from twisted.conch.ssh.common import MP, NS
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.tunnel.errors import ProtocolError
from incident_connector.tunnel.wire import Reader, escape, mpint, string


class EncodingTests(SynchronousTestCase):
    def test_asConchEncodes(self) -> None:
        for value in (0, 1, 127, 128, 255, 256, 2**63, 2**2048 - 1):
            self.assertEqual(mpint(value), MP(value), value)
        self.assertEqual(string(b"abc"), NS(b"abc"))


class ReaderTests(SynchronousTestCase):
    def test_fields(self) -> None:
        reader = Reader(NS(b"name") + b"\x01" + MP(300) + b"\x00\x00\x00\x07rest", "TEST")
        self.assertEqual((reader.string(), reader.boolean(), reader.mpint(), reader.uint32()), (b"name", True, 300, 7))
        self.assertEqual(reader.rest(), b"rest")
        reader.end()

    def test_everyTruncationIsOneError(self) -> None:
        message = NS(b"forwarded-tcpip") + b"\x00\x00\x00\x05" + NS(b"127.0.0.1")
        for cut in range(len(message)):
            reader = Reader(message[:cut], "CHANNEL_OPEN")
            with self.assertRaises(ProtocolError) as caught:
                reader.string()
                reader.uint32()
                reader.string()
            self.assertEqual(str(caught.exception), "the relay sent a malformed CHANNEL_OPEN message")

    def test_negativeMpint(self) -> None:
        self.assertRaises(ProtocolError, Reader(NS(b"\x80\x01"), "X").mpint)


class EscapeTests(SynchronousTestCase):
    def test_controlCharactersAndLength(self) -> None:
        shown = escape(b"bye\n\x1b[2J\x00\r" + b"x" * 500, 50)
        self.assertEqual(shown[:20], "bye\\n\\x1b[2J\\x00\\rxx")
        self.assertNotIn("\x1b", shown)
        self.assertEqual(len(shown), 53)
        self.assertEqual(escape(b"caf\xc3\xa9 \xff"), "café \ufffd")
