"""
An SSH relay (Conch) that plays a hostile or buggy server, one case per run,
so that tests can watch how the connector copes.  Run by
L{relays.HostileRelay}:

    python hostile_relay.py --case CASE --port P --host-key KEY
        --authorized-keys FILE --log FILE [--times N] [--hangup-after S]

It lets in the keys in FILE (any user name) and grants C{tcpip-forward} on a
127.0.0.1 port, opening a C{forwarded-tcpip} channel for every connection to
it, like sshd.  The first C{--times} connections (default 1) play CASE;
later ones behave.  With C{--hangup-after S} it drops a connection S seconds
after playing its case, if the connector has not left by then.  It offers
strict key exchange (C{kex-strict-s-v00@openssh.com}) and keeps its rules
(sequence numbers restart at every NEWKEYS), except in case C{nonstrict}.

Cases, each played once the connector logged in and got its forward unless
said otherwise:

  - C{flood}: stop reading the socket, and send global requests with
    want-reply as fast as the connector takes them;
  - C{maxpacket0}: open a C{forwarded-tcpip} channel with maximum packet
    size 0, and send a SOCKS5 greeting on it if it is confirmed, then a
    barrier (below);
  - C{unrequested-success}: send C{SSH_MSG_REQUEST_SUCCESS} nobody asked for;
  - C{service-accept}: send C{SSH_MSG_SERVICE_ACCEPT} again;
    (after either, a barrier: a global request with want-reply, whose answer
    is logged as "CASE: barrier answered"; the connector handles messages in
    order, so by then it has done whatever it does about the case);
  - C{unknown-channel}: open 500 channels of a type nobody knows;
  - C{disconnect-escapes}: send C{SSH_MSG_DISCONNECT} whose text has
    newlines, a forged log line, terminal escape sequences and 10 KB of text;
  - C{no-port}: grant C{tcpip-forward} for port 0 without the port;
  - C{strict-ignore}: send C{SSH_MSG_IGNORE} right after its first KEXINIT
    (before the first NEWKEYS), which a strict-kex client must refuse;
  - C{nonstrict}: an ordinary server without strict key exchange.

Everything it does and sees goes to the log, one line each, under the
namespace C{hostile}: C{connection N ...: CASE}, C{played CASE: ...},
C{client disconnected: code C: TEXT}, C{connection N lost ...}; Conch's own
warnings and any traceback go there too.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path
from typing import Any, cast

from twisted.conch import avatar, interfaces
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.ssh import channel, common, connection, factory, forwarding, keys, transport, userauth
from twisted.cred import portal
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTCP, ITCPTransport
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

CASES = (
    "flood",
    "maxpacket0",
    "unrequested-success",
    "service-accept",
    "unknown-channel",
    "disconnect-escapes",
    "no-port",
    "strict-ignore",
    "nonstrict",
)
STRICT_CLIENT = b"kex-strict-c-v00@openssh.com"
STRICT_SERVER = b"kex-strict-s-v00@openssh.com"
#: Channels opened by C{unknown-channel}.
UNKNOWN_CHANNELS = 500
UNKNOWN_CHANNEL_TYPE = b"x-hostile-unknown@example.invalid"
#: Global requests sent per reactor turn by C{flood}.
FLOOD_BATCH = 256
#: What C{disconnect-escapes} says: a forged log line after a newline,
#: terminal escapes (colour, window title, cursor movement, a bell), 10 KB.
HOSTILE_DISCONNECT_TEXT = (
    b"goodbye\r\nFORGED LOG LINE: Allocated port 1 for remote forward to socks\n"
    b"\x1b[31mred\x1b[0m \x1b]0;hostile title\x07 \x1b[2J\x1b[H\x1b[1000D" + b"A" * 10_000
)

log = Logger(namespace="hostile")


def _connected(tcp: object) -> bool:
    """
    Whether C{tcp}, a transport or L{None}, is still connected.
    """
    return bool(getattr(tcp, "connected", False))


class HostileTransport(transport.SSHServerTransport):
    """
    One client connection.

    @ivar number: this connection's number, from 1.
    @ivar case: the case this connection plays, or L{None} to behave.
    @ivar strict: strict key exchange is on (we offered it and the client did).
    @ivar newKeysReceived: NEWKEYS messages received so far.
    """

    factory: HostileFactory

    def connectionMade(self) -> None:
        self.number = self.factory.nextNumber()
        self.case = self.factory.case if self.number <= self.factory.times else None
        self.strict = False
        self.newKeysReceived = 0
        self._firstKexInit = True
        peer = self.transport.getPeer() if self.transport is not None else None
        log.info("connection {number} from {peer}: {case}", number=self.number, peer=peer, case=self.case or "behaving")
        if self.factory.case != "nonstrict":
            self.supportedKeyExchanges = [*self.supportedKeyExchanges, STRICT_SERVER]
        super().connectionMade()  # sends the version line and KEXINIT
        if self.case == "strict-ignore":
            self.sendPacket(transport.MSG_IGNORE, common.NS(b"before the first NEWKEYS"))
            log.info("played strict-ignore: SSH_MSG_IGNORE sent after KEXINIT, before NEWKEYS")

    def ssh_KEXINIT(self, packet: bytes) -> Any:
        if self._firstKexInit:
            self._firstKexInit = False
            kexAlgorithms = common.getNS(packet[16:])[0].split(b",")
            self.strict = STRICT_SERVER in self.supportedKeyExchanges and STRICT_CLIENT in kexAlgorithms
            log.info("client KEXINIT: strict kex {state}", state="on" if self.strict else "off")
        return super().ssh_KEXINIT(packet)

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        super().sendPacket(messageType, payload)
        if messageType == transport.MSG_NEWKEYS and self.strict:
            # Strict kex: sequence numbers restart after every NEWKEYS.
            self.outgoingPacketSequence = 0

    def ssh_NEWKEYS(self, packet: bytes) -> Any:
        if self.strict:
            self.incomingPacketSequence = 0
        self.newKeysReceived += 1
        log.info("NEWKEYS received ({count})", count=self.newKeysReceived)
        return super().ssh_NEWKEYS(packet)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        log.info("client disconnected: code {code}: {text!r}", code=reasonCode, text=description)
        super().receiveError(reasonCode, description)

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        log.info("disconnecting: code {code}: {text!r}", code=reason, text=desc[:200])
        super().sendDisconnect(reason, desc)

    def connectionLost(self, reason: Failure | None = None) -> None:
        when = "" if self.newKeysReceived else " before the first NEWKEYS"
        message = reason.getErrorMessage() if reason is not None else "closed"
        log.info("connection {number} lost{when}: {message}", number=self.number, when=when, message=message)
        super().connectionLost(reason)

    def hangUpLater(self) -> None:
        """
        Drop the connection after C{--hangup-after} seconds, unless it ended.
        """
        if self.factory.hangupAfter is None:
            return

        def hangUp() -> None:
            if _connected(self.transport):
                log.info("hanging up connection {number}", number=self.number)
                cast(ITCPTransport, self.transport).abortConnection()

        self.factory.reactor.callLater(self.factory.hangupAfter, hangUp)


class _ProbeChannel(channel.SSHChannel):
    """
    A channel we open to see how the connector answers; it logs what happens.

    @ivar onAnswer: called with C{True} (confirmed, after the greeting is
        sent) or C{False} (refused).
    @ivar greeting: sent once the channel is confirmed.
    """

    def __init__(self, channelType: bytes, onAnswer: Any, greeting: bytes = b"", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = channelType
        self.onAnswer = onAnswer
        self.greeting = greeting

    def channelOpen(self, specificData: bytes) -> None:
        if self.greeting:
            self.write(self.greeting)
        self.onAnswer(True, self)

    def openFailed(self, reason: Any) -> None:
        self.onAnswer(False, reason)

    def dataReceived(self, data: bytes) -> None:
        log.info("received {count} bytes on channel {id}", count=len(data), id=self.id)

    def closed(self) -> None:
        log.info("channel {id} closed by the connector", id=self.id)


class _Flood:
    """
    Sends global requests as fast as the connection's TCP transport takes
    them: paused when its buffer is full (a streaming producer), so the
    flood grows nothing here.
    """

    def __init__(self, conn: HostileConnection) -> None:
        self.conn = conn
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def start(self) -> None:
        # A TCP transport is a push producer (its reading) and a consumer.
        tcp = cast(Any, self.conn.transport.transport)
        tcp.pauseProducing()  # stop reading: nothing the connector says is heard
        tcp.registerProducer(self, True)
        self._report()
        self._send()

    def _send(self) -> None:
        if self.stopped or self.paused:
            return
        request = common.NS(b"flood@hostile.example.invalid") + b"\x01"
        for _ in range(FLOOD_BATCH):
            self.conn.transport.sendPacket(connection.MSG_GLOBAL_REQUEST, request)
            self.sent += 1
            if self.paused:
                return
        self.conn.transport.factory.reactor.callLater(0, self._send)

    def _report(self) -> None:
        if self.stopped:
            return
        log.info("flood: {sent} requests sent, paused {pauses} times", sent=self.sent, pauses=self.pauses)
        self.conn.transport.factory.reactor.callLater(1, self._report)

    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._send()

    def stopProducing(self) -> None:
        self.stopped = True


class HostileConnection(connection.SSHConnection):
    """
    The C{ssh-connection} service: grants the forward, then plays the case.

    @ivar port: our listening port for the forward, once granted.
    """

    transport: HostileTransport

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.port: IListeningPort | None = None
        self.allocated = 0
        self._flood: _Flood | None = None
        log.info("connection {number} logged in", number=self.transport.number)

    def serviceStopped(self) -> None:
        if self._flood is not None:
            self._flood.stopProducing()
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        super().serviceStopped()

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> Any:
        if requestType == b"tcpip-forward":
            return self._forward(data)
        if requestType == b"cancel-tcpip-forward":
            if self.port is not None:
                self.port.stopListening()
                self.port = None
            return 1
        return 0  # keepalive@openssh.com and the rest, as OpenSSH answers

    def _forward(self, data: bytes) -> Any:
        host, port = forwarding.unpackGlobal_tcpip_forward(data)
        case = self.transport.case
        if case == "no-port" and port == 0:
            log.info("played no-port: tcpip-forward for {host}:0 granted without the port", host=host)
            self.transport.hangUpLater()
            return 1
        if self.port is not None:
            return 0
        reactor = self.transport.factory.reactor
        listener = forwarding.SSHListenForwardingFactory(
            self, (host, port), forwarding.SSHListenServerForwardingChannel
        )
        self.port = reactor.listenTCP(port, listener, interface="127.0.0.1")
        self.allocated = cast(IPv4Address, self.port.getHost()).port
        listener.hostport = (host, self.allocated)
        log.info(
            "Allocated port {allocated} for remote forward (asked for {host}:{port})",
            allocated=self.allocated,
            host=host,
            port=port,
        )
        if case is not None and case not in ("strict-ignore", "nonstrict"):
            reactor.callLater(0.2, self._play, case)
        if port == 0:
            return 1, struct.pack(">L", self.allocated)
        return 1

    def _play(self, case: str) -> None:
        if not _connected(self.transport.transport):
            return
        getattr(self, "play_" + case.replace("-", "_"))()
        self.transport.hangUpLater()

    def play_flood(self) -> None:
        log.info("played flood: stopped reading, sending global requests with want-reply")
        self._flood = _Flood(self)
        self._flood.start()

    def play_maxpacket0(self) -> None:
        def answered(confirmed: bool, detail: Any) -> None:
            if confirmed:
                log.info("maxpacket0: the connector confirmed the channel; sent a SOCKS5 greeting")
                # Any answer to the greeting would be sent before the barrier's.
                self._barrier("maxpacket0")
            else:
                log.info("maxpacket0: the connector refused the channel: {reason}", reason=detail)

        probe = _ProbeChannel(b"forwarded-tcpip", answered, greeting=b"\x05\x01\x00", conn=self)
        probe.localMaxPacket = 0  # SSHChannel's constructor takes 0 as "the default"
        self.openChannel(probe, forwarding.packOpen_forwarded_tcpip(("localhost", self.allocated), ("127.0.0.1", 9)))
        log.info("played maxpacket0: forwarded-tcpip opened with maximum packet size 0")

    def play_unrequested_success(self) -> None:
        self.transport.sendPacket(connection.MSG_REQUEST_SUCCESS, b"")
        log.info("played unrequested-success: SSH_MSG_REQUEST_SUCCESS sent with no request pending")
        self._barrier("unrequested-success")

    def play_service_accept(self) -> None:
        self.transport.sendPacket(transport.MSG_SERVICE_ACCEPT, common.NS(b"ssh-connection"))
        log.info("played service-accept: SSH_MSG_SERVICE_ACCEPT sent after login")
        self._barrier("service-accept")

    def _barrier(self, case: str) -> None:
        """
        Ask something the connector must answer (success or failure) after
        it handled the message just sent: the answer, or the connection's
        end, says the reaction is over.
        """

        def answered(_: object) -> None:
            # Conch fails pending requests with "Connection stopped." when the connection ends.
            if _connected(self.transport.transport):
                log.info("{case}: barrier answered", case=case)

        self.sendGlobalRequest(b"barrier@hostile.example", b"", wantReply=True).addBoth(answered)

    def play_unknown_channel(self) -> None:
        tally = {True: 0, False: 0}

        def answered(confirmed: bool, detail: Any) -> None:
            tally[confirmed] += 1
            if tally[True] + tally[False] == UNKNOWN_CHANNELS:
                log.info(
                    "unknown-channel: all {count} answered: {refused} refused, {confirmed} confirmed",
                    count=UNKNOWN_CHANNELS,
                    refused=tally[False],
                    confirmed=tally[True],
                )

        for _ in range(UNKNOWN_CHANNELS):
            self.openChannel(_ProbeChannel(UNKNOWN_CHANNEL_TYPE, answered, conn=self))
        log.info(
            "played unknown-channel: {count} channels of type {type} opened",
            count=UNKNOWN_CHANNELS,
            type=UNKNOWN_CHANNEL_TYPE.decode(),
        )

    def play_disconnect_escapes(self) -> None:
        log.info("played disconnect-escapes: SSH_MSG_DISCONNECT with {size} bytes", size=len(HOSTILE_DISCONNECT_TEXT))
        self.transport.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, HOSTILE_DISCONNECT_TEXT)


@implementer(IAuthorizedKeysDB)
class _AuthorizedKeys:
    """
    The keys in one authorized_keys file, for every user name.
    """

    def __init__(self, path: Path) -> None:
        self.keys = [keys.Key.fromString(line) for line in path.read_bytes().splitlines() if line.strip()]

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        return self.keys


@implementer(portal.IRealm)
class _Realm:
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces_: Any) -> tuple[Any, Any, Any]:
        return interfaces.IConchUser, avatar.ConchUser(), lambda: None


class HostileFactory(factory.SSHFactory):
    """
    Builds L{HostileTransport}s and knows the run's case.

    @ivar case: the case the first C{times} connections play.
    @ivar hangupAfter: seconds after playing its case at which a connection
        is dropped, or L{None}.
    """

    protocol = HostileTransport
    noisy = False

    def __init__(self, reactor: Any, hostKey: keys.Key, authorized: Path, case: str, times: int, hangupAfter: Any):
        self.reactor = reactor
        self.case = case
        self.times = times
        self.hangupAfter = hangupAfter
        self.connections = 0
        self.publicKeys = {b"ssh-ed25519": hostKey.public()}
        self.privateKeys = {b"ssh-ed25519": hostKey}
        self.services = {b"ssh-userauth": userauth.SSHUserAuthServer, b"ssh-connection": HostileConnection}
        self.portal = portal.Portal(_Realm(), [SSHPublicKeyChecker(_AuthorizedKeys(authorized))])

    def nextNumber(self) -> int:
        self.connections += 1
        return self.connections


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hostile_relay.py")
    parser.add_argument("--case", choices=CASES, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--times", type=int, default=1, help="connections that play the case")
    parser.add_argument("--hangup-after", type=float, default=None, help="drop a connection this long after its case")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    arguments = parseArguments(argv)
    from twisted.internet import reactor

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    predicate.setLogLevelForNamespace("hostile", LogLevel.info)
    # Open for the process's lifetime; line-buffered so tests read every line at once.
    output = open(arguments.log, "a", buffering=1)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(output), [predicate])], redirectStandardIO=False
    )
    hostKey = keys.Key.fromFile(arguments.host_key)
    serverFactory = HostileFactory(
        reactor, hostKey, Path(arguments.authorized_keys), arguments.case, arguments.times, arguments.hangup_after
    )
    cast(IReactorTCP, reactor).listenTCP(arguments.port, cast(Any, serverFactory), interface="127.0.0.1")
    log.info("listening on 127.0.0.1:{port}, case {case}", port=arguments.port, case=arguments.case)
    cast(IReactorCore, reactor).run()


__all__ = ["CASES", "HOSTILE_DISCONNECT_TEXT", "HostileFactory", "main"]

if __name__ == "__main__":
    main(sys.argv[1:])
