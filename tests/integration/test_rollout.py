"""
Rolling updates with zero failed requests (issue #18, part 3).

Two connector processes, A and B, serve one connector ID through the
reference relay.  While the platform side keeps short HTTP requests going at
a steady rate and three long transfers are in flight, they are replaced one
at a time as a Deployment rollout would: SIGTERM A and start A', wait until A'
is ready, then the same for B.  Every short request must succeed, every
transfer must arrive byte-exact, and each old process must finish its streams
and exit 0 within its grace period.

Timings (drain durations, time to ready, slowest request, retries by the
relay) go to the test log, C{_trial_temp/test.log}.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import threading
import time
from typing import Any

from twisted.logger import Logger

from .harness import Connector, MiB, connectionsTo, echo, http200, recvAll, socks5Connect, waitFor
from .test_token import TokenTestCase

_log = Logger()

GRACE_PERIOD = 30.0
"""
The replicas' C{--grace-period}, the default (and the Helm chart's).
"""

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 31\r\nConnection: close\r\n\r\nhello from the private network\n"
"""
What L{http200} answers; a short request succeeds only if it gets exactly this.
"""


class Requests:
    """
    The platform's short requests: C{clients} threads, each sending an HTTP
    GET through the relay's port every C{interval} seconds (on a fixed
    schedule, so the rate stays steady through the rollout) until stopped,
    plus any L{burst}s.

    @ivar done: requests answered with exactly L{RESPONSE}.
    @ivar failures: C{(seconds since the start, what went wrong)} for the others.
    @ivar slowest: the longest a successful request took, seconds.
    """

    def __init__(self, port: int, targetPort: int, clients: int = 3, interval: float = 0.05) -> None:
        self.port = port
        self.targetPort = targetPort
        self.interval = interval
        self.done = 0
        self.failures: list[tuple[float, str]] = []
        self.slowest = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._threads = [threading.Thread(target=self._run, args=(n, clients), daemon=True) for n in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, client: int, clients: int) -> None:
        due = time.monotonic() + client * self.interval / clients
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += self.interval
            self._request()

    def burst(self, count: int) -> None:
        """
        Send C{count} requests at once, each from a thread of its own.
        """
        threads = [threading.Thread(target=self._request, daemon=True) for _ in range(count)]
        self._threads += threads
        for thread in threads:
            thread.start()

    def _request(self) -> None:
        began = time.monotonic()
        try:
            sock, code = socks5Connect(self.port, "127.0.0.1", self.targetPort, timeout=10)
            with sock:
                if code != 0:
                    raise AssertionError(f"SOCKS reply {code}")
                sock.sendall(b"GET / HTTP/1.1\r\nHost: grafana.internal\r\n\r\n")
                answer = recvAll(sock)
            error = None if answer == RESPONSE else f"answered {answer[:80]!r}"
        except Exception as e:
            error = repr(e)
        took = time.monotonic() - began
        with self._lock:
            if error is None:
                self.done += 1
                self.slowest = max(self.slowest, took)
            else:
                self.failures.append((round(began - self._started, 2), error))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


class Transfer:
    """
    A long upload through the relay to its own echo server, read back and
    checked by SHA-256.  The upload is paced at C{rate} bytes a second and
    holds its last MiB until C{release} is set, so it is in flight through the
    whole rollout; then the upload is closed (EOF through the tunnel) and the
    echo must end after exactly C{size} bytes.

    @ivar targetPort: its echo server's port, which the connector's stream
        log line names: that tells which replica carried it.
    @ivar error: what went wrong, or L{None}.
    @ivar finished: when the whole echo had arrived (C{time.monotonic()}), or L{None}.
    """

    CHUNK = 64 * 1024
    HELD = MiB

    def __init__(self, port: int, targetPort: int, size: int, rate: float, release: threading.Event) -> None:
        self.targetPort = targetPort
        self.size = size
        self.rate = rate
        self.release = release
        self.error: str | None = None
        self.finished: float | None = None
        self.data = os.urandom(size)
        self.sock, code = socks5Connect(port, "127.0.0.1", targetPort, timeout=30)
        if code != 0:
            raise AssertionError(f"transfer to port {targetPort}: SOCKS reply {code}")
        self.sock.settimeout(90)  # the hold at the end may last as long as the rollout
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        view = memoryview(self.data)
        began = time.monotonic()
        try:
            for offset in range(0, self.size, self.CHUNK):
                if offset >= self.size - self.HELD and not self.release.wait(90):
                    raise AssertionError("never released")
                time.sleep(max(0.0, began + offset / self.rate - time.monotonic()))
                self.sock.sendall(view[offset : offset + self.CHUNK])
            self.sock.shutdown(socket.SHUT_WR)
        except Exception as e:
            self.error = self.error or f"upload: {e!r}"

    def _read(self) -> None:
        digest = hashlib.sha256()
        received = 0
        try:
            while chunk := self.sock.recv(1 << 20):
                digest.update(chunk)
                received += len(chunk)
            if received != self.size:
                self.error = f"echoed {received} of {self.size} bytes"
            elif digest.digest() != hashlib.sha256(self.data).digest():
                self.error = "echoed bytes differ"
            else:
                self.finished = time.monotonic()
        except Exception as e:
            self.error = self.error or f"download after {received} bytes: {e!r}"
        finally:
            self.sock.close()

    def over(self) -> bool:
        return not self._reader.is_alive() and not self._writer.is_alive()


class Stopping:
    """
    An old replica being stopped as Kubernetes does: SIGTERM, then its exit
    timed by a thread that waits for it.

    @ivar signalled: when SIGTERM was sent (C{time.monotonic()}).
    @ivar exited: when it exited, or L{None} while it runs.
    @ivar status: its exit status, once it exited.
    """

    def __init__(self, connector: Connector) -> None:
        assert connector.process is not None
        self.process = connector.process
        self.status: int | None = None
        self.exited: float | None = None
        self.signalled = time.monotonic()
        connector.signal(signal.SIGTERM)
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        self.status = self.process.wait()
        self.exited = time.monotonic()

    @property
    def drainTime(self) -> float:
        assert self.exited is not None
        return self.exited - self.signalled


class RolloutTests(TokenTestCase):
    def replica(self, name: str, connectorId: str, token: str, allowlist: str, connections: int) -> Connector:
        """
        Start one replica: its own state directory (a new pod makes a new
        key), the token in the environment, as the Helm chart runs it.
        """
        connector = Connector(
            self.dir / name,
            [
                "--connector-id", connectorId, "--api-url", self.relay.apiURL,
                "--relay-address", f"127.0.0.1:{self.relay.sshPort}", "--state-dir", str(self.dir / name / "state"),
                "--forward-dest-allowlist", allowlist, "--connections", str(connections),
                "--grace-period", str(GRACE_PERIOD), "--reconnect-initial-delay", "0.1",
                "--reconnect-max-delay", "0.5",
            ],
            env={"INCIDENT_CONNECTOR_API_TOKEN": token},
        ).start()  # fmt: skip
        self.addCleanup(connector.stop)
        return connector

    def listing(self, connectorId: str) -> dict[str, Any]:
        """
        The connector's entry in C{incident-relay list --json}.
        """
        [entry] = [c for c in json.loads(self.relay.cli("list", "--json")) if c["id"] == connectorId]
        return entry

    def peers(self, connector: Connector) -> set[str]:
        """
        The addresses the relay names C{connector}'s SSH connections by.
        """
        assert connector.process is not None
        return connectionsTo(connector.process.pid, self.relay.sshPort)

    def waitForwarding(self, connector: Connector, connectorId: str, connections: int) -> set[str]:
        """
        Wait until the relay lists all C{connections} of C{connector} as
        forwarding; return their addresses.
        """

        def forwarding() -> set[str] | None:
            peers = self.peers(connector)
            states = {c["peer"]: c["state"] for c in self.listing(connectorId)["connections"]}
            if len(peers) == connections and all(states.get(p) == "forwarding" for p in peers):
                return peers
            return None

        return waitFor(forwarding, 30, f"{connections} forwarding connections of {connector.dir.name}", 0.2)

    def waitReady(self, connector: Connector, connectorId: str) -> float:
        """
        Wait until C{connector} is ready as a rollout sees it: C{/readyz}
        answers 200 (what the Kubernetes readiness probe asks), and the relay
        lists one of its connections as forwarding.  Returns when it became so.
        """
        waitFor(lambda: connector.get("/readyz")[0] == 200, 30, f"/readyz of {connector.dir.name}", 0.05)
        ready = time.monotonic()
        states = {c["peer"]: c["state"] for c in self.listing(connectorId)["connections"]}
        self.assertIn("forwarding", [states.get(p) for p in self.peers(connector)], states)
        return ready

    def served(self, connector: Connector, targetPort: int) -> list[tuple[int, int]]:
        """
        C{(bytes up, bytes down)} of every stream C{connector} finished to C{targetPort}.
        """
        pattern = rf"stream 127\.0\.0\.1:{targetPort} ok: (\d+) bytes up, (\d+) bytes down"
        return [(int(up), int(down)) for up, down in re.findall(pattern, connector.text())]

    def waitServing(self, connector: Connector, targetPort: int, count: int) -> None:
        """
        Wait until C{connector} has finished C{count} streams to C{targetPort}.
        """
        waitFor(lambda: len(self.served(connector, targetPort)) >= count, 15, f"streams of {connector.dir.name}")

    def rollOut(self, connections: int) -> None:
        """
        The rollout under load, and everything the platform and the operator
        must see, with C{--connections} set to C{connections} on every replica.
        """
        began = time.monotonic()
        web = self.target(http200)
        echoes = [self.target(echo) for _ in range(3)]
        allowlist = " ".join(f"127.0.0.1:{t.port}" for t in [web, *echoes])
        connectorId, token = self.relay.add("rollout")
        a = self.replica("a", connectorId, token, allowlist, connections)
        b = self.replica("b", connectorId, token, allowlist, connections)
        port = a.allocatedPort(30)
        self.assertEqual(b.allocatedPort(30), port)
        oldPeers = {a: self.waitForwarding(a, connectorId, connections)}
        oldPeers[b] = self.waitForwarding(b, connectorId, connections)

        # The transfers first, back to back and with nothing else going on: the
        # relay's round-robin puts each on the next connection, so A and B
        # each carry at least one.
        release = threading.Event()
        transfers = [Transfer(port, t.port, 24 * MiB, 2.5 * MiB, release) for t in echoes]
        self.addCleanup(release.set)
        streams = {c["peer"]: c["streams"] for c in self.listing(connectorId)["connections"]}
        for old, peers in oldPeers.items():
            self.assertGreaterEqual(sum(streams[p] for p in peers), 1, f"{old.dir.name} carries no transfer: {streams}")
        requests = Requests(port, web.port)
        self.addCleanup(requests.stop)
        waitFor(lambda: requests.done >= 30, 15, "short requests running")

        # The rollout, one replica at a time.
        stopping: dict[Connector, Stopping] = {}
        readyAfter: dict[str, float] = {}
        new: dict[str, Connector] = {}
        for old in (a, b):
            name = old.dir.name
            # Streams in flight towards the old replica as its SIGTERM lands:
            # some reach it after it stopped taking streams but before the
            # relay read its cancel-tcpip-forward, and the relay must take
            # them elsewhere.  The steady load alone hits that only now and then.
            requests.burst(20)
            stopping[old] = Stopping(old)
            new[name] = self.replica(f"{name}-new", connectorId, token, allowlist, connections)
            readyAfter[name] = self.waitReady(new[name], connectorId) - stopping[old].signalled
        release.set()  # every transfer was in flight at both SIGTERMs

        waitFor(lambda: all(t.over() for t in transfers), 60, "the transfers")
        waitFor(lambda: all(s.exited is not None for s in stopping.values()), GRACE_PERIOD + 15, "the old replicas")
        newPeers = {n: self.waitForwarding(n, connectorId, connections) for n in new.values()}
        # The new pair takes the load: each serves requests after the rollout.
        for replacement in new.values():
            self.waitServing(replacement, web.port, 5)
        requests.stop()

        relayLog = self.relay.log.read_text()
        summary = {
            "connections": connections,
            "seconds": round(time.monotonic() - began, 1),
            "requests": requests.done,
            "failed": len(requests.failures),
            "slowest_request": round(requests.slowest, 3),
            "drain_seconds": {o.dir.name: round(s.drainTime, 2) for o, s in stopping.items()},
            "ready_seconds_after_sigterm": {n: round(t, 2) for n, t in readyAfter.items()},
            "requests_served": {c.dir.name: len(self.served(c, web.port)) for c in [a, b, *new.values()]},
            "relay_retries": relayLog.count("offering it to the next connection"),
        }
        _log.info("rollout: {summary}", summary=json.dumps(summary))

        # The platform saw no failure, and the transfers arrived byte-exact.
        self.assertEqual(requests.failures, [])
        self.assertEqual([t.error for t in transfers], [None] * len(transfers))

        # Each old replica exited 0 within its grace period, after the
        # transfers it carried were complete: the drain waited for them.
        for old, stop in stopping.items():
            self.assertEqual(stop.status, 0, old.text()[-3000:])
            self.assertLess(stop.drainTime, GRACE_PERIOD, summary)
            self.assertRegex(old.text(), r"draining \d+ open streams for up to 30\.0 s")
            carried = [t for t in transfers if self.served(old, t.targetPort)]
            self.assertGreaterEqual(len(carried), 1, f"{old.dir.name} carried no transfer")
            for transfer in carried:
                self.assertEqual(self.served(old, transfer.targetPort), [(transfer.size, transfer.size)])
                assert transfer.finished is not None and stop.exited is not None
                self.assertLess(stop.signalled, transfer.finished)
                self.assertLessEqual(transfer.finished, stop.exited)
        for replacement in new.values():
            self.assertTrue(all(not self.served(replacement, t.targetPort) for t in transfers))

        # The relay: every connection of every replica was granted the one
        # port; every old one drained; no stream found no connection, and the
        # port never closed (the platform's address for the connector held).
        for peer in set().union(*oldPeers.values(), *newPeers.values()):
            self.assertIn(f"{peer} forwards port {port} ", relayLog)
        for peer in set().union(*oldPeers.values()):
            self.assertRegex(relayLog, rf"{re.escape(peer)} is draining \(\d+ open streams\)")
        self.assertNotIn("no connection could take a stream", relayLog)
        self.assertNotIn("port closed", relayLog)
        entry = self.listing(connectorId)
        self.assertEqual((entry["status"], entry["allocated_port"]), ("online", port))
        self.assertEqual(
            {c["peer"]: c["state"] for c in entry["connections"]},
            dict.fromkeys(set().union(*newPeers.values()), "forwarding"),
        )
        self.assertEqual(self.probe(connectorId, f"127.0.0.1:{web.port}"), "ok")

    def test_rollingUpdate(self) -> None:
        """
        Two replicas with one relay connection each are replaced one at a time
        under load: no request fails, no transfer is cut.
        """
        self.rollOut(connections=1)

    def test_rollingUpdateTwoConnections(self) -> None:
        """
        The same with C{--connections 2} on every replica: both of an old
        replica's connections drain, both of a new one's are granted the one port.
        """
        self.rollOut(connections=2)
