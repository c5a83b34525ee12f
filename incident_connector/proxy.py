# -*- test-case-name: tests.unit.test_secrets,tests.integration.test_deploy -*-
"""
Going out through a corporate HTTP proxy: an C{IStreamClientEndpoint} that
tunnels through C{CONNECT}, for both the SSH connection and the certificate
API, and the choice of proxy from C{--proxy}, C{HTTPS_PROXY}, C{ALL_PROXY}
and C{NO_PROXY} (decided by the standard library's own C{urllib} rules).
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["HTTPConnectEndpoint", "Proxy", "ProxyError", "proxyFor"]

_ENCODING_HINT = "percent-encode any '#', '/' or '?' in the user name or password (%23, %2F, %3F)"


class ProxyError(ConnectError):
    """
    The proxy would not open the tunnel; the message says why, without credentials.
    """

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Proxy:
    """
    An HTTP proxy.

    @ivar host: where it listens.
    @ivar port: its port.
    @ivar credentials: C{(user, password)} for Basic auth, or L{None}.
    """

    host: str
    port: int
    credentials: tuple[str, str] | None = None

    @classmethod
    def fromURL(cls, url: str) -> Proxy:
        """
        @raise ValueError: not an C{http://[user:password@]host[:port]} URL.
            The message never quotes the URL or a part of it: it may hold a
            password (urllib's own errors do quote it, so none gets through).
        """
        parts = urlsplit(url if "://" in url else "http://" + url)
        try:
            port = parts.port
        except ValueError:
            # A "#", "/" or "?" in the password ends the host part early, and
            # urllib then reads the start of the password as the port.
            raise ValueError(f"the port is not a number from 1 to 65535; {_ENCODING_HINT}") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("expected http://[user:password@]host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"expected nothing after host[:port]; {_ENCODING_HINT}")
        credentials = None
        if parts.username is not None:
            credentials = (unquote(parts.username), unquote(parts.password or ""))
        return cls(parts.hostname, port or 3128, credentials)

    def __str__(self) -> str:
        # Never the credentials: this goes into logs.
        return f"http://{self.host}:{self.port}"


def proxyFor(host: str, port: int, option: str | None, environ: Mapping[str, str]) -> Proxy | None:
    """
    The proxy to reach C{host}:C{port} through, if any: C{option} (C{--proxy})
    wins, else C{HTTPS_PROXY}/C{https_proxy}, else C{ALL_PROXY}/C{all_proxy};
    C{NO_PROXY}/C{no_proxy} exempts hosts.

    @raise ValueError: a proxy URL is malformed.
    """
    url = option
    if not url:
        for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            if environ.get(name):
                url = environ[name]
                break
    if not url:
        return None
    noProxy = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
    # urllib's own NO_PROXY rules (suffixes, "*", host:port); typeshed omits the function.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if noProxy and bypass(f"{host}:{port}", {"no": noProxy}):
        return None
    return Proxy.fromURL(url)


class _Tunnel(protocol.Protocol):
    """
    Asks the proxy for the tunnel; once it stands, becomes a pass-through to
    the real protocol, which owns the transport from then on.
    """

    def __init__(self, endpoint: HTTPConnectEndpoint, innerFactory: IProtocolFactory) -> None:
        # Not "factory": Factory.buildProtocol sets that on us.
        self.endpoint = endpoint
        self.innerFactory = innerFactory
        # Cancelled (the endpoint's timeout, the setup timeout, stopService):
        # close the connection to the proxy, or it stays open, and a late 200
        # would start the real protocol on a connection nobody follows.
        self.ready: defer.Deferred[IProtocol] = defer.Deferred(self._cancel)
        self.inner: IProtocol | None = None
        self._buffer = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        target = self.endpoint.target
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", "User-Agent: incident-connector"]
        if self.endpoint.proxy.credentials is not None:
            user, password = self.endpoint.proxy.credentials
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            lines.append(f"Proxy-Authorization: Basic {token}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > 16384:
                self._fail("the proxy's answer to CONNECT is too long")
            return
        head, rest = self._buffer[:end], self._buffer[end + 4 :]
        statusLine = head.split(b"\r\n", 1)[0].decode("latin-1")
        fields = statusLine.split(" ", 2)
        if len(fields) < 2 or not fields[1].isdigit():
            self._fail(f"the proxy answered CONNECT with {statusLine!r}")
            return
        status = int(fields[1])
        if status // 100 != 2:
            hint = ""
            if status == 407:
                hint = (
                    " (it wants credentials: http://user:password@host:port)"
                    if self.endpoint.proxy.credentials is None
                    else " (it refused the credentials)"
                )
            self._fail(f"{statusLine.split(' ', 1)[1]}{hint}")
            return
        assert self.transport is not None
        inner = self.innerFactory.buildProtocol(self.transport.getPeer())
        if inner is None:
            self._fail("no protocol")
            return
        self.inner = inner
        inner.makeConnection(self.transport)
        self.ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _cancel(self, ready: defer.Deferred[IProtocol]) -> None:
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def _fail(self, why: str) -> None:
        if not self.ready.called:
            self.ready.errback(
                ProxyError(string=f"proxy {self.endpoint.proxy} refused CONNECT to {self.endpoint.target}: {why}")
            )
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(
                ProxyError(
                    string=f"proxy {self.endpoint.proxy} closed the connection before opening "
                    f"a tunnel to {self.endpoint.target}"
                )
            )


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    """
    Connects to C{host}:C{port} through an HTTP proxy's C{CONNECT}.

    @ivar proxy: the proxy.
    @ivar target: C{host:port} (C{[v6]:port}) as asked of the proxy.
    """

    def __init__(self, reactor: Any, proxy: Proxy, host: str, port: int, timeout: float = 30.0) -> None:
        self.reactor = reactor
        self.proxy = proxy
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        tunnel = _Tunnel(self, protocolFactory)
        proxyEndpoint = HostnameEndpoint(self.reactor, self.proxy.host, self.proxy.port, timeout=self.timeout)

        def connected(_: object) -> defer.Deferred[IProtocol]:
            return tunnel.ready

        def unreachable(reason: Failure) -> Failure:
            if reason.check(ProxyError, defer.CancelledError):
                return reason
            return Failure(ProxyError(string=f"cannot reach proxy {self.proxy}: {reason.getErrorMessage()}"))

        connecting = proxyEndpoint.connect(protocol.Factory.forProtocol(lambda: tunnel))
        return connecting.addCallback(connected).addErrback(unreachable).addTimeout(self.timeout, self.reactor)

    def __repr__(self) -> str:
        return f"<HTTPConnectEndpoint {self.target} via {self.proxy}>"
