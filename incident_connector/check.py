# -*- test-case-name: tests.integration.test_observability -*-
"""
C{incident-connector check [options]}: what an operator runs first (and the
C{incident-connector} command's other subcommands).

Loads the same options (flags and environment) as the service and reports
one line per step: options valid, relay reachable, host key verified,
authenticated, forward granted, and each allowlisted destination reachable
from here.  Exits 0 when every step passed, 1 otherwise (2 for bad options).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO, cast

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.python.failure import Failure

from . import __version__
from .api import CredentialsError
from .credentials import TokenCredentials
from .metrics import ConnectorMetrics
from .options import Options, fail
from .service import makeCredentials, relayEndpoint, relayFactory
from .suggest import suggest
from .tunnel.channel import ForwardedChannel
from .tunnel.connection import RelayConnection
from .tunnel.errors import TunnelError
from .tunnel.interfaces import IStreamProtocol
from .tunnel.transport import RelayTransport

__all__ = ["main"]

# The SSH steps, in order; a TunnelError's reason names the one that failed,
# or else how far the connection got.
_STEPS = ["key exchange", "host key verified", "authenticated", "forward granted"]
_FAILED_STEP = {"negotiation": 0, "host_key": 1, "auth": 2, "forward_refused": 3}


class Report:
    """
    Prints one line per step and remembers whether any failed.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = False

    def ok(self, step: str) -> None:
        self.out.write(f"ok    {step}\n")

    def fail(self, step: str, why: str) -> None:
        self.failed = True
        self.out.write(f"FAIL  {step}: {why}\n")

    def skip(self, step: str, why: str) -> None:
        self.out.write(f"skip  {step}: {why}\n")


def _reached(transport: RelayTransport) -> int:
    """
    The step a connection that was lost failed at.  Not from its phase: by
    the time C{ready} fails, a lost connection's phase is already "closed".
    """
    if transport.negotiated is None:
        return 0
    if transport.hostKeyFingerprint is None:
        return 1
    if transport.connection is None:
        return 2
    return 3


def _noStreams(channel: ForwardedChannel) -> IStreamProtocol:
    raise AssertionError("check refuses every stream (max streams 0)")


async def _relaySteps(reactor: Any, options: Options, report: Report) -> None:
    relay = options["relay-address"]
    source = makeCredentials(options, reactor)
    try:
        credentials = await source.get()
    except CredentialsError as e:
        report.fail("certificate issued", str(e))
        for step in [f"relay {relay} reachable (TCP)", *_STEPS]:
            report.skip(step, "no certificate")
        return
    finally:
        if isinstance(source, TokenCredentials):
            source.stop()
    if isinstance(source, TokenCredentials):
        report.ok(f"certificate issued (valid {source.secondsToExpiry():.0f} s)")
    factory = relayFactory(options, reactor, ConnectorMetrics(), _noStreams, maxStreams=0, keepaliveInterval=0)
    factory.credentials = credentials
    try:
        connected = await relayEndpoint(options, reactor).connect(factory)
    except Exception as e:
        report.fail(f"relay {relay} reachable (TCP)", str(e))
        for step in _STEPS:
            report.skip(step, "relay unreachable")
        return
    report.ok(f"relay {relay} reachable (TCP)")
    transport = cast(RelayTransport, connected)
    timeout = reactor.callLater(
        options["setup-timeout"], transport.fail, TunnelError(f"timed out ({transport.phase})", "setup_timeout")
    )
    try:
        port = await transport.ready
    except TunnelError as e:
        failedAt = _FAILED_STEP.get(e.reason, _reached(transport))
        for step in _STEPS[:failedAt]:
            report.ok(step)
        report.fail(_STEPS[failedAt], str(e))
        for step in _STEPS[failedAt + 1 :]:
            report.skip(step, "an earlier step failed")
    else:
        negotiated = transport.negotiated
        assert negotiated is not None
        algorithms = [negotiated.kex, negotiated.hostKey, negotiated.cipherOut]
        if negotiated.macOut is not None:
            algorithms.append(negotiated.macOut)
        report.ok(f"key exchange ({', '.join(a.decode() for a in algorithms)})")
        report.ok(f"host key verified ({transport.hostKeyFingerprint})")
        report.ok(f"authenticated as {credentials.user}")
        report.ok(f"forward granted (relay port {port})")
        connection = cast(RelayConnection, transport.connection)
        await connection.drain(0)
    finally:
        if timeout.active():
            timeout.cancel()
        transport.loseConnection()


async def _destinationSteps(reactor: Any, options: Options, report: Report) -> None:
    allowlist = options.allowlist
    if allowlist.permitAll:
        report.skip("destinations", "no allowlist: any destination is allowed")
        return
    for rule in allowlist.rules:
        step = f"destination {rule.text} reachable"
        concrete = rule.concrete()
        if concrete is None:
            report.skip(step, "a wildcard, network or port range cannot be tried")
            continue
        endpoint = HostnameEndpoint(reactor, concrete[0], concrete[1], timeout=options["connect-timeout"])
        try:
            connected = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
        except Exception as e:
            report.fail(step, Failure(e).getErrorMessage())
        else:
            report.ok(step)
            transport = cast(protocol.Protocol, connected).transport
            assert transport is not None
            transport.loseConnection()


USAGE = """\
Usage: incident-connector COMMAND [options]

Commands:
  check              Check a configuration step by step: options, the allowlist
                     file, relay, host key, login, forward, each allowlisted
                     destination.
  suggest-allowlist  Print an allowlist covering what a running connector
                     allowed and connected to (--url, default
                     http://127.0.0.1:9090: its --metrics-listen).

Options: --help, --version.

The connector itself runs as: connector-proxy [options]
(or: twistd -n --pidfile= incident-connector [options]).
Both take the same options as check; see: connector-proxy --help
"""


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> None:
    """
    The C{incident-connector} console script: C{check}, or the usage.
    """
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        out.write(USAGE)
        return
    if args[0] == "--version":
        out.write(f"incident-connector {__version__}\n")
        return
    if args[0] == "suggest-allowlist":
        suggest(args[1:], out)
        return
    if args[0] != "check":
        fail(
            f"unknown command {args[0]!r}: the commands are check and suggest-allowlist, "
            "and connector-proxy for the connector itself"
        )
    options = Options()
    options.parseOptions(args[1:])
    report = Report(out)
    report.ok("options valid")
    if options.allowlistFile is not None:
        allowlist = options.allowlistFile.allowlist
        report.ok(
            f"allowlist file {options['forward-dest-allowlist-file']}: {len(allowlist.entries)} entries "
            f"({allowlist.digest()})"
        )

    async def run(reactor: Any) -> None:
        await _relaySteps(reactor, options, report)
        await _destinationSteps(reactor, options, report)
        out.flush()
        if report.failed:
            raise SystemExit(1)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
