"""
Logging in to a relay that answers what it should not: every malformed or
unexpected user-auth message ends the attempt with one error and nothing
escaping the transport, only the connector's key is ever offered, and
nothing the relay sends during login floods the log.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.conch.ssh import service
from twisted.conch.ssh.common import NS
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.tunnel.errors import ProtocolError, TunnelError

from .sshpeer import Pair


def scriptedPair(replies: list[tuple[int, bytes]]) -> Pair:
    """
    A pair whose relay answers each USERAUTH_REQUEST with the next of
    C{replies}, raw (message type, payload), and then nothing.
    """

    class ScriptedAuth(service.SSHService):
        name = b"ssh-userauth"
        protocolMessages = {50: "MSG_USERAUTH_REQUEST"}

        def ssh_USERAUTH_REQUEST(self, packet: bytes) -> None:
            if replies:
                self.transport.sendPacket(*replies.pop(0))

    pair = Pair()
    pair.peerFactory.getService = lambda transport, name: ScriptedAuth  # type: ignore[method-assign]
    return pair


class HostileUserAuthTests(SynchronousTestCase):
    def endedCleanly(self, pair: Pair, error: type[TunnelError] = ProtocolError) -> TunnelError:
        """
        Nothing escaped C{dataReceived}, no Deferred was left failing
        unhandled, and the attempt failed with C{error}, the connection closing.
        """
        pair.flush()  # raises whatever escaped dataReceived
        errors: list[Any] = []
        pair.client.ready.addErrback(errors.append)
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])  # "Unhandled error in Deferred"
        self.assertTrue(pair.clientIO.disconnecting or pair.clientIO.disconnected)
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0].value, error)
        return errors[0].value

    def test_failureWithoutPartialByte(self) -> None:
        """
        USERAUTH_FAILURE without its "partial success" byte: Conch's parsing
        raised TypeError out of C{dataReceived}.
        """
        self.endedCleanly(scriptedPair([(51, NS(b"publickey"))]))

    def test_failureWithTrailingBytes(self) -> None:
        self.endedCleanly(scriptedPair([(51, NS(b"publickey") + b"\x00\x00")]))

    def test_failureWithNonASCIIMethod(self) -> None:
        """
        A method name that is not ASCII: Conch's C{tryAuth} raised inside a
        Deferred nobody handled, and the attempt hung until its timeout.
        """
        self.endedCleanly(scriptedPair([(51, NS(b"\xff") + b"\x00")]), TunnelError)

    def test_onlyTheKeyIsOffered(self) -> None:
        """
        A relay that lists keyboard-interactive gets no such request (Conch
        tried it, and its prompt parser raised TypeError on a prompt without
        its echo byte): the attempt ends, no more methods to try.
        """
        info = NS(b"") + NS(b"") + NS(b"") + b"\x00\x00\x00\x01" + NS(b"Password:")  # no echo byte
        pair = scriptedPair([(51, NS(b"keyboard-interactive") + b"\x00"), (60, info)])
        error = self.endedCleanly(pair, TunnelError)
        self.assertEqual(
            str(error), "authentication failed: the relay takes no public key (it offers keyboard-interactive)"
        )
        self.assertEqual(error.reason, "auth")

    def test_unknownMessagesAnsweredNotLogged(self) -> None:
        """
        User-auth messages a key login never gets (54-59, 61-79) are answered
        with UNIMPLEMENTED; Conch logged each one, whole, at info: 100 of
        200 kB wrote 80 MB of log.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pair = scriptedPair([(51, NS(b"publickey") + b"\x00")])  # then never answers
        pair.flush()
        unimplemented = pair.server.seen.count(3)
        for _ in range(100):
            pair.server.sendPacket(54, b"\x80" * 200_000)
        pair.flush()
        self.assertLess(sum(len(formatEvent(e) or "") for e in events), 100_000)
        self.assertEqual(pair.server.seen.count(3) - unimplemented, 100)
        self.assertIsNone(pair.client.failure)
