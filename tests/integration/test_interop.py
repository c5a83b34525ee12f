"""
The connector against SSH servers nobody here wrote: OpenSSH C{sshd},
Dropbear and AsyncSSH.  For each server, every cipher and every MAC both
sides have carries 64 MiB each way at once through one SOCKS stream while the keys
change every MiB; then a new stream still works on the same connection and
the server saw no protocol error.  Also: relays that allow only EtM MACs,
relays that share no MAC with the connector, and the connector's own
re-keying (C{--rekey-limit}).

The matrix is chosen to stay affordable on two cores: each server gets every
cipher it has in common with the connector once (AEAD ciphers with their
implicit MAC), and every common MAC once with a CTR cipher.  Dropbear cannot
narrow its own offer, so there the connector's is narrowed (a test device:
L{harness.Connector}'s prelude); sshd and AsyncSSH narrow theirs, as an
operator would.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from .harness import Connector, MiB, Target, TunnelTestCase, echo, recvAll, recvExactly, socks5Connect, waitFor
from .relays import AsyncSSHRelay, DropbearRelay, RelayFixture, SshdRelay

#: What the connector offers (the EtM MACs are being added ahead of the plain ones).
OFFERED_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "aes192-ctr",
]
OFFERED_MACS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512"]
AEAD = {"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"}

#: Every cipher at least once per server, every MAC at least once per
#: server (with a CTR cipher: an AEAD cipher uses no MAC).  Dropbear has
#: chacha20-poly1305, aes128-ctr, aes256-ctr and, of our MACs, hmac-sha2-256.
MATRIX: list[tuple[str, str, str | None]] = [
    *(
        (server, cipher, mac)
        for server in ("sshd", "asyncssh")
        for cipher, mac in [
            ("aes128-gcm@openssh.com", None),
            ("aes256-gcm@openssh.com", None),
            ("chacha20-poly1305@openssh.com", None),
            ("aes128-ctr", "hmac-sha2-256"),
            ("aes256-ctr", "hmac-sha2-512"),
            ("aes192-ctr", "hmac-sha2-256-etm@openssh.com"),
            ("aes128-ctr", "hmac-sha2-512-etm@openssh.com"),
        ]
    ),
    ("dropbear", "chacha20-poly1305@openssh.com", None),
    ("dropbear", "aes128-ctr", "hmac-sha2-256"),
    ("dropbear", "aes256-ctr", "hmac-sha2-256"),
]

FAST = ["--reconnect-initial-delay", "0.1", "--reconnect-max-delay", "0.5"]
TRANSFER = 64 * MiB
#: Key exchanges a server must have logged after 64 MiB each way with a key
#: change every MiB (128 expected for sshd, which counts both directions;
#: 64 for AsyncSSH, which counts what it sends): generous lower bounds.
LEAST_REKEYS = {"sshd": 64, "asyncssh": 32}


def narrowOffer(ciphers: list[str], macs: list[str]) -> str:
    """
    Python for L{Connector}'s prelude: the connector offers only these
    (each must be one it offers already, or it stops at once).
    """
    return (
        "from incident_connector.tunnel import kex as _k\n"
        f"_c = {[c.encode() for c in ciphers]!r}\n"
        f"_m = {[m.encode() for m in macs]!r}\n"
        "assert set(_c) <= set(_k.CIPHER_PREFERENCE), ('cipher not offered', _c, _k.CIPHER_PREFERENCE)\n"
        "assert set(_m) <= set(_k.MAC_PREFERENCE), ('MAC not offered', _m, _k.MAC_PREFERENCE)\n"
        # In place: the transport holds these very lists.
        "_k.CIPHER_PREFERENCE[:] = _c\n"
        "_k.MAC_PREFERENCE[:] = _m\n"
    )


def hashUntilEnd(sock: socket.socket) -> str:
    digest = hashlib.sha256()
    while data := sock.recv(1 << 20):
        digest.update(data)
    return digest.hexdigest()


class InteropTestCase(TunnelTestCase):
    """
    Starts no relay itself: each test builds the one it needs with
    L{makeRelay} and a connector pointed at it with L{connect}.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.payload = b""

    def makeRelay(
        self,
        server: str,
        ciphers: list[str] | None = None,
        macs: list[str] | None = None,
        serverRekeys: bool = True,
    ) -> RelayFixture:
        """
        Start C{server} offering only C{ciphers} and C{macs} (where it can
        narrow its offer), re-keying every MiB if C{serverRekeys}.
        """
        where = self.dir / server
        relay: RelayFixture
        if server == "sshd":
            relay = SshdRelay(where, ciphers=ciphers or (), macs=macs or (), rekeyLimit="1M" if serverRekeys else "")
        elif server == "asyncssh":
            relay = AsyncSSHRelay(
                where,
                # AsyncSSH counts only what it sends: the time limit makes it
                # change keys during an upload too.
                rekeyBytes=MiB if serverRekeys else 0,
                rekeySeconds=1 if serverRekeys else 0,
                ciphers=ciphers or (),
                macs=macs or (),
            )
        elif server == "dropbear":
            # Re-keys only after 1 GiB or 8 hours, whatever is asked.
            relay = DropbearRelay(where)
        else:
            raise AssertionError(f"unknown server {server}")
        self.relay = relay  # type: ignore[assignment]
        relay.start()
        self.addCleanup(relay.stop)
        return relay

    def connect(self, *extra: str, prelude: str = "") -> Connector:
        connector = Connector(self.dir / "connector", [*self.connectorArgs(), *FAST, *extra], prelude=prelude)
        connector.start()
        self.addCleanup(connector.stop)
        self.connector = connector
        return connector

    def explain(self) -> str:
        """
        What a failure message needs: the end of the connector's log and
        what the relay complained about.
        """
        relay: RelayFixture = self.relay  # type: ignore[assignment]
        tail = "\n".join(self.connector.text().splitlines()[-15:])
        return f"\nconnector log (end):\n{tail}\nrelay's protocol errors: {relay.protocolErrors()[:10]}"

    def transferBothWays(self, port: int, size: int = TRANSFER) -> None:
        """
        C{size} bytes each way at once through one SOCKS stream: the far
        end sends its C{size} bytes while it reads ours, then answers with
        the SHA-256 of what it read; we check both.
        """
        if len(self.payload) != size:
            self.payload = os.urandom(MiB) * (size // MiB)
        payload = self.payload
        digest = hashlib.sha256(payload).hexdigest()

        def both(sock: socket.socket) -> None:
            sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
            sender.start()
            received = hashUntilEnd(sock)
            sender.join()
            sock.sendall(received.encode())

        server = self.target(both)
        try:
            sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=120)
            self.addCleanup(sock.close)
            self.assertEqual(code, 0)

            def upload() -> None:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)

            uploader = threading.Thread(target=upload, daemon=True)
            uploader.start()
            down = hashlib.sha256()
            left = size
            while left:
                data = sock.recv(min(left, 1 << 20))
                if not data:
                    raise ConnectionError(f"stream ended after {size - left} of {size} bytes down")
                down.update(data)
                left -= len(data)
            answer = recvAll(sock).decode()
            uploader.join(120)
            self.assertEqual(down.hexdigest(), digest, "download corrupted")
            self.assertEqual(answer, digest, "upload corrupted")
        except (OSError, AssertionError) as e:
            self.fail(f"{size // MiB} MiB each way failed: {e!r}{self.explain()}")

    def assertHealthy(self, port: int, leastKeyExchanges: int | None = None) -> None:
        """
        After the transfers: a new stream works, the connector never
        reconnected and logged no traceback, and the relay saw no protocol
        error (and at least C{leastKeyExchanges} key exchanges, where it logs them).
        """
        server = Target(echo)
        self.addCleanup(server.close)
        try:
            sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=30)
            sock.sendall(b"still here")
            self.assertEqual((code, recvExactly(sock, 10)), (0, b"still here"))
            sock.close()
        except (OSError, AssertionError) as e:
            self.fail(f"a new stream failed: {e!r}{self.explain()}")
        text = self.connector.text()
        self.assertEqual(text.count("Allocated port"), 1, f"the connector reconnected{self.explain()}")
        self.assertNotIn("Traceback", text, self.explain())
        relay: RelayFixture = self.relay  # type: ignore[assignment]
        self.assertEqual(relay.protocolErrors(), [], "the relay saw protocol errors")
        exchanges = relay.keyExchanges()
        if leastKeyExchanges is not None and exchanges is not None:
            self.assertGreaterEqual(exchanges, leastKeyExchanges, "the keys did not change as often as asked")

    def assertNegotiated(self, cipher: str, mac: str | None) -> None:
        relay: RelayFixture = self.relay  # type: ignore[assignment]
        negotiated = relay.negotiated()
        if negotiated is None:
            return  # Dropbear logs no algorithms; the connector offered only these.
        self.assertTrue(negotiated, "the relay logged no key exchange")
        for got, gotMAC in negotiated:
            self.assertEqual(got, cipher)
            if mac is not None:
                self.assertEqual(gotMAC, mac)


def _matrixTest(server: str, cipher: str, mac: str | None) -> Callable[[ServerRekeyMatrix], None]:
    def test(self: ServerRekeyMatrix) -> None:
        self.transferWhileServerRekeys(server, cipher, mac)

    rekeys = "the server re-keys every MiB" if server != "dropbear" else "Dropbear cannot be made to re-key"
    test.__doc__ = f"{server}: {cipher} with {mac or 'its own integrity'}; {rekeys}."
    return test


def _slug(name: str | None) -> str:
    return re.sub(r"[^0-9a-z]", "", (name or "").split("@")[0].replace("hmac-", ""))


class ServerRekeyMatrix(InteropTestCase):
    """
    64 MiB each way per cipher and MAC pair, the server changing keys every MiB.
    """

    def transferWhileServerRekeys(self, server: str, cipher: str, mac: str | None) -> None:
        prelude = ""
        if server == "dropbear":
            prelude = narrowOffer([cipher], [mac] if mac else ["hmac-sha2-256"])
        self.makeRelay(server, ciphers=[cipher], macs=[mac] if mac else None)
        port = self.connect(prelude=prelude).allocatedPort(15)
        self.transferBothWays(port)
        self.assertHealthy(port, LEAST_REKEYS.get(server))
        self.assertNegotiated(cipher, mac)


for _server, _cipher, _mac in MATRIX:
    _name = f"test_{_server}_{_slug(_cipher)}" + (f"_{_slug(_mac)}" if _mac else "")
    setattr(ServerRekeyMatrix, _name, _matrixTest(_server, _cipher, _mac))


class ClientRekeyTests(InteropTestCase):
    """
    C{--rekey-limit 1M}: the connector changes keys every MiB, like
    OpenSSH's C{RekeyLimit}; each server follows, and no byte is lost.
    """

    def transferWhileClientRekeys(self, server: str) -> None:
        self.makeRelay(server, serverRekeys=False)
        port = self.connect("--rekey-limit", "1M").allocatedPort(15)
        self.transferBothWays(port)
        self.assertHealthy(port, LEAST_REKEYS.get(server))

    def test_sshd(self) -> None:
        self.transferWhileClientRekeys("sshd")

    def test_asyncssh(self) -> None:
        """
        AsyncSSH counts the key exchanges the client starts too.
        """
        self.transferWhileClientRekeys("asyncssh")

    def test_dropbear(self) -> None:
        """
        Dropbear logs no key exchange: this checks only that every byte
        arrives and the connection survives.
        """
        self.transferWhileClientRekeys("dropbear")


class MACNegotiationTests(InteropTestCase):
    """
    Relays whose MACs are not the connector's first choice, or none of its.
    """

    def test_sshdEtMOnly(self) -> None:
        """
        sshd with C{MACs hmac-sha2-256-etm@openssh.com} and CTR ciphers.
        """
        self.makeRelay("sshd", ciphers=["aes128-ctr", "aes256-ctr"], macs=["hmac-sha2-256-etm@openssh.com"])
        port = self.connect().allocatedPort(15)
        self.transferBothWays(port, 8 * MiB)
        self.assertHealthy(port)
        self.assertNegotiated("aes128-ctr", "hmac-sha2-256-etm@openssh.com")

    def test_asyncsshEtMOnly(self) -> None:
        """
        AsyncSSH allowing only C{hmac-sha2-256-etm@openssh.com}, with CTR ciphers.
        """
        self.makeRelay("asyncssh", ciphers=["aes128-ctr", "aes256-ctr"], macs=["hmac-sha2-256-etm@openssh.com"])
        port = self.connect().allocatedPort(15)
        self.transferBothWays(port, 8 * MiB)
        self.assertHealthy(port)
        self.assertNegotiated("aes128-ctr", "hmac-sha2-256-etm@openssh.com")

    def test_asyncsshEtMOnlyWithAEAD(self) -> None:
        """
        AsyncSSH allowing only an EtM MAC but its usual ciphers: AES-GCM is
        chosen, and needs no MAC.
        """
        self.makeRelay("asyncssh", macs=["hmac-sha2-256-etm@openssh.com"])
        port = self.connect().allocatedPort(15)
        self.transferBothWays(port, 8 * MiB)
        self.assertHealthy(port)

    def test_aeadNeedsNoCommonMAC(self) -> None:
        """
        A relay whose only MAC is hmac-sha1 (none of ours) but which has
        AES-GCM: an AEAD cipher uses no MAC, so the connection works, as
        with OpenSSH's client.  Against sshd and AsyncSSH.
        """
        for server in ("sshd", "asyncssh"):
            self.makeRelay(server, macs=["hmac-sha1"], serverRekeys=False)
            connector = self.connect()
            port = connector.allocatedPort(15)
            self.transferBothWays(port, 8 * MiB)
            self.assertHealthy(port)
            connector.stop()
            self.relay.stop()

    def assertNoCommonMAC(self, server: str) -> None:
        """
        CTR ciphers and only hmac-sha1: the connector says, in one line per
        attempt, that there is no common MAC, naming both lists; and keeps
        retrying.
        """
        self.makeRelay(server, ciphers=["aes128-ctr"], macs=["hmac-sha1"], serverRekeys=False)
        connector = self.connect()
        try:
            waitFor(lambda: connector.text().count("no common MAC") >= 2, 20, "two attempts saying no common MAC")
        except AssertionError:
            self.fail(f"no line saying 'no common MAC' twice{self.explain()}")
        text = connector.text()
        self.assertNotIn("Traceback", text, self.explain())
        lines = [line for line in text.splitlines() if "no common MAC" in line]
        self.assertIn("hmac-sha1", lines[0], "the relay's MACs are not named")
        self.assertIn("hmac-sha2-256", lines[0], "the connector's MACs are not named")
        first = text.index("connecting to relay")
        second = text.index("connecting to relay", first + 1)
        self.assertEqual(text[first:second].count("no common MAC"), 1, "not one line per attempt")
        self.assertNotIn("Allocated port", text)

    def test_sshdNoCommonMAC(self) -> None:
        self.assertNoCommonMAC("sshd")

    def test_asyncsshNoCommonMAC(self) -> None:
        self.assertNoCommonMAC("asyncssh")


class FrozenRelayTests(InteropTestCase):
    """
    A relay that stops answering (SIGSTOP) is noticed by keepalives whoever
    wrote it, and the tunnel comes back once it thaws.
    """

    def assertFreezeNoticed(self, server: str) -> None:
        relay = self.makeRelay(server, serverRekeys=False)
        connector = self.connect("--keepalive-interval", "0.5", "--keepalive-count", "2")
        connector.allocatedPort(15)
        mark = len(connector.text())
        relay.freeze()
        try:
            connector.waitForLog("relay did not answer 2 keepalives", timeout=10, after=mark)
        finally:
            relay.thaw()
        connector.allocatedPort(timeout=30, after=mark)

    def test_dropbear(self) -> None:
        self.assertFreezeNoticed("dropbear")

    def test_asyncssh(self) -> None:
        self.assertFreezeNoticed("asyncssh")
