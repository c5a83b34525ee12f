"""
A connector prelude (``bench/burst.py --connector-prelude``): read the relay
up to four times per reactor turn, while each read fills the 256 KiB asked
for, instead of once.

Why it was tried: in a burst of 1,000 streams, sshd's slow bursts come from
its output to the connector piling up while the connector works through
thousands of destination sockets in one reactor turn (``docs/performance.md``,
"A burst of streams"); draining the relay socket faster should keep sshd's
output short.  It did cut sshd's CPU in some runs, and raised the peak RSS by
10-28 MiB in all of them (more data in flight at once, waiting for the relay);
not adopted.  Kept to repeat the measurement.
"""

from typing import Any

import incident_connector.tunnel.transport as _transport

READS_PER_TURN = 4

_connectionMade = _transport.RelayTransport.connectionMade


def _readMore(self: Any) -> None:
    _connectionMade(self)
    tcp = self.transport
    if not hasattr(tcp, "doRead"):
        return
    readOnce, received = tcp.doRead, self.dataReceived
    last = [0]

    def dataReceived(data: bytes) -> None:
        last[0] = len(data)
        received(data)

    def doRead() -> object:
        for _ in range(READS_PER_TURN):
            last[0] = 0
            why = readOnce()
            if why is not None or last[0] < tcp.bufferSize or not tcp.connected:
                return why
        return None

    self.dataReceived = dataReceived
    tcp.doRead = doRead


_transport.RelayTransport.connectionMade = _readMore  # type: ignore[method-assign]
