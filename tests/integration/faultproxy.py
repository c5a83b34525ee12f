# -*- test-case-name: tests.unit.test_faultproxy -*-
"""
A TCP proxy on loopback that puts field faults between two parts (the
connector and its relay), switched at run time by the test:

  - pass-through;
  - added latency (each direction);
  - a rate cap, a token bucket per direction shared by every connection
    (one link), with a small queue like a router's: the proxy holds at most
    C{queueSize} bytes per direction per connection and small socket
    buffers, so the endpoints' own queues fill, not the proxy's;
  - black hole: connections stay open, nothing is forwarded either way (the
    senders' data waits in their own buffers, and flows again once lifted);
  - for new connections: forward, accept and stay silent (never connect
    upstream), reset at once, or refuse (the port stops listening);
  - reset every open connection (RST, C{SO_LINGER} 0).

One thread runs a selector loop over every socket; the control methods are
called from the test's thread, run in the loop thread, and return once done.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum

__all__ = ["FaultProxy", "NewConnections"]

KiB = 1024
#: Bytes read from a socket at a time.
_READ_SIZE = 64 * KiB
#: Longest the loop sleeps with nothing due (it is woken for commands).
_IDLE = 0.5
_LINGER_RESET = struct.pack("ii", 1, 0)


class NewConnections(Enum):
    """
    What the proxy does with a connection it has just accepted.
    """

    FORWARD = "forward"
    #: Accept, then never read, write or connect upstream.
    SILENT = "silent"
    #: Accept, then reset it (RST).
    RESET = "reset"
    #: Do not listen: connecting is refused.
    REFUSE = "refuse"


class _Bucket:
    """
    A token bucket: C{rate} bytes per second, at most C{burst} saved up.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = time.monotonic()

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now

    def waitFor(self, count: int) -> float:
        """
        Seconds until C{count} tokens are available.
        """
        return max(0.0, (count - self.tokens) / self.rate)


class _Direction:
    """
    Bytes flowing one way through one proxied connection.

    @ivar source: the socket read from.
    @ivar sink: the socket written to.
    @ivar name: C{"up"} (towards the upstream server) or C{"down"}.
    @ivar queue: chunks read and not yet written, each with the time it may
        be written (read time plus latency).
    @ivar queued: bytes in C{queue}.
    @ivar sourceEnded: the source sent EOF.
    @ivar sinkShut: EOF was passed on to the sink.
    @ivar sinkBlocked: the sink's last send would have blocked; wait until
        it is writable.
    """

    def __init__(self, source: socket.socket, sink: socket.socket, name: str) -> None:
        self.source = source
        self.sink = sink
        self.name = name
        self.queue: deque[tuple[float, memoryview]] = deque()
        self.queued = 0
        self.sourceEnded = False
        self.sinkShut = False
        self.sinkBlocked = False

    @property
    def finished(self) -> bool:
        return self.sinkShut


class _Connection:
    """
    One accepted connection and its upstream connection.

    @ivar connecting: the upstream connection is not yet established.
    """

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.connecting = True
        self.up = _Direction(client, upstream, "up")
        self.down = _Direction(upstream, client, "down")
        self.closed = False

    @property
    def directions(self) -> tuple[_Direction, _Direction]:
        return self.up, self.down


class FaultProxy:
    """
    Forwards every connection to C{127.0.0.1:port} (or whatever C{listenHost})
    to C{upstream}, with faults switched on and off from the test.

    @ivar port: where it listens.
    @ivar upstream: the C{(host, port)} it forwards to.
    @ivar queueSize: most bytes it holds per direction per connection.
    @ivar socketBuffer: C{SO_RCVBUF}/C{SO_SNDBUF} of its sockets, or L{None}
        for the kernel's (which grows to megabytes on loopback).
    @ivar accepted: connections accepted so far (silent and reset ones too).
    @ivar forwarded: bytes written on, per direction (C{"up"}, C{"down"}).
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        listenHost: str = "127.0.0.1",
        queueSize: int = 32 * KiB,
        socketBuffer: int | None = 32 * KiB,
    ) -> None:
        self.upstream = upstream
        self.listenHost = listenHost
        self.queueSize = queueSize
        self.socketBuffer = socketBuffer
        self.accepted = 0
        self.forwarded = {"up": 0, "down": 0}
        self._latency = 0.0
        self._buckets: dict[str, _Bucket] | None = None
        self._blackHole = False
        self._newConnections = NewConnections.FORWARD
        self._connections: list[_Connection] = []
        self._silent: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        self._interest: dict[socket.socket, int] = {}
        self._commands: deque[tuple[Callable[[], None], threading.Event]] = deque()
        self._wakeReader, self._wakeWriter = socket.socketpair()
        self._wakeReader.setblocking(False)
        self._selector.register(self._wakeReader, selectors.EVENT_READ)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()

    # The test's side: each call runs in the loop thread and returns once done.

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name=f"faultproxy:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """
        Close every socket and end the loop thread.
        """
        if self._thread is None:
            return
        self._stopping = True
        self._wakeWriter.send(b"x")
        self._thread.join(10)
        if self._thread.is_alive():
            raise AssertionError("the fault proxy's loop did not stop")
        self._thread = None
        for connection in list(self._connections):
            self._close(connection)
        for sock in [*self._silent, self._listener]:
            if sock is not None:
                sock.close()
        self._silent.clear()
        self._selector.close()
        self._wakeReader.close()
        self._wakeWriter.close()

    def passThrough(self) -> None:
        """
        Forward everything at once: no latency, no cap, no black hole, new
        connections forwarded.
        """

        def clear() -> None:
            self._latency = 0.0
            self._buckets = None
            self._blackHole = False
            self._setNewConnections(NewConnections.FORWARD)

        self._call(clear)

    def setLatency(self, seconds: float) -> None:
        """
        Hold every byte this long before passing it on, each direction.
        """
        self._call(lambda: setattr(self, "_latency", seconds))

    def setRate(self, bytesPerSecond: float | None, burst: int | None = None) -> None:
        """
        Cap each direction at C{bytesPerSecond}, over all connections
        together (one link); L{None} lifts the cap.  C{burst} is what a
        direction saves up while idle (default: 1/50 s worth, at least 4 KiB).
        """

        def apply() -> None:
            if bytesPerSecond is None:
                self._buckets = None
                return
            size = burst if burst is not None else max(4 * KiB, int(bytesPerSecond / 50))
            self._buckets = {name: _Bucket(bytesPerSecond, size) for name in ("up", "down")}

        self._call(apply)

    def setBlackHole(self, on: bool = True) -> None:
        """
        Forward nothing either way on any connection (they stay open), or
        forward again.
        """
        self._call(lambda: setattr(self, "_blackHole", on))

    def setNewConnections(self, mode: NewConnections) -> None:
        """
        Decide what happens to connections accepted from now on.
        """
        self._call(lambda: self._setNewConnections(mode))

    def resetAll(self) -> None:
        """
        Reset (RST) every open connection, both sides, and every silent one.
        """
        self._call(self._resetAll)

    def reset(self) -> None:
        """
        Reset every open connection, and every new one as soon as it is accepted.
        """

        def reset() -> None:
            self._resetAll()
            self._setNewConnections(NewConnections.RESET)

        self._call(reset)

    @property
    def openConnections(self) -> int:
        """
        Connections being forwarded (not silent ones).
        """
        return len(self._connections)

    def _call(self, command: Callable[[], None]) -> None:
        if self._thread is None:
            command()
            return
        done = threading.Event()
        self._commands.append((command, done))
        self._wakeWriter.send(b"x")
        if not done.wait(10):
            raise AssertionError("the fault proxy's loop did not run a command")

    # The loop thread's side.

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET6 if ":" in self.listenHost else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.socketBuffer:
            # Accepted sockets inherit these.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.socketBuffer)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.socketBuffer)
        listener.bind((self.listenHost, self.port))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ)

    def _resetAll(self) -> None:
        for connection in list(self._connections):
            self._close(connection, reset=True)
        for sock in self._silent:
            _reset(sock)
        self._silent.clear()

    def _setNewConnections(self, mode: NewConnections) -> None:
        if mode is NewConnections.REFUSE and self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        elif mode is not NewConnections.REFUSE and self._listener is None:
            self._listen()
        self._newConnections = mode

    def _run(self) -> None:
        while not self._stopping:
            while self._commands:
                command, done = self._commands.popleft()
                try:
                    command()
                finally:
                    done.set()
            now = time.monotonic()
            if self._buckets is not None:
                for bucket in self._buckets.values():
                    bucket.refill(now)
            timeout = _IDLE
            # Rotate so that no connection always gets the tokens first.
            if self._connections:
                self._connections.append(self._connections.pop(0))
            for connection in list(self._connections):
                for direction in connection.directions:
                    if not connection.closed:
                        timeout = min(timeout, self._flush(connection, direction, now))
            self._updateInterest()
            for key, mask in self._selector.select(max(0.0, timeout)):
                sock = key.fileobj
                if sock is self._wakeReader:
                    self._wakeReader.recv(4096)
                elif sock is self._listener:
                    self._accept()
                else:
                    self._ready(key.data, sock, mask)  # type: ignore[arg-type]

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            self.accepted += 1
            client.setblocking(False)
            mode = self._newConnections
            if mode is NewConnections.SILENT:
                self._silent.append(client)
                continue
            if mode is NewConnections.RESET:
                _reset(client)
                continue
            upstream = socket.socket(socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET)
            if self.socketBuffer:
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.socketBuffer)
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.socketBuffer)
            upstream.setblocking(False)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(client, upstream)
            self._connections.append(connection)
            result = upstream.connect_ex(self.upstream)
            if result not in (0, errno.EINPROGRESS):
                self._close(connection, reset=True)

    def _ready(self, connection: _Connection, sock: socket.socket, mask: int) -> None:
        if connection.closed:
            return
        if sock is connection.upstream and connection.connecting and mask & selectors.EVENT_WRITE:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._close(connection, reset=True)
                return
            connection.connecting = False
        for direction in connection.directions:
            if direction.sink is sock and mask & selectors.EVENT_WRITE:
                direction.sinkBlocked = False
            if direction.source is sock and mask & selectors.EVENT_READ:
                self._read(connection, direction)
                if connection.closed:
                    return

    def _mayRead(self, connection: _Connection, direction: _Direction) -> bool:
        return not (self._blackHole or direction.sourceEnded or direction.queued >= self.queueSize)

    def _read(self, connection: _Connection, direction: _Direction) -> None:
        if not self._mayRead(connection, direction):
            return
        try:
            data = direction.source.recv(min(_READ_SIZE, self.queueSize - direction.queued))
        except BlockingIOError:
            return
        except OSError:
            self._close(connection, reset=True)
            return
        if not data:
            direction.sourceEnded = True
            return
        direction.queue.append((time.monotonic() + self._latency, memoryview(data)))
        direction.queued += len(data)

    def _flush(self, connection: _Connection, direction: _Direction, now: float) -> float:
        """
        Write what is due on C{direction}; return how long until more may be.
        """
        if self._blackHole or connection.connecting or direction.sinkBlocked:
            return _IDLE
        bucket = self._buckets[direction.name] if self._buckets is not None else None
        while direction.queue:
            due, chunk = direction.queue[0]
            if due > now:
                return due - now
            size = len(chunk)
            if bucket is not None:
                # Wait for a useful amount rather than dribble single bytes.
                need = min(size, max(1, bucket.burst // 4))
                if bucket.tokens < need:
                    return bucket.waitFor(need)
                size = min(size, int(bucket.tokens))
            try:
                sent = direction.sink.send(chunk[:size])
            except BlockingIOError:
                direction.sinkBlocked = True
                return _IDLE
            except OSError:
                self._close(connection, reset=True)
                return _IDLE
            self.forwarded[direction.name] += sent
            direction.queued -= sent
            if bucket is not None:
                bucket.tokens -= sent
            if sent == len(chunk):
                direction.queue.popleft()
            else:
                direction.queue[0] = (due, chunk[sent:])
                if sent < size:
                    direction.sinkBlocked = True
                    return _IDLE
        if direction.sourceEnded and not direction.sinkShut:
            direction.sinkShut = True
            try:
                direction.sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if all(d.finished for d in connection.directions):
                self._close(connection)
        return _IDLE

    def _updateInterest(self) -> None:
        wanted: dict[socket.socket, tuple[int, _Connection]] = {}
        for connection in self._connections:
            for direction in connection.directions:
                events = 0
                if not connection.connecting and self._mayRead(connection, direction):
                    events |= selectors.EVENT_READ
                mask, _ = wanted.get(direction.source, (0, connection))
                wanted[direction.source] = (mask | events, connection)
                if direction.sinkBlocked and not self._blackHole:
                    mask, _ = wanted.get(direction.sink, (0, connection))
                    wanted[direction.sink] = (mask | selectors.EVENT_WRITE, connection)
            if connection.connecting:
                mask, _ = wanted.get(connection.upstream, (0, connection))
                wanted[connection.upstream] = (mask | selectors.EVENT_WRITE, connection)
        for sock in list(self._interest):
            if sock not in wanted or wanted[sock][0] == 0:
                self._selector.unregister(sock)
                del self._interest[sock]
        for sock, (events, connection) in wanted.items():
            if events == 0:
                continue
            if sock not in self._interest:
                self._selector.register(sock, events, connection)
            elif self._interest[sock] != events:
                self._selector.modify(sock, events, connection)
            self._interest[sock] = events

    def _close(self, connection: _Connection, reset: bool = False) -> None:
        """
        Close both sides; with C{reset}, as a RST (an error on one side
        reaches the other as one).
        """
        if connection.closed:
            return
        connection.closed = True
        for sock in (connection.client, connection.upstream):
            if sock in self._interest:
                self._selector.unregister(sock)
                del self._interest[sock]
            if reset:
                _reset(sock)
            else:
                sock.close()
        self._connections.remove(connection)


def _reset(sock: socket.socket) -> None:
    """
    Close C{sock} with a RST instead of a FIN.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()
