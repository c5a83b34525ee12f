# -*- test-case-name: tests.unit.test_relay_transport -*-
"""
The relay's SSH transport: Conch's server transport with OpenSSH's strict key
exchange (C{kex-strict-*-v00@openssh.com}), the fix for the Terrapin prefix
truncation attack (CVE-2023-48795), which Conch 26.10 does not have.

We advertise C{kex-strict-s-v00@openssh.com}.  When the client's first
C{KEXINIT} offers C{kex-strict-c-v00@openssh.com}:

  - that C{KEXINIT} must have been the first packet the client sent;
  - until the first key exchange ends, any message that is not part of it
    (C{IGNORE}, C{DEBUG}, a service request...) drops the connection;
  - after every C{NEWKEYS}, both packet sequence numbers restart at 0: the
    outgoing one once ours is sent, the incoming one once theirs is received.

Conch internals this relies on, each used once below:
C{supportedKeyExchanges} (the list offered in our KEXINIT, which the factory
sets on each connection before C{connectionMade}),
C{getPacket} (called by C{dataReceived} until it returns L{None}),
C{dispatchMessage} (called once per decrypted packet),
C{ssh_KEXINIT} and C{ssh_NEWKEYS} (the handlers of those messages),
C{sendPacket} (writes a packet at once unless a key exchange holds it back),
C{outgoingPacketSequence} and C{incomingPacketSequence} (the counters that go
into each MAC; C{getPacket} has already counted a packet when it is dispatched),
and C{sendDisconnect}.
"""

from __future__ import annotations

from twisted.conch.ssh import transport
from twisted.conch.ssh.common import getNS
from twisted.logger import Logger

__all__ = ["KEX_STRICT_CLIENT", "KEX_STRICT_SERVER", "StrictKexServerTransport"]

_log = Logger()

KEX_STRICT_CLIENT = b"kex-strict-c-v00@openssh.com"
KEX_STRICT_SERVER = b"kex-strict-s-v00@openssh.com"

# What may arrive between the client's first KEXINIT and its NEWKEYS: the
# method-specific key exchange messages (30-49, RFC 4253 section 7), NEWKEYS,
# and DISCONNECT, which ends the connection anyway.
_KEX_METHOD_MESSAGES = range(30, 50)


class StrictKexServerTransport(transport.SSHServerTransport):
    """
    C{SSHServerTransport} with strict key exchange.

    @ivar strictKex: the client asked for strict key exchange in its first KEXINIT.
    """

    strictKex = False
    _packetsReceived = 0
    _firstKexDone = False
    _dropped = False

    def connectionMade(self) -> None:
        # The factory has just set this connection's list of key exchanges.
        # The marker is a pseudo-algorithm: it is never negotiated, since a
        # client offers the "-c-" name, never this one.
        self.supportedKeyExchanges = [*self.supportedKeyExchanges, KEX_STRICT_SERVER]
        super().connectionMade()

    def getPacket(self) -> bytes | None:
        if self._dropped:
            return None  # ends dataReceived's loop: nothing more is read after we disconnected
        return super().getPacket()

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self._packetsReceived += 1
        if self.strictKex and not self._firstKexDone and not self._partOfKex(messageNum):
            self._violation(f"unexpected message {messageNum} during the first key exchange")
            return
        super().dispatchMessage(messageNum, payload)

    @staticmethod
    def _partOfKex(messageNum: int) -> bool:
        return messageNum in (transport.MSG_NEWKEYS, transport.MSG_DISCONNECT) or messageNum in _KEX_METHOD_MESSAGES

    def ssh_KEXINIT(self, packet: bytes) -> None:
        if not self._firstKexDone:
            if self.strictKex:
                self._violation("a second KEXINIT during the first key exchange")
                return
            # The cookie is 16 bytes; the client's key exchange names come first after it.
            kexAlgorithms = getNS(packet[16:])[0].split(b",")
            self.strictKex = KEX_STRICT_CLIENT in kexAlgorithms
            if self.strictKex and self._packetsReceived != 1:
                self._violation("KEXINIT was not the first packet")
                return
        super().ssh_KEXINIT(packet)

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        super().sendPacket(messageType, payload)
        # NEWKEYS is never held back during a key exchange, so it is sent now.
        if messageType == transport.MSG_NEWKEYS and self.strictKex:
            self.outgoingPacketSequence = 0

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        super().ssh_NEWKEYS(packet)
        self._firstKexDone = True
        if self.strictKex:
            self.incomingPacketSequence = 0

    def _violation(self, what: str) -> None:
        peer = self.transport.getPeer() if self.transport is not None else None
        _log.warn("strict key exchange violated by {peer}: {what}; disconnecting", peer=peer, what=what)
        self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, f"strict KEX violation: {what}".encode())

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self._dropped = True
        super().sendDisconnect(reason, desc)
