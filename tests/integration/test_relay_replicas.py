"""
Two connector processes with one connector ID against the reference relay:
the relay spreads streams over both; when one is stopped (SIGTERM: it cancels
its forward and drains), requests arriving meanwhile go to the other and none
fails, and transfers in flight on the stopping one complete byte-exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time

from .harness import Connector, MiB, echo, recvExactly, socks5Connect, waitFor
from .test_token import TokenTestCase


def request(port: int, targetPort: int, payload: bytes) -> None:
    """
    One short request through the relay's SOCKS port: echoed byte-exact, or raise.
    """
    sock, code = socks5Connect(port, "127.0.0.1", targetPort)
    try:
        if code != 0:
            raise AssertionError(f"SOCKS reply {code}")
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        echoed = b""
        while chunk := sock.recv(65536):
            echoed += chunk
        if echoed != payload:
            raise AssertionError(f"echoed {len(echoed)} of {len(payload)} bytes")
    finally:
        sock.close()


class Load:
    """
    Short requests at a steady rate, in a thread, until stopped.

    @ivar done: requests answered byte-exact.
    @ivar failures: what went wrong with the others.
    """

    def __init__(self, port: int, targetPort: int) -> None:
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, targetPort), daemon=True)
        self._thread.start()

    def _run(self, port: int, targetPort: int) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            try:
                request(port, targetPort, b"request %d\n" % number)
                self.done += 1
            except Exception as e:
                self.failures.append(f"request {number}: {e!r}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class Transfer:
    """
    A long transfer through the relay, echoed, checked byte-exact, in a thread.
    """

    def __init__(self, port: int, targetPort: int, size: int) -> None:
        self.size = size
        self.error: str | None = None
        self.finished = threading.Event()
        self.sock, code = socks5Connect(port, "127.0.0.1", targetPort, timeout=60)
        assert code == 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        data = os.urandom(self.size)
        writer = threading.Thread(target=self._write, args=(data,), daemon=True)
        writer.start()
        try:
            echoed = recvExactly(self.sock, self.size)
            if hashlib.sha256(echoed).digest() != hashlib.sha256(data).digest():
                self.error = "echoed bytes differ"
        except Exception as e:
            self.error = repr(e)
        finally:
            self.sock.close()
            self.finished.set()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        for offset in range(0, len(data), 64 * 1024):
            self.sock.sendall(view[offset : offset + 64 * 1024])
            time.sleep(0.005)  # slow enough to be in flight when the connector is stopped


class ReplicaTests(TokenTestCase):
    def startReplica(self, name: str, connectorId: str, token: str) -> Connector:
        connector = Connector(
            self.dir / name,
            [
                "--connector-id", connectorId, "--api-url", self.relay.apiURL,
                "--relay-address", f"127.0.0.1:{self.relay.sshPort}", "--state-dir", str(self.dir / name / "state"),
                "--reconnect-initial-delay", "0.1", "--reconnect-max-delay", "0.5", "--grace-period", "30",
            ],
            env={"INCIDENT_CONNECTOR_API_TOKEN": token},
        ).start()  # fmt: skip
        self.addCleanup(connector.stop)
        return connector

    def streamsServed(self, connector: Connector, targetPort: int) -> int:
        return connector.text().count(f"stream 127.0.0.1:{targetPort} ok")

    def test_spreadAndDrain(self) -> None:
        target = self.target(echo)
        connectorId, token = self.relay.add("fleet")
        first = self.startReplica("first", connectorId, token)
        second = self.startReplica("second", connectorId, token)
        port = first.allocatedPort()
        self.assertEqual(second.allocatedPort(), port)

        for number in range(20):
            request(port, target.port, b"warm-up %d\n" % number)
        waitFor(lambda: self.streamsServed(first, target.port) + self.streamsServed(second, target.port) == 20, 10)
        self.assertGreaterEqual(self.streamsServed(first, target.port), 5)
        self.assertGreaterEqual(self.streamsServed(second, target.port), 5)
        [listed] = json.loads(self.relay.cli("list", "--json"))
        self.assertEqual([c["state"] for c in listed["connections"]], ["forwarding", "forwarding"])

        transfers = [Transfer(port, target.port, 8 * MiB) for _ in range(2)]  # one on each replica
        load = Load(port, target.port)
        try:
            waitFor(lambda: load.done >= 20, 15, "load running")
            first.signal(signal.SIGTERM)
            first.waitForLog("draining")
            self.assertEqual(first.wait(40), 0)
            doneAtExit = load.done
            waitFor(lambda: load.done >= doneAtExit + 30, 15, "requests after the replica left")
        finally:
            load.stop()
        for transfer in transfers:
            self.assertTrue(transfer.finished.wait(60), "transfer did not finish")
            self.assertIsNone(transfer.error)
        self.assertEqual(load.failures, [])
        self.assertEqual(self.relay.cli("test", connectorId, f"127.0.0.1:{target.port}"), "ok\n")
        [listed] = json.loads(self.relay.cli("list", "--json"))
        self.assertEqual([c["state"] for c in listed["connections"]], ["forwarding"])
        self.assertEqual(listed["allocated_port"], port)
