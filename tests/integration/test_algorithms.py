"""
Every offered cipher against a real sshd.
"""

from __future__ import annotations

import hashlib
import os
import socket

from incident_connector.tunnel.kex import CIPHER_PREFERENCE

from .harness import MiB, Relay, TunnelTestCase, recvAll, socks5Connect


class InteropTests(TunnelTestCase):
    """
    Each cipher the connector offers, forced on a real sshd: 64 MiB each way,
    with sshd re-keying every 16 MiB, so new keys take over mid-stream.
    """

    def transferBothWays(self, cipher: str) -> None:
        self.relay.stop()
        self.relay = Relay(self.dir / cipher, extraConfig=f"Ciphers {cipher}\nRekeyLimit 16M\nLogLevel DEBUG1").start()
        self.addCleanup(self.relay.stop)
        payload = os.urandom(MiB) * 64
        digest = hashlib.sha256(payload).hexdigest()

        def both(sock: socket.socket) -> None:
            if sock.recv(1) == b"D":
                sock.sendall(payload)
                return
            received = hashlib.sha256()
            while data := sock.recv(1 << 20):
                received.update(data)
            sock.sendall(received.hexdigest().encode())

        server = self.target(both)
        port = self.startConnector().allocatedPort()
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=120)
        self.assertEqual(code, 0)
        sock.sendall(b"D")
        self.assertEqual(hashlib.sha256(recvAll(sock)).hexdigest(), digest)
        sock.close()
        sock, _ = socks5Connect(port, "127.0.0.1", server.port, timeout=120)
        sock.sendall(b"U" + payload)
        sock.shutdown(socket.SHUT_WR)
        self.assertEqual(recvAll(sock).decode(), hashlib.sha256(payload).hexdigest())
        sock.close()
        log = self.relay.log.read_text()
        self.assertGreaterEqual(log.count(f"kex: client->server cipher: {cipher}"), 4, "key exchanges")
        self.assertGreaterEqual(log.count(f"kex: server->client cipher: {cipher}"), 4, "key exchanges")

    def test_offeredCiphers(self) -> None:
        """
        AEAD first, cheapest first; never CBC.
        """
        self.assertEqual(
            CIPHER_PREFERENCE[:3],
            [b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com", b"chacha20-poly1305@openssh.com"],
        )
        self.assertFalse([name for name in CIPHER_PREFERENCE if b"cbc" in name])

    def test_aes128gcm(self) -> None:
        self.transferBothWays("aes128-gcm@openssh.com")

    def test_aes256gcm(self) -> None:
        self.transferBothWays("aes256-gcm@openssh.com")

    def test_chacha20poly1305(self) -> None:
        self.transferBothWays("chacha20-poly1305@openssh.com")

    def test_aes128ctr(self) -> None:
        self.transferBothWays("aes128-ctr")

    def test_aes256ctr(self) -> None:
        self.transferBothWays("aes256-ctr")
