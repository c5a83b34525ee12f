"""
What an operator sees: metrics that count exactly what happened, health
endpoints that follow the tunnel, JSON logs without secrets, and C{check}.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from .harness import Target, TunnelTestCase, echo, recvAll, recvExactly, socks5Connect, waitFor, writeKeyPair

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsTests(TunnelTestCase):
    def test_countersMoveExactly(self) -> None:
        """
        Three echoed streams and two denials move the counters by exactly that.
        """
        server = self.target(echo)
        forbidden = self.target(echo)
        connector = self.startConnector("--forward-dest-allowlist", f"127.0.0.1:{server.port}")
        port = connector.allocatedPort()
        status, text = connector.get("/metrics")
        self.assertEqual(status, 200)
        before = scrape(text)
        self.assertEqual(value(before, "incident_connector_tunnel_up", connection="0"), 1)
        self.assertGreaterEqual(value(before, "incident_connector_connection_attempts_total", connection="0"), 1)
        self.assertIn(("incident_connector_build_info", ()), {(k[0], ()) for k in before})
        self.assertGreater(value(before, "process_resident_memory_bytes"), 0)

        for size in (100, 2000, 30000):
            sock, code = socks5Connect(port, "127.0.0.1", server.port)
            self.assertEqual(code, 0)
            sock.sendall(b"z" * size)
            recvExactly(sock, size)
            sock.close()
        for _ in range(2):
            sock, code = socks5Connect(port, "127.0.0.1", forbidden.port)
            self.assertEqual(code, 2)
            sock.close()

        def settled() -> Samples | None:
            after = scrape(connector.get("/metrics")[1])
            ended = value(after, "incident_connector_streams_total", result="ok")
            if value(after, "incident_connector_streams_active") == 0 and ended == 3:
                return after
            return None

        after = waitFor(settled, 10, "five streams to end")

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(moved("incident_connector_streams_total", result="ok"), 3)
        self.assertEqual(moved("incident_connector_streams_total", result="denied"), 2)
        self.assertEqual(moved("incident_connector_bytes_total", direction="up"), 32100)
        self.assertEqual(moved("incident_connector_bytes_total", direction="down"), 32100)
        self.assertEqual(moved("incident_connector_socks_handshake_seconds_count"), 5)
        self.assertEqual(moved("incident_connector_dial_seconds_count"), 3)
        self.assertNotIn(str(forbidden.port), text_without_ports(after))

    def test_readyzFollowsTheTunnel(self) -> None:
        """
        /readyz: 503 before the forward, 200 with it, 503 when the relay is gone;
        /healthz stays 200 throughout.
        """
        self.relay.stop()
        connector = self.startConnector("--reconnect-initial-delay", "0.1", "--reconnect-max-delay", "0.5")
        waitFor(lambda: connector.get("/healthz")[0] == 200, 15, "the health endpoint")
        status, body = connector.get("/readyz")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["connections_up"], 0)
        self.relay.start()
        port = connector.allocatedPort()
        status, body = connector.get("/readyz")
        self.assertEqual(status, 200)
        document = json.loads(body)
        self.assertEqual(document["allocated_ports"], [port])
        self.assertEqual(document["status"], "ok")
        self.relay.stop()
        waitFor(lambda: connector.get("/readyz")[0] == 503, 15, "/readyz to turn 503")
        self.assertEqual(connector.get("/healthz")[0], 200)
        self.assertIsNotNone(json.loads(connector.get("/readyz")[1])["last_error"])


def text_without_ports(samples: Samples) -> str:
    """
    Every label value in the scrape: destinations must never be among them.
    """
    return " ".join(v for (_name, labels) in samples for _k, v in labels)


class LogTests(TunnelTestCase):
    def test_jsonLogsHoldNoToken(self) -> None:
        token = "tok_secret_0123456789"
        server = self.target(echo)
        connector = self.startConnector(
            "--log-format", "json", env={"INCIDENT_CONNECTOR_API_TOKEN": token, "INCIDENT_CONNECTOR_CONNECTOR_ID": "c1"}
        )

        def allocated() -> dict[str, object] | None:
            for line in connector.text().splitlines():
                event = json.loads(line)
                if "Allocated port" in str(event.get("log_format")):
                    return event
            return None

        event = waitFor(allocated, 15, "the allocated-port event")
        port = int(event["port"])  # type: ignore[call-overload]
        sock, _ = socks5Connect(port, "127.0.0.1", server.port)
        sock.sendall(b"hi")
        recvExactly(sock, 2)
        sock.close()
        waitFor(lambda: '"result": "ok"' in connector.text(), 10, "the stream's log event")
        lines = connector.text().splitlines()
        self.assertGreater(len(lines), 3)
        for line in lines:
            self.assertIsInstance(json.loads(line), dict)
        self.assertNotIn(token, connector.text())


class CheckTests(TunnelTestCase):
    def test_goodSetup(self) -> None:
        server = self.target(echo)
        result = self.check(*self.connectorArgs(), "--forward-dest-allowlist", f"127.0.0.1:{server.port}")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["ok"] * 7, lines)
        self.assertIn(f"host key verified ({self.relay.fingerprint})", result.stdout)
        self.assertRegex(result.stdout, r"forward granted \(relay port \d+\)")
        self.assertIn(f"destination 127.0.0.1:{server.port} reachable", result.stdout)

    def test_wrongHostKey(self) -> None:
        args = self.connectorArgs()
        knownHosts = self.dir / "wrong"
        other = writeKeyPair(self.dir / "other").split()
        knownHosts.write_text(f"[127.0.0.1]:{self.relay.port} {other[0]} {other[1]}\n")
        args[args.index("--known-hosts") + 1] = str(knownHosts)
        result = self.check(*args)
        self.assertEqual(result.returncode, 1)
        self.assertIn("FAIL  host key verified: host key verification failed", result.stdout)
        self.assertIn("skip  authenticated", result.stdout)

    def test_unreachableRelay(self) -> None:
        self.relay.stop()
        result = self.check(*self.connectorArgs())
        self.assertEqual(result.returncode, 1)
        self.assertRegex(result.stdout, r"FAIL  relay 127\.0\.0\.1:\d+ reachable \(TCP\): .*refused")

    def test_unreachableDestination(self) -> None:
        closed = Target(echo)
        closed.close()
        result = self.check(*self.connectorArgs(), "--forward-dest-allowlist", f"127.0.0.1:{closed.port} *:443")
        self.assertEqual(result.returncode, 1)
        self.assertIn("ok    forward granted", result.stdout)
        self.assertRegex(result.stdout, rf"FAIL  destination 127\.0\.0\.1:{closed.port} reachable: .*refused")
        self.assertIn(
            "skip  destination *:443 reachable: a wildcard, network or port range cannot be tried", result.stdout
        )

    def test_badOptions(self) -> None:
        result = self.check("--max-streams", "x")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.splitlines()), 1)


__all__ = ["recvAll"]
