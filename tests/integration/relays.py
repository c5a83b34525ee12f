"""
SSH servers nobody here wrote, as relays for the end-to-end tests.

Each fixture has the shape of L{harness.Relay} (C{port}, C{userKey},
C{hostKeyLine}, C{fingerprint}, C{log}, C{start()}, C{stop()},
C{knownHosts()}, C{freeze()}, C{thaw()}), so a test swaps one for another by
assigning C{self.relay} in a L{harness.TunnelTestCase}.  Each also reads its
own log: L{RelayFixture.protocolErrors} lists the lines where the server saw
something wrong, L{RelayFixture.keyExchanges} counts key exchanges, and
L{RelayFixture.negotiated} lists the client-to-server cipher and MAC of each
(both L{None} when the server does not log them).

  - L{SshdRelay}: OpenSSH C{sshd} (L{harness.Relay}) with ciphers, MACs and
    C{RekeyLimit} as arguments.
  - L{DropbearRelay}: Debian's C{dropbear-bin} 2022.83.
  - L{AsyncSSHRelay}: a relay on AsyncSSH, C{asyncssh_relay.py}, in its own
    process.
  - L{HostileRelay}: a Conch server that misbehaves in one chosen way,
    C{hostile_relay.py}.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .harness import MiB, Relay, RelayProcess, freePort, waitFor, writeKeyPair

__all__ = ["AsyncSSHRelay", "DropbearRelay", "HostileRelay", "RelayFixture", "SshdRelay", "loginUser"]

DROPBEAR = shutil.which("dropbear") or "/usr/sbin/dropbear"
DROPBEARKEY = shutil.which("dropbearkey") or "/usr/bin/dropbearkey"
ASYNCSSH_RELAY = Path(__file__).resolve().parent / "asyncssh_relay.py"
HOSTILE_RELAY = Path(__file__).resolve().parent / "hostile_relay.py"


class RelayFixture(Protocol):
    """
    What a test needs of a relay, whoever wrote the server.

    @ivar port: the loopback port it listens on.
    @ivar userKey: the ed25519 private key (OpenSSH format) the connector
        logs in with.
    @ivar hostKeyLine: its public host key, as in a C{.pub} file.
    @ivar log: the file its diagnostics go to.
    """

    port: int
    userKey: Path
    hostKeyLine: str
    log: Path

    @property
    def fingerprint(self) -> str: ...

    def start(self) -> RelayFixture: ...

    def stop(self) -> None: ...

    def knownHosts(self, path: Path | None = None) -> Path: ...

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...

    def protocolErrors(self) -> list[str]: ...

    def keyExchanges(self) -> int | None: ...

    def negotiated(self) -> list[tuple[str, str]] | None: ...


def loginUser() -> str:
    """
    The user the connector logs in as: the servers run as the current user
    and (except AsyncSSH's) only let that user in.
    """
    return pwd.getpwuid(os.geteuid()).pw_name


def _matching(log: Path, pattern: re.Pattern[str]) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines() if pattern.search(line)]


def _pair(pattern: re.Pattern[str], line: str) -> tuple[str, str]:
    match = pattern.search(line)
    assert match is not None
    return match.group(1), match.group(2)


class SshdRelay(Relay):
    """
    L{harness.Relay} (OpenSSH C{sshd}) with its algorithms and re-key limit
    as arguments, logging at C{DEBUG1} so that every key exchange shows.

    @ivar ciphers: its C{Ciphers} line, or empty for sshd's default.
    @ivar macs: its C{MACs} line, or empty.
    @ivar rekeyLimit: its C{RekeyLimit} (C{"1M"}: re-key after every MiB
        either way), or empty for sshd's default (per the cipher's block size).
    """

    # sshd -e writes "error: ..." / "fatal: ..." for what it refuses, and
    # names packet-level failures; a client that leaves cleanly logs none.
    _PROBLEMS = re.compile(
        r"^(error|fatal):|protocol[ _]error|Corrupted MAC|Bad packet length|message authentication code incorrect"
        r"|ssh_dispatch_run_fatal|Disconnecting"
    )

    def __init__(
        self,
        workdir: Path,
        ciphers: Sequence[str] = (),
        macs: Sequence[str] = (),
        rekeyLimit: str = "",
        extraConfig: str = "",
        port: int | None = None,
    ) -> None:
        self.ciphers = list(ciphers)
        self.macs = list(macs)
        self.rekeyLimit = rekeyLimit
        # sshd keeps the first value it reads for a keyword: ours go first.
        lines = ["LogLevel DEBUG1"]
        if self.ciphers:
            lines.append("Ciphers " + ",".join(self.ciphers))
        if self.macs:
            lines.append("MACs " + ",".join(self.macs))
        if rekeyLimit:
            lines.append(f"RekeyLimit {rekeyLimit}")
        super().__init__(workdir, "\n".join([extraConfig, *lines]), port)

    def start(self) -> SshdRelay:
        super().start()
        return self

    def protocolErrors(self) -> list[str]:
        return _matching(self.log, self._PROBLEMS)

    def keyExchanges(self) -> int:
        """
        Key exchanges sshd completed or started, per its C{DEBUG1} line
        naming the client-to-server cipher (one per exchange).
        """
        return len(_matching(self.log, re.compile(r"kex: client->server cipher:")))

    def negotiated(self) -> list[tuple[str, str]]:
        """
        The client-to-server cipher and MAC of each key exchange (C{<implicit>}
        for an AEAD cipher).
        """
        pattern = re.compile(r"kex: client->server cipher: (\S+) MAC: (\S+)")
        return [_pair(pattern, line) for line in _matching(self.log, pattern)]


class _ProcessRelay(RelayProcess):
    """
    What the relays run as one process tree have in common.

    @ivar dir: its working directory (keys, config, log).
    @ivar process: the server process while it runs.
    """

    def __init__(self, workdir: Path, port: int | None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or freePort()
        self.process: subprocess.Popen[bytes] | None = None
        self.userKey = self.dir / "id_ed25519"
        self.userKeyLine = writeKeyPair(self.userKey, "connector")

    def _spawn(self, command: list[str], what: str) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.dir)
        waitFor(self._listening, 15, f"{what} on port {self.port}")


class DropbearRelay(_ProcessRelay):
    """
    Dropbear (Debian C{dropbear-bin} 2022.83) as the relay, run as the
    current user: C{dropbear -F -E -s -j -p 127.0.0.1:PORT -r HOSTKEY}.

    What it offers (2022.83-1+deb12u3 as Debian builds it, seen with
    C{ssh -vv}): key exchanges curve25519-sha256 (and @libssh.org), ECDH,
    DH group 14, and C{kex-strict-s-v00@openssh.com} (Debian's Terrapin fix);
    ciphers chacha20-poly1305@openssh.com, aes128-ctr, aes256-ctr; MACs
    hmac-sha1, hmac-sha2-256.  No AES-GCM, no aes192-ctr, no hmac-sha2-512,
    no EtM MAC.  No option narrows them: the client's preference decides.
    It grants C{tcpip-forward} on port 0 (listening on 127.0.0.1 and ::1).

    It cannot be made to re-key often: the limits are compile-time
    constants (C{KEX_REKEY_DATA} 1 GiB, C{KEX_REKEY_TIMEOUT} 8 hours).  It
    does follow a key exchange the client starts, so re-keys are tested from
    the connector's side (C{--rekey-limit}).

    Dropbear reads C{~/.ssh/authorized_keys} from the home directory in the
    password database (C{getpwnam}), not from C{$HOME}.  So that nothing
    touches the real home, it runs in a private mount namespace
    (C{unshare --mount}) with a directory of its own bind-mounted over that
    home; as a non-root user, in a user namespace that maps the user to
    itself (C{unshare --user --map-current-user}).

    @ivar receiveWindow: its C{-W} channel window (its default, 24 KiB, makes
        a 64 MiB transfer crawl; the fixture's default is 1 MiB).
    @ivar home: the directory it sees as the user's home.
    """

    # "Exited normally" ends a connection the client closed without a word
    # (a port probe, a killed connector); "Disconnect received" one it closed
    # politely.  Any other end, or an error, is a problem.
    _PROBLEMS = re.compile(r"^(?!.*(Exited normally|Disconnect received)).*(Exit|[Ee]rror|Bad |Premature|[Ii]nvalid)")

    def __init__(
        self, workdir: Path, port: int | None = None, receiveWindow: int = MiB, extraArgs: Sequence[str] = ()
    ) -> None:
        for tool in (DROPBEAR, DROPBEARKEY):
            if not os.path.exists(tool):
                raise AssertionError(f"{tool} not found: install dropbear-bin (.ci/run does)")
        super().__init__(workdir, port)
        self.receiveWindow = receiveWindow
        self.extraArgs = list(extraArgs)
        self.log = self.dir / "dropbear.log"
        self.home = self.dir / "home"
        (self.home / ".ssh").mkdir(parents=True, exist_ok=True)
        for path in (self.home, self.home / ".ssh"):
            # Dropbear refuses keys under a directory others may write to.
            path.chmod(0o700)
        (self.home / ".ssh" / "authorized_keys").write_text(self.userKeyLine + "\n")
        self.newHostKey()

    def newHostKey(self) -> None:
        self.hostKey = self.dir / "dropbear_ed25519_host_key"
        if self.hostKey.exists():
            self.hostKey.unlink()
        subprocess.run([DROPBEARKEY, "-t", "ed25519", "-f", str(self.hostKey)], capture_output=True, check=True)
        printed = subprocess.run(
            [DROPBEARKEY, "-y", "-f", str(self.hostKey)], capture_output=True, text=True, check=True
        ).stdout
        self.hostKeyLine = next(line for line in printed.splitlines() if line.startswith("ssh-ed25519 "))

    def start(self) -> DropbearRelay:
        realHome = pwd.getpwuid(os.geteuid()).pw_dir
        if not os.path.isdir(realHome):
            raise AssertionError(f"dropbear looks for keys under {realHome}, which does not exist")
        dropbear = [
            DROPBEAR, "-F", "-E", "-s", "-j",
            "-p", f"127.0.0.1:{self.port}",
            "-r", str(self.hostKey),
            "-P", str(self.dir / "dropbear.pid"),
            "-W", str(self.receiveWindow),
            *self.extraArgs,
        ]  # fmt: skip
        namespace = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            namespace[1:1] = ["--user", "--map-current-user"]
        bindHome = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        self._spawn(
            [*namespace, "sh", "-c", bindHome, "dropbear-relay", str(self.home), realHome, *dropbear], "dropbear"
        )
        return self

    def protocolErrors(self) -> list[str]:
        """
        Dropbear logs one C{Exit ...} line when a connection ends, with the
        reason; a connection that is still up has none.
        """
        return _matching(self.log, self._PROBLEMS)

    def keyExchanges(self) -> None:
        """
        Dropbear logs no key exchange.
        """
        return None

    def negotiated(self) -> None:
        return None


class AsyncSSHRelay(_ProcessRelay):
    """
    A relay on AsyncSSH (C{asyncssh_relay.py}) in its own process: it lets
    in the connector's key, grants C{tcpip-forward} on a 127.0.0.1 port
    (logging C{Allocated port N}), and opens a C{forwarded-tcpip} channel for
    every connection to that port, like sshd.

    @ivar rekeyBytes: re-key after the server sent this many bytes (AsyncSSH
        counts only what it sends), or 0 for its default (1 GiB).
    @ivar rekeySeconds: re-key after this many seconds, or 0 for its default
        (an hour).  With an upload, only this makes the server re-key.
    @ivar kexAlgorithms: key exchanges it offers (empty: its defaults).
    @ivar ciphers: ciphers it offers (empty: its defaults, AES-GCM included).
    @ivar macs: MACs it offers (empty: its defaults, EtM ones first).
    """

    _PROBLEMS = re.compile(r"Sending disconnect|Uncaught exception|Traceback|protocol error", re.I)

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        rekeyBytes: int = 0,
        rekeySeconds: float = 0,
        kexAlgorithms: Sequence[str] = (),
        ciphers: Sequence[str] = (),
        macs: Sequence[str] = (),
    ) -> None:
        super().__init__(workdir, port)
        self.rekeyBytes = rekeyBytes
        self.rekeySeconds = rekeySeconds
        self.kexAlgorithms = list(kexAlgorithms)
        self.ciphers = list(ciphers)
        self.macs = list(macs)
        self.log = self.dir / "asyncssh.log"
        self.authorizedKeys = self.dir / "authorized_keys"
        self.authorizedKeys.write_text(self.userKeyLine + "\n")
        self.newHostKey()

    def start(self) -> AsyncSSHRelay:
        command = [
            sys.executable, str(ASYNCSSH_RELAY),
            "--port", str(self.port),
            "--host-key", str(self.hostKey),
            "--authorized-keys", str(self.authorizedKeys),
            "--log", str(self.log),
        ]  # fmt: skip
        if self.rekeyBytes:
            command += ["--rekey-bytes", str(self.rekeyBytes)]
        if self.rekeySeconds:
            command += ["--rekey-seconds", str(self.rekeySeconds)]
        for option, names in (
            ("--kex-algs", self.kexAlgorithms),
            ("--encryption-algs", self.ciphers),
            ("--mac-algs", self.macs),
        ):
            if names:
                command += [option, ",".join(names)]
        self._spawn(command, "the AsyncSSH relay")
        return self

    def protocolErrors(self) -> list[str]:
        """
        AsyncSSH logs C{Sending disconnect: REASON} for everything it refuses
        (bad MAC, unexpected message, failed key exchange...) and
        C{Uncaught exception} for its own failures.
        """
        return _matching(self.log, self._PROBLEMS)

    def keyExchanges(self) -> int:
        return len(_matching(self.log, re.compile(r"Completed key exchange")))

    def negotiated(self) -> list[tuple[str, str]]:
        """
        The client-to-server cipher and MAC of the first key exchange of
        each connection (an AEAD cipher's MAC is its own name).
        """
        pattern = re.compile(r"algorithms: client->server (\S+) (\S+),")
        return [_pair(pattern, line) for line in _matching(self.log, pattern)]


class HostileRelay(_ProcessRelay):
    """
    A relay that plays one hostile or buggy case (C{hostile_relay.py}, on
    Conch) on its first C{times} connections and behaves on later ones.

    @ivar case: one of L{hostile_relay.CASES}.
    @ivar times: how many connections play the case.
    @ivar hangupAfter: seconds after playing its case at which the relay
        drops a connection the connector kept, or L{None} never.
    """

    _PROBLEMS = re.compile(r"Traceback|Unhandled")

    def __init__(
        self, workdir: Path, case: str, times: int = 1, hangupAfter: float | None = None, port: int | None = None
    ) -> None:
        super().__init__(workdir, port)
        self.case = case
        self.times = times
        self.hangupAfter = hangupAfter
        self.log = self.dir / "hostile.log"
        self.authorizedKeys = self.dir / "authorized_keys"
        self.authorizedKeys.write_text(self.userKeyLine + "\n")
        self.hostKey = self.dir / "host_ed25519"
        self.hostKeyLine = writeKeyPair(self.hostKey, "relay")

    def start(self) -> HostileRelay:
        command = [
            sys.executable, str(HOSTILE_RELAY),
            "--case", self.case,
            "--times", str(self.times),
            "--port", str(self.port),
            "--host-key", str(self.hostKey),
            "--authorized-keys", str(self.authorizedKeys),
            "--log", str(self.log),
        ]  # fmt: skip
        if self.hangupAfter is not None:
            command += ["--hangup-after", str(self.hangupAfter)]
        self._spawn(command, f"the hostile relay ({self.case})")
        return self

    def _listening(self) -> bool:
        # Not by connecting: a probe would count as the connection that plays the case.
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"relay exited with {self.process.returncode}:\n{self.text()}")
        return "listening on" in self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def waitForLog(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """
        Wait until the relay logged a line matching C{pattern}.
        """
        try:
            return waitFor(lambda: re.search(pattern, self.text()), timeout, f"relay log line /{pattern}/")
        except AssertionError:
            raise AssertionError(f"no /{pattern}/ in the relay's log in {timeout} s:\n{self.text()[-4000:]}") from None

    def protocolErrors(self) -> list[str]:
        """
        The relay's own failures (a traceback here is a bug in the test relay).
        """
        return _matching(self.log, self._PROBLEMS)

    def keyExchanges(self) -> int:
        return len(_matching(self.log, re.compile(r"NEWKEYS received")))

    def negotiated(self) -> None:
        return None
