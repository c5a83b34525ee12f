"""
Files the connector reads and others write: known_hosts (perhaps from the
certificate API) and the allowlist file.  A CRLF line still counts (a
revoked key stays revoked), a comment ends only at a newline, a huge
known_hosts is refused, a FIFO put at the allowlist's path blocks nothing,
and an edit in place after an identical file was swapped in waits its turn.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.allowlist import Allowlist
from incident_connector.tunnel.hostkeys import HostKeyMismatch, HostKeyPolicy, KnownHosts

from .test_hostkeys import KEY, NAME, blobOf
from .test_policy import Reloading


def verdict(text: bytes, key: bytes = KEY, port: int = 2222) -> str | None:
    try:
        KnownHosts.fromBytes(text).check("Relay.Example", port, blobOf(key), "key")
    except HostKeyMismatch as e:
        return str(e)
    return None


class KnownHostsCRLFTests(SynchronousTestCase):
    def test_revokedLineWithCRLF(self) -> None:
        """
        OpenSSH decodes the key field with b64_pton, which skips whitespace:
        a CRLF line without a comment is valid, and a @revoked one revokes.
        """
        text = NAME + b" " + KEY + b" rotation\r\n@revoked " + NAME + b" " + KEY + b"\r\n"
        self.assertEqual(verdict(text), "key for [relay.example]:2222 is revoked in known_hosts line 2")

    def test_plainLineWithCRLF(self) -> None:
        self.assertIsNone(verdict(NAME + b" " + KEY + b"\r\n"))


class KnownHostsSizeTests(SynchronousTestCase):
    def test_hugeFileRefused(self) -> None:
        """
        A known_hosts file past a bound is refused with an OSError (which
        makeCredentials turns into one line) instead of being read whole.
        """
        path = Path(self.mktemp())
        with open(path, "wb") as f:
            f.truncate(64 * 1024 * 1024 + 1)  # sparse: costs no disk
        self.assertRaises(OSError, HostKeyPolicy, "relay.example", 22, knownHostsPath=str(path))


class AllowlistFifoTests(SynchronousTestCase):
    def test_fifoDoesNotBlock(self) -> None:
        """
        A FIFO put at the path (by mistake, or by anyone who can write the
        directory) must not block the reactor thread in open().
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "allowlist"
        path.write_text("a:1\n")
        reloading = Reloading(str(path))
        os.mkfifo(directory / "fifo")
        os.rename(directory / "fifo", path)
        done = threading.Event()

        def reload() -> None:
            reloading.file.reload()
            done.set()

        thread = threading.Thread(target=reload, daemon=True)
        thread.start()
        finished = done.wait(5)
        if not finished:  # release the reader blocked in open()
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(5)
        self.assertTrue(finished, "reload() blocked opening a FIFO")
        self.assertEqual(reloading.entries(), ("a:1",))
        self.assertEqual(reloading.reloads("unreadable"), 1)


class AllowlistLineTests(SynchronousTestCase):
    def test_commentEndsOnlyAtNewline(self) -> None:
        """
        What follows '#' up to the newline is a comment: str.splitlines()
        also ends a line at VT, FF, FS, GS, RS, NEL, U+2028, U+2029 and a
        lone CR, so text inside a comment became an entry.
        """
        for separator in ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]:
            allowlist = Allowlist.parseLines(f"db:5432  # was{separator}evil.example:22\n")
            self.assertEqual(allowlist.entries, ("db:5432",), repr(separator))
            self.assertFalse(allowlist.allows("evil.example", 22), repr(separator))

    def test_crlfStillWorks(self) -> None:
        self.assertEqual(Allowlist.parseLines("a:1 # c\r\nb:2\r\n").entries, ("a:1", "b:2"))


class AllowlistIdentityTests(SynchronousTestCase):
    def test_editInPlaceAfterIdenticalSwap(self) -> None:
        """
        The file replaced by an identical one (sed -i with nothing to change,
        a ConfigMap swap for another key, a deploy tool's rename), then
        edited in place: the half-written edit must wait for the next poll.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "allowlist"
        path.write_text("db:80\n")
        reloading = Reloading(str(path))
        (directory / "new").write_text("db:80\n")
        os.rename(directory / "new", path)
        reloading.poll()
        with open(path, "r+") as f:
            f.truncate(0)
            f.write("db:54")  # "db:5432\n" half-written
        reloading.poll()
        self.assertEqual(reloading.entries(), ("db:80",))
