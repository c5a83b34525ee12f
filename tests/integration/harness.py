"""
Real components for end-to-end tests: a throwaway OpenSSH C{sshd} as the
relay, the connector as a C{twistd} process, TCP targets in threads, and
SOCKS clients.  Every wait has a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent.parent
MiB = 1024 * 1024
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class DeadlineExceeded(AssertionError):
    pass


def waitFor(
    condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.02
) -> Any:
    """
    Poll C{condition} until it returns something true, or fail after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def rss(pid: int) -> int:
    """
    Resident set size of process C{pid}, in bytes.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def descriptors(pid: int) -> int:
    """
    How many file descriptors process C{pid} has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


def freePort(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def writeKeyPair(path: Path, comment: str = "test") -> str:
    """
    Write an unencrypted OpenSSH ed25519 private key at C{path}, the public
    half at C{path}.pub; return the public line.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode() + " " + comment
    path.with_suffix(".pub").write_text(line + "\n")
    return line


def fingerprintOf(publicLine: str) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=publicLine, capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


class RelayProcess:
    """
    A relay run as one process tree on a loopback port: waiting for it to
    listen, crashing, freezing and thawing it, and what a connector needs to
    trust it.

    @ivar port: where it listens.
    @ivar hostKeyLine: its public host key, as in a .pub file.
    @ivar log: its log file.
    @ivar process: the server process while it runs.
    """

    port: int
    hostKeyLine: str
    log: Path
    process: subprocess.Popen[bytes] | None

    def newHostKey(self) -> None:
        """
        A new ed25519 host key (C{host_ed25519} in its directory).
        """
        self.hostKey = self.dir / "host_ed25519"  # type: ignore[attr-defined]
        for p in (self.hostKey, self.hostKey.with_suffix(".pub")):
            if p.exists():
                p.unlink()
        self.hostKeyLine = writeKeyPair(self.hostKey, "relay")

    @property
    def fingerprint(self) -> str:
        return fingerprintOf(self.hostKeyLine)

    def knownHosts(self, path: Path | None = None) -> Path:
        path = path or self.dir / "known_hosts"  # type: ignore[attr-defined]
        keyType, blob = self.hostKeyLine.split()[:2]
        path.write_text(f"[127.0.0.1]:{self.port} {keyType} {blob}\n")
        return path

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"relay exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """
        End the server and every per-connection child, like a relay crash.
        """
        if self.process is None:
            return
        self._signalAll(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def freeze(self) -> None:
        """
        SIGSTOP the server and its per-connection children: the relay accepts
        nothing and answers nothing, but its sockets stay open.
        """
        self._signalAll(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signalAll(signal.SIGCONT)

    def _signalAll(self, signum: int) -> None:
        assert self.process is not None
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


class Relay(RelayProcess):
    """
    A real OpenSSH sshd, run as the current user on a loopback port.

    @ivar port: where it listens.
    @ivar hostKeyLine: its public host key, as in a .pub file.
    @ivar log: its log file (C{-E}).
    @ivar matchConfig: C{Match} blocks, written after everything else.
    """

    def __init__(self, workdir: Path, extraConfig: str = "", port: int | None = None, matchConfig: str = "") -> None:
        if not os.path.exists(SSHD):
            raise AssertionError(f"sshd not found at {SSHD}: install openssh-server (.ci/run does)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or freePort()
        self.extraConfig = extraConfig
        self.matchConfig = matchConfig
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "sshd.log"
        self.userKey = self.dir / "id_ed25519"
        self.userKeyLine = writeKeyPair(self.userKey, "connector")
        (self.dir / "authorized_keys").write_text(self.userKeyLine + "\n")
        self.newHostKey()
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)

    def start(self) -> Relay:
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    # sshd keeps the first value it reads for a keyword: overrides go first.
                    self.extraConfig,
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.hostKey}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding remote",
                    "LogLevel VERBOSE",
                    # Match blocks run to the end of the file: last.
                    self.matchConfig,
                ]
            )
            + "\n"
        )
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        waitFor(self._listening, 10, f"sshd on port {self.port}")
        return self


class Connector:
    """
    The connector as operators run it: C{twistd -n incident-connector ...},
    or C{program} followed by C{args} when a program is given (then the
    metrics endpoint is set through the environment, so the command line is
    exactly C{program} and C{args}).

    @ivar output: the file collecting its stdout and stderr.
    @ivar metricsPort: where its /metrics, /healthz and /readyz are served (it
        listens on port 0 and says which port it got).
    @ivar descriptorLimits: C{(soft, hard)} C{RLIMIT_NOFILE} to start it with, or L{None}.
    @ivar prelude: Python run in the connector's process before twistd
        starts (a test device, e.g. narrowing the algorithms it offers).
    """

    def __init__(
        self,
        workdir: Path,
        args: list[str],
        env: dict[str, str] | None = None,
        program: list[str] | None = None,
        descriptorLimits: tuple[int, int] | None = None,
        prelude: str = "",
    ) -> None:
        self.dir = workdir
        self.prelude = prelude
        self.dir.mkdir(parents=True, exist_ok=True)
        self.output = self.dir / f"connector-{id(self)}.log"
        self._metricsPort: int | None = None
        self.args = args
        self.env = env or {}
        self.program = program
        self.descriptorLimits = descriptorLimits
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Connector:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INCIDENT_CONNECTOR_")}
        env["PYTHONPATH"] = str(REPO)
        # Port 0, reported back in the log: no race for a port chosen in advance.
        metrics = "tcp:0:interface=127.0.0.1"
        if self.program is None:
            command = [*twistdCommand(self.prelude), *reactorArguments(), "-n", "--pidfile=", "incident-connector"]
            command += [f"--metrics-listen={metrics}", *self.args]
        else:
            command = [*self.program, *self.args]
            env["INCIDENT_CONNECTOR_METRICS_LISTEN"] = metrics
        env.update(self.env)
        limits = self.descriptorLimits

        def limit() -> None:
            if limits is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, limits)

        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=out, cwd=self.dir, env=env, preexec_fn=limit)
        return self

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    @property
    def metricsPort(self) -> int:
        if self._metricsPort is None:
            # Twisted logs the port a listening factory got.
            self._metricsPort = int(self.waitForLog(r"\(ListenerFactory\) starting on (\d+)").group(1))
        return self._metricsPort

    def waitForLog(self, pattern: str, timeout: float = 15.0, after: int = 0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.process is not None and self.process.poll() is not None:
                match = re.search(pattern, self.text()[after:])
                if match:
                    return match
                raise AssertionError(f"connector exited ({self.process.returncode}):\n{self.text()}")
            return re.search(pattern, self.text()[after:])

        try:
            return waitFor(found, timeout, f"log line /{pattern}/")
        except DeadlineExceeded:
            raise DeadlineExceeded(f"no /{pattern}/ in {timeout} s; log:\n{self.text()[-4000:]}") from None

    def allocatedPort(self, timeout: float = 15.0, after: int = 0) -> int:
        match = self.waitForLog(r"Allocated port (\d+) for remote forward to socks", timeout, after)
        reactor = os.environ.get("INCIDENT_TEST_REACTOR")
        if reactor and self.program is None:
            # twistd names its reactor: prove the run is not silently on the default one.
            self.waitForLog(rf"reactor class: twisted\.internet\.{reactor}reactor\.", 1)
        return int(match.group(1))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metricsPort}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:  # not listening yet, or gone
            return 0, str(e)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def descendants(pid: int) -> list[int]:
    """
    Every live descendant of C{pid}, from /proc (sshd's children rename
    themselves, so matching command lines would miss them).
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def connectionsTo(pid: int, port: int) -> set[str]:
    """
    The local C{127.0.0.1:PORT} address of every established IPv4 TCP
    connection process C{pid} has to C{port}: the peer addresses the other
    end (the reference relay's C{list}, say) names that process's connections by.
    Read from /proc: the socket inodes among the process's descriptors, looked
    up in its network namespace's TCP table.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if inode in inodes and state == "01" and int(remote.split(":")[1], 16) == port:
            address, localPort = local.split(":")
            # The kernel prints the IPv4 address as a little-endian word.
            found.add(f"{socket.inet_ntoa(bytes.fromhex(address)[::-1])}:{int(localPort, 16)}")
    return found


def twistdCommand(prelude: str = "") -> list[str]:
    return [sys.executable, "-c", f"{prelude}\nfrom twisted.scripts.twistd import run; run()"]


def reactorArguments() -> list[str]:
    """
    C{--reactor=NAME} for the connector's twistd when the tests run under
    another reactor (C{python -m tests --reactor=NAME} sets
    C{INCIDENT_TEST_REACTOR}), so the connector under test uses it too.
    """
    name = os.environ.get("INCIDENT_TEST_REACTOR")
    return [f"--reactor={name}"] if name else []


def consoleScript(name: str) -> list[str]:
    """
    The command line of the console script C{name} as pyproject declares it
    and pip would install it (C{sys.exit(function())}), run from this checkout.
    """
    declared = re.search(rf'^{re.escape(name)} = "([\w.]+):(\w+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    if declared is None:
        raise AssertionError(f"pyproject.toml declares no console script {name!r}")
    module, function = declared.groups()
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops SYNs under 200 concurrent dials.
    request_queue_size = 1024
    daemon_threads = True


class Target:
    """
    A TCP server in a thread, handling each connection with C{handler(sock)}.

    @ivar accepts: how many connections it accepted.
    """

    def __init__(
        self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1", receiveBuffer: int = 0
    ) -> None:
        target = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with target._lock:
                    target.accepts += 1
                try:
                    handler(self.request)
                except OSError:
                    pass

        self.accepts = 0
        self._lock = threading.Lock()
        serverClass: type[_Server] = _Server
        if ":" in host:
            serverClass = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        self.server = serverClass((host, 0), Handler, bind_and_activate=False)
        if receiveBuffer:
            # Set before listen() so accepted sockets inherit it.
            self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
        self.server.server_bind()
        self.server.server_activate()
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def echo(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def http200(sock: socket.socket) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = sock.recv(4096)
        if not chunk:
            return
        request += chunk
    body = b"hello from the private network\n"
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


def socks5Connect(proxyPort: int, host: str, port: int, timeout: float = 10.0) -> tuple[socket.socket, int]:
    """
    A raw SOCKS5 CONNECT by name or address; returns the socket and the reply code.
    """
    import ipaddress

    sock = socket.create_connection(("127.0.0.1", proxyPort), timeout=timeout)
    sock.sendall(b"\x05\x01\x00")
    assert recvExactly(sock, 2) == b"\x05\x00"
    try:
        address = ipaddress.ip_address(host)
        atyp = b"\x01" if address.version == 4 else b"\x04"
        dest = atyp + address.packed
    except ValueError:
        dest = b"\x03" + bytes([len(host)]) + host.encode()
    sock.sendall(b"\x05\x01\x00" + dest + port.to_bytes(2, "big"))
    head = recvExactly(sock, 4)
    assert head[0] == 5, head
    rest = {1: 4, 4: 16}.get(head[3], 0) + 2
    recvExactly(sock, rest)
    return sock, head[1]


def recvExactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def recvAll(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


class ReferenceRelay:
    """
    The reference relay as operators run it: C{twistd -n incident-relay}, with
    its registry managed through the C{incident-relay} command.

    @ivar sshPort: where connectors dial.
    @ivar apiPort: the HTTP(S) API.
    @ivar apiURL: the API's base URL.
    """

    def __init__(self, workdir: Path, lifetime: str = "15m", apiListen: str | None = None, scheme: str = "http"):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dataDir = self.dir / "data"
        self.sshPort = freePort()
        self.apiPort = freePort()
        self.lifetime = lifetime
        self.apiListen = apiListen or f"tcp:{self.apiPort}:interface=127.0.0.1"
        self.apiURL = f"{scheme}://127.0.0.1:{self.apiPort}"
        self.log = self.dir / "relay.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ReferenceRelay:
        # A relative data directory keeps its admin socket's path under the
        # 107 bytes a Unix socket path may have (the test's own directory is deep).
        command = [
            *twistdCommand(), "-n", "--pidfile=", "incident-relay", "--data-dir", "data",
            "--ssh-listen", f"tcp:{self.sshPort}:interface=127.0.0.1", "--api-listen", self.apiListen,
            "--certificate-lifetime", self.lifetime,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=self.dir)

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"relay exited:\n{self.log.read_text()}")
            for port in (self.sshPort, self.apiPort):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    return False
            return True

        waitFor(up, 15, "the reference relay")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def cli(self, *args: str) -> str:
        """
        Run C{incident-relay --data-dir data ARGS...} where the relay runs
        (so its admin socket is C{data/admin.sock}); return its output.
        """
        result = subprocess.run(
            [sys.executable, "-c", "from incident_connector.relay.cli import run; run()", "--data-dir", "data", *args],
            capture_output=True, text=True, timeout=60, cwd=self.dir, env=dict(os.environ, PYTHONPATH=str(REPO)),
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"incident-relay {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result.stdout

    def add(self, name: str) -> tuple[str, str]:
        import json

        document = json.loads(self.cli("add", name, "--json"))
        return document["connector_id"], document["api_token"]


class ConnectProxy:
    """
    A small HTTP CONNECT proxy on loopback, in threads: optional Basic auth,
    and a count of the tunnels it opened.

    @ivar tunnels: C{host:port} of every tunnel opened.
    @ivar refused: how many CONNECTs it refused.
    @ivar hosts: names it resolves itself, like a proxy's own DNS (name to address).
    """

    def __init__(self, credentials: tuple[str, str] | None = None, hosts: dict[str, str] | None = None) -> None:
        import base64

        self.tunnels: list[str] = []
        self.refused = 0
        self.hosts = hosts or {}
        expected = None
        if credentials is not None:
            expected = "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        proxy = self

        def handle(client: socket.socket) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            if expected is not None and headers.get("Proxy-Authorization") != expected:
                proxy.refused += 1
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            try:
                address = proxy.hosts.get(host, host.strip("[]"))
                upstream = socket.create_connection((address, int(port)), timeout=10)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                return
            upstream.settimeout(None)
            proxy.tunnels.append(target)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

            def pump(source: socket.socket, sink: socket.socket) -> None:
                try:
                    while data := source.recv(65536):
                        sink.sendall(data)
                except OSError:
                    pass
                finally:
                    for s in (source, sink):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass

            other = threading.Thread(target=pump, args=(upstream, client), daemon=True)
            other.start()
            pump(client, upstream)
            other.join()
            upstream.close()

        self.target = Target(handle)
        self.port = self.target.port

    def url(self, credentials: tuple[str, str] | None = None) -> str:
        auth = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def close(self) -> None:
        self.target.close()


class TunnelTestCase(SynchronousTestCase):
    """
    Starts a relay; C{startConnector} starts a connector pointed at it.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.relay = Relay(self.dir / "relay").start()
        self.addCleanup(self.relay.stop)

    def connectorArgs(self) -> list[str]:
        return [
            "--relay-address",
            f"127.0.0.1:{self.relay.port}",
            "--relay-user",
            "root" if os.geteuid() == 0 else os.environ.get("USER", "root"),
            "--identity-file",
            str(self.relay.userKey),
            "--known-hosts",
            str(self.relay.knownHosts()),
        ]

    def startConnector(self, *extra: str, env: dict[str, str] | None = None) -> Connector:
        connector = Connector(self.dir / "connector", [*self.connectorArgs(), *extra], env).start()
        self.addCleanup(connector.stop)
        return connector

    def check(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{incident-connector check ARGS...}.
        """
        return subprocess.run(
            [sys.executable, "-c", "from incident_connector.check import main; main()", "check", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    def throughFaultProxy(self, *extra: str) -> tuple[Any, Connector]:
        """
        A fault proxy in front of the relay, and a connector dialling the
        proxy (pinning the relay's host key: known_hosts would name the
        relay's own port).
        """
        from .faultproxy import FaultProxy

        proxy = FaultProxy(("127.0.0.1", self.relay.port)).start()
        self.addCleanup(proxy.stop)
        args = self.connectorArgs()
        args[args.index("--relay-address") + 1] = f"127.0.0.1:{proxy.port}"
        at = args.index("--known-hosts")
        args[at : at + 2] = ["--relay-host-key", self.relay.fingerprint]
        connector = Connector(self.dir / "connector", [*args, *extra]).start()
        self.addCleanup(connector.stop)
        return proxy, connector

    def target(self, handler, host: str = "127.0.0.1") -> Target:  # type: ignore[no-untyped-def]
        target = Target(handler, host)
        self.addCleanup(target.close)
        return target

    def curl(self, proxyPort: int, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--socks5-hostname", f"127.0.0.1:{proxyPort}", *flags, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
