"""
A drop-in for the hosted product's connector-proxy: its documented command
lines, run as written (the placeholders filled in, the relay and API pointed at
the reference relay through their environment variables), and the
C{connector-proxy} command's exit statuses, C{--help} and C{--version}.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser
from twisted.trial.unittest import SynchronousTestCase

from incident_connector import __version__
from incident_connector.options import Options

from .harness import (
    REPO,
    Connector,
    ReferenceRelay,
    Target,
    consoleScript,
    echo,
    http200,
    socks5Connect,
)

#: The hosted product's documentation, verbatim.
DOCUMENTED_DOCKER = (
    "docker run --rm -e INCIDENT_CONNECTOR_ID=<connector-id> -e INCIDENT_CONNECTOR_API_TOKEN=<token> "
    "incidentio/connector-proxy"
)
DOCUMENTED_BINARY = (
    "./connector-proxy --connector-id=<connector-id> --api-token=<token> "
    '--forward-dest-allowlist="grafana.internal:3000 prometheus.internal:9090"'
)
TOKEN = "s3cret-token-never-shown"


def entrypoint() -> list[str]:
    """
    The Docker image's ENTRYPOINT, its program run as the console script
    pyproject declares (what pip installs in the image).
    """
    parser = DockerfileParser(fileobj=open(REPO / "Dockerfile", "rb"))
    try:
        value = [i["value"] for i in parser.structure if i["instruction"] == "ENTRYPOINT"][-1]
    finally:
        parser.fileobj.close()
    program, *arguments = yaml.safe_load(value)
    return [*consoleScript(program), *arguments]


def dockerRun(line: str) -> tuple[dict[str, str], list[str]]:
    """
    Split a C{docker run} line into the environment it sets (C{-e NAME=VALUE})
    and the arguments after the image name.
    """
    words = shlex.split(line)
    assert words[:2] == ["docker", "run"], words
    environment: dict[str, str] = {}
    rest = words[2:]
    while rest[0].startswith("-"):
        flag = rest.pop(0)
        if flag == "-e":
            name, _, value = rest.pop(0).partition("=")
            environment[name] = value
    image, *arguments = rest
    assert image == "incidentio/connector-proxy", image
    return environment, arguments


def fill(text: str, connectorId: str, token: str) -> str:
    return text.replace("<connector-id>", connectorId).replace("<token>", token)


class DocumentedCommandLineTests(SynchronousTestCase):
    """
    The two documented ways to run it bring a tunnel up against the reference
    relay: it logs the allocated port, the relay lists the connector online,
    and the relay's test call gets through to what is allowed and is refused
    what is not.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.relay = ReferenceRelay(self.dir / "relay").start()
        self.addCleanup(self.relay.stop)
        self.connectorId, self.token = self.relay.add("dropin")
        self.grafana = self.target(http200)
        self.prometheus = self.target(http200)
        self.forbidden = self.target(echo)

    def target(self, handler) -> Target:  # type: ignore[no-untyped-def]
        target = Target(handler)
        self.addCleanup(target.close)
        return target

    def environment(self) -> dict[str, str]:
        """
        Only the relay and API addresses point at the reference relay.  HOME
        is the test's own (as a container's is), so the key lands there, and
        L{Connector} moves the metrics listener off port 9090 through its
        variable, so parallel runs do not collide; the command line is as
        documented.
        """
        home = self.dir / "home"
        return {
            "INCIDENT_CONNECTOR_RELAY_ADDRESS": f"127.0.0.1:{self.relay.sshPort}",
            "INCIDENT_CONNECTOR_API_URL": self.relay.apiURL,
            "HOME": str(home),
            "XDG_STATE_HOME": str(home / ".local" / "state"),
        }

    def startProxy(self, program: list[str], args: list[str], environment: dict[str, str]) -> Connector:
        connector = Connector(self.dir / "connector", args, {**self.environment(), **environment}, program)
        connector.start()
        self.addCleanup(connector.stop)
        return connector

    def probe(self, destination: str) -> str:
        """
        The relay's test call (on its admin socket), as the platform would make it.
        """
        return self.relay.cli("test", self.connectorId, destination).strip()

    def assertServing(self, connector: Connector) -> None:
        port = connector.allocatedPort(timeout=30)
        self.assertRegex(self.relay.cli("list"), rf"{self.connectorId}\s+dropin\s+online\s+connections=1\s+port={port}")
        self.assertEqual(self.probe(f"localhost:{self.grafana.port}"), "ok")
        self.assertEqual(self.probe(f"127.0.0.1:{self.prometheus.port}"), "ok")
        self.assertNotIn(self.token, connector.text())

    def test_dockerRunEnvironmentOnly(self) -> None:
        """
        C{docker run -e INCIDENT_CONNECTOR_ID=… -e INCIDENT_CONNECTOR_API_TOKEN=…
        incidentio/connector-proxy}: the entrypoint, configured by environment
        alone.  With no allowlist every destination is allowed, with a warning.
        """
        environment, arguments = dockerRun(fill(DOCUMENTED_DOCKER, self.connectorId, self.token))
        self.assertEqual(arguments, [])
        connector = self.startProxy(entrypoint(), arguments, environment)
        self.assertServing(connector)
        self.assertEqual(self.probe(f"127.0.0.1:{self.forbidden.port}"), "ok")
        self.assertIn("no --forward-dest-allowlist: every destination reachable from here is allowed", connector.text())

    def test_dockerRunWithFlags(self) -> None:
        """
        Flags appended after the image name reach the connector: the
        documented allowlist flag limits what the relay's test call reaches.
        """
        line = (
            DOCUMENTED_DOCKER
            + f' --forward-dest-allowlist="localhost:{self.grafana.port} 127.0.0.1:{self.prometheus.port}"'
        )
        environment, arguments = dockerRun(fill(line, self.connectorId, self.token))
        connector = self.startProxy(entrypoint(), arguments, environment)
        self.assertServing(connector)
        self.assertEqual(self.probe(f"127.0.0.1:{self.forbidden.port}"), "destination_not_allowed")
        self.assertEqual(self.forbidden.accepts, 0)

    def test_binaryCommandLine(self) -> None:
        """
        C{./connector-proxy --connector-id=… --api-token=…
        --forward-dest-allowlist="grafana.internal:3000 prometheus.internal:9090"},
        with the two example destinations replaced by local ones.
        """
        line = fill(DOCUMENTED_BINARY, self.connectorId, self.token)
        line = line.replace("grafana.internal:3000", f"localhost:{self.grafana.port}")
        line = line.replace("prometheus.internal:9090", f"127.0.0.1:{self.prometheus.port}")
        program, *arguments = shlex.split(line)
        self.assertEqual(program, "./connector-proxy")
        connector = self.startProxy(consoleScript("connector-proxy"), arguments, {})
        self.assertServing(connector)
        self.assertEqual(self.probe(f"127.0.0.1:{self.forbidden.port}"), "destination_not_allowed")
        self.assertEqual(self.forbidden.accepts, 0)
        connector.signal(signal.SIGTERM)
        self.assertEqual(connector.wait(30), 0)
        self.assertNotIn(self.token, connector.text())


class ProxyCommandTests(SynchronousTestCase):
    """
    C{connector-proxy}'s own behaviour: exit statuses, C{--help},
    C{--version}, the conflicting connector ID variables.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)

    def proxy(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*consoleScript("connector-proxy"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.dir,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(self.dir), **(env or {})},
        )

    def assertOneErrorLine(self, result: subprocess.CompletedProcess[str], status: int, text: str) -> None:
        self.assertEqual(result.returncode, status, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(text, lines[0])

    def test_documentedCommandLineAsWritten(self) -> None:
        """
        The documented binary command line, its allowlist unchanged, gives the
        connector ID, the token and the two destinations it names.
        """
        _program, *arguments = shlex.split(fill(DOCUMENTED_BINARY, "conn_1", TOKEN))
        options = Options(environ={})
        options.parseOptions(arguments)
        self.assertEqual((options["connector-id"], options.apiToken, options.usesToken), ("conn_1", TOKEN, True))
        self.assertEqual(
            [rule.text for rule in options.allowlist.rules], ["grafana.internal:3000", "prometheus.internal:9090"]
        )

    def test_version(self) -> None:
        result = self.proxy("--version")
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr), (0, f"incident-connector {__version__}\n", "")
        )

    def test_helpNamesDocumentedVariableFirst(self) -> None:
        """
        C{--help} names C{INCIDENT_CONNECTOR_ID} before the long form and never
        shows the token, even when the environment sets it.
        """
        result = self.proxy("--help", env={"INCIDENT_CONNECTOR_API_TOKEN": TOKEN, "INCIDENT_CONNECTOR_ID": "conn_x"})
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("Usage: connector-proxy [options]"), result.stdout[:200])
        help = re.sub(r"\s+", " ", result.stdout)
        self.assertIn("[env INCIDENT_CONNECTOR_ID or INCIDENT_CONNECTOR_CONNECTOR_ID]", help)
        self.assertIn("--forward-dest-allowlist", help)
        self.assertNotIn(TOKEN, result.stdout + result.stderr)

    def test_conflictingConnectorIds(self) -> None:
        result = self.proxy(
            env={
                "INCIDENT_CONNECTOR_ID": "conn_a",
                "INCIDENT_CONNECTOR_CONNECTOR_ID": "conn_b",
                "INCIDENT_CONNECTOR_API_TOKEN": TOKEN,
            }
        )
        self.assertOneErrorLine(
            result,
            2,
            "INCIDENT_CONNECTOR_ID 'conn_a' and INCIDENT_CONNECTOR_CONNECTOR_ID 'conn_b' differ; set one of them",
        )
        self.assertNotIn(TOKEN, result.stderr)

    def test_badUsage(self) -> None:
        self.assertOneErrorLine(self.proxy("--max-streams=lots"), 2, "--max-streams 'lots': expected a whole number")
        self.assertOneErrorLine(self.proxy("--bogus"), 2, "option --bogus not recognized")
        self.assertOneErrorLine(self.proxy(), 2, "no credentials")

    def test_cannotStart(self) -> None:
        """
        A metrics port already taken: one line saying so, exit status 1.
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        result = self.proxy(
            f"--metrics-listen=tcp:{port}:interface=127.0.0.1",
            "--connector-id=conn_1",
            "--api-url=http://127.0.0.1:9",
            f"--state-dir={self.dir / 'state'}",
            env={"INCIDENT_CONNECTOR_API_TOKEN": TOKEN},
        )
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertRegex(result.stdout, rf"cannot start: .*127\.0\.0\.1:{port}.*(in use|Address already)")
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertNotIn(TOKEN, result.stdout + result.stderr)


class SignalTests(SynchronousTestCase):
    """
    SIGTERM and SIGINT drain and exit 0; a second signal exits at once with 1.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.relay = ReferenceRelay(self.dir / "relay").start()
        self.addCleanup(self.relay.stop)
        self.connectorId, self.token = self.relay.add("signals")
        self.server = Target(echo)
        self.addCleanup(self.server.close)

    def start(self, *args: str) -> Connector:
        connector = Connector(
            self.dir / "connector",
            [f"--connector-id={self.connectorId}", *args],
            {
                "INCIDENT_CONNECTOR_API_TOKEN": self.token,
                "INCIDENT_CONNECTOR_RELAY_ADDRESS": f"127.0.0.1:{self.relay.sshPort}",
                "INCIDENT_CONNECTOR_API_URL": self.relay.apiURL,
                "INCIDENT_CONNECTOR_STATE_DIR": str(self.dir / "state"),
            },
            consoleScript("connector-proxy"),
        ).start()
        self.addCleanup(connector.stop)
        return connector

    def test_sigtermAfterDrainExitsZero(self) -> None:
        connector = self.start()
        port = connector.allocatedPort(timeout=30)
        sock, code = socks5Connect(port, "127.0.0.1", self.server.port)
        self.assertEqual(code, 0)
        connector.signal(signal.SIGTERM)
        connector.waitForLog("draining 1 open streams")
        sock.sendall(b"still here")
        self.assertEqual(sock.recv(10), b"still here")
        sock.close()
        self.assertEqual(connector.wait(30), 0)

    def test_sigintExitsZero(self) -> None:
        connector = self.start()
        connector.allocatedPort(timeout=30)
        connector.signal(signal.SIGINT)
        self.assertEqual(connector.wait(30), 0)

    def test_secondSignalExitsOne(self) -> None:
        connector = self.start("--grace-period=600")
        port = connector.allocatedPort(timeout=30)
        sock, _ = socks5Connect(port, "127.0.0.1", self.server.port)
        self.addCleanup(sock.close)
        connector.signal(signal.SIGTERM)
        connector.waitForLog("draining 1 open streams")
        started = time.monotonic()
        connector.signal(signal.SIGTERM)
        self.assertEqual(connector.wait(10), 1)
        self.assertLess(time.monotonic() - started, 10)
        self.assertIn("during drain: exiting now", connector.text())

    def test_noPluginDiscovery(self) -> None:
        """
        Nothing looks for twistd plugins: with C{twisted.plugin.getPlugins}
        made to fail, the tunnel still comes up and drains.
        """
        program = consoleScript("connector-proxy")
        program[-1] = (
            "import twisted.plugin\n"
            "def refuse(*args, **kwargs):\n"
            "    raise SystemExit('plugin discovery attempted')\n"
            "twisted.plugin.getPlugins = refuse\n" + program[-1]
        )
        connector = Connector(self.dir / "noplugins", [f"--connector-id={self.connectorId}"], {
            "INCIDENT_CONNECTOR_API_TOKEN": self.token,
            "INCIDENT_CONNECTOR_RELAY_ADDRESS": f"127.0.0.1:{self.relay.sshPort}",
            "INCIDENT_CONNECTOR_API_URL": self.relay.apiURL,
            "INCIDENT_CONNECTOR_STATE_DIR": str(self.dir / "state"),
        }, program).start()  # fmt: skip
        self.addCleanup(connector.stop)
        connector.allocatedPort(timeout=30)
        connector.signal(signal.SIGTERM)
        self.assertEqual(connector.wait(30), 0)
        self.assertNotIn("plugin discovery attempted", connector.text())


class IncidentConnectorCommandTests(SynchronousTestCase):
    """
    C{incident-connector} without a subcommand lists C{check} and points to
    C{connector-proxy}.
    """

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*consoleScript("incident-connector"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        )

    def test_noSubcommand(self) -> None:
        result = self.command()
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertRegex(result.stdout, r"(?m)^Usage: incident-connector COMMAND")
        self.assertRegex(result.stdout, r"(?m)^\s+check\s")
        self.assertIn("connector-proxy", result.stdout)

    def test_version(self) -> None:
        result = self.command("--version")
        self.assertEqual((result.returncode, result.stdout), (0, f"incident-connector {__version__}\n"))

    def test_unknownSubcommand(self) -> None:
        result = self.command("run")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("unknown command 'run'", result.stderr)

    def test_checkHelp(self) -> None:
        result = self.command("check", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--forward-dest-allowlist", result.stdout)
