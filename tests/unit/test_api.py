"""
The certificate API client against servers that answer badly: a body that
trickles or never ends, one too large, JSON nested too deep, an answer that
echoes the token, a name that does not resolve, a server that never answers.
Each ends in one CredentialsError, in time, with no token in its text.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from incident_connector.api import CertificateAPI, CredentialsError

TOKEN = "ict_SECRET-token-value-1234"


class _Scripted(protocol.Protocol):
    """
    Answers the first request with what the factory's C{answer} does.
    """

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += data
        if b"\r\n\r\n" in self.factory.received and not self.factory.answered:
            self.factory.answered = True
            self.factory.answer(self)

    def connectionLost(self, reason: Any) -> None:
        self.factory.lost = True
        for call in self.factory.calls:
            if call.active():
                call.cancel()


class ScriptedServer(protocol.Factory):
    protocol = _Scripted

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.received = b""
        self.answered = False
        self.lost = False
        self.calls: list[Any] = []
        self.sent = 0


class HostileAPITests(TestCase):
    timeout = 20

    def serve(self, answer: Any, apiTimeout: float = 2.0) -> tuple[CertificateAPI, ScriptedServer]:
        server = ScriptedServer(answer)
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        api = CertificateAPI(reactor, f"http://127.0.0.1:{port.getHost().port}", "conn_1", TOKEN, timeout=apiTimeout)
        self.addCleanup(api._agent._pool.closeCachedConnections)
        return api, server

    async def outcome(self, api: CertificateAPI) -> Any:
        try:
            return await api.requestCertificate("ssh-ed25519 AAAA incident-connector")
        except Exception as e:
            return e

    @defer.inlineCallbacks
    def test_trickledBodyTimesOut(self) -> Any:
        """
        Headers at once, then one body byte a second, forever: the request
        ends within its timeout (here 2 s) with a CredentialsError.
        """

        def answer(proto: _Scripted) -> None:
            proto.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )

            def drip() -> None:
                proto.transport.write(b" ")
                proto.factory.calls.append(reactor.callLater(0.5, drip))

            drip()

        api, _server = self.serve(answer, apiTimeout=2.0)
        started = time.monotonic()
        result = yield defer.ensureDeferred(self.outcome(api))
        self.assertIsInstance(result, CredentialsError)
        self.assertLess(time.monotonic() - started, 5)

    @defer.inlineCallbacks
    def test_hugeBodyRefused(self) -> Any:
        """
        A 32 MiB answer (valid JSON) is refused, not read into memory whole.
        """
        pad = 32 * 1024 * 1024

        def answer(proto: _Scripted) -> None:
            head = b'{"certificate": "x", "pad": "'
            tail = b'"}'
            proto.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (len(head) + pad + len(tail))
            )
            proto.transport.write(head + b"a" * pad + tail)

        api, _server = self.serve(answer, apiTimeout=10.0)
        result = yield defer.ensureDeferred(self.outcome(api))
        self.assertTrue(isinstance(result, CredentialsError), f"{type(result).__name__}: a 32 MiB answer was accepted")
        self.assertEqual(result.reason, "bad_response")

    @defer.inlineCallbacks
    def test_deeplyNestedJSON(self) -> Any:
        """
        JSON nested deeper than Python recurses is 'not JSON', not a
        RecursionError that no one logs.
        """
        body = b"[" * 200_000

        def answer(proto: _Scripted) -> None:
            proto.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

        api, _server = self.serve(answer)
        result = yield defer.ensureDeferred(self.outcome(api))
        self.assertIsInstance(result, CredentialsError)
        self.assertEqual(result.reason, "bad_response")

    @defer.inlineCallbacks
    def test_echoedTokenNotInError(self) -> Any:
        """
        A server that echoes the request line by line into a malformed
        status line: the error names no token.
        """

        def answer(proto: _Scripted) -> None:
            auth = [line for line in proto.factory.received.split(b"\r\n") if line.lower().startswith(b"authorization")]
            proto.transport.write(b"HTTP/1.1 " + auth[0] + b"\r\n\r\n")
            proto.transport.loseConnection()

        api, _server = self.serve(answer)
        result = yield defer.ensureDeferred(self.outcome(api))
        self.assertIsInstance(result, CredentialsError)
        self.assertNotIn(TOKEN, str(result))


class _FailingAgent:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def request(self, *args: Any) -> defer.Deferred[Any]:
        return defer.fail(self.error)


class DiagnosisTests(SynchronousTestCase):
    def test_dnsFailureIsNotTLS(self) -> None:
        """
        A name that does not resolve is a network error, not 'the server
        certificate does not name this host'.
        """
        api = CertificateAPI(Clock(), "https://api.example.invalid", "conn_1", TOKEN)
        api._agent = _FailingAgent(DNSLookupError("Couldn't find the hostname 'api.example.invalid'"))  # type: ignore[assignment]
        failure = self.failureResultOf(
            defer.ensureDeferred(api.requestCertificate("ssh-ed25519 AAAA")), CredentialsError
        )
        self.assertEqual(failure.value.reason, "network")
        self.assertNotIn("server certificate", str(failure.value))


class SilentServerTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_silentServerSaysTimeout(self) -> Any:
        """
        A server that accepts and never answers: the line says it did not
        answer in time (not 'cannot reach ...: ' with nothing after it).
        """
        server = ScriptedServer(lambda proto: None)
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        api = CertificateAPI(reactor, f"http://127.0.0.1:{port.getHost().port}", "conn_1", TOKEN, timeout=1.0)
        self.addCleanup(api._agent._pool.closeCachedConnections)
        try:
            yield defer.ensureDeferred(api.requestCertificate("ssh-ed25519 AAAA"))
        except CredentialsError as e:
            self.assertIn("did not answer in time", str(e))
        else:
            self.fail("no error")
