"""
Deployable anywhere: out through an HTTP CONNECT proxy, several relay
connections, the Docker image's entrypoint, the systemd files.  (Kubernetes:
test_helm; ECS: test_ecs.)
"""

from __future__ import annotations

import configparser
import os
import re
import signal
import subprocess
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser
from twisted.trial.unittest import SynchronousTestCase

from .harness import (
    REPO,
    Connector,
    ConnectProxy,
    ReferenceRelay,
    TunnelTestCase,
    consoleScript,
    descendants,
    echo,
    freePort,
    http200,
    recvExactly,
    socks5Connect,
    waitFor,
)


class ProxyTests(TunnelTestCase):
    def proxy(self, credentials: tuple[str, str] | None = None, hosts: dict[str, str] | None = None) -> ConnectProxy:
        proxy = ConnectProxy(credentials, hosts)
        self.addCleanup(proxy.close)
        return proxy

    def test_throughHTTPSProxyEnvironment(self) -> None:
        http = self.target(http200)
        proxy = self.proxy()
        connector = self.startConnector(env={"HTTPS_PROXY": proxy.url()})
        port = connector.allocatedPort()
        self.assertEqual(proxy.tunnels, [f"127.0.0.1:{self.relay.port}"])
        self.assertIn(f"via proxy http://127.0.0.1:{proxy.port}", connector.text())
        result = self.curl(port, f"http://127.0.0.1:{http.port}/")
        self.assertEqual(result.stdout, "hello from the private network\n")

    def test_noProxyBypasses(self) -> None:
        proxy = self.proxy()
        connector = self.startConnector(env={"ALL_PROXY": proxy.url(), "NO_PROXY": "localhost,127.0.0.1"})
        connector.allocatedPort()
        self.assertEqual(proxy.tunnels, [])

    def test_proxyOptionWins(self) -> None:
        used = self.proxy()
        ignored = self.proxy()
        connector = self.startConnector("--proxy", used.url(), env={"HTTPS_PROXY": ignored.url()})
        connector.allocatedPort()
        self.assertEqual((len(used.tunnels), len(ignored.tunnels)), (1, 0))

    def test_proxyAuthentication(self) -> None:
        proxy = self.proxy(("alice", "s3cret-pw"))
        good = self.startConnector("--proxy", proxy.url(("alice", "s3cret-pw")))
        good.allocatedPort()
        self.assertNotIn("s3cret-pw", good.text())
        bad = self.startConnector("--proxy", proxy.url())
        bad.waitForLog(
            rf"cannot reach relay: proxy http://127\.0\.0\.1:{proxy.port} refused CONNECT to 127\.0\.0\.1:"
            rf"{self.relay.port}: 407 Proxy Authentication Required \(it wants credentials"
        )
        wrong = self.startConnector("--proxy", proxy.url(("alice", "wrong")))
        wrong.waitForLog("407 Proxy Authentication Required \\(it refused the credentials\\)")
        self.assertNotIn("wrong", wrong.text().replace("refused the credentials", ""))

    def test_tokenAuthenticationThroughProxy(self) -> None:
        """
        The SSH connection goes through the proxy; the certificate API, on
        loopback, does not (the proxy would see the token in clear, and
        would reach its own loopback, not ours).
        """
        relay = ReferenceRelay(self.dir / "reference").start()
        self.addCleanup(relay.stop)
        connectorId, token = relay.add("proxied")
        proxy = self.proxy()
        connector = Connector(
            self.dir / "token",
            ["--connector-id", connectorId, "--api-url", relay.apiURL, "--relay-address",
             f"127.0.0.1:{relay.sshPort}", "--state-dir", str(self.dir / "state")],
            env={"INCIDENT_CONNECTOR_API_TOKEN": token, "HTTPS_PROXY": proxy.url()},
        ).start()  # fmt: skip
        self.addCleanup(connector.stop)
        connector.allocatedPort()
        self.assertEqual(proxy.tunnels, [f"127.0.0.1:{relay.sshPort}"])

    def test_remoteAPIThroughProxy(self) -> None:
        """
        An API under a name only the proxy resolves is reached through the
        proxy, over TLS verified end to end (CONNECT, then TLS inside).
        """
        from .test_token import makeTLS

        caFile, certFile, keyFile = makeTLS(self.dir / "tls", withIP=False, name="api.relay.test")
        relay = ReferenceRelay(self.dir / "reference", scheme="https")
        relay.apiListen = f"ssl:{relay.apiPort}:interface=127.0.0.1:privateKey={keyFile}:certKey={certFile}"
        relay.start()
        self.addCleanup(relay.stop)
        connectorId, token = relay.add("proxied")
        proxy = self.proxy(hosts={"api.relay.test": "127.0.0.1"})
        connector = Connector(
            self.dir / "token",
            ["--connector-id", connectorId, "--api-url", f"https://api.relay.test:{relay.apiPort}",
             "--api-ca-file", str(caFile), "--relay-address", f"127.0.0.1:{relay.sshPort}",
             "--state-dir", str(self.dir / "state")],
            env={"INCIDENT_CONNECTOR_API_TOKEN": token, "HTTPS_PROXY": proxy.url()},
        ).start()  # fmt: skip
        self.addCleanup(connector.stop)
        connector.allocatedPort()
        self.assertEqual(
            sorted(proxy.tunnels), sorted([f"api.relay.test:{relay.apiPort}", f"127.0.0.1:{relay.sshPort}"])
        )


class ConnectionsTests(TunnelTestCase):
    def test_threeConnections(self) -> None:
        """
        --connections 3: three forwards; one connection's loss reconnects that
        one alone while streams on the others go on.
        """
        server = self.target(echo)
        connector = self.startConnector(
            "--connections", "3", "--reconnect-initial-delay", "0.1", "--reconnect-max-delay", "0.5"
        )
        waitFor(lambda: connector.text().count("Allocated port") == 3, 15, "three forwards")
        ports = {
            int(port): label
            for port, label in re.findall(
                r"Allocated port (\d+) for remote forward to socks \(relay (\d/3)\)", connector.text()
            )
        }
        # Every relay line names its connection.
        self.assertEqual(sorted(ports.values()), ["1/3", "2/3", "3/3"])
        for line in connector.text().splitlines():
            if "connecting to relay" in line:
                self.assertRegex(line, r"relay \d/3: connecting to relay")
        streams = {}
        for port in ports:
            sock, code = socks5Connect(port, "127.0.0.1", server.port)
            self.assertEqual(code, 0)
            streams[port] = sock
        self.assertEqual(connector.get("/readyz")[0], 200)
        # Kill one SSH connection: sshd's per-connection process for it.
        assert self.relay.process is not None
        children = [pid for pid in descendants(self.relay.process.pid) if _parent(pid) == self.relay.process.pid]
        self.assertEqual(len(children), 3)
        mark = len(connector.text())
        os.kill(children[0], signal.SIGKILL)
        lost = connector.waitForLog(r"connection lost after", after=mark)
        new = connector.allocatedPort(after=mark)
        self.assertNotIn(new, ports)
        alive = [port for port in ports if _stillServing(streams[port])]
        self.assertEqual(len(alive), 2, lost.string)
        self.assertEqual(connector.text()[mark:].count("Allocated port"), 1)
        for sock in streams.values():
            sock.close()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _stillServing(sock) -> bool:  # type: ignore[no-untyped-def]
    try:
        sock.settimeout(5)
        sock.sendall(b"ping")
        return recvExactly(sock, 4) == b"ping"
    except OSError:
        return False


class DockerfileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.parser = DockerfileParser(fileobj=open(REPO / "Dockerfile", "rb"))
        self.addCleanup(self.parser.fileobj.close)

    def instructions(self, name: str) -> list[str]:
        return [i["value"] for i in self.parser.structure if i["instruction"] == name]

    def test_properties(self) -> None:
        froms = self.instructions("FROM")
        self.assertGreaterEqual(len(froms), 2, "multi-stage: build the wheel first")
        for base in froms:
            self.assertRegex(base, r"^python:3\.\d+-slim\b")
        self.assertIn("/wheels", " ".join(self.instructions("COPY")))
        users = self.instructions("USER")
        self.assertTrue(users and users[-1] not in ("root", "0"), users)
        # The hosted product's image name and command: flags go after the image name.
        self.assertEqual(yaml.safe_load(self.instructions("ENTRYPOINT")[-1]), ["connector-proxy"])
        self.assertEqual(self.instructions("CMD"), [], "a CMD would become arguments to connector-proxy")
        self.assertIn("9090", self.instructions("EXPOSE"))
        self.assertIn("/healthz", self.instructions("HEALTHCHECK")[-1])
        self.assertNotIn("TOKEN", " ".join(self.instructions("ENV")))

    def test_testedVersions(self) -> None:
        """
        The image installs the dependency versions CI tested, and those lie in
        the range pyproject.toml admits.
        """
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        self.assertTrue(any("-c constraints.txt" in run for run in self.instructions("RUN")))
        pinned = {
            canonicalize_name(name): version
            for name, version in (
                line.split("==")
                for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#")
            )
        }
        import tomllib

        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        for text in project["dependencies"]:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            self.assertIn(name, pinned, requirement.name)
            self.assertIn(pinned[name], requirement.specifier, requirement)
            if requirement.name in ("twisted", "cryptography"):
                self.assertTrue(any(spec.operator == "<" for spec in requirement.specifier), f"{text}: no ceiling")


class EntrypointTests(TunnelTestCase):
    def test_entrypointWithEnvironmentOnly(self) -> None:
        """
        The image's ENTRYPOINT command line, configured by environment alone,
        brings the tunnel up; its HEALTHCHECK command passes.
        """
        parser = DockerfileParser(fileobj=open(REPO / "Dockerfile", "rb"))
        entrypoint = yaml.safe_load([i["value"] for i in parser.structure if i["instruction"] == "ENTRYPOINT"][-1])
        healthcheck = [i["value"] for i in parser.structure if i["instruction"] == "HEALTHCHECK"][-1]
        parser.fileobj.close()
        self.assertEqual(entrypoint, ["connector-proxy"])
        metricsPort = freePort()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INCIDENT_CONNECTOR_")}
        env.update(
            PYTHONPATH=str(REPO),
            INCIDENT_CONNECTOR_RELAY_ADDRESS=f"127.0.0.1:{self.relay.port}",
            INCIDENT_CONNECTOR_RELAY_USER="root" if os.geteuid() == 0 else os.environ.get("USER", "root"),
            INCIDENT_CONNECTOR_IDENTITY_FILE=str(self.relay.userKey),
            INCIDENT_CONNECTOR_KNOWN_HOSTS=str(self.relay.knownHosts()),
            INCIDENT_CONNECTOR_METRICS_LISTEN=f"tcp:{metricsPort}:interface=127.0.0.1",
        )
        log = self.dir / "entrypoint.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                consoleScript(entrypoint[0]) + entrypoint[1:],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.dir,
            )
        self.addCleanup(lambda: (process.kill(), process.wait()))
        waitFor(lambda: "Allocated port" in log.read_text(), 15, "the tunnel from the entrypoint")
        command = re.search(r'CMD \["python", "-c", "(.*)"\]', healthcheck)
        assert command is not None
        probe = command.group(1).replace(":9090/", f":{metricsPort}/")
        self.assertEqual(subprocess.run([os.sys.executable, "-c", probe], timeout=30).returncode, 0)  # type: ignore[attr-defined]


class DeployFilesTests(SynchronousTestCase):
    def test_systemdUnit(self) -> None:
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read(REPO / "deploy" / "systemd" / "incident-connector.service")
        service = unit["Service"]
        for key, value in [
            ("DynamicUser", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("Restart", "always"),
            ("EnvironmentFile", "/etc/incident-connector/env"),
            ("StateDirectory", "incident-connector"),
            ("CapabilityBoundingSet", ""),
            ("LimitNOFILE", "65536"),
        ]:
            self.assertEqual(service[key], value, key)
        self.assertTrue(service["ExecStart"].endswith("/connector-proxy"))
        self.assertEqual(unit["Install"]["WantedBy"], "multi-user.target")
        environment = (REPO / "deploy" / "systemd" / "env.example").read_text()
        self.assertIn("INCIDENT_CONNECTOR_API_TOKEN=", environment)
