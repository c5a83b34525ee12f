# -*- test-case-name: tests.unit.test_transport -*-
"""
The SSH transport to the relay (RFC 4253), client side: version exchange,
key exchange at any time from either side (with OpenSSH's strict key
exchange), the binary packet protocol, and the hand-off to user
authentication, once, and then to the connection service.

It is Conch's protocol, not Conch's class: Conch's C{SSHClientTransport}
calls C{connectionSecure} after every key exchange (so a re-key asked for
user authentication again, which other SSH servers answer by closing the
connection or swapping the service), negotiates a MAC even for an AEAD
cipher, has no strict key exchange, no AEAD ciphers and no EtM MACs, and
turns malformed input into tracebacks.  Conch still provides the user
authentication service, keys and signatures.

Everything the relay sends is untrusted: a malformed or unexpected message
ends the connection with one L{ProtocolError}, and reading stops while the
connection's own send buffer is over L{SEND_BUFFER_CAP}, so a relay that
floods requests and reads nothing cannot grow our memory.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh import keys
from twisted.conch.ssh.service import SSHService
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPullProducer, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import __version__, _twisted
from . import sockopts
from .errors import ProtocolError, TunnelError
from .hostkeys import HostKeyMismatch, fingerprint
from .interfaces import IConnectionService, IRelayTransport
from .kex import (
    CIPHER_PREFERENCE,
    HOST_KEY_PREFERENCE,
    KEX_PREFERENCE,
    KEY_AGREEMENTS,
    MAC_PREFERENCE,
    STRICT_CLIENT,
    KexInit,
    KeyAgreement,
    Negotiated,
    deriveKeys,
    negotiate,
)
from .packets import BadPacket, Packetizer, PlainPacketizer, makePacketizer
from .wire import Reader, escape, string, uint32

if TYPE_CHECKING:
    from .auth import Credentials

__all__ = ["RekeyPolicy", "RelayTransport", "RelayTransportFactory"]

MSG_DISCONNECT = 1
MSG_IGNORE = 2
MSG_UNIMPLEMENTED = 3
MSG_DEBUG = 4
MSG_SERVICE_REQUEST = 5
MSG_SERVICE_ACCEPT = 6
MSG_EXT_INFO = 7
MSG_KEXINIT = 20
MSG_NEWKEYS = 21
MSG_KEX_INIT = 30  # KEXDH_INIT, KEX_ECDH_INIT, KEX_HYBRID_INIT
MSG_KEX_REPLY = 31
MSG_USERAUTH_BANNER = 53
MSG_CHANNEL_DATA = 94

DISCONNECT_PROTOCOL_ERROR = 2
DISCONNECT_KEY_EXCHANGE_FAILED = 3
DISCONNECT_HOST_KEY_NOT_VERIFIABLE = 9
DISCONNECT_BY_APPLICATION = 11

#: Bytes read from the relay per system call.
READ_SIZE = 256 * 1024
#: Sealed bytes waiting in user space (Twisted's write buffer) below which
#: channel data is sealed and sent; above it, it waits unsealed in the
#: channels, where it can still be reordered (control messages first, one
#: packet per stream in turn).
SEND_LOW_WATER = 64 * 1024
#: Channel data sealed for one write when nothing waits: large writes cost
#: us and the relay fewer system calls; what the kernel does not take waits
#: here, and then nothing more is sealed until it drained.
SEND_BATCH = 256 * 1024
#: Our send buffer size past which we stop reading from the relay.
SEND_BUFFER_CAP = 4 * 1024 * 1024
#: Messages held during a key exchange, past which the relay is flooding.
HELD_DURING_KEX = 4096
#: How much of a read completes a packet left over from the read before,
#: tried first (sshd sends 32 KiB packets); see L{RelayTransport.dataReceived}.
_JOIN = 64 * 1024
#: Text before the relay's version line (RFC 4253 section 4.2 allows lines).
MAX_PREAMBLE = 16 * 1024
#: How long a closing connection may take to flush before it is aborted.
CLOSE_DEADLINE = 5.0

# Channel data (94) is parsed here, straight out of the plaintext.
_CHANNEL_DATA_HEAD = struct.Struct(">B2L")
_KEX_MESSAGES = frozenset([MSG_KEXINIT, MSG_NEWKEYS, *range(30, 50)])


class _Phase(enum.Enum):
    VERSION = "waiting for the relay's version"
    KEX = "first key exchange"
    SERVICE = "waiting for the ssh-userauth service"
    AUTH = "user authentication"
    CONNECTED = "connected"
    CLOSED = "closed"


class RekeyPolicy:
    """
    When the connector starts a key exchange itself: after C{limit} bytes in
    either direction, or C{interval} seconds (0: never by time).  The default
    limit is OpenSSH's: 2^32 blocks for 16-byte ciphers (64 GiB), 1 GiB for
    chacha20-poly1305.
    """

    def __init__(self, limit: int = 0, interval: float = 0.0) -> None:
        self.limit = limit
        self.interval = interval

    def bytesFor(self, cipher: bytes) -> int:
        default = (1 << 30) if cipher.startswith(b"chacha20") else (1 << 36)
        return min(self.limit, default) if self.limit else default


class _KeyExchange:
    """
    One key exchange in progress.

    @ivar ours: the KEXINIT we sent.
    @ivar theirs: the relay's, once received.
    @ivar negotiated: what the two agreed.
    @ivar agreement: our side of the key agreement.
    @ivar ignoreNext: the relay guessed its first kex packet wrong: drop it.
    @ivar keysOut: the packetizer to switch to after our NEWKEYS; C{keysIn} after theirs.
    @ivar sentNewKeys: our NEWKEYS is out; normal messages may flow again.
    """

    def __init__(self, ours: KexInit) -> None:
        self.ours = ours
        self.theirs: KexInit | None = None
        self.negotiated: Negotiated | None = None
        self.agreement: KeyAgreement | None = None
        self.ignoreNext = False
        self.keysIn: Packetizer | None = None
        self.sentNewKeys = False


@implementer(IPullProducer, IRelayTransport)
class RelayTransport(protocol.Protocol):
    """
    One SSH connection to the relay.

    @ivar factory: the L{RelayTransportFactory} that made this.
    @ivar ready: fires with the allocated remote port once the forward is
        granted, or fails with L{TunnelError} if it never is.
    @ivar whenLost: fires with a one-line reason when the connection ends.
    @ivar service: the running SSH service (user auth, then the connection).
    @ivar connection: the L{RelayConnection} once authentication succeeded.
    @ivar hostKeyFingerprint: the relay's verified host key, C{SHA256:...}.
    @ivar sessionID: the first exchange hash.
    @ivar negotiated: the algorithms in use.
    @ivar rekeys: key exchanges completed after the first.
    @ivar lastReceived: when bytes last arrived from the relay (liveness).
    @ivar relayVersion: the relay's version line, escaped.
    """

    ourVersion = f"SSH-2.0-incident_connector_{__version__}".encode()

    factory: RelayTransportFactory
    _log = Logger()

    def __init__(self) -> None:
        self.ready: defer.Deferred[int] = defer.Deferred()
        self.whenLost: defer.Deferred[str] = defer.Deferred()
        self.service: SSHService | None = None
        self.connection: IConnectionService | None = None
        self.hostKeyFingerprint: str | None = None
        self.sessionID: bytes | None = None
        self.negotiated: Negotiated | None = None
        self.rekeys = 0
        self.lastReceived = 0.0
        self.relayVersion = ""
        self._phase = _Phase.VERSION
        self._buffer = b""
        self._inbound: Packetizer = PlainPacketizer()
        self._outbound: Packetizer = PlainPacketizer()
        self._sequenceIn = 0
        self._sequenceOut = 0
        self._kex: _KeyExchange | None = None
        self._held: list[tuple[int, bytes]] = []
        self._hostKeyBlob: bytes | None = None
        self._ourVersionLine = self.ourVersion
        self._theirVersionLine = b""
        self._bytesOut = 0
        self._bytesIn = 0
        self._rekeyAfter = 1 << 36
        self._rekeyTimer: Any = None
        self._failure: TunnelError | None = None
        self._readingPaused = False
        self._closeTimer: Any = None
        self._lost = False
        self._firstKexDone = False
        self._strict = False
        #: Re-arms TCP_QUICKACK after each read (L{sockopts.quickAcker}).
        self._ackNow: Callable[[], None] | None = None

    # Connection life.

    def connectionMade(self) -> None:
        transport: Any = self.transport
        assert transport is not None
        if ITCPTransport.providedBy(transport):
            tcp: Any = transport
            tcp.setTcpNoDelay(True)
            tcp.setTcpKeepAlive(True)
            sock = sockopts.relaySocket(tcp)
            sockopts.setNotSentLowWater(sock)
            self._ackNow = sockopts.quickAcker(sock)
        _twisted.setReadSize(transport, READ_SIZE)
        # A pull producer: Twisted asks for more when its write buffer drains.
        transport.registerProducer(self, False)
        self.lastReceived = self.clock.seconds()
        transport.write(self._ourVersionLine + b"\r\n")
        self._startKeyExchange()

    @property
    def clock(self) -> Any:
        return self.factory.clock

    def dataReceived(self, data: bytes) -> None:
        """
        Open every whole packet in C{data}, in order.  Channel data goes
        straight to the connection (parsed out of the plaintext, copied once);
        everything else through L{_dispatch}.
        """
        if self._phase is _Phase.CLOSED:
            return
        self.lastReceived = self.clock.seconds()
        if self._ackNow is not None:
            self._ackNow()
        pending = self._buffer
        buffer, offset = data, 0
        connection = self.connection
        if connection is not None:
            connection.readStarted()
        try:
            if self._phase is _Phase.VERSION:
                buffer = pending + data
                offset = self._readVersion(buffer)
                if self._phase is _Phase.VERSION:
                    return
            elif pending:
                if len(data) > _JOIN:
                    # Complete the packet that straddled the last read from the
                    # front of this one, then go on in this read itself: joining
                    # the whole read to it would copy every byte once more.
                    buffer = pending + data[:_JOIN]
                    offset = self._openPackets(buffer, 0)
                    if offset >= len(pending):
                        buffer, offset = data, offset - len(pending)
                    else:  # a packet larger than _JOIN: join all
                        buffer = pending + data
                else:
                    buffer = pending + data
            offset = self._openPackets(buffer, offset)
        except BadPacket as e:
            self._protocolError(ProtocolError(f"the relay sent a bad packet: {e}", code=e.reason))
        except ProtocolError as e:
            self._protocolError(e)
        except (struct.error, IndexError, ValueError) as e:
            if self._phase is not _Phase.AUTH:
                # Not the relay's doing: the connector's own fault, with its traceback.
                self._log.failure("internal error acting on the relay's message")
                self._protocolError(ProtocolError(f"internal error acting on the relay's message: {e!r}", "internal"))
            else:
                # From Conch's user auth parsing a malformed message.
                self._protocolError(ProtocolError("the relay sent a malformed user-auth message"))
        finally:
            self._buffer = buffer[offset:] if offset else buffer
            if connection is not None:
                connection.readFinished()
        if self._phase is not _Phase.CLOSED:
            self._checkSendBuffer()
            if self._bytesIn > self._rekeyAfter and self._kex is None and self._phase is _Phase.CONNECTED:
                self._startKeyExchange()

    def _openPackets(self, buffer: bytes, offset: int) -> int:
        """
        Open and act on every whole packet in C{buffer} from C{offset};
        returns the offset of what is left (part of a packet, or nothing).
        """
        view = memoryview(buffer)
        while self._phase is not _Phase.CLOSED:
            # Per packet: NEWKEYS switches keys mid-buffer.
            opened = self._inbound.openPacket(view[offset:], self._sequenceIn)
            if opened is None:
                break
            plain, end, used = opened
            offset += used
            self._sequenceIn = (self._sequenceIn + 1) & 0xFFFFFFFF
            self._bytesIn += used
            self._dispatch(plain, end)
        return offset

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._phase = _Phase.CLOSED
        self._lost = True
        for timer in (self._rekeyTimer, self._closeTimer):
            if timer is not None and timer.active():
                timer.cancel()
        message = str(self._failure) if self._failure is not None else reason.getErrorMessage()
        if not self.ready.called:
            failure = self._failure or TunnelError(f"connection to relay lost: {message}", "connection_lost")
            self.ready.errback(failure)
        if self.service is not None:
            self.service.serviceStopped()
        self.whenLost.callback(message)

    # What the relay sends.

    def _readVersion(self, buffer: bytes) -> int:
        """
        Find the relay's version line; lines before it are allowed (RFC 4253
        section 4.2).  Returns the offset after it.
        """
        offset = 0
        while True:
            end = buffer.find(b"\n", offset)
            if end < 0:
                if len(buffer) > MAX_PREAMBLE:
                    raise ProtocolError("the relay sent no SSH version line (is this an SSH server?)")
                return 0
            line = buffer[offset:end].rstrip(b"\r")
            offset = end + 1
            if line.startswith(b"SSH-"):
                break
            if offset > MAX_PREAMBLE:
                raise ProtocolError("the relay sent no SSH version line (is this an SSH server?)")
        self._theirVersionLine = line
        self.relayVersion = escape(line, 120)
        if not (line.startswith(b"SSH-2.0-") or line.startswith(b"SSH-1.99-")):
            raise ProtocolError(f"the relay speaks an unsupported SSH version: {self.relayVersion}")
        self._phase = _Phase.KEX
        return offset

    def _dispatch(self, plain: bytes, end: int) -> None:
        """
        Act on the message at C{plain[1:end]} (its type byte first).
        """
        if end < 2:
            raise ProtocolError("the relay sent an empty message")
        messageType = plain[1]
        kex = self._kex
        if kex is not None and kex.theirs is not None and kex.negotiated is not None and kex.negotiated.strict:
            # Strict key exchange: during the first one, only its own messages.
            if not self._firstKexDone and messageType not in _KEX_MESSAGES and messageType != MSG_DISCONNECT:
                raise ProtocolError(
                    f"the relay sent message {messageType} during a strict key exchange", reason="negotiation"
                )
        if messageType == MSG_CHANNEL_DATA and self.connection is not None and self.service is self.connection:
            if end < 1 + _CHANNEL_DATA_HEAD.size:
                raise ProtocolError("the relay sent a malformed CHANNEL_DATA message")
            _, channel, length = _CHANNEL_DATA_HEAD.unpack_from(plain, 1)
            start = 1 + _CHANNEL_DATA_HEAD.size
            if start + length > end:
                raise ProtocolError("the relay sent a malformed CHANNEL_DATA message")
            self.connection.channelDataReceived(channel, memoryview(plain)[start : start + length])
            return
        message = plain[1:end]
        handler = self._handlers.get(messageType)
        if handler is not None:
            handler(self, message)
        elif 50 <= messageType <= 79:
            if self._phase is not _Phase.AUTH or self.service is None:
                raise ProtocolError(f"the relay sent user-auth message {messageType} outside authentication")
            self.service.packetReceived(messageType, message[1:])
        elif 80 <= messageType <= 127:
            if self._phase is not _Phase.CONNECTED or self.connection is None:
                raise ProtocolError(f"the relay sent connection message {messageType} before login")
            self.connection.packetReceived(messageType, message[1:])
        elif 20 <= messageType <= 49:
            raise ProtocolError(f"the relay sent key exchange message {messageType} out of turn")
        else:
            # RFC 4253 section 11.4: answer what we do not know.
            self.sendPacket(MSG_UNIMPLEMENTED, uint32((self._sequenceIn - 1) & 0xFFFFFFFF))

    def ssh_DISCONNECT(self, message: bytes) -> None:
        reader = Reader(message, "DISCONNECT", 1)
        code = reader.uint32()
        text = escape(reader.string())
        self._fail(TunnelError(f"relay disconnected: {text} (code {code})", "disconnected"))
        self.loseConnection()

    def ssh_IGNORE(self, message: bytes) -> None:
        pass

    def ssh_UNIMPLEMENTED(self, message: bytes) -> None:
        self._log.debug(
            "the relay did not understand our packet {sequence}", sequence=Reader(message, "UNIMPLEMENTED", 1).uint32()
        )

    def ssh_DEBUG(self, message: bytes) -> None:
        reader = Reader(message, "DEBUG", 1)
        reader.boolean()
        self._log.debug("relay debug message: {text}", text=escape(reader.string()))

    def ssh_SERVICE_REQUEST(self, message: bytes) -> None:
        raise ProtocolError("the relay asked the connector for a service (SERVICE_REQUEST)")

    def ssh_SERVICE_ACCEPT(self, message: bytes) -> None:
        if self._phase is not _Phase.SERVICE:
            raise ProtocolError("the relay sent SERVICE_ACCEPT although no service was requested")
        name = Reader(message, "SERVICE_ACCEPT", 1).string() if len(message) > 1 else b"ssh-userauth"
        if name != b"ssh-userauth":
            raise ProtocolError(f"the relay accepted service {escape(name)!r}, not ssh-userauth")
        self._phase = _Phase.AUTH
        auth = self.factory.makeUserAuth(self)
        self._startService(auth)

    def ssh_EXT_INFO(self, message: bytes) -> None:
        # We do not advertise ext-info-c; a relay that sends it anyway is ignored.
        pass

    def ssh_USERAUTH_BANNER(self, message: bytes) -> None:
        if self._phase is not _Phase.AUTH:
            raise ProtocolError("the relay sent a banner outside authentication")
        self._log.info("relay banner: {text}", text=escape(Reader(message, "USERAUTH_BANNER", 1).string(), 500))

    def ssh_KEXINIT(self, message: bytes) -> None:
        kex = self._kex
        if kex is None:
            if self._phase is _Phase.VERSION or self.sessionID is None:
                raise ProtocolError("the relay sent KEXINIT out of turn")
            # The relay starts a re-key: answer with ours.
            kex = self._startKeyExchange()
        elif kex.theirs is not None:
            raise ProtocolError("the relay sent a second KEXINIT during a key exchange")
        theirs = KexInit.parse(message)
        initial = self.sessionID is None
        negotiated = negotiate(kex.ours, theirs, initial)
        if negotiated.strict and self._sequenceIn != 1:
            raise ProtocolError(
                "strict key exchange: the relay's KEXINIT was not its first packet", reason="negotiation"
            )
        if initial and negotiated.strict:
            self._log.debug("strict key exchange with the relay")
        kex.theirs = theirs
        kex.negotiated = negotiated
        if theirs.firstFollows and (theirs.kex[:1] != kex.ours.kex[:1] or theirs.hostKeys[:1] != kex.ours.hostKeys[:1]):
            kex.ignoreNext = True
        kex.agreement = KEY_AGREEMENTS[negotiated.kex]()
        self._sendNow(MSG_KEX_INIT, kex.agreement.initPayload())

    def _kexReply(self, message: bytes) -> None:
        kex = self._kex
        if kex is None or kex.agreement is None or kex.negotiated is None or kex.theirs is None or kex.sentNewKeys:
            raise ProtocolError("the relay sent a key exchange reply out of turn")
        if kex.ignoreNext:
            kex.ignoreNext = False
            return
        reader = Reader(message, "key exchange reply", 1)
        hostKeyBlob = reader.string()
        serverPublic = kex.agreement.serverPublic(reader)
        signature = reader.string()
        negotiated = kex.negotiated
        key = self._verifyHostKey(hostKeyBlob, negotiated.hostKey)
        secret = kex.agreement.finish(serverPublic)
        parts = [string(self._ourVersionLine), string(self._theirVersionLine)]
        parts += [string(kex.ours.payload), string(kex.theirs.payload), string(hostKeyBlob)]
        exchangeHash = kex.agreement.exchangeHash(parts, serverPublic, secret)
        signatureType = Reader(signature, "signature").string()
        if signatureType != negotiated.hostKey or not key.verify(signature, exchangeHash):
            raise ProtocolError("the relay's key exchange signature does not verify", reason="negotiation", code=3)
        if self.sessionID is None:
            self.sessionID = exchangeHash
        keysOut, keysIn = deriveKeys(kex.agreement.hashName, secret, exchangeHash, self.sessionID, negotiated)
        outbound = makePacketizer(negotiated.cipherOut, negotiated.macOut, keysOut.key, keysOut.iv, keysOut.mac)
        kex.keysIn = makePacketizer(negotiated.cipherIn, negotiated.macIn, keysIn.key, keysIn.iv, keysIn.mac)
        self._sendNow(MSG_NEWKEYS, b"")
        self._outbound = outbound
        if negotiated.strict or self._strict:
            self._sequenceOut = 0
        kex.sentNewKeys = True
        self._bytesOut = 0
        held, self._held = self._held, []
        for messageType, payload in held:
            self.sendPacket(messageType, payload)

    def ssh_NEWKEYS(self, message: bytes) -> None:
        kex = self._kex
        if kex is None or kex.keysIn is None or kex.negotiated is None:
            raise ProtocolError("the relay sent NEWKEYS out of turn")
        if len(message) != 1:
            raise ProtocolError("the relay sent a malformed NEWKEYS message")
        self._inbound = kex.keysIn
        if kex.negotiated.strict or self._strict:
            self._strict = True
            self._sequenceIn = 0
        self._bytesIn = 0
        self.negotiated = kex.negotiated
        self._kex = None
        self._rekeyAfter = self.factory.rekey.bytesFor(kex.negotiated.cipherOut)
        self._scheduleRekey()
        if not self._firstKexDone:
            # The first key exchange, and only the first, leads to user auth.
            self._firstKexDone = True
            self._phase = _Phase.SERVICE
            self._sendNow(MSG_SERVICE_REQUEST, string(b"ssh-userauth"))
        else:
            self.rekeys += 1
            self._log.debug("re-keyed with the relay ({count})", count=self.rekeys)
        if self.connection is not None:
            self.connection.sendBufferDrained()

    _handlers: dict[int, Callable[[RelayTransport, bytes], None]] = {
        MSG_DISCONNECT: ssh_DISCONNECT,
        MSG_IGNORE: ssh_IGNORE,
        MSG_UNIMPLEMENTED: ssh_UNIMPLEMENTED,
        MSG_DEBUG: ssh_DEBUG,
        MSG_SERVICE_REQUEST: ssh_SERVICE_REQUEST,
        MSG_SERVICE_ACCEPT: ssh_SERVICE_ACCEPT,
        MSG_EXT_INFO: ssh_EXT_INFO,
        MSG_KEXINIT: ssh_KEXINIT,
        MSG_NEWKEYS: ssh_NEWKEYS,
        MSG_KEX_REPLY: _kexReply,
        MSG_USERAUTH_BANNER: ssh_USERAUTH_BANNER,
    }

    def _verifyHostKey(self, blob: bytes, algorithm: bytes) -> keys.Key:
        """
        The relay's host key, if the policy trusts it; on a re-key it must be
        the key the connection started with.
        """
        try:
            key = keys.Key.fromString(blob, type="blob")
        except (keys.BadKeyError, ValueError, struct.error, IndexError):
            raise ProtocolError("the relay sent a malformed host key", reason="host_key") from None
        expected = b"ssh-rsa" if algorithm.startswith(b"rsa-sha2-") else algorithm
        if key.sshType() != expected:
            raise ProtocolError(
                f"the relay sent a {escape(key.sshType())} host key for {algorithm.decode()}", reason="host_key"
            )
        if self._hostKeyBlob is not None:
            if blob != self._hostKeyBlob:
                raise ProtocolError(
                    "host key verification failed: the relay's host key changed during a re-key",
                    reason="host_key",
                    code=DISCONNECT_HOST_KEY_NOT_VERIFIABLE,
                )
            return key
        try:
            self.factory.credentials.hostKeyPolicy.verify(blob)
        except HostKeyMismatch as e:
            raise ProtocolError(
                f"host key verification failed: {e}", reason="host_key", code=DISCONNECT_HOST_KEY_NOT_VERIFIABLE
            ) from None
        self._hostKeyBlob = blob
        self.hostKeyFingerprint = fingerprint(key)
        return key

    # What we send.

    def _startKeyExchange(self) -> _KeyExchange:
        """
        Send our KEXINIT (first, or to re-key); hold back every message that
        is not part of the exchange until our NEWKEYS is out.
        """
        kexList = list(KEX_PREFERENCE)
        if self.sessionID is None:
            kexList.append(STRICT_CLIENT)
        hostKeys = self.factory.credentials.hostKeyPolicy.preferredAlgorithms(HOST_KEY_PREFERENCE)
        ours = KexInit.build(kexList, hostKeys, self.factory.ciphers, MAC_PREFERENCE)
        self._kex = _KeyExchange(ours)
        self._sendNow(MSG_KEXINIT, ours.payload[1:])
        if self._rekeyTimer is not None and self._rekeyTimer.active():
            self._rekeyTimer.cancel()
        return self._kex

    def _scheduleRekey(self) -> None:
        interval = self.factory.rekey.interval
        if interval > 0:
            self._rekeyTimer = self.clock.callLater(interval, self._rekeyByTime)

    def _rekeyByTime(self) -> None:
        self._rekeyTimer = None
        if self._kex is None and self._phase is _Phase.CONNECTED:
            self._startKeyExchange()

    @property
    def canSendData(self) -> bool:
        """
        Channel data may be sealed now: no key exchange holds it back.
        """
        kex = self._kex
        return self._phase is _Phase.CONNECTED and (kex is None or kex.sentNewKeys)

    def sendRoom(self) -> int:
        """
        How many bytes of channel data to seal now: L{SEND_BATCH} when
        nothing waits in user space, else up to L{SEND_LOW_WATER} waiting, so
        the queue stays where it can be reordered.
        """
        if self.transport is None:
            return 0
        pending = _twisted.pendingBytes(self.transport)
        return SEND_BATCH if pending == 0 else SEND_LOW_WATER - pending

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        """
        Send one message now: control and service messages go out ahead of
        any channel data not yet sealed.  During a key exchange, messages that
        are not part of it wait until our NEWKEYS is out.
        """
        if self._phase is _Phase.CLOSED:
            return
        kex = self._kex
        if kex is not None and not kex.sentNewKeys and not _allowedDuringKex(messageType):
            self._held.append((messageType, payload))
            if len(self._held) > HELD_DURING_KEX:
                self._protocolError(ProtocolError("the relay flooded requests during a key exchange"))
            return
        self._sendNow(messageType, payload)

    def sendChannelData(self, packets: Sequence[tuple[int, bytes | memoryview]]) -> None:
        """
        Send channel data: each C{(recipient channel, data)} as one
        C{SSH_MSG_CHANNEL_DATA}, all with one write (each piece copied once,
        into its packet's plaintext).  Only while L{canSendData}.
        """
        pieces: list[bytes] = []
        outbound = self._outbound
        for channel, data in packets:
            head = _CHANNEL_DATA_HEAD.pack(MSG_CHANNEL_DATA, channel, len(data))
            sealed = outbound.sealParts(head, data, self._sequenceOut)
            self._sequenceOut = (self._sequenceOut + 1) & 0xFFFFFFFF
            pieces.extend(sealed)
        self._write(pieces)

    def _sendNow(self, messageType: int, payload: bytes) -> None:
        pieces = self._outbound.sealParts(bytes((messageType,)), payload, self._sequenceOut)
        self._sequenceOut = (self._sequenceOut + 1) & 0xFFFFFFFF
        self._write(list(pieces))

    def _write(self, pieces: list[bytes]) -> None:
        if self.transport is None:
            return
        self._bytesOut += sum(map(len, pieces))
        _twisted.sendNow(self.transport, pieces)
        if self._bytesOut > self._rekeyAfter and self._kex is None and self._phase is _Phase.CONNECTED:
            self._startKeyExchange()

    def sendUnimplemented(self) -> None:
        # Conch's services call this for messages they do not know.
        self.sendPacket(MSG_UNIMPLEMENTED, uint32((self._sequenceIn - 1) & 0xFFFFFFFF))

    # IPullProducer, for the relay's TCP connection: its buffer drained.

    def resumeProducing(self) -> None:
        if self._readingPaused and self.transport is not None:
            self._readingPaused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        if self.connection is not None:
            self.connection.sendBufferDrained()

    def stopProducing(self) -> None:
        pass

    def _checkSendBuffer(self) -> None:
        """
        Stop reading from the relay while our replies to it pile up unread:
        memory stays bounded whatever it sends.
        """
        transport: Any = self.transport
        if not self._readingPaused and transport is not None and _twisted.pendingBytes(transport) > SEND_BUFFER_CAP:
            self._readingPaused = True
            transport.pauseProducing()

    # Services.

    def setService(self, service: SSHService) -> None:
        """
        Called by the user auth service once the relay accepted us: the
        connection service takes over.
        """
        if self._phase is not _Phase.AUTH:
            raise ProtocolError("a service was started out of turn")
        self._phase = _Phase.CONNECTED
        if IConnectionService.providedBy(service):
            self.connection = service
        self._startService(service)

    def _startService(self, service: SSHService) -> None:
        if self.service is not None:
            self.service.serviceStopped()
        self.service = service
        service.transport = self  # type: ignore[assignment]
        service.serviceStarted()

    # Ending.

    def forwardGranted(self, port: int) -> None:
        """
        Called by the connection once the relay allocated C{port}.
        """
        if not self.ready.called:
            self.ready.callback(port)

    @property
    def failure(self) -> TunnelError | None:
        """
        Why this connection failed or ended, if it did for a known reason.
        """
        return self._failure

    @property
    def phase(self) -> str:
        """
        How far the connection got, for operators.
        """
        if self._phase is _Phase.CONNECTED and not self.ready.called:
            return "waiting for the forward"
        return self._phase.value

    def fail(self, error: TunnelError) -> None:
        """
        Record why this connection cannot serve (the first reason wins) and
        fail C{ready}; whoever called this closes the connection.
        """
        self._fail(error)

    def _fail(self, error: TunnelError) -> None:
        if self._failure is None:
            self._failure = error
        if not self.ready.called:
            self.ready.errback(error)

    def sendDisconnect(self, reason: int, description: bytes) -> None:
        """
        Say why, then close (Conch's services call this too).
        """
        if self._phase is _Phase.CLOSED:
            return
        self._kex = None
        self._sendNow(MSG_DISCONNECT, uint32(reason) + string(description) + string(b""))
        self._phase = _Phase.CLOSED
        self.loseConnection()

    def _protocolError(self, error: ProtocolError) -> None:
        self._fail(error)
        self.sendDisconnect(error.code, str(error).encode("utf-8", "replace")[:200])

    def loseConnection(self) -> None:
        """
        Close once our DISCONNECT is flushed, or after L{CLOSE_DEADLINE}
        seconds if the relay does not read it.
        """
        self._phase = _Phase.CLOSED
        transport: Any = self.transport
        if transport is None or self._lost:
            # Gone already (called from a whenLost or ready callback): no close deadline to arm.
            return
        transport.unregisterProducer()
        transport.loseConnection()
        if self._closeTimer is None:
            self._closeTimer = self.clock.callLater(CLOSE_DEADLINE, transport.abortConnection)

    def abortConnection(self) -> None:
        self._phase = _Phase.CLOSED
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()


def _allowedDuringKex(messageType: int) -> bool:
    """
    RFC 4253 section 7.1: between KEXINIT and NEWKEYS only transport-layer
    generic messages (1 to 19, not the service ones) and key exchange ones.
    """
    if 1 <= messageType <= 19:
        return messageType not in (MSG_SERVICE_REQUEST, MSG_SERVICE_ACCEPT, MSG_EXT_INFO)
    return messageType in _KEX_MESSAGES and messageType != MSG_KEXINIT


class RelayTransportFactory(protocol.ClientFactory):
    """
    Builds L{RelayTransport}s.

    @ivar clock: schedules re-keys and close deadlines.
    @ivar credentials: what the next connection logs in with (set before
        each attempt: a certificate may have been renewed since the last).
    @ivar makeUserAuth: given the transport, returns the user-auth service
        (wrapping the connection service) to start once the relay accepts it.
    @ivar rekey: when the connector re-keys on its own.
    @ivar ciphers: the ciphers offered, best first.
    """

    noisy = False
    protocol = RelayTransport  # type: ignore[assignment]

    def __init__(
        self,
        clock: Any,
        makeUserAuth: Callable[[RelayTransport], SSHService],
        rekey: RekeyPolicy | None = None,
        ciphers: Sequence[bytes] = CIPHER_PREFERENCE,
    ) -> None:
        self.clock = clock
        self.credentials: Credentials
        self.makeUserAuth = makeUserAuth
        self.rekey = rekey or RekeyPolicy()
        self.ciphers = list(ciphers)
