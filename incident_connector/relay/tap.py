# -*- test-case-name: tests.integration.test_relay_admin -*-
"""
C{twistd incident-relay}: options and the service.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from twisted.application import service
from twisted.conch.ssh import keys
from twisted.internet import endpoints
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from .admin import AdminAPI, checkAdminEndpoint, makeAdminAPI
from .api import makeConnectorAPI
from .ca import CertificateAuthority, loadOrCreateKey, publicLine
from .forwards import Forwards
from .registry import Registry
from .revocation import RevocationService
from .ssh import makeServerFactory

__all__ = ["Options", "makeService"]

_log = Logger()


def fail(message: str) -> NoReturn:
    """
    Print one line and exit with status 2 (a usage error).
    """
    sys.stderr.write(f"incident-relay: error: {message}\n")
    raise SystemExit(2)


def defaultAdminEndpoint(dataDir: str) -> str:
    """
    A Unix socket in the data directory, reachable by its owner only.
    """
    path = str(Path(dataDir) / "admin.sock").replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:{path}:mode=600"


def parseDuration(text: str) -> float:
    """
    Seconds from C{900}, C{90s}, C{15m} or C{1h}.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 900, 90s, 15m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "The reference relay: certificate API, connector registry and SSH server for connectors."
    optParameters = [
        ["data-dir", None, "relay-data", "Registry, CA and host key live here."],
        ["ssh-listen", None, "tcp:2222", "Server endpoint for connectors' SSH connections."],
        ["api-listen", None, "tcp:8080:interface=127.0.0.1", "Server endpoint for connectors' certificate API."],
        ["admin-listen", None, None, "Server endpoint for the admin API (default: unix:DATA-DIR/admin.sock:mode=600)."],
        ["certificate-lifetime", None, "15m", "Lifetime of issued certificates (900, 90s, 15m, 1h)."],
        ["public-hosts", None, "localhost,127.0.0.1", "Names connectors dial, for the known_hosts they get."],
        ["forward-host", None, "127.0.0.1", "Address the SaaS side connects to for each connector's port."],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            fail(str(e))

    def postOptions(self) -> None:
        try:
            self["certificate-lifetime"] = parseDuration(self["certificate-lifetime"])
        except ValueError as e:
            raise usage.UsageError(f"--certificate-lifetime: {e}") from None
        if self["admin-listen"] is None:
            self["admin-listen"] = defaultAdminEndpoint(self["data-dir"])
        try:
            checkAdminEndpoint(self["admin-listen"])
        except ValueError as e:
            raise usage.UsageError(f"--admin-listen: {e}") from None


class _Listen(service.Service):
    """
    Listens on an endpoint and remembers the port (known_hosts needs it).
    """

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        endpoint = endpoints.serverFromString(self.reactor, self.description)
        endpoint.listen(self.factory).addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        _log.info("{what} listening on {address}", what=self.name, address=port.getHost())

    def _failed(self, reason: Any) -> None:
        _log.error(
            "cannot listen on {description}: {error}", description=self.description, error=reason.getErrorMessage()
        )
        self.reactor.stop()

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None


def buildRelay(options: Options, reactor: Any) -> service.MultiService:
    dataDir = Path(options["data-dir"])
    dataDir.mkdir(parents=True, exist_ok=True, mode=0o700)
    registry = Registry(dataDir / "registry.sqlite3")
    hostKey = loadOrCreateKey(dataDir / "host_ed25519")
    ca = CertificateAuthority(loadOrCreateKey(dataDir / "user_ca"), options["certificate-lifetime"])
    forwards = Forwards(reactor, options["forward-host"])
    top = service.MultiService()
    ssh = _Listen(reactor, options["ssh-listen"], makeServerFactory(reactor, keys.Key(hostKey), ca, registry, forwards))
    ssh.setName("ssh")
    ssh.setServiceParent(top)

    def knownHosts() -> str:
        assert ssh.port is not None
        port = ssh.port.getHost().port  # type: ignore[attr-defined]
        names = ",".join(
            name if port == 22 else f"[{name}]:{port}" for name in options["public-hosts"].split(",") if name
        )
        return f"{names} {publicLine(hostKey.public_key()).decode()}\n"

    api = _Listen(reactor, options["api-listen"], makeConnectorAPI(registry, ca, knownHosts))
    api.setName("api")
    api.setServiceParent(top)
    admin = _Listen(reactor, options["admin-listen"], makeAdminAPI(AdminAPI(reactor, registry, forwards)))
    admin.setName("admin")
    admin.setServiceParent(top)
    RevocationService(reactor, registry, forwards).setServiceParent(top)
    return top


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return buildRelay(options, reactor)
