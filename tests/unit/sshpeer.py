"""
An in-memory relay for unit tests, built from Conch's own SSH *server*: an
implementation of the protocol independent of ours, pumped through
L{twisted.test.iosim}.  It accepts any public key, grants C{tcpip-forward}
(port 4242), and records what it saw.
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import channel as channel_
from twisted.conch.ssh import connection, forwarding, keys, service, transport
from twisted.conch.ssh.common import NS, getNS
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from incident_connector.credentials import Credentials
from incident_connector.metrics import ConnectorMetrics
from incident_connector.tunnel.auth import RelayUserAuth
from incident_connector.tunnel.channel import ForwardedChannel
from incident_connector.tunnel.connection import RelayConnection
from incident_connector.tunnel.interfaces import IStreamProtocol
from incident_connector.tunnel.transport import RekeyPolicy, RelayTransport, RelayTransportFactory

HOST_KEY = keys.Key(ed25519.Ed25519PrivateKey.generate())
USER_KEY = keys.Key(ed25519.Ed25519PrivateKey.generate())
FORWARD_PORT = 4242


class PeerConnection(connection.SSHConnection):
    """
    The relay's connection service: grants the forward, answers keepalives
    with failure (as OpenSSH does), records global requests.
    """

    def __init__(self) -> None:
        super().__init__()
        self.globalRequests: list[bytes] = []
        #: Give channels no more window (Conch re-opens it on every packet).
        self.holdWindows = False
        #: Called before answering each global or channel request (a test
        #: advances its clock there: the answer "took" that long).
        self.beforeAnswer: Any = None
        #: Channel requests received, by name; while a list, where their
        #: answers wait (see PeerChannel.requestReceived).
        self.channelRequests: list[bytes] = []
        self.holdAnswers: list[Any] | None = None

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        if not self.holdWindows:
            super().adjustWindow(channel, bytesToAdd)

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> Any:
        self.globalRequests.append(requestType)
        if self.beforeAnswer is not None:
            self.beforeAnswer()
        if requestType == b"tcpip-forward":
            return 1, struct.pack(">L", FORWARD_PORT)
        if requestType == b"cancel-tcpip-forward":
            return 1
        return 0


class PeerUserAuth(service.SSHService):
    """
    Accepts any public key: PK_OK to a query, SUCCESS to a signed request.
    """

    name = b"ssh-userauth"
    protocolMessages = {50: "MSG_USERAUTH_REQUEST"}

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> None:
        _user, _service, method, rest = getNS(packet, 3)
        if method == b"publickey":
            signed = rest[0]
            algorithm, blob, _ = getNS(rest[1:], 2)
            if signed:
                self.transport.sendPacket(52, b"")
                self.transport.setService(self.transport.factory.makeConnection())
            else:
                self.transport.sendPacket(60, NS(algorithm) + NS(blob))
            return
        self.transport.sendPacket(51, NS(b"publickey") + b"\x00")


class PeerTransport(transport.SSHServerTransport):
    supportedPublicKeys = [b"ssh-ed25519"]

    def __init__(self) -> None:
        self.seen: list[int] = []
        #: (recipient channel, data length) of every CHANNEL_DATA, in order.
        self.data: list[tuple[int, int]] = []

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.seen.append(messageNum)
        if messageNum == 94:
            self.data.append(struct.unpack(">2L", payload[:8]))
        if messageNum == 92 and struct.unpack(">L", payload[:4])[0] >= 1000:
            return  # the refusal of a channel a test opened by hand
        super().dispatchMessage(messageNum, payload)


class PeerFactory:
    publicKeys = {b"ssh-ed25519": HOST_KEY.public()}
    privateKeys = {b"ssh-ed25519": HOST_KEY}

    def __init__(self) -> None:
        self.connections: list[PeerConnection] = []

    def getService(self, transport: Any, name: bytes) -> Any:
        return {b"ssh-userauth": PeerUserAuth}.get(name)

    def getDHPrime(self, bits: int) -> Any:
        raise NotImplementedError

    def makeConnection(self) -> PeerConnection:
        peer = PeerConnection()
        self.connections.append(peer)
        return peer


class AcceptAllHostKeys:
    def preferredAlgorithms(self, offered: list[bytes]) -> list[bytes]:
        return list(offered)

    def verify(self, blob: bytes) -> keys.Key:
        return keys.Key.fromString(blob)


class Pair:
    """
    Our client transport and a Conch server, joined in memory.

    @ivar client: our L{RelayTransport}.
    @ivar server: the Conch L{PeerTransport}.
    @ivar pump: moves bytes between them (C{pump.flush()}).
    @ivar clock: the client's clock.
    @ivar connection: our L{RelayConnection} once logged in.
    @ivar streams: the streams the connection built, in order.
    """

    def __init__(
        self,
        makeStream: Any = None,
        serverCiphers: list[bytes] | None = None,
        serverMACs: list[bytes] | None = None,
        serverKex: list[bytes] | None = None,
        rekey: RekeyPolicy | None = None,
        keepaliveInterval: float = 0.0,
        server: PeerTransport | None = None,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.metrics = ConnectorMetrics()
        self.streams: list[Any] = []
        self.connection: RelayConnection | None = None

        def build(channel: ForwardedChannel) -> IStreamProtocol:
            stream = (makeStream or _NullStream)(channel)
            self.streams.append(stream)
            return stream  # type: ignore[no-any-return]

        def makeUserAuth(transport: RelayTransport) -> RelayUserAuth:
            self.connection = RelayConnection(
                build, self.clock, self.metrics, keepaliveInterval=keepaliveInterval, keepaliveCount=2
            )
            return RelayUserAuth(b"connector", self.connection, USER_KEY)

        factory = RelayTransportFactory(self.clock, makeUserAuth, rekey)
        factory.credentials = Credentials("connector", USER_KEY, None, AcceptAllHostKeys())  # type: ignore[arg-type]
        self.client = factory.buildProtocol(None)
        self.peerFactory = PeerFactory()
        self.server = server or PeerTransport()
        self.server.factory = self.peerFactory  # type: ignore[assignment]
        if serverCiphers:
            self.server.supportedCiphers = serverCiphers
        if serverMACs:
            self.server.supportedMACs = serverMACs
        if serverKex:
            self.server.supportedKeyExchanges = serverKex
        self.serverIO = iosim.FakeTransport(self.server, True)
        self.clientIO = iosim.FakeTransport(self.client, False)
        self.pump = iosim.connect(self.server, self.serverIO, self.client, self.clientIO, greet=False)

    def flush(self) -> None:
        self.pump.flush()

    @property
    def peer(self) -> PeerConnection:
        return self.peerFactory.connections[-1]


class _NullStream:
    def __init__(self, channel: ForwardedChannel) -> None:
        self.channel = channel
        self.received: list[bytes] = []
        self.eof = False
        self.lost: Any = None

    def makeConnection(self, transport: Any) -> None:
        # Ready at once, as a stream is once its destination accepted: the
        # window grows from the opening window to the connection's.
        transport.resumeProducing()

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def dataSequenceReceived(self, data: list[bytes]) -> None:
        self.received.extend(data)

    def readConnectionLost(self) -> None:
        self.eof = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason


class PeerChannel(channel_.SSHChannel):
    """
    The relay's end of one C{forwarded-tcpip} channel: records what the
    connector sends.
    """

    name = b"forwarded-tcpip"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.received = b""
        self.eof = False
        self.isOpen = False
        self.isClosed = False

    def channelOpen(self, specificData: bytes) -> None:
        self.isOpen = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def eofReceived(self) -> None:
        self.eof = True

    def closed(self) -> None:
        self.isClosed = True

    def requestReceived(self, requestType: bytes, data: bytes) -> Any:
        """
        Refuse every request, as OpenSSH does on a C{forwarded-tcpip}
        channel; recorded in the connection's C{channelRequests}, after its
        C{beforeAnswer}; while its C{holdAnswers} is a list, the answer
        waits there (a Deferred to fire with 0).
        """
        conn: Any = self.conn
        conn.channelRequests.append(requestType)
        if conn.beforeAnswer is not None:
            conn.beforeAnswer()
        if conn.holdAnswers is not None:
            answer: defer.Deferred[int] = defer.Deferred()
            conn.holdAnswers.append(answer)
            return answer
        return 0


def openForwarded(peer: PeerConnection, window: int = 1 << 21, maxPacket: int = 32768) -> PeerChannel:
    """
    Open a C{forwarded-tcpip} channel from the relay, as sshd does for each
    connection to the forwarded port.
    """
    channel = PeerChannel(localWindow=window, localMaxPacket=maxPacket)
    data = forwarding.packOpen_forwarded_tcpip(("127.0.0.1", FORWARD_PORT), ("127.0.0.1", 50000))
    peer.openChannel(channel, data)
    return channel
