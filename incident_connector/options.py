# -*- test-case-name: tests.unit.test_options -*-
"""
Command-line and environment options of C{twistd incident-connector}.

Every option C{--some-name} can also come from C{INCIDENT_CONNECTOR_SOME_NAME};
a flag beats its environment variable, which beats the default.  Defaults and
environment values are resolved in C{postOptions}, never in the option table,
so C{--help} cannot print a secret.  A bad value ends the program with one line
naming the option and what is wrong.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from twisted.logger import Logger
from twisted.python import usage

from . import __version__, _twisted
from .allowlist import Allowlist, AllowlistError
from .api import isLoopbackURL
from .keyfiles import sharedSecretWarning
from .policy import FileLoadError, LoadedFile, readAllowlistFile
from .proxy import proxyFor

ENV_PREFIX = "INCIDENT_CONNECTOR_"

_log = Logger()


def envName(option: str) -> str:
    """
    The environment variable that backs C{--option}: its documented name, the
    first of L{envNames}.
    """
    return envNames(option)[0]


def envNames(option: str) -> tuple[str, ...]:
    """
    Every environment variable that backs C{--option}, the documented one
    first: C{INCIDENT_CONNECTOR_SOME_NAME} for C{--some-name}, unless
    L{ENV_NAMES} names others.
    """
    return ENV_NAMES.get(option, (ENV_PREFIX + option.upper().replace("-", "_"),))


def parseHostPort(text: str, defaultPort: int | None = None) -> tuple[str, int]:
    """
    Parse C{host:port} or C{[v6]:port}.

    @raise ValueError: with a message fit for an operator.
    """
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text)
    if not match:
        raise ValueError(f"{text!r} is not HOST:PORT or [IPV6]:PORT")
    host = match.group(1) or match.group(3)
    portText = match.group(2) or match.group(4)
    if portText is None:
        if defaultPort is None:
            raise ValueError(f"{text!r} has no port")
        return host, defaultPort
    port = int(portText)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return host, port


def _positiveFloat(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not value >= 0:
        raise ValueError("must not be negative")
    return value


def _positiveInt(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _size(text: str) -> int:
    """
    A byte count with an optional K, M or G suffix (powers of 1024), as
    OpenSSH's RekeyLimit takes it; C{default} is 0.
    """
    if text == "default":
        return 0
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip(), re.IGNORECASE)
    if not match:
        raise ValueError("expected a size such as 512M or 1G, or default")
    return int(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " ")


def _yesNo(text: str) -> bool:
    if text.lower() in ("yes", "true", "on", "1"):
        return True
    if text.lower() in ("no", "false", "off", "0"):
        return False
    raise ValueError("expected yes or no")


def _choice(*choices: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return check


def _printableASCII(text: str) -> bool:
    return text.isascii() and text.isprintable() and not any(c.isspace() for c in text)


def _listenDescription(text: str) -> str:
    """
    A C{--metrics-listen} endpoint description twistd would accept, checked
    here so that a bad one is one line, not a traceback from strports.
    """
    from twisted.internet.endpoints import serverFromString

    try:
        # The reactor is only used once the endpoint listens.
        endpoint = serverFromString(None, text)
    except Exception as e:
        raise ValueError(f"not a server endpoint description ({e})") from None
    port = _twisted.endpointPort(endpoint)
    if port is not None and not 0 <= port <= 65535:
        raise ValueError("the port must be 0-65535")
    return text


#: (name, default, converter, help).  A default of None means "not set".
OPTIONS: list[tuple[str, Any, Callable[[str], Any] | None, str]] = [
    ("relay-address", "relay.incident.io:443", None, "Relay to dial, HOST:PORT or [IPV6]:PORT."),
    ("relay-user", None, None, "SSH login name on the relay (default: the connector ID)."),
    ("connector-id", None, None, "Connector ID issued by the platform."),
    ("api-token", None, None, "API token (prefer the environment variable or --api-token-file)."),
    ("api-token-file", None, None, "File holding the API token (e.g. a mounted Kubernetes secret)."),
    ("api-url", "https://api.incident.io", None, "Certificate API base URL (http:// only for loopback)."),
    ("api-ca-file", None, None, "PEM CA certificate to trust for the API, instead of the system's."),
    ("state-dir", None, None, "Where the connector keeps its key (default: per-user state folder)."),
    ("identity-file", None, None, "OpenSSH ed25519 private key, for self-hosted relays."),
    ("certificate-file", None, None, "OpenSSH user certificate for --identity-file (relays with a user CA)."),
    ("known-hosts", None, None, "OpenSSH known_hosts file that pins the relay's host key."),
    ("relay-host-key", None, None, "Relay host key fingerprint pin, SHA256:..."),
    ("forward-dest-allowlist", None, None, "Space-separated HOST:PORT destinations allowed (default: any)."),
    (
        "forward-dest-allowlist-file",
        None,
        None,
        "File of allowlist entries, # comments allowed; reloaded on SIGHUP and when it changes.",
    ),
    (
        "close-disallowed-streams",
        "no",
        _yesNo,
        "yes: when the allowlist is reloaded, close open streams it no longer allows.",
    ),
    ("audit-log", None, None, "Write one JSON line per stream to this file (- for stdout); reopened on SIGHUP."),
    ("metrics-listen", "tcp:9090", _listenDescription, "Twisted server endpoint for /metrics, /healthz, /readyz."),
    ("proxy", None, None, "HTTP proxy for the relay and the API, http://[user:pass@]host:port (beats HTTPS_PROXY)."),
    ("connections", 1, _positiveInt, "Independent SSH connections to the relay, each with its own forward."),
    ("keepalive-interval", 15.0, _positiveFloat, "Seconds between keepalives to the relay (0: off)."),
    ("keepalive-count", 3, _positiveInt, "Missed keepalive replies in a row that drop the connection."),
    ("grace-period", 30.0, _positiveFloat, "Seconds open streams may finish after SIGTERM."),
    ("max-streams", 1024, _positiveInt, "Concurrent streams; more are refused."),
    ("stream-idle-timeout", 0.0, _positiveFloat, "Close a stream idle this many seconds (0: never)."),
    (
        "half-close-timeout",
        300.0,
        _positiveFloat,
        "Close a stream this many seconds after either side's EOF if no byte moves (0: never).",
    ),
    (
        "rekey-limit",
        "default",
        _size,
        "Re-key the relay connection after this many bytes either way, e.g. 1G "
        "(default: OpenSSH's, 1G for chacha20-poly1305, 64G for AES).",
    ),
    ("rekey-interval", 0.0, _positiveFloat, "Re-key the relay connection after this many seconds (0: never)."),
    ("connect-timeout", 10.0, _positiveFloat, "Seconds to wait for a destination (or the relay) to accept."),
    (
        "setup-timeout",
        None,
        _positiveFloat,
        "Seconds from dialling the relay to the forward granted before the attempt is abandoned "
        "(default: 3 x --connect-timeout).",
    ),
    ("handshake-timeout", 10.0, _positiveFloat, "Seconds a SOCKS handshake may take."),
    ("reconnect-initial-delay", 1.0, _positiveFloat, "First reconnect delay, in seconds."),
    ("reconnect-max-delay", 30.0, _positiveFloat, "Longest reconnect delay, in seconds."),
    ("log-format", "text", _choice("text", "json"), "text or json (one JSON object per line)."),
    ("log-level", "info", _choice("debug", "info", "warn", "error"), "Least severe level logged."),
]

#: Options backed by environment variables other than the one their name
#: gives, the documented name first.  Each name is read; two that are set and
#: differ stop the program.
ENV_NAMES: dict[str, tuple[str, ...]] = {
    # The hosted connector-proxy documents INCIDENT_CONNECTOR_ID; the name
    # derived from the option is accepted too.
    "connector-id": ("INCIDENT_CONNECTOR_ID", "INCIDENT_CONNECTOR_CONNECTOR_ID"),
}

SECRETS = frozenset({"api-token", "proxy"})


class ConfigurationError(Exception):
    """
    The configuration is unusable; the message is the one line to print.
    """


class Options(usage.Options):
    """
    Options of the connector.  After parsing, each value is under its option
    name (C{self["relay-address"]}), converted, with env and defaults applied.
    Also set: C{relayHost}, C{relayPort}, C{allowlist}, C{allowlistFile}.
    """

    synopsis = "[options]"
    longdesc = (
        "Dial out over SSH to a relay, ask for a remote forward, and serve SOCKS "
        "on every forwarded channel to the destinations the allowlist names. "
        "Every --option can also be set as " + ENV_PREFIX + "OPTION (upper snake case), "
        "or as the variable its line names."
    )
    optParameters = [
        [
            name,
            None,
            None,
            f"{text} [env {' or '.join(envNames(name))}]" + (f" [default: {default}]" if default is not None else ""),
        ]
        for name, default, _convert, text in OPTIONS
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ

    def opt_version(self) -> NoReturn:
        """
        Print the version and exit.
        """
        sys.stdout.write(f"incident-connector {__version__}\n")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse, and on any error print one line and exit 2 instead of twistd's
        full usage text.
        """
        try:
            super().parseOptions(options)
        except (usage.UsageError, ConfigurationError) as e:
            fail(str(e))

    def postOptions(self) -> None:
        for name, default, convert, _text in OPTIONS:
            value = self[name]
            source = f"--{name}"
            fromEnvironment = self._fromEnvironment(name)
            if value is None and fromEnvironment is not None:
                source, value = fromEnvironment
            if value is None:
                self[name] = convert(default) if isinstance(default, str) and convert is not None else default
                continue
            if convert is not None:
                try:
                    value = convert(value)
                except ValueError as e:
                    shown = "<hidden>" if name in SECRETS else repr(value)
                    raise ConfigurationError(f"{source} {shown}: {e}") from None
            self[name] = value
        self.validate()

    def _fromEnvironment(self, name: str) -> tuple[str, str] | None:
        """
        The variable that sets C{--name} and its value, or L{None} if none is
        set (an empty value counts as unset).

        @raise ConfigurationError: if two of its variables are set and differ.
        """
        found = [(variable, self.environ[variable]) for variable in envNames(name) if self.environ.get(variable)]
        for variable, value in found[1:]:
            if value != found[0][1]:
                shown = (
                    f"{found[0][0]} and {variable}"
                    if name in SECRETS
                    else f"{found[0][0]} {found[0][1]!r} and {variable} {value!r}"
                )
                raise ConfigurationError(f"{shown} differ; set one of them")
        return found[0] if found else None

    def validate(self) -> None:
        """
        Check that the options make a connector that can start.  Sets
        C{relayHost}, C{relayPort}, C{allowlist}, C{relayProxy}, C{apiProxy},
        C{usesToken} and C{apiToken}.
        """
        try:
            self.relayHost, self.relayPort = parseHostPort(self["relay-address"], 22)
        except ValueError as e:
            raise ConfigurationError(f"--relay-address: {e}") from None
        self._loadAllowlist()
        pin = self["relay-host-key"]
        if pin is not None and not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}=?", pin):
            raise ConfigurationError(
                f"--relay-host-key {pin!r}: expected SHA256:<43 base64 characters>, as ssh-keygen -lf prints"
            )
        for name in ("identity-file", "known-hosts", "certificate-file", "api-ca-file", "api-token-file"):
            if self[name] is not None and not os.path.isfile(self[name]):
                raise ConfigurationError(f"--{name} {self[name]!r}: no such file")
        api = self._apiURL()
        try:
            self.relayProxy = proxyFor(self.relayHost, self.relayPort, self["proxy"], self.environ)
            # A proxy would see a loopback API's token in clear, and its own loopback is not ours.
            self.apiProxy = None if isLoopbackURL(self["api-url"]) else proxyFor(*api, self["proxy"], self.environ)
        except ValueError as e:
            raise ConfigurationError(f"--proxy (or HTTPS_PROXY/ALL_PROXY): {e}") from None
        if self["setup-timeout"] is None:
            self["setup-timeout"] = 3 * self["connect-timeout"]
        self.apiToken = self._readToken()
        self._checkText()
        self.usesToken = self["identity-file"] is None and self.apiToken is not None
        if self.usesToken:
            self._validateToken()
        else:
            self._validateKey()

    def _loadAllowlist(self) -> None:
        """
        Set C{allowlist} from the option or the file, and C{allowlistFile}
        to the file as read (or L{None}).
        """
        self.allowlistFile: LoadedFile | None = None
        if self["forward-dest-allowlist-file"] is not None:
            if self["forward-dest-allowlist"] is not None:
                raise ConfigurationError("give --forward-dest-allowlist or --forward-dest-allowlist-file, not both")
            try:
                self.allowlistFile = readAllowlistFile(self["forward-dest-allowlist-file"])
            except FileLoadError as e:
                raise ConfigurationError(str(e)) from None
            self.allowlist = self.allowlistFile.allowlist
            return
        try:
            self.allowlist = Allowlist.parse(self["forward-dest-allowlist"])
        except AllowlistError as e:
            raise ConfigurationError(f"--forward-dest-allowlist: {e}") from None

    def _apiURL(self) -> tuple[str, int]:
        """
        The API's host and port.  Error messages never quote a URL holding
        a user name or password.
        """
        if "@" in self["api-url"]:
            raise ConfigurationError(
                "--api-url: remove the user name or password (the part up to @): "
                "the API token is the only credential, and the URL is logged"
            )
        try:
            parts = urlsplit(self["api-url"])
        except ValueError as e:
            # "Invalid IPv6 URL": an unclosed '[' (the URL holds no credential here).
            raise ConfigurationError(f"--api-url {self['api-url']!r}: {e}") from None
        try:
            return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigurationError(f"--api-url {self['api-url']!r}: the port is not a number") from None

    def _readToken(self) -> str | None:
        if self["api-token"] is not None:
            return str(self["api-token"]).strip() or None
        if self["api-token-file"] is not None:
            warning = sharedSecretWarning(Path(self["api-token-file"]), "--api-token-file")
            if warning is not None:
                _log.warn("{problem}", problem=warning)
            try:
                with open(self["api-token-file"], encoding="utf-8") as f:
                    return f.read().strip() or None
            except OSError as e:
                raise ConfigurationError(f"--api-token-file {self['api-token-file']!r}: {e.strerror}") from None
            except UnicodeDecodeError:
                # Never the bytes: they may be most of the token.
                raise ConfigurationError(
                    f"--api-token-file {self['api-token-file']!r}: not UTF-8 text (expected the token alone)"
                ) from None
        return None

    def _checkText(self) -> None:
        """
        The values sent to the relay or the API as they are: printable, and
        encodable (an environment variable that is not UTF-8 decodes to lone
        surrogates, which fail only later, inside the retry loop, unlogged).
        The token is never quoted.
        """
        if self.apiToken is not None and not _printableASCII(self.apiToken):
            raise ConfigurationError(
                "the API token (--api-token, --api-token-file or its variable) holds a space, a control "
                "character or a character that is not ASCII; expected the token alone"
            )
        for name in ("connector-id", "relay-user"):
            value = self[name]
            if value is None:
                continue
            # Lone surrogates (bytes that were not UTF-8) are not printable either.
            if not value.isprintable():
                raise ConfigurationError(f"--{name} {value!r}: holds control characters or bytes that are not UTF-8")
            if value.strip() != value:
                raise ConfigurationError(f"--{name} {value!r}: leading or trailing whitespace")

    def _validateToken(self) -> None:
        if not self["connector-id"]:
            raise ConfigurationError("--connector-id is required with an API token")
        url = self["api-url"]
        if url.startswith("http://"):
            if not isLoopbackURL(url):
                raise ConfigurationError(f"--api-url {url!r}: http:// is only allowed for loopback; use https://")
        elif not url.startswith("https://"):
            raise ConfigurationError(f"--api-url {url!r}: expected an https:// URL")
        if self["state-dir"] is None:
            self["state-dir"] = defaultStateDir(self.environ)

    def _validateKey(self) -> None:
        if self["identity-file"] is None:
            raise ConfigurationError(
                "no credentials: give --connector-id with --api-token (or --api-token-file), "
                "or --identity-file for a self-hosted relay"
            )
        if self["relay-user"] is None:
            self["relay-user"] = self["connector-id"]
        if self["relay-user"] is None:
            raise ConfigurationError("--relay-user (or --connector-id) is required")
        if self["known-hosts"] is None and self["relay-host-key"] is None:
            raise ConfigurationError("the relay's host key must be pinned: give --known-hosts or --relay-host-key")

    def __repr__(self) -> str:
        shown = {k: ("<hidden>" if k in SECRETS and v else v) for k, v in self.items()}
        return f"<Options {shown}>"


def defaultStateDir(environ: Mapping[str, str]) -> str:
    """
    systemd's C{$STATE_DIRECTORY}, else C{$XDG_STATE_HOME} or C{~/.local/state}.
    """
    if environ.get("STATE_DIRECTORY"):
        return environ["STATE_DIRECTORY"].split(":")[0]
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "incident-connector")


def fail(message: str) -> NoReturn:
    """
    Print one line and exit with status 2 (a usage error).
    """
    sys.stderr.write(f"incident-connector: error: {message}\n")
    raise SystemExit(2)
