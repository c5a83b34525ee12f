"""
The connector against a relay that misbehaves (C{hostile_relay.py}), one case
per test: whatever the relay does, the connector says what happened in a line
or two (never a traceback, never the relay's raw bytes), keeps its memory
bounded, and gets its tunnel back.  The hostile relay itself is checked
against OpenSSH's C{ssh} first, so that a failure here is the connector's.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from .harness import Connector, MiB, TunnelTestCase, echo, recvExactly, rss, socks5Connect, waitFor
from .relays import HostileRelay, loginUser

FAST = ["--reconnect-initial-delay", "0.1", "--reconnect-max-delay", "0.5"]
#: Keepalives every 4 s, two missed drop the connection: a relay that stops
#: reading is left within about 12 s.
KEEPALIVE = ["--keepalive-interval", "4", "--keepalive-count", "2"]
#: A log record starts with a timestamp; anything else is a continuation.
RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
#: Records that every connection attempt writes, whatever happens, and the
#: end of each stream the test itself makes.
#: (At the start of the message: relay text quoted inside an error line may say
#: the same words.)
ROUTINE = re.compile(r"\] (relay \d+/\d+: )?(connecting to relay|Allocated port|retrying relay)|\] stream ")


class HostileRelayTests(TunnelTestCase):
    """
    Each test starts a hostile relay playing one case on the connector's
    first connection (later connections behave) and a connector pointed at it.
    """

    def setUp(self) -> None:
        # No sshd: the relay is the hostile one.
        self.dir = Path(self.mktemp()).resolve()

    def play(self, case: str, hangupAfter: float | None = None) -> tuple[HostileRelay, Connector]:
        relay = HostileRelay(self.dir / "relay", case, hangupAfter=hangupAfter).start()
        self.relay = relay  # type: ignore[assignment]
        self.addCleanup(relay.stop)
        connector = self.startConnector(*FAST, *KEEPALIVE)
        return relay, connector

    def assertStreamWorks(self, port: int) -> None:
        """
        A SOCKS stream through the relay's port echoes 64 KiB byte-exact
        (Conch's forwarding in the test relay is slow: kept small).
        """
        server = self.target(echo)
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=20)
        self.addCleanup(sock.close)
        self.assertEqual(code, 0)
        payload = os.urandom(64 * 1024)
        sock.sendall(payload)
        self.assertEqual(recvExactly(sock, len(payload)), payload)

    def waitForRecovery(self, connector: Connector, timeout: float = 30) -> list[str]:
        """
        Wait until the connector connects a second time, gets a forward and
        serves a stream on it.  Returns the messages of the records it wrote
        in between (what it said about the first connection).
        """
        waitFor(
            lambda: connector.text().count("connecting to relay") >= 2,
            timeout,
            f"a second connection attempt; connector log:\n{connector.text()[-3000:]}",
        )
        text = connector.text()
        first = text.index("connecting to relay")
        second = text.index("connecting to relay", first + 1)
        port = connector.allocatedPort(timeout=15, after=second)
        self.assertStreamWorks(port)
        between = text[first : text.rindex("\n", 0, second)].splitlines()[1:]
        return [line.split("] ", 1)[-1] for line in between if RECORD.match(line) and not ROUTINE.search(line)]

    def assertReported(self, records: list[str]) -> None:
        """
        The connector said what happened in a line or two, not none, not many.
        """
        self.assertTrue(1 <= len(records) <= 2, f"expected a line or two about the first connection, got: {records}")

    def assertRecovers(self, connector: Connector, timeout: float = 30) -> list[str]:
        """
        L{waitForRecovery}, then: no traceback anywhere in the connector's
        output, and a line or two about the first connection.
        """
        records = self.waitForRecovery(connector, timeout)
        self.assertNoTraceback(connector)
        self.assertReported(records)
        return records

    def assertNoTraceback(self, connector: Connector) -> None:
        text = connector.text()
        if "Traceback" in text:
            at = text.index("Traceback")
            self.fail(f"a traceback in the connector's log:\n{text[max(0, at - 300) : at + 1500]}")

    def relayStillServes(self, relay: HostileRelay, connector: Connector) -> bool:
        """
        If the connector kept the first connection after the case was
        played, that connection still serves streams; returns whether it kept it.
        """
        if re.search(r"connection 1 lost", relay.text()):
            return False
        self.assertStreamWorks(connector.allocatedPort())
        return True

    def test_flood(self) -> None:
        """
        A relay that stops reading and floods global requests with
        want-reply: the connector's memory levels off (it must not queue
        replies without bound), and it leaves that relay and reconnects.
        """
        relay, connector = self.play("flood")
        connector.allocatedPort()
        relay.waitForLog("played flood")
        assert connector.process is not None
        pid = connector.process.pid
        before = rss(pid)
        samples: list[tuple[float, int]] = []
        started = time.monotonic()
        while time.monotonic() - started < 10 and "connection 1 lost" not in relay.text():
            samples.append((time.monotonic() - started, rss(pid) - before))
            time.sleep(0.5)  # sampling a process while the flood runs is the test itself
        sent = max((int(n) for n in re.findall(r"flood: (\d+) requests sent", relay.text())), default=0)
        self.assertGreater(sent, 1000, "the flood never got going: the test proves nothing")
        peak = max(grown for _, grown in samples)
        self.assertLess(peak, 64 * MiB, f"RSS grew by {peak / MiB:.1f} MiB under the flood")
        if samples[-1][0] >= 9:
            # Still flooded after 9 s: memory must have levelled off by then.
            late = [grown for at, grown in samples if at >= 4]
            self.assertLess(
                late[-1] - late[0],
                4 * MiB,
                f"RSS still growing under the flood: {[(round(t, 1), g // MiB) for t, g in samples]} (s, MiB)",
            )
        relay.waitForLog("connection 1 lost", timeout=20)
        self.assertNotIn("hanging up", relay.text())
        self.assertRecovers(connector)

    def test_maxPacketZero(self) -> None:
        """
        A channel whose maximum packet size is 0 can carry no data: the
        connector sends it none (refusing it, closing it, or leaving the
        relay) and does not hang.
        """
        relay, connector = self.play("maxpacket0", hangupAfter=5)
        connector.allocatedPort()
        relay.waitForLog("played maxpacket0")
        # A wrong answer (data on the channel) would reach the relay before
        # the barrier's answer: the connector seals channel data as soon as
        # it is written while the link is idle, as it is here.
        relay.waitForLog(r"maxpacket0: (barrier answered|the connector refused)|connection 1 lost")
        self.assertNotRegex(relay.text(), r"received \d+ bytes on channel", "data sent past a maximum packet of 0")
        self.relayStillServes(relay, connector)
        self.assertRecovers(connector)

    def test_unrequestedSuccess(self) -> None:
        """
        C{SSH_MSG_REQUEST_SUCCESS} with no request pending: ignored, or the
        connection dropped, with a line; never a traceback.
        """
        relay, connector = self.play("unrequested-success", hangupAfter=5)
        connector.allocatedPort()
        relay.waitForLog(r"unrequested-success: barrier answered|connection 1 lost")
        self.relayStillServes(relay, connector)
        self.assertRecovers(connector)

    def test_serviceAcceptAgain(self) -> None:
        """
        C{SSH_MSG_SERVICE_ACCEPT} after login: ignored or refused, with a
        line naming it.
        """
        relay, connector = self.play("service-accept", hangupAfter=5)
        connector.allocatedPort()
        relay.waitForLog(r"service-accept: barrier answered|connection 1 lost")
        if not self.relayStillServes(relay, connector):
            records = self.assertRecovers(connector)
            self.assertRegex(" ".join(records), r"(?i)service", "the line does not say what the relay did")
        else:
            self.assertRecovers(connector)

    def test_unknownChannelTypes(self) -> None:
        """
        500 channels of an unknown type: each refused (or the connection
        dropped), with a line or two in the log, not 500.
        """
        relay, connector = self.play("unknown-channel", hangupAfter=5)
        connector.allocatedPort()
        relay.waitForLog("played unknown-channel")
        relay.waitForLog(r"unknown-channel: all 500 answered|connection 1 lost", timeout=15)
        self.assertNotRegex(relay.text(), r"answered: \d+ refused, [1-9]", "a channel of an unknown type was accepted")
        self.relayStillServes(relay, connector)
        self.assertRecovers(connector)

    def test_disconnectWithEscapes(self) -> None:
        """
        A disconnect message with newlines, a forged log line, terminal
        escapes and 10 KB of text: the connector logs the reason on one
        line, without the escapes, cut short, and reconnects.
        """
        relay, connector = self.play("disconnect-escapes")
        relay.waitForLog("played disconnect-escapes")
        records = self.waitForRecovery(connector)
        text = connector.text()
        self.assertNotIn("\x1b", text, "a raw ESC byte in the connector's log")
        self.assertNotIn("\x07", text, "a raw BEL byte in the connector's log")
        long = [len(line) for line in text.splitlines() if len(line) > 1000]
        self.assertEqual(long, [], "lines over 1,000 characters in the connector's log")
        self.assertNotRegex(text, r"(?m)^FORGED", "the relay's text forged a log line")
        self.assertIn("goodbye", " ".join(records), "the line does not give the relay's reason")
        self.assertNoTraceback(connector)
        self.assertReported(records)

    def test_forwardWithoutPort(self) -> None:
        """
        A forward granted for port 0 with no port in the reply cannot be
        used: the connector says so and tries again, rather than sitting on
        a tunnel nobody can reach.
        """
        relay, connector = self.play("no-port")
        relay.waitForLog("played no-port")
        records = self.assertRecovers(connector, timeout=20)
        self.assertRegex(" ".join(records), r"(?i)port", "the line does not say what was wrong")

    def test_strictKexIgnoreBeforeNewKeys(self) -> None:
        """
        With strict key exchange (both sides offer it) an C{SSH_MSG_IGNORE}
        before the first NEWKEYS is the Terrapin attack's tool: the
        connector must disconnect before any authentication, and then work
        with the same relay behaving (strict kex, sequence numbers reset).
        """
        relay, connector = self.play("strict-ignore")
        relay.waitForLog("played strict-ignore")
        relay.waitForLog("client KEXINIT")
        self.assertIn("client KEXINIT: strict kex on", relay.text(), "the connector does not offer strict kex")
        relay.waitForLog("connection 1 lost", timeout=15)
        journal = relay.text()
        self.assertIn("connection 1 lost before the first NEWKEYS", journal)
        self.assertNotIn("connection 1 logged in", journal)
        self.assertRecovers(connector)
        self.assertEqual(relay.text().count("client KEXINIT: strict kex on"), 2)

    def test_nonStrictRelay(self) -> None:
        """
        A relay without strict key exchange still works, and stays up.
        """
        relay, connector = self.play("nonstrict")
        port = connector.allocatedPort()
        self.assertStreamWorks(port)
        self.assertIn("client KEXINIT: strict kex off", relay.text())
        self.assertNotIn("connection 1 lost", relay.text())
        self.assertEqual(connector.text().count("connecting to relay"), 1)
        self.assertNoTraceback(connector)


class ReferenceClientTests(TunnelTestCase):
    """
    The hostile relay against OpenSSH's own client (9.2, strict kex): its
    cases are real, so the connector's failures above are the connector's.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()

    def ssh(self, relay: HostileRelay) -> subprocess.Popen[str]:
        command = [
            "ssh", "-N", "-R", "0", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={relay.knownHosts()}", "-o", "ExitOnForwardFailure=yes",
            "-i", str(relay.userKey), "-p", str(relay.port), f"{loginUser()}@127.0.0.1",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def end() -> None:
            if process.poll() is None:
                process.kill()
            process.wait(10)

        self.addCleanup(end)
        return process

    def test_sshRefusesStrictIgnore(self) -> None:
        relay = HostileRelay(self.dir / "relay", "strict-ignore").start()
        self.addCleanup(relay.stop)
        process = self.ssh(relay)
        output = process.communicate(timeout=15)[0]
        self.assertNotEqual(process.returncode, 0)
        self.assertIn("strict KEX violation", output)
        relay.waitForLog("connection 1 lost before the first NEWKEYS")

    def test_sshWorksWithStrictAndNonStrict(self) -> None:
        for case in ("nonstrict", "unrequested-success"):
            # unrequested-success with --times 0: the relay behaves, strict kex on.
            relay = HostileRelay(self.dir / case, case, times=0).start()
            self.addCleanup(relay.stop)
            process = self.ssh(relay)
            relay.waitForLog(r"Allocated port \d+")
            server = self.target(echo)
            port = int(re.findall(r"Allocated port (\d+)", relay.text())[-1])
            sock, code = socks5Connect(port, "127.0.0.1", server.port)
            self.addCleanup(sock.close)
            sock.sendall(b"hello")
            self.assertEqual((code, recvExactly(sock, 5)), (0, b"hello"))
            strict = "off" if case == "nonstrict" else "on"
            self.assertIn(f"client KEXINIT: strict kex {strict}", relay.text())
            process.kill()
