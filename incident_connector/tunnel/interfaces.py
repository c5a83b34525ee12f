# -*- test-case-name: tests.unit.test_connection,tests.unit.test_stream -*-
"""
The contract between the tunnel and the streams it carries.

Inside the tunnel, the transport and the connection service see each other
through L{IRelayTransport} and L{IConnectionService}, and a channel its
connection through L{IChannelOwner}.

A stream sees its C{forwarded-tcpip} channel as a transport
(L{IStreamTransport}): it writes, half-closes, closes, and the channel is a
producer and a consumer, so the stream can splice it to a TCP connection with
Twisted's own back-pressure.  The channel sees the stream as a protocol
(L{IStreamProtocol}): bytes, EOF, the end.  Neither knows more of the other.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
)
from zope.interface import Attribute, Interface

from .errors import TunnelError

__all__ = [
    "IChannelOwner",
    "IConnectionService",
    "IRelayTransport",
    "IStreamProtocol",
    "IStreamTransport",
    "Payload",
]

#: Channel data as it reaches a stream: a view into the opened packet where
#: that saves a copy of every byte uploaded.  Anything that keeps or parses
#: it (rather than writing it to a socket) takes C{bytes(data)}.
Payload: TypeAlias = "bytes | memoryview"


class IStreamTransport(IConsumer, IPushProducer):
    """
    One channel, as the stream on it uses it.

    As an L{IConsumer}, it pauses its registered producer while the bytes
    waiting for the relay's window pass a high-water mark, and resumes it
    below a low-water mark.  As an L{IPushProducer}, C{pauseProducing}
    withholds window from the relay (it stops sending), C{resumeProducing}
    gives it back.
    """

    originator = Attribute("C{(host, port)} of the relay-side client, as the relay reported it.")
    connectedTo = Attribute("C{(host, port)} the relay accepted the client on.")
    label = Attribute("Which relay connection carries the channel, for logs.")

    def write(data: bytes) -> None:
        """
        Queue C{data} for the relay; it goes out as the relay's window allows.
        Ignored after L{loseConnection} or L{loseWriteConnection}.
        """

    def writeSequence(data: list[bytes]) -> None:
        """
        L{write} each piece of C{data}, in order.
        """

    def loseWriteConnection() -> None:
        """
        Send EOF once everything queued is sent.
        """

    def loseConnection() -> None:
        """
        Send EOF and close once everything queued is sent.  Bytes that arrive
        afterwards are discarded.
        """

    def abortConnection() -> None:
        """
        Close now, discarding whatever is queued.
        """

    def whenSent() -> object:
        """
        A L{Deferred} that fires once everything written so far has been
        handed to the relay connection (at once if nothing waits).
        """


class IStreamProtocol(IProtocol, IHalfCloseableProtocol):
    """
    What a channel calls on the stream it carries: C{makeConnection} with the
    L{IStreamTransport} once the channel is open; C{dataReceived} for bytes
    from the relay; C{readConnectionLost} for the relay's EOF;
    C{connectionLost} once the channel is closed both ways or the relay
    connection ended.  Data arrives as L{Payload}: C{bytes} or a
    C{memoryview}.
    """

    def dataReceived(data: Payload) -> None:
        """
        Channel data from the relay, in order.
        """

    def dataSequenceReceived(data: list[Payload]) -> None:
        """
        Several pieces of channel data that arrived in one read from the
        relay, in order: the stream may pass them on with one system call.
        """


class IRelayTransport(Interface):
    """
    What the connection service asks of the SSH transport under it.
    """

    ready = Attribute("A Deferred: the allocated port once the forward is granted, or why it never was.")
    lastReceived = Attribute("When bytes last arrived from the relay (clock seconds): liveness.")
    rekeys = Attribute("Key exchanges completed after the first.")
    canSendData = Attribute("Channel data may be sealed now (no key exchange holds it back).")

    def sendPacket(messageType: int, payload: bytes) -> None:
        """
        Send a control message now, ahead of channel data not yet sealed.
        """

    def sendChannelData(packets: list[tuple[int, bytes | memoryview]]) -> None:
        """
        Send each C{(recipient channel, data)} as one channel data message, in one write.
        """

    def sendRoom() -> int:
        """
        How many bytes of channel data to seal now.
        """

    def sendUnimplemented() -> None:
        """
        Tell the relay its last message was not understood.
        """

    def forwardGranted(port: int) -> None:
        """
        The relay allocated C{port}: the connection is up.
        """

    def fail(error: TunnelError) -> None:
        """
        Record why the connection cannot serve (the first reason wins).
        """

    def loseConnection() -> None:
        """
        Close once what is queued is flushed (with a deadline).
        """

    def abortConnection() -> None:
        """
        Close now.
        """


class IConnectionService(Interface):
    """
    What the transport asks of the C{ssh-connection} service once logged in.
    """

    def packetReceived(messageNum: int, packet: bytes) -> None:
        """
        A connection-protocol message (80 to 127) from the relay.
        """

    def channelDataReceived(localChannel: int, data: Payload) -> None:
        """
        Channel data, parsed by the transport straight out of the plaintext.
        """

    def readStarted() -> None:
        """
        The transport starts on one read from the relay.
        """

    def readFinished() -> None:
        """
        The transport is done with that read: deliver what was gathered.
        """

    def sendBufferDrained() -> None:
        """
        The relay connection can take more channel data.
        """


class IChannelOwner(Interface):
    """
    What a channel asks of the connection carrying it.
    """

    label = Attribute("Names the connection in logs when there are several (C{1/3}).")
    congested = Attribute("Too much is queued for the relay: streams stop reading.")
    windowsHeld = Attribute("Too much is buffered towards destinations: no channel gets more window.")
    windowSize = Attribute("Bytes of window a channel is given now, and topped up to (see tunnel/window.py).")
    gathered = Attribute("The channels holding data from the read in progress (a list to append to).")

    def queued(channel: Any, amount: int) -> None:
        """
        C{amount} bytes joined (or, negative, left) C{channel}'s queue.
        """

    def markSendable(channel: Any) -> None:
        """
        C{channel} has data and maybe window: serve it in its turn.
        """

    def sendWindowAdjust(channel: Any, amount: int) -> None:
        """
        Give the relay C{amount} more bytes of window on C{channel}.
        """

    def sendEOF(channel: Any) -> None:
        """
        Send EOF on C{channel}.
        """

    def sendClose(channel: Any) -> None:
        """
        Send CLOSE on C{channel}.
        """

    def channelEnded(channel: Any) -> None:
        """
        Both sides closed C{channel}: its number is free again.
        """
