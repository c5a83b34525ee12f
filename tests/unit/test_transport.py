"""
Our SSH client transport against Conch's own SSH server, in memory: every key
exchange method and cipher both know, re-keys started by either side with
streams flowing, strict key exchange, negotiation errors that name both
lists, and a relay that sends what it should not.
"""

from __future__ import annotations

import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.conch.ssh import transport as conch
from twisted.conch.ssh.common import NS, getNS
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.tunnel.connection import MAX_PENDING_REQUESTS
from incident_connector.tunnel.errors import ProtocolError, TunnelError
from incident_connector.tunnel.kex import KEX_PREFERENCE, STRICT_SERVER
from incident_connector.tunnel.transport import RekeyPolicy

from .sshpeer import FORWARD_PORT, Pair, PeerTransport, openForwarded
from .sshpeer import PeerConnection as PeerConnectionBase


def failureOf(pair: Pair) -> TunnelError:
    """
    Why the client's attempt failed.
    """
    assert pair.client.ready.called
    result = pair.client.ready.result  # type: ignore[attr-defined]
    pair.client.ready.addErrback(lambda _: None)
    assert isinstance(result.value, TunnelError), result
    return result.value


class HandshakeTests(SynchronousTestCase):
    def test_everyKeyExchangeBothKnow(self) -> None:
        """
        Each key exchange method Conch's server also has ends in the forward.
        """
        common = [k for k in KEX_PREFERENCE if k in PeerTransport.supportedKeyExchanges]
        if b"mlkem768x25519-sha256" in KEX_PREFERENCE:  # cryptography >= 46
            self.assertIn(b"mlkem768x25519-sha256", common)
        self.assertIn(b"curve25519-sha256", common)
        for kex in common:
            pair = Pair(serverKex=[kex])
            pair.flush()
            self.assertEqual(pair.client.ready.result, FORWARD_PORT, kex)  # type: ignore[attr-defined]
            self.assertEqual(pair.client.negotiated.kex, kex)  # type: ignore[union-attr]

    def test_everyCipherAndMACBothKnow(self) -> None:
        for cipher in (b"aes128-ctr", b"aes192-ctr", b"aes256-ctr"):
            for mac in (b"hmac-sha2-256", b"hmac-sha2-512"):
                pair = Pair(serverCiphers=[cipher], serverMACs=[mac])
                pair.flush()
                self.assertEqual(pair.client.ready.result, FORWARD_PORT, (cipher, mac))  # type: ignore[attr-defined]

    def test_noCommonMAC(self) -> None:
        """
        One line names the part that failed and both sides' lists.
        """
        pair = Pair(serverCiphers=[b"aes128-ctr"], serverMACs=[b"hmac-sha1"])
        pair.flush()
        error = failureOf(pair)
        self.assertEqual(error.reason, "negotiation")
        self.assertEqual(
            str(error),
            "no common MAC (connector to relay): relay offers hmac-sha1; connector supports "
            "hmac-sha2-256-etm@openssh.com, hmac-sha2-512-etm@openssh.com, hmac-sha2-256, hmac-sha2-512",
        )

    def test_noCommonCipher(self) -> None:
        pair = Pair(serverCiphers=[b"aes256-cbc"])
        pair.flush()
        self.assertIn("no common cipher (connector to relay): relay offers aes256-cbc;", str(failureOf(pair)))

    def test_userAuthOnce(self) -> None:
        """
        The client asks for ssh-userauth once, after the first key exchange only.
        """
        pair = Pair()
        pair.flush()
        pair.server.sendKexInit()
        pair.flush()
        pair.server.sendKexInit()
        pair.flush()
        self.assertEqual(pair.client.rekeys, 2)
        self.assertEqual(pair.server.seen.count(conch.MSG_SERVICE_REQUEST), 1)
        self.assertFalse(pair.serverIO.disconnecting)


class RekeyTests(SynchronousTestCase):
    def established(self, **kw: object) -> Pair:
        pair = Pair(**kw)  # type: ignore[arg-type]
        pair.flush()
        self.assertEqual(pair.client.ready.result, FORWARD_PORT)  # type: ignore[attr-defined]
        return pair

    def test_relayRekeysWithStreamsFlowing(self) -> None:
        """
        The relay re-keys while a channel carries data both ways: nothing is
        lost, duplicated or reordered, and the connection carries on.
        """
        pair = self.established()
        channel = openForwarded(pair.peer)
        pair.flush()
        stream = pair.streams[0]
        sentDown = b""
        for n in range(20):
            piece = b"%05d" % n * 1000
            channel.write(piece)
            stream.channel.write(piece[::-1])
            sentDown += piece[::-1]
            if n in (3, 11):
                pair.server.sendKexInit()
            pair.flush()
        self.assertEqual(pair.client.rekeys, 2)
        self.assertEqual(b"".join(stream.received), b"".join(b"%05d" % n * 1000 for n in range(20)))
        self.assertEqual(channel.received, sentDown)

    def test_connectorRekeysByVolume(self) -> None:
        pair = self.established(rekey=RekeyPolicy(limit=64 * 1024))
        channel = openForwarded(pair.peer)
        pair.flush()
        stream = pair.streams[0]
        for _ in range(10):
            stream.channel.write(b"x" * 32768)
            pair.flush()
        self.assertEqual(len(channel.received), 10 * 32768)
        self.assertGreaterEqual(pair.server.seen.count(conch.MSG_KEXINIT), 3)
        self.assertGreaterEqual(pair.client.rekeys, 2)

    def test_connectorRekeysByTime(self) -> None:
        pair = self.established(rekey=RekeyPolicy(interval=3600))
        pair.clock.advance(3600)
        pair.flush()
        self.assertEqual(pair.client.rekeys, 1)
        pair.clock.advance(3600)
        pair.flush()
        self.assertEqual(pair.client.rekeys, 2)


class _StrictButChatty(PeerTransport):
    """
    Says it does strict key exchange, then sends IGNORE before NEWKEYS.
    """

    supportedKeyExchanges = [b"curve25519-sha256", STRICT_SERVER]

    def ssh_KEXINIT(self, packet: bytes) -> None:
        super().ssh_KEXINIT(packet)
        self.sendIgnore(b"terrapin")


class StrictKexTests(SynchronousTestCase):
    def test_messageDuringStrictKex(self) -> None:
        pair = Pair(server=_StrictButChatty())
        pair.flush()
        error = failureOf(pair)
        self.assertIn("strict key exchange", str(error))
        self.assertEqual(error.reason, "negotiation")

    def test_nonStrictRelayMayChat(self) -> None:
        class Chatty(PeerTransport):
            def ssh_KEXINIT(self, packet: bytes) -> None:
                super().ssh_KEXINIT(packet)
                self.sendIgnore(b"fine without strict kex")

        pair = Pair(server=Chatty())
        pair.flush()
        self.assertEqual(pair.client.ready.result, FORWARD_PORT)  # type: ignore[attr-defined]

    def test_strictOffered(self) -> None:
        """
        The connector's first KEXINIT carries the strict marker; re-keys do not.
        """
        pair = Pair()
        pair.flush()
        self.assertIn(b"kex-strict-c-v00@openssh.com", pair.server.otherKexInitPayload)
        pair.server.sendKexInit()
        pair.flush()
        self.assertNotIn(b"kex-strict-c-v00@openssh.com", pair.server.otherKexInitPayload)


class HostileRelayTests(SynchronousTestCase):
    """
    Whatever the relay sends, the connection ends with one L{ProtocolError}
    (or carries on), never an exception out of C{dataReceived}.
    """

    def established(self) -> Pair:
        pair = Pair()
        pair.flush()
        return pair

    def endedWith(self, pair: Pair, text: str) -> None:
        pair.flush()
        failure = pair.client.failure
        self.assertIsInstance(failure, ProtocolError)
        self.assertIn(text, str(failure))
        self.assertTrue(pair.clientIO.disconnecting or pair.clientIO.disconnected)

    def test_serviceAcceptAfterLogin(self) -> None:
        pair = self.established()
        pair.server.sendPacket(conch.MSG_SERVICE_ACCEPT, NS(b"ssh-userauth"))
        self.endedWith(pair, "SERVICE_ACCEPT although no service was requested")

    def test_unrequestedSuccess(self) -> None:
        pair = self.established()
        pair.server.sendPacket(81, b"")
        self.endedWith(pair, "REQUEST_SUCCESS unasked")

    def test_maxPacketZero(self) -> None:
        pair = self.established()
        opened = NS(b"forwarded-tcpip") + struct.pack(">3L", 1000, 1 << 20, 0)
        pair.server.sendPacket(90, opened + NS(b"127.0.0.1") + struct.pack(">L", 1) + NS(b"::1") + struct.pack(">L", 2))
        self.endedWith(pair, "maximum packet size of 0")

    def test_truncatedChannelOpen(self) -> None:
        pair = self.established()
        pair.server.sendPacket(90, NS(b"forwarded-tcpip") + struct.pack(">L", 1))
        self.endedWith(pair, "malformed CHANNEL_OPEN")

    def test_dataForUnknownChannel(self) -> None:
        pair = self.established()
        pair.server.sendPacket(94, struct.pack(">L", 77) + NS(b"boo"))
        self.endedWith(pair, "unknown channel 77")

    def test_userAuthMessageAfterLogin(self) -> None:
        pair = self.established()
        pair.server.sendPacket(52, b"")
        self.endedWith(pair, "user-auth message 52 outside authentication")

    def test_unknownChannelType(self) -> None:
        """
        Refused with OPEN_FAILURE, counted every time, logged once a minute.
        """
        pair = self.established()
        for n in range(5):
            pair.server.sendPacket(90, NS(b"x11\x1b[31m") + struct.pack(">3L", 1000 + n, 1000, 1000))
        pair.flush()
        self.assertIsNone(pair.client.failure)
        refused = pair.metrics.relayRefusals.labels(kind="channel_type")._value.get()
        self.assertEqual(refused, 5)
        self.assertEqual(pair.server.seen.count(92), 5)

    def test_shortUnimplemented(self) -> None:
        pair = self.established()
        pair.server.sendPacket(3, b"\x00")
        self.endedWith(pair, "malformed UNIMPLEMENTED message")

    def test_unknownMessageAnswered(self) -> None:
        pair = self.established()
        pair.server.sendPacket(200, b"what")
        pair.flush()
        self.assertIsNone(pair.client.failure)
        self.assertIn(conch.MSG_UNIMPLEMENTED, pair.server.seen)

    def test_disconnectTextEscaped(self) -> None:
        pair = self.established()
        pair.server.sendDisconnect(11, b"bye\n\x1b[2Jnow" + b"x" * 10000)
        pair.flush()
        message = str(pair.client.failure)
        self.assertTrue(message.startswith("relay disconnected: bye\\n\\x1b[2Jnow"), message)
        self.assertNotIn("\x1b", message)
        self.assertNotIn("\n", message)
        self.assertLess(len(message), 300)

    def test_hostKeyNotAKeyBlob(self) -> None:
        """
        The host key in the key exchange reply is read as a key blob and
        nothing else: text that Conch would take for another key format (an
        LSH s-expression, an encrypted PEM file) is a malformed host key.
        """
        for blob in [
            b"(junk",
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
            b"DEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        ]:
            server = _HostKeyBlob()
            server.blob = blob
            pair = Pair(server=server)
            self.endedWith(pair, "malformed host key")
            self.assertEqual(failureOf(pair).reason, "host_key")

    def test_negotiationErrorEscapesRelayNames(self) -> None:
        """
        The relay's algorithm names in a negotiation error (logged, and shown
        as /status last_error) carry no newline or terminal escape.
        """
        pair = Pair(serverCiphers=[b"evil\nFAKE LOG LINE\x1b[2J"])
        pair.flush()
        message = str(failureOf(pair))
        self.assertIn("no common cipher", message)
        self.assertIn("evil\\nFAKE", message)
        self.assertNotIn("\n", message)
        self.assertNotIn("\x1b", message)

    def test_ourOwnErrorIsNotBlamedOnTheRelay(self) -> None:
        """
        An exception from the connector's own stream code, once logged in, is
        reported as an internal error with its traceback, not as a malformed
        message from the relay.
        """

        class Broken:
            def __init__(self, channel: object) -> None:
                pass

            def makeConnection(self, transport: object) -> None:
                pass

            def readConnectionLost(self) -> None:
                raise ValueError("a bug")

            def connectionLost(self, reason: object) -> None:
                pass

        pair = Pair(makeStream=Broken)
        pair.flush()
        peer = openForwarded(pair.peer)
        pair.flush()
        pair.peer.sendEOF(peer)
        pair.flush()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertIsInstance(pair.client.failure, ProtocolError)
        assert pair.client.failure is not None
        self.assertEqual(pair.client.failure.reason, "internal")
        self.assertIn("internal error", str(pair.client.failure))

    def test_channelRequestAnsweredUntilOurClose(self) -> None:
        """
        A channel request that wants a reply is refused with CHANNEL_FAILURE,
        but not once our CLOSE went out: as OpenSSH, nothing follows our CLOSE
        on a channel, which the relay may already have forgotten.
        """
        pair = self.established()
        openForwarded(pair.peer)
        pair.flush()
        channel = pair.streams[0].channel
        request = struct.pack(">L", channel.localId) + NS(b"x@example.com") + b"\x01"
        pair.server.sendPacket(98, request)
        pair.flush()
        self.assertEqual(pair.server.seen.count(100), 1)
        channel.abortConnection()
        pair.server.sendPacket(98, request)
        pair.flush()
        self.assertEqual(pair.server.seen.count(100), 1)
        self.assertIsNone(pair.client.failure)

    def test_keepalivesUnansweredAreNotTimed(self) -> None:
        """
        A relay that never answers keepalives (but sends other things, so
        the connection lives) gets at most MAX_PENDING_REQUESTS of them, and
        the keepalive round-trip histogram records none it did not answer.
        """
        pair = Pair(server=PeerTransport())
        pair.peerFactory.makeConnection = lambda: _SilentOnKeepalives()  # type: ignore[method-assign]
        pair.flush()
        assert pair.connection is not None
        for _ in range(MAX_PENDING_REQUESTS + 10):
            pair.connection._sendKeepalive()
        pair.flush()
        self.assertIsNone(pair.client.failure)
        self.assertEqual(len(pair.connection._requests), MAX_PENDING_REQUESTS)
        sample = pair.metrics.registry.get_sample_value
        self.assertEqual(sample("incident_connector_keepalive_rtt_seconds_count"), 0)

    def test_forwardOnImpossiblePort(self) -> None:
        """
        A forward granted on a port over 65535 is a refused forward, as in
        OpenSSH: the tunnel is not reported up with a port nobody can reach.
        """
        pair = Pair(server=PeerTransport())
        pair.peerFactory.makeConnection = lambda: _PortConnection(70000)  # type: ignore[method-assign]
        pair.flush()
        error = failureOf(pair)
        self.assertEqual(error.reason, "forward_refused")
        self.assertIn("on port 70000", str(error))
        assert pair.connection is not None
        self.assertIsNone(pair.connection.allocatedPort)

    def test_forwardWithoutPort(self) -> None:
        class NoPort(PeerTransport):
            pass

        pair = Pair(server=NoPort())
        pair.peerFactory.makeConnection = lambda: _NoPortConnection()  # type: ignore[method-assign]
        pair.flush()
        error = failureOf(pair)
        self.assertIn("did not say which port", str(error))


class _NoPortConnection(PeerConnectionBase):
    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> object:
        return 1 if requestType == b"tcpip-forward" else 0


class _HostKeyBlob(PeerTransport):
    """
    Puts C{blob} where the host key goes in its key exchange reply.
    """

    blob = b""

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if messageType == 31:  # KEX_ECDH_REPLY / KEXDH_REPLY
            payload = NS(self.blob) + getNS(payload)[1]
        super().sendPacket(messageType, payload)


class _SilentOnKeepalives(PeerConnectionBase):
    def ssh_GLOBAL_REQUEST(self, packet: bytes) -> None:
        if b"keepalive@openssh.com" not in packet:
            super().ssh_GLOBAL_REQUEST(packet)


class _PortConnection(PeerConnectionBase):
    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> object:
        return (1, struct.pack(">L", self.port)) if requestType == b"tcpip-forward" else 0


class ReadSplitTests(SynchronousTestCase):
    """
    However the relay's bytes are split into reads (a packet straddling two
    reads, reads larger and smaller than one packet), every channel's data
    arrives whole and in order.
    """

    @settings(max_examples=40, deadline=None)
    @example(sizes=[30000] * 10, cuts=[1000, 150000])  # the rest of a packet, then more than 64 KiB
    @given(
        sizes=st.lists(st.integers(1, 32768), min_size=1, max_size=24),
        cuts=st.lists(st.integers(1, 200_000), min_size=1, max_size=12),
    )
    def test_anySplit(self, sizes: list[int], cuts: list[int]) -> None:
        pair = Pair()
        pair.flush()
        channel = openForwarded(pair.peer)
        pair.flush()
        stream = pair.streams[0]
        sent = b"".join(bytes([n % 251]) * size for n, size in enumerate(sizes))
        offset = 0
        for size in sizes:
            channel.write(sent[offset : offset + size])
            offset += size
        wire = pair.serverIO.getOutBuffer()
        reads = []
        start = 0
        for cut in cuts:
            reads.append(wire[start : start + cut])
            start += cut
        reads.append(wire[start:])
        for read in reads:
            if read:
                pair.client.dataReceived(read)
        self.assertEqual(b"".join(stream.received), sent)
        self.assertEqual(pair.client._buffer, b"")  # type: ignore[attr-defined]
