# -*- test-case-name: tests.test_tunnel -*-
"""
The SSH transport to the relay: algorithm choice, host key verification, and
the hand-off to user authentication once the connection is secure.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from twisted.conch.ssh import transport
from twisted.internet import defer, protocol
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import writethrough
from .ciphers import BadPacket, Ciphers, Packetizer
from .hostkeys import HostKeyMismatch
from .hostkeys import fingerprint as sha256Fingerprint

if TYPE_CHECKING:
    from ..credentials import Credentials
    from .auth import RelayUserAuth
    from .connection import RelayConnection

__all__ = ["RelayTransport", "RelayTransportFactory", "TunnelError"]

MSG_CHANNEL_DATA = 94
#: Bytes read from the relay at a time, and sent-but-unwritten bytes past
#: which streams stop reading from their destinations.
SOCKET_BUFFER = 256 * 1024
#: Message type, recipient channel, data length.
_CHANNEL_DATA_HEAD = struct.Struct(">B2L")


class TunnelError(Exception):
    """
    The tunnel could not be established; the message says why, for operators.

    @ivar reason: a short label for metrics (C{host_key}, C{auth}, ...).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RelayTransport(transport.SSHClientTransport):
    """
    One SSH connection to the relay.

    @ivar factory: the L{RelayTransportFactory} that made this.
    @ivar ready: fires with the allocated remote port once the forward is
        granted, or fails with L{TunnelError} (or the connection's loss reason)
        if it never is.
    @ivar connection: the L{RelayConnection} once authentication succeeded.
    @ivar whenLost: fires with a one-line reason when the connection ends.
    @ivar hostKeyFingerprint: the relay's verified host key, C{SHA256:...}.
    """

    # In order of CPU per byte here: AES-GCM (one AEAD call per packet);
    # chacha20-poly1305 (two cipher set-ups and a Poly1305 per packet); AES-CTR
    # with HMAC-SHA2 (Conch's packet path).  No CBC/3DES, no SHA-1 or MD5 MACs,
    # no compression.
    supportedCiphers = [
        b"aes128-gcm@openssh.com",
        b"aes256-gcm@openssh.com",
        b"chacha20-poly1305@openssh.com",
        b"aes128-ctr",
        b"aes256-ctr",
        b"aes192-ctr",
    ]
    supportedMACs = [b"hmac-sha2-256", b"hmac-sha2-512"]
    supportedKeyExchanges = [b"curve25519-sha256", b"curve25519-sha256@libssh.org"]
    supportedCompressions = [b"none"]

    factory: RelayTransportFactory

    def __init__(self) -> None:
        self._log = Logger(namespace="twisted.conch.ssh.transport", source=self)
        self.ready: defer.Deferred[int] = defer.Deferred()
        self.whenLost: defer.Deferred[str] = defer.Deferred()
        self.hostKeyFingerprint: str | None = None
        self.connection: RelayConnection | None = None
        self._disconnecting = False
        self._failure: TunnelError | None = None

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            cast(ITCPTransport, self.transport).setTcpNoDelay(True)
            # Read more per system call, and buffer this much before pausing
            # the streams (RelayConnection is the producer).
            cast(ITCPTransport, self.transport).bufferSize = SOCKET_BUFFER  # type: ignore[attr-defined]
        self.supportedPublicKeys = self.factory.credentials.hostKeyPolicy.preferredAlgorithms(
            transport.SSHClientTransport.supportedPublicKeys
        )
        super().connectionMade()

    def ssh_KEXINIT(self, packet: bytes) -> object:
        result = super().ssh_KEXINIT(packet)
        # Conch built plain SSHCiphers from the negotiated names; ours know AES-GCM.
        negotiated = self.nextEncryptions
        self.nextEncryptions = Ciphers(
            negotiated.outCipType, negotiated.inCipType, negotiated.outMACType, negotiated.inMACType
        )
        return result

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        aead = self._outAEAD()
        if aead is None:
            return super().sendPacket(messageType, payload)
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE and not self._allowedKeyExchangeMessageType(messageType):
            self._blockedByKeyExchange.append((messageType, payload))
            return None
        self._seal(aead, bytes((messageType,)), payload)
        return None

    def sendChannelData(self, remoteChannel: int, packets: Sequence[bytes | memoryview]) -> None:
        """
        Send each of C{packets} on a channel as one C{SSH_MSG_CHANNEL_DATA},
        all with one write: with AEAD each is copied once, into its packet's
        plaintext.
        """
        aead = self._outAEAD()
        if aead is None or self._keyExchangeState != self._KEY_EXCHANGE_NONE:
            # Conch frames them (and holds them back during a key exchange).
            for data in packets:
                self.sendPacket(MSG_CHANNEL_DATA, struct.pack(">2L", remoteChannel, len(data)) + data)
            return
        pieces: list[bytes] = []
        for data in packets:
            head = _CHANNEL_DATA_HEAD.pack(MSG_CHANNEL_DATA, remoteChannel, len(data))
            pieces.extend(aead.sealParts(head, data, self.outgoingPacketSequence))
            self.outgoingPacketSequence += 1
        assert self.transport is not None
        writethrough.writeSequence(self.transport, pieces)

    def _outAEAD(self) -> Packetizer | None:
        return self.currentEncryptions.outAEAD if isinstance(self.currentEncryptions, Ciphers) else None

    def _inAEAD(self) -> Packetizer | None:
        return self.currentEncryptions.inAEAD if isinstance(self.currentEncryptions, Ciphers) else None

    def _seal(self, aead: Packetizer, head: bytes, payload: bytes | memoryview) -> None:
        assert self.transport is not None
        writethrough.writeSequence(self.transport, aead.sealParts(head, payload, self.outgoingPacketSequence))
        self.outgoingPacketSequence += 1

    def dataReceived(self, data: bytes) -> None:
        """
        Conch's loop, without its copies: AEAD packets are opened in place at
        an offset into the receive buffer (trimmed once per read), and
        channel data goes straight to the connection, copied once out of the
        plaintext.  Conch's own framing still reads the version line and any
        packet before keys are set or under a non-AEAD cipher.
        """
        if self._disconnecting:
            return
        if not self.gotVersion:
            super().dataReceived(data)
            return
        buf = self.buf + data if self.buf else data
        offset = 0
        connection = self.connection
        if connection is not None:
            connection.startGathering()
        try:
            while not self._disconnecting:
                # Per packet: NEWKEYS switches ciphers mid-buffer.
                aead = self._inAEAD()
                if aead is None:
                    self.buf, buf, offset = buf[offset:], b"", 0
                    packet = self.getPacket()
                    buf = self.buf
                    if not packet:
                        return
                    self._dispatch(packet, 0, len(packet))
                    continue
                try:
                    opened = aead.openPacket(memoryview(buf)[offset:], self.incomingPacketSequence)
                except BadPacket as e:
                    self.sendDisconnect(e.reason, str(e).encode())
                    return
                if opened is None:
                    return
                plain, end, used = opened
                offset += used
                self.incomingPacketSequence += 1
                self._dispatch(plain, 1, end)
        finally:
            self.buf = buf[offset:] if offset else buf
            if connection is not None:
                connection.deliverGathered()

    def getPacket(self) -> bytes | None:
        """
        One packet for Conch's own loop (which reads the version line and
        whatever follows it in the same read): AEAD packets too.
        """
        aead = self._inAEAD()
        if aead is None:
            return super().getPacket()
        try:
            opened = aead.open(self.buf, self.incomingPacketSequence)
        except BadPacket as e:
            self.sendDisconnect(e.reason, str(e).encode())
            return None
        if opened is None:
            return None
        payload, used = opened
        self.buf = self.buf[used:]
        self.incomingPacketSequence += 1
        return payload

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        # Nothing received after this is acted on.
        self._disconnecting = True
        super().sendDisconnect(reason, desc)

    def _dispatch(self, packet: bytes, start: int, end: int) -> None:
        """
        Hand the message at C{packet[start:end]} (type byte first) on.
        """
        if end <= start:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"empty packet")
            return
        messageNum = packet[start]
        connection = self.connection
        if messageNum == MSG_CHANNEL_DATA and connection is not None and self.service is connection:
            if end - start < _CHANNEL_DATA_HEAD.size:
                self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"short channel data")
                return
            _, channel, length = _CHANNEL_DATA_HEAD.unpack_from(packet, start)
            dataStart = start + _CHANNEL_DATA_HEAD.size
            if dataStart + length > end:
                self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"channel data longer than its packet")
                return
            connection.channelDataReceived(channel, packet[dataStart : dataStart + length])
            return
        self.dispatchMessage(messageNum, packet[start + 1 : end])

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[None]:
        """
        Accept the relay only if the policy does; a failed Deferred makes Conch
        disconnect before anything is authenticated.
        """
        try:
            key = self.factory.credentials.hostKeyPolicy.verify(hostKey)
        except HostKeyMismatch as e:
            self.fail(TunnelError(f"host key verification failed: {e}", "host_key"))
            return defer.fail(e)
        self.hostKeyFingerprint = sha256Fingerprint(key)
        return defer.succeed(None)

    def connectionSecure(self) -> None:
        self.requestService(self.factory.makeUserAuth(self))

    def forwardGranted(self, port: int) -> None:
        """
        Called by the connection once the relay allocated C{port}.
        """
        if not self.ready.called:
            self.ready.callback(port)

    def fail(self, error: TunnelError) -> None:
        """
        Record why this connection cannot serve (the first reason wins) and
        fail C{ready}; whoever called this closes the connection.
        """
        if self._failure is None:
            self._failure = error
        if not self.ready.called:
            self.ready.errback(error)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.fail(
            TunnelError(
                f"relay disconnected: {description.decode('utf-8', 'replace')} (code {reasonCode})",
                "disconnected",
            )
        )
        super().receiveError(reasonCode, description)

    def connectionLost(self, reason: Failure | None = None) -> None:
        message = reason.getErrorMessage() if reason is not None else "connection lost"
        if self._failure is not None:
            message = str(self._failure)
        if not self.ready.called:
            self.ready.errback(TunnelError(f"connection to relay lost: {message}", "connection_lost"))
        super().connectionLost(reason)
        self.whenLost.callback(message)


class RelayTransportFactory(protocol.ClientFactory[RelayTransport]):
    """
    Builds L{RelayTransport}s.

    @ivar credentials: what the next connection logs in with (set before
        each attempt: a certificate may have been renewed since the last).
    @ivar makeUserAuth: given the transport, returns the user-auth service
        (wrapping the connection service) to request once keys are exchanged.
    """

    noisy = False

    def __init__(self, makeUserAuth: Callable[[RelayTransport], RelayUserAuth]) -> None:
        self.credentials: Credentials
        self.makeUserAuth = makeUserAuth
        self.protocol = RelayTransport
