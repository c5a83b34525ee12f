"""
The reference relay's administrative surface: the connectors' API port serves
certificates and nothing else; listing and probing live on the admin socket
(a Unix socket in the data directory, mode 0600), which C{incident-relay}
uses; an admin listener anyone could reach is refused at start.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.relay.admin import checkAdminEndpoint

from .harness import REPO, echo, recvAll, twistdCommand, waitFor
from .test_token import TokenTestCase


class ConnectorsPortTests(TokenTestCase):
    def test_noAdminEndpoints(self) -> None:
        """
        Whoever reaches the connectors' API can neither list connectors nor
        probe destinations through a tunnel; a connector still gets its
        certificate there.
        """
        target = self.target(echo)
        connectorId, token = self.relay.add("demo")
        connector = self.startConnector(connectorId, token)
        connector.allocatedPort()
        for method, path, body in [
            ("GET", "/v1/connectors", None),
            ("GET", f"/v1/connectors/{connectorId}", None),
            ("POST", f"/v1/connectors/{connectorId}/test", {"destination": f"127.0.0.1:{target.port}"}),
            ("GET", f"/v1/connectors/{connectorId}/ssh-certificate/x", None),
        ]:
            request = urllib.request.Request(
                self.relay.apiURL + path, method=method, data=json.dumps(body).encode() if body else None
            )
            with self.assertRaises(urllib.error.HTTPError) as raised:
                urllib.request.urlopen(request, timeout=10)
            self.assertEqual(raised.exception.code, 404, path)
            self.assertNotIn(connectorId, raised.exception.read().decode(), path)
        self.assertEqual(target.accepts, 0)

    def test_largeBodyRefused(self) -> None:
        """
        A request body over 16 KiB, declared or chunked, ends the connection
        unanswered instead of being spooled to disk.
        """
        connectorId, _ = self.relay.add("demo")
        path = f"/v1/connectors/{connectorId}/ssh-certificate"
        for headers, body in [
            (f"Content-Length: {300 * 1024}\r\n", b"x" * 300 * 1024),
            ("Transfer-Encoding: chunked\r\n", b"".join(b"4000\r\n" + b"x" * 0x4000 + b"\r\n" for _ in range(20))),
        ]:
            sock = socket.create_connection(("127.0.0.1", self.relay.apiPort), timeout=10)
            answer = b""
            try:
                sock.sendall(f"POST {path} HTTP/1.1\r\nHost: relay\r\n{headers}\r\n".encode() + body)
                answer = recvAll(sock)
            except ConnectionError:
                pass
            finally:
                sock.close()
            self.assertEqual(answer, b"", headers)
        self.assertIn("request body over 16384 bytes", self.relay.log.read_text())


class AdminSocketTests(TokenTestCase):
    def test_listAndTest(self) -> None:
        """
        C{incident-relay list} and C{test} go through the admin socket, which
        only the relay's user can open; list shows each connection with its
        age and streams.
        """
        target = self.target(echo)
        connectorId, token = self.relay.add("demo")
        connector = self.startConnector(
            connectorId, token, "--connections", "2", "--forward-dest-allowlist", f"127.0.0.1:{target.port}"
        )
        port = connector.allocatedPort()
        socketPath = self.relay.dataDir / "admin.sock"
        self.assertTrue(stat.S_ISSOCK(socketPath.stat().st_mode))
        self.assertEqual(stat.S_IMODE(socketPath.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(self.relay.dataDir.stat().st_mode), 0o700)
        self.assertEqual(self.relay.cli("test", connectorId, f"127.0.0.1:{target.port}"), "ok\n")
        self.assertEqual(self.relay.cli("test", connectorId, "127.0.0.1:1"), "destination_not_allowed\n")

        def twoIdleForwards() -> list[dict[str, object]] | None:
            [listed] = json.loads(self.relay.cli("list", "--json"))
            connections = listed["connections"]
            states = [(c["state"], c["streams"]) for c in connections]
            return connections if states == [("forwarding", 0)] * 2 else None

        connections = waitFor(twoIdleForwards, 15, "both connections forwarding, streams over")
        for connection in connections:
            self.assertRegex(str(connection["peer"]), r"^127\.0\.0\.1:\d+$")
            self.assertGreaterEqual(connection["age_seconds"], 0)
        text = self.relay.cli("list")
        self.assertRegex(text, rf"{connectorId}\s+demo\s+online\s+connections=2\s+port={port}\n")
        self.assertRegex(text, r"\n    127\.0\.0\.1:\d+\s+forwarding\s+age=\d+s\s+streams=0\n")

    def test_listWithoutRelay(self) -> None:
        """
        With the relay stopped, list says so and shows what the registry knows.
        """
        connectorId, _ = self.relay.add("demo")
        self.relay.stop()
        result = subprocess.run(
            [sys.executable, "-c", "from incident_connector.relay.cli import run; run()", "--data-dir", "data", "list"],
            capture_output=True, text=True, timeout=30, cwd=self.relay.dir, env=dict(os.environ, PYTHONPATH=str(REPO)),
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, rf"{connectorId}\s+demo\s+unknown\s+connections=\?\s+port=-")
        self.assertRegex(
            result.stderr, r"^incident-relay: the relay does not answer on data/admin\.sock: .*live status unknown\n$"
        )


class AdminListenTests(SynchronousTestCase):
    def test_reachableAdminRefused(self) -> None:
        """
        An admin listener on every interface, or a non-loopback one, stops the
        relay with one line, exit status 2.
        """
        for listen in ["tcp:0", "tcp:0:interface=0.0.0.0", "tcp6:0:interface=\\:\\:", "tcp:0:interface=192.0.2.1"]:
            result = subprocess.run(
                [*twistdCommand(), "-n", "--pidfile=", "incident-relay", "--data-dir", self.mktemp(),
                 "--admin-listen", listen],
                capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)),
            )  # fmt: skip
            self.assertEqual(result.returncode, 2, listen)
            self.assertRegex(
                result.stderr,
                r"^incident-relay: error: --admin-listen: .* the admin API has no credential of its own; "
                r"listen on unix:PATH or on a loopback interface \(tcp:PORT:interface=127\.0\.0\.1\)\n$",
            )

    def test_localEndpointsAllowed(self) -> None:
        for listen in [
            "unix:/run/incident-relay/admin.sock:mode=600",
            "tcp:9000:interface=127.0.0.1",
            "tcp6:9000:interface=\\:\\:1",
        ]:
            checkAdminEndpoint(listen)
