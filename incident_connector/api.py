# -*- test-case-name: tests.integration.test_token -*-
"""
The certificate API client: trades the API token for a short-lived SSH
certificate (C{POST /v1/connectors/{id}/ssh-certificate}).

HTTPS goes through Twisted's C{Agent}, which verifies the certificate chain
and the host name (pyOpenSSL and service_identity); C{--api-ca-file} adds a
private CA.  Errors are one line an operator can act on, never holding the token.
"""

from __future__ import annotations

import ipaddress
import json
from io import BytesIO
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.internet import defer, protocol
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .proxy import HTTPConnectEndpoint, Proxy
from .tunnel.errors import CredentialsUnavailable
from .tunnel.wire import printable

__all__ = ["CertificateAPI", "CredentialsError", "isLoopbackURL"]

#: The most bytes of an answer read: a certificate and a known_hosts text are a few kB.
MAX_BODY = 1024 * 1024


class _BodyTooLarge(Exception):
    """
    The answer is longer than L{MAX_BODY}.
    """


class _CappedBody(protocol.Protocol):
    """
    Collects a response body of at most C{limit} bytes; past that the
    connection is aborted and C{finished} fails with L{_BodyTooLarge}
    (Twisted's C{readBody} reads whatever the server sends).

    @ivar finished: fires with the whole body.
    @ivar limit: the most bytes accepted.
    @ivar parts: what came so far; C{size} its length.
    """

    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.parts = []
            self.finished.errback(_BodyTooLarge())
            self.abort()
            return
        self.parts.append(data)

    def abort(self) -> None:
        abort = getattr(self.transport, "abortConnection", None) or getattr(self.transport, "stopProducing", None)
        if abort is not None:
            abort()

    def connectionLost(self, reason: Any = None) -> None:
        if self.finished.called:
            return
        if reason is None or reason.check(ResponseDone) or reason.check(PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def _readCapped(response: Any, limit: int = MAX_BODY) -> defer.Deferred[bytes]:
    """
    The body of C{response}, refused (L{_BodyTooLarge}) past C{limit} bytes;
    cancelling aborts the connection.
    """
    body: _CappedBody

    def cancel(_: defer.Deferred[bytes]) -> None:
        body.abort()

    finished: defer.Deferred[bytes] = defer.Deferred(cancel)
    body = _CappedBody(finished, limit)
    if isinstance(response.length, int) and response.length > limit:
        finished.errback(_BodyTooLarge())
        response.deliverBody(body)  # connects the transport, then aborts it
        body.abort()
        return finished
    response.deliverBody(body)
    return finished


class CredentialsError(CredentialsUnavailable):
    """
    No certificate this time.

    @ivar reason: a short label (C{unauthorized}, C{unknown_connector},
        C{unavailable}, C{tls}, C{network}, C{bad_response}).
    @ivar retryAfter: the least delay before asking again, in seconds.
    """


def isLoopbackURL(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@implementer(IAgentEndpointFactory)
class _ProxiedEndpoints:
    """
    Agent's connections through an HTTP proxy: a CONNECT tunnel, with TLS
    (verified as without a proxy) on top for https.
    """

    def __init__(self, reactor: Any, proxy: Proxy, policy: BrowserLikePolicyForHTTPS, timeout: float) -> None:
        self.reactor = reactor
        self.proxy = proxy
        self.policy = policy
        self.timeout = timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        tunnel = HTTPConnectEndpoint(self.reactor, self.proxy, host, uri.port, self.timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), tunnel)
        return tunnel


def _tlsDetail(reason: Any) -> str | None:
    """
    The TLS check that failed, if the failure is a TLS one.
    """
    value = reason.value if hasattr(reason, "value") else reason
    if isinstance(value, (ConnectError, DNSLookupError)):
        return None  # DNS, refused, proxy: before any TLS ("Couldn't find the hostname ...")
    text = str(value)
    for needle, detail in [
        ("certificate verify failed", "the server certificate is not trusted (certificate verify failed)"),
        ("VerificationError", "the server certificate does not name this host"),
        ("hostname", "the server certificate does not name this host"),
        ("SSL routines", "the TLS handshake failed"),
    ]:
        if needle in text:
            return detail
    return None


class CertificateAPI:
    """
    @ivar url: the API base URL.
    @ivar connectorId: whose certificate to ask for.

    A 401 or 404 asks callers to wait at least a minute, doubling each time in
    a row up to 15 minutes: a wrong token must not hammer the API.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        connectorId: str,
        token: str,
        caFile: str | None = None,
        timeout: float = 30.0,
        proxy: Proxy | None = None,
    ) -> None:
        self.reactor = reactor
        self.url = url.rstrip("/")
        self.connectorId = connectorId
        self._token = token
        self.timeout = timeout
        trustRoot = None
        if caFile is not None:
            with open(caFile, "rb") as f:
                trustRoot = trustRootFromCertificates([Certificate.loadPEM(f.read())])
        policy = BrowserLikePolicyForHTTPS(trustRoot)
        if proxy is None:
            self._agent = Agent(reactor, contextFactory=policy)
        else:
            self._agent = Agent.usingEndpointFactory(reactor, _ProxiedEndpoints(reactor, proxy, policy, timeout))
        self._rejections = 0

    def __repr__(self) -> str:
        return f"<CertificateAPI {self.url} connector {self.connectorId}>"

    async def requestCertificate(self, publicKeyLine: str) -> dict[str, Any]:
        """
        Ask for a certificate of C{publicKeyLine}.

        @raise CredentialsError: for every failure, with an operator's message.
        """
        endpoint = f"{self.url}/v1/connectors/{quote(self.connectorId, safe='')}/ssh-certificate"
        body = json.dumps({"public_key": publicKeyLine}).encode()
        headers = Headers(
            {
                b"Authorization": [b"Bearer " + self._token.encode()],
                b"Content-Type": [b"application/json"],
                b"User-Agent": [b"incident-connector"],
            }
        )
        # One deadline for the whole exchange: connecting, the answer's
        # headers and its body (a server may trickle bytes forever).
        deadline = self.reactor.seconds() + self.timeout
        try:
            response = await self._agent.request(
                b"POST", endpoint.encode(), headers, FileBodyProducer(BytesIO(body))
            ).addTimeout(self.timeout, self.reactor)
            payload = await _readCapped(response).addTimeout(max(0.0, deadline - self.reactor.seconds()), self.reactor)
        except _BodyTooLarge:
            raise CredentialsError(
                f"the certificate API at {self.url} answered more than {MAX_BODY} bytes", "bad_response"
            ) from None
        except (ResponseNeverReceived, ResponseFailed) as e:
            for reason in e.reasons:
                if reason.check(defer.CancelledError):  # our deadline cancelled the request
                    raise CredentialsError(
                        f"the certificate API at {self.url} did not answer in time", "network"
                    ) from None
            for reason in e.reasons:
                detail = _tlsDetail(reason)
                if detail:
                    raise CredentialsError(f"TLS verification of {self.url} failed: {detail}", "tls") from None
            raise CredentialsError(
                f"cannot reach the certificate API at {self.url}: {self._clean(e.reasons[0].getErrorMessage())}",
                "network",
            ) from None
        except defer.TimeoutError:
            raise CredentialsError(f"the certificate API at {self.url} did not answer in time", "network") from None
        except Exception as e:
            detail = _tlsDetail(e)
            if detail:
                raise CredentialsError(f"TLS verification of {self.url} failed: {detail}", "tls") from None
            raise CredentialsError(
                f"cannot reach the certificate API at {self.url}: {self._clean(str(e))}", "network"
            ) from None
        status = response.code
        if status in (401, 403):
            raise CredentialsError(
                "credentials rejected: the API token is wrong or was regenerated", "unauthorized", self._backOff()
            )
        if status == 404:
            raise CredentialsError(f"unknown connector ID {self.connectorId}", "unknown_connector", self._backOff())
        if status != 200:
            raise CredentialsError(f"the certificate API answered {status}; retrying", "unavailable")
        self._rejections = 0
        try:
            document = json.loads(payload)
        except (ValueError, RecursionError):
            raise CredentialsError("the certificate API returned something that is not JSON", "bad_response") from None
        if not isinstance(document, dict) or "certificate" not in document:
            raise CredentialsError("the certificate API response has no certificate", "bad_response")
        return document

    def _clean(self, text: str) -> str:
        """
        Text from an exception, which may quote what the server sent (and a
        server may echo the request): never the token, one line.
        """
        if self._token:
            text = text.replace(self._token, "<token>")
        return printable(text)

    def _backOff(self) -> float:
        self._rejections += 1
        return min(60.0 * 2 ** (self._rejections - 1), 900.0)
