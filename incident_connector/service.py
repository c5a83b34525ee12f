# -*- test-case-name: tests.integration.test_e2e,tests.integration.test_resilience -*-
"""
The composition root: turns parsed L{Options} into one L{MultiService} holding
the relay connection and the metrics/health site.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from OpenSSL.crypto import Error as OpenSSLError
from twisted.application import service, strports
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from . import _twisted
from .api import CertificateAPI
from .audit import AuditLog
from .budget import Budget
from .credentials import Credentials, StaticCredentials, TokenCredentials
from .destinations import ObservedDestinations
from .keyfiles import UnsafePermissions, checkPrivateFile
from .limits import DescriptorLimitError, fitMaxStreams
from .logs import makeObserver
from .metrics import ConnectorMetrics
from .opening import OpeningSettings
from .options import Options, fail
from .policy import AllowlistFile, AllowlistPolicy, OpenStreams
from .proxy import HTTPConnectEndpoint
from .splice import SpliceSettings
from .stream import ForwardedStream, Sink, StreamSettings, logStream, meterStream
from .tunnel.auth import RelayUserAuth, loadIdentity
from .tunnel.certificates import CertificateError, UserCertificate
from .tunnel.channel import ForwardedChannel
from .tunnel.connection import RelayConnection, StreamFactory
from .tunnel.hostkeys import HostKeyPolicy
from .tunnel.service import Backoff, RelayService
from .tunnel.transport import RekeyPolicy, RelayTransport, RelayTransportFactory
from .web import makeSite

__all__ = ["ConnectorService", "buildService"]

_log = Logger()

#: Bytes buffered towards destinations, over every stream, past which relay
#: connections stop giving channels more window.
DESTINATION_BUFFER_CAP = 64 * 1024 * 1024


class ConnectorService(service.MultiService):
    """
    The whole connector.

    @ivar options: the parsed options.
    @ivar metrics: its metrics.
    @ivar relays: the relay connection services.
    @ivar observer: the log observer twistd should use, or L{None}.
    @ivar allowlistFile: reloads C{--forward-dest-allowlist-file}, if given.
    @ivar audit: the C{--audit-log} writer, if any.
    """

    def __init__(self, options: Options, metrics: ConnectorMetrics, observer: Any = None) -> None:
        super().__init__()
        self.options = options
        self.metrics = metrics
        self.observer = observer
        self.relays: list[RelayService] = []
        self.allowlistFile: AllowlistFile | None = None
        self.audit: AuditLog | None = None

    def hangUp(self) -> None:
        """
        Called on SIGHUP: load the allowlist file again, open the audit log again.
        """
        doing = []
        if self.allowlistFile is not None:
            doing.append("reloading the allowlist file")
        if self.audit is not None and self.audit.path != "-":
            doing.append("reopening the audit log")
        _log.info("SIGHUP: {doing}", doing=" and ".join(doing) or "nothing to reload")
        if self.allowlistFile is not None:
            self.allowlistFile.reload()
        if self.audit is not None:
            self.audit.reopen()

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd picks its log observer from the application after makeService.
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)

    def startService(self) -> None:
        options = self.options
        _log.info(
            "incident-connector starting: relay {relay}{via} as {user}, destinations: {allowlist}",
            relay=options["relay-address"],
            via=f" via proxy {options.relayProxy}" if options.relayProxy else "",
            user=options["relay-user"] or f"connector {options['connector-id']} (token authentication)",
            allowlist=options.allowlist.describe(),
        )
        # Blank (an unset shell variable, say) also means any: warn then too.
        if options.allowlistFile is None and not (options["forward-dest-allowlist"] or "").split():
            _log.warn(
                "no --forward-dest-allowlist: every destination reachable from here is allowed; "
                "set one to limit what the platform can reach"
            )
        super().startService()


def buildService(options: Options, reactor: Any, installSignals: bool = False) -> ConnectorService:
    """
    Build the connector from parsed options.

    @param installSignals: after the first SIGTERM/SIGINT starts the drain, let
        a second one exit at once (only for a real process, never in tests).
    """
    metrics = ConnectorMetrics()
    credentials = makeCredentials(options, reactor)
    try:
        maxStreams = fitMaxStreams(options["max-streams"], options["connections"])
    except DescriptorLimitError as e:
        fail(str(e))
    if isinstance(credentials, TokenCredentials):
        metrics.trackCertificate(credentials.secondsToExpiry)
    budget = Budget(DESTINATION_BUFFER_CAP, reactor)
    metrics.trackDestinationBuffers(lambda: budget.total)
    allowlistPath = options["forward-dest-allowlist-file"]
    policy = AllowlistPolicy(
        options.allowlist,
        f"file {allowlistPath}" if allowlistPath is not None else "--forward-dest-allowlist",
        reactor,
        metrics,
    )
    # Only a reload that closes streams needs to find them.
    openStreams = OpenStreams() if options["close-disallowed-streams"] else None
    destinations = ObservedDestinations(reactor.seconds())
    sinks: list[Sink] = [logStream, meterStream(metrics), destinations]
    audit = AuditLog(options["audit-log"], metrics) if options["audit-log"] is not None else None
    if audit is not None:
        sinks.append(audit)
    settings = StreamSettings(
        OpeningSettings(
            reactor=reactor,
            allowlist=policy,
            metrics=metrics,
            connectTimeout=options["connect-timeout"],
            handshakeTimeout=options["handshake-timeout"],
        ),
        SpliceSettings(reactor, options["stream-idle-timeout"], options["half-close-timeout"], budget),
        metrics,
        sinks,
        openStreams,
    )

    def makeStream(channel: ForwardedChannel) -> ForwardedStream:
        return ForwardedStream(settings)

    observer = makeObserver(options["log-format"], options["log-level"], sys.stdout)
    top = ConnectorService(options, metrics, observer)
    top.audit = audit
    if options.allowlistFile is not None:
        top.allowlistFile = AllowlistFile(
            allowlistPath,
            options.allowlistFile,
            policy,
            reactor,
            metrics,
            openStreams,
            closeDisallowed=options["close-disallowed-streams"],
        )
        top.allowlistFile.setServiceParent(top)
    for index in range(options["connections"]):
        # Each connection reconnects on its own, with its own backoff.
        label = f"{index + 1}/{options['connections']}" if options["connections"] > 1 else ""
        relay = RelayService(
            reactor,
            relayEndpoint(options, reactor),
            relayFactory(options, reactor, metrics, makeStream, budget=budget, maxStreams=maxStreams, label=label),
            credentials,
            metrics,
            options["relay-address"],
            options["grace-period"],
            Backoff(options["reconnect-initial-delay"], options["reconnect-max-delay"]),
            index=index,
            count=options["connections"],
            setupTimeout=options["setup-timeout"],
        )
        top.relays.append(relay)
        relay.setServiceParent(top)
    site = makeSite(metrics, top.relays, reactor, policy=policy, destinations=destinations)
    strports.service(options["metrics-listen"], site, reactor=reactor).setServiceParent(top)
    if installSignals:
        reactor.addSystemEventTrigger("before", "shutdown", _exitOnSecondSignal)
        reactor.addSystemEventTrigger("during", "shutdown", _cleanExit, reactor)
        hangup = getattr(signal, "SIGHUP", None)
        if hangup is not None and (top.allowlistFile is not None or (audit is not None and audit.path != "-")):
            # Only then: otherwise SIGHUP keeps its default (the terminal went away: exit).
            signal.signal(hangup, lambda signum, frame: reactor.callFromThread(top.hangUp))
    return top


def makeCredentials(options: Options, reactor: Any) -> StaticCredentials | TokenCredentials:
    """
    Key files for a self-hosted relay, or certificates bought with the token.
    """
    if options.usesToken:
        assert options.apiToken is not None
        try:
            api = CertificateAPI(
                reactor,
                options["api-url"],
                options["connector-id"],
                options.apiToken,
                options["api-ca-file"],
                timeout=options["connect-timeout"] * 3,
                proxy=options.apiProxy,
            )
        except OSError as e:
            fail(f"--api-ca-file {options['api-ca-file']!r}: {e.strerror}")
        except OpenSSLError:
            fail(f"--api-ca-file {options['api-ca-file']!r}: not a PEM certificate")
        try:
            return TokenCredentials(
                reactor,
                api,
                Path(options["state-dir"]),
                options.relayHost,
                options.relayPort,
                options["relay-user"],
                options["relay-host-key"],
            )
        except OSError as e:
            fail(f"--state-dir {options['state-dir']!r}: {e.strerror}")
    try:
        checkPrivateFile(Path(options["identity-file"]))
        key = loadIdentity(options["identity-file"])
    except (ValueError, UnsafePermissions) as e:
        fail(f"--identity-file: {e}")
    certificate = None
    if options["certificate-file"] is not None:
        try:
            with open(options["certificate-file"]) as f:
                certificate = UserCertificate.fromLine(f.read(), key)
        except (OSError, CertificateError) as e:
            fail(f"--certificate-file {options['certificate-file']!r}: {e}")
        except UnicodeDecodeError:
            fail(f"--certificate-file {options['certificate-file']!r}: not UTF-8 text (expected one certificate line)")
    try:
        policy = HostKeyPolicy(options.relayHost, options.relayPort, options["relay-host-key"], options["known-hosts"])
    except OSError as e:
        fail(f"--known-hosts {options['known-hosts']!r}: {e.strerror}")
    return StaticCredentials(Credentials(options["relay-user"], key, certificate, policy))


def relayFactory(
    options: Options,
    reactor: Any,
    metrics: ConnectorMetrics,
    makeStream: StreamFactory,
    budget: Budget | None = None,
    maxStreams: int | None = None,
    keepaliveInterval: float | None = None,
    label: str = "",
) -> RelayTransportFactory:
    """
    The SSH client stack for the relay: transport, user auth, connection.
    C{maxStreams} and C{keepaliveInterval} override the options (for C{check}).
    """

    def makeUserAuth(transport: RelayTransport) -> RelayUserAuth:
        connection = RelayConnection(
            makeStream,
            reactor,
            metrics,
            maxStreams=options["max-streams"] if maxStreams is None else maxStreams,
            keepaliveInterval=options["keepalive-interval"] if keepaliveInterval is None else keepaliveInterval,
            keepaliveCount=options["keepalive-count"],
            label=label,
            budget=budget,
        )
        credentials = transport.factory.credentials
        return RelayUserAuth(credentials.user.encode("utf-8"), connection, credentials.key, credentials.certificate)

    rekey = RekeyPolicy(options["rekey-limit"], options["rekey-interval"])
    return RelayTransportFactory(reactor, makeUserAuth, rekey)


def relayEndpoint(options: Options, reactor: Any) -> IStreamClientEndpoint:
    """
    TCP to the relay: straight, or through the HTTP proxy that applies to it.
    """
    if options.relayProxy is not None:
        return HTTPConnectEndpoint(
            reactor, options.relayProxy, options.relayHost, options.relayPort, timeout=options["connect-timeout"]
        )
    return HostnameEndpoint(reactor, options.relayHost, options.relayPort, timeout=options["connect-timeout"])


def _cleanExit(reactor: Any) -> None:
    """
    Runs once every service stopped, so the drain is over.  twistd re-raises
    the signal that stopped the reactor, so the process would die "of
    SIGTERM"; after a finished drain the exit is clean and the status is 0.
    """
    _twisted.clearExitSignal(reactor)


def _exitOnSecondSignal() -> None:
    def exitNow(signum: int, frame: Any) -> None:
        sys.stderr.write(f"incident-connector: signal {signum} during drain: exiting now\n")
        os._exit(1)

    # The signals the reactor stops on; SIGBREAK (Ctrl-Break) exists on Windows only.
    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, exitNow)
