# -*- test-case-name: tests.unit.test_connection,tests.unit.test_stream -*-
"""
The contract between the tunnel and the streams it carries.

A stream sees its C{forwarded-tcpip} channel as a transport
(L{IStreamTransport}): it writes, half-closes, closes, and the channel is a
producer and a consumer, so the stream can splice it to a TCP connection with
Twisted's own back-pressure.  The channel sees the stream as a protocol
(L{IStreamProtocol}): bytes, EOF, the end.  Neither knows more of the other.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
)
from zope.interface import Attribute

__all__ = ["IStreamProtocol", "IStreamTransport"]


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
    connection ended.
    """

    def dataSequenceReceived(data: list[bytes]) -> None:
        """
        Several pieces of channel data that arrived in one read from the
        relay, in order: the stream may pass them on with one system call.
        """
