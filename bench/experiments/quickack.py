"""
A connector prelude (``bench/rekey.py --connector-prelude``): re-arm
TCP_QUICKACK on the relay socket after every read, so the kernel ACKs what
the relay sent at once instead of up to 40 ms later.

Why: sshd sets no TCP_NODELAY on a session without a terminal, so Nagle
holds a small packet (a KEXINIT, a reply) until what it sent before is
ACKed; a receiver with nothing to send back ACKs late.  It was measured this
way before the connector did it itself (``incident_connector/tunnel/sockopts.py``);
kept to show how a change is measured before it is made: a second
``setsockopt`` per read is harmless where the connector already does it.
"""

import socket

import incident_connector.tunnel.transport as _transport

_dataReceived = _transport.RelayTransport.dataReceived


def _quickAckThenRead(self, data):  # type: ignore[no-untyped-def]
    sock = getattr(self.transport, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
    return _dataReceived(self, data)


_transport.RelayTransport.dataReceived = _quickAckThenRead
