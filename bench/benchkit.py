"""
What the benchmark scripts in this folder share: CPU time and memory of a
process (or a process tree) from /proc, OpenSSH's ``ssh -N -R 0`` as the
reference client, the connector started against any relay fixture, and one
destination that serves every measurement.

CPU is what these scripts compare, not wall time: the machine is shared, so
MB/s move with the neighbours' load while the CPU seconds a process spends
per GiB relayed barely do.  It is read from ``/proc/PID/stat`` (utime + stime
of every thread, plus the reaped children's), in clock ticks (10 ms): a
transfer must cost a few hundred ticks for the figure to mean something.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.integration.harness import (  # noqa: E402
    Connector,
    descendants,
    echo,
    recvExactly,
    socks5Connect,
    waitFor,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TICK = os.sysconf("SC_CLK_TCK")

__all__ = [
    "GiB",
    "KiB",
    "MiB",
    "OpenSSH",
    "RelayLike",
    "TransferCost",
    "alternate",
    "cpuSeconds",
    "cpuTimes",
    "descriptorCount",
    "download",
    "inThreads",
    "loginUser",
    "measureTransfer",
    "median",
    "percentile",
    "readyz",
    "removeWorkdir",
    "roundTrips",
    "rss",
    "serve",
    "startConnector",
    "today",
    "treeCpuSeconds",
    "upload",
]


class RelayLike(Protocol):
    """
    The part of a relay fixture (harness ``Relay``, ``SshdRelay``,
    ``DropbearRelay``, ``AsyncSSHRelay``) these scripts use.
    """

    port: int
    userKey: Path
    hostKeyLine: str

    @property
    def fingerprint(self) -> str: ...


def removeWorkdir(path: Path) -> None:
    """
    Remove a run's directory (keys, configs, logs) once the run succeeded;
    a failed run never gets here, so its logs stay for a look.
    """
    shutil.rmtree(path, ignore_errors=True)


def loginUser() -> str:
    return "root" if os.geteuid() == 0 else os.environ.get("USER", "root")


def today() -> str:
    return time.strftime("%Y-%m-%d")


# Process accounting.


def cpuTimes(pid: int) -> tuple[float, float]:
    """
    User and system CPU seconds of process C{pid} (all its threads, and its
    reaped children); zeros if it is gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    # Fields after the command name (which may hold spaces): state is field 3.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + cutime) / TICK, (stime + cstime) / TICK


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU seconds of process C{pid}: L{cpuTimes} added up.
    """
    return sum(cpuTimes(pid))


def treeCpuSeconds(pid: int) -> float:
    """
    CPU seconds of C{pid} and every live descendant: an sshd listener and
    the per-connection processes it forked (which rename themselves).
    """
    return sum(cpuSeconds(each) for each in [pid, *descendants(pid)])


def rss(pid: int, field: str = "VmRSS") -> float:
    """
    C{VmRSS} (or C{VmHWM}, the peak) of C{pid} in MiB.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descriptorCount(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# Statistics.


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(values: Iterable[float], fraction: float) -> float:
    """
    The nearest-rank percentile (C{fraction} 0.99 for p99).
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


# Clients of the relay.


class OpenSSH:
    """
    ``ssh -N -R 0`` with PermitRemoteOpen, as the hosted connector runs it,
    dialling C{relay} (or C{port}, a proxy in front of it).

    @ivar process: the ssh process.
    """

    def __init__(
        self,
        relay: RelayLike,
        allow: str,
        workdir: Path,
        port: int | None = None,
        options: Iterable[str] = (),
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "ssh.log"
        port = port or relay.port
        knownHosts = workdir / "known_hosts"
        keyType, blob = relay.hostKeyLine.split()[:2]
        knownHosts.write_text(f"[127.0.0.1]:{port} {keyType} {blob}\n")
        extra = [word for option in options for word in ("-o", option)]
        command = [
            "ssh", "-N", "-R", "0", "-o", f"PermitRemoteOpen={allow}", "-o", "ExitOnForwardFailure=yes",
            "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={knownHosts}", "-o", "StrictHostKeyChecking=yes",
            *extra, "-i", str(relay.userKey), "-p", str(port), f"{loginUser()}@127.0.0.1",
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def allocatedPort(self, timeout: float = 15) -> int:
        def found() -> re.Match[str] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"ssh exited:\n{self.log.read_text()}")
            return re.search(r"Allocated port (\d+) for remote forward", self.log.read_text())

        return int(waitFor(found, timeout, "ssh forward").group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def startConnector(
    workdir: Path,
    relay: RelayLike,
    allow: str,
    extra: Iterable[str] = (),
    port: int | None = None,
    prelude: str = "",
    env: dict[str, str] | None = None,
) -> Connector:
    """
    The connector as ``twistd -n incident-connector``, logging in to C{relay}
    (dialling C{port} instead when given: a proxy in front of it), its host
    key pinned by fingerprint; C{prelude} is Python run in its process first,
    C{env} more environment variables.
    """
    args = [
        "--relay-address", f"127.0.0.1:{port or relay.port}",
        "--relay-user", loginUser(),
        "--identity-file", str(relay.userKey),
        "--relay-host-key", relay.fingerprint,
        "--forward-dest-allowlist", allow,
        "--max-streams", "4096",
        *extra,
    ]  # fmt: skip
    return Connector(workdir, args, env=env, prelude=prelude).start()


def readyz(connector: Connector) -> dict[str, Any]:
    """
    The connector's C{/readyz} document (C{connections[i].rekeys}, ...).
    """
    _, body = connector.get("/readyz")
    return json.loads(body)


# The destination, and the transfers through a SOCKS port.


def serve(sock: socket.socket) -> None:
    """
    One destination for every measurement, told what to do by its first
    line: ``D<n>`` sends n bytes, ``U<n>`` reads n bytes and
    answers ``OK``, ``E`` echoes (with TCP_NODELAY).
    """
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return
        line += chunk
    kind, size = line[:1], int(line[1:].strip() or 0)
    if kind == b"D":
        block = memoryview(b"\0" * MiB)
        while size > 0:
            sock.sendall(block[: min(size, MiB)])
            size -= MiB
    elif kind == b"U":
        left = size
        while left:
            n = len(sock.recv(1 << 20))
            if not n:
                return
            left -= n
        sock.sendall(b"OK")
    else:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        echo(sock)


def download(port: int, destination: int, size: int, timeout: float = 300) -> float:
    """
    Fetch C{size} bytes from the destination on port C{destination} through
    the SOCKS port C{port}; returns the seconds the data took.
    """
    sock, code = socks5Connect(port, "127.0.0.1", destination, timeout=timeout)
    assert code == 0, f"SOCKS reply {code}"
    with sock:
        sock.sendall(b"D%d\n" % size)
        started = time.perf_counter()
        left = size
        buffer = bytearray(1 << 20)
        while left:
            n = sock.recv_into(buffer)
            if not n:
                raise ConnectionError(f"download ended {left} bytes short")
            left -= n
        return time.perf_counter() - started


def upload(port: int, destination: int, size: int, timeout: float = 300) -> float:
    """
    Send C{size} bytes to the destination and wait for its ``OK``; returns
    the seconds that took.
    """
    sock, code = socks5Connect(port, "127.0.0.1", destination, timeout=timeout)
    assert code == 0, f"SOCKS reply {code}"
    block = memoryview(b"\0" * MiB)
    with sock:
        sock.sendall(b"U%d\n" % size)
        started = time.perf_counter()
        for offset in range(0, size, MiB):
            sock.sendall(block[: min(MiB, size - offset)])
        assert recvExactly(sock, 2) == b"OK"
        return time.perf_counter() - started


@dataclass(frozen=True)
class TransferCost:
    """
    What one transfer cost.

    @ivar mbps: MiB per second.
    @ivar cpu: the client's CPU seconds per GiB (user and system).
    @ivar kernel: the system part of C{cpu}.
    @ivar relay: CPU seconds per GiB of the relay's process tree.
    """

    mbps: float
    cpu: float
    kernel: float
    relay: float


def measureTransfer(
    transfer: Callable[[int, int, int], float], port: int, destination: int, size: int, client: int, relay: int
) -> TransferCost:
    """
    Run C{transfer} (L{download} or L{upload}) of C{size} bytes through the
    SOCKS port C{port}, charging the CPU spent meanwhile to process
    C{client} and to the process tree of C{relay}.
    """
    (user, system), relayBefore = cpuTimes(client), treeCpuSeconds(relay)
    seconds = transfer(port, destination, size)
    (userAfter, systemAfter), relayAfter = cpuTimes(client), treeCpuSeconds(relay)
    gib = size / GiB
    return TransferCost(
        mbps=size / MiB / seconds,
        cpu=(userAfter + systemAfter - user - system) / gib,
        kernel=(systemAfter - system) / gib,
        relay=(relayAfter - relayBefore) / gib,
    )


T = TypeVar("T")


def alternate(items: Sequence[T], turn: int) -> list[T]:
    """
    The order of round C{turn}: as given, then reversed, and so on, so that
    going first or last, and a busy neighbour, fall alike on every subject.
    """
    return list(items) if turn % 2 == 0 else list(items)[::-1]


def inThreads(client: Callable[[], None], count: int) -> float:
    """
    Run C{client} in C{count} threads at once; the seconds until all returned.
    """
    threads = [threading.Thread(target=client) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def roundTrips(port: int, destination: int, count: int, pause: float = 0.0) -> list[float]:
    """
    C{count} 1-byte echo round trips on one stream; each in milliseconds.
    """
    sock, code = socks5Connect(port, "127.0.0.1", destination)
    assert code == 0, f"SOCKS reply {code}"
    samples = []
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"E\n")
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(b"x")
            recvExactly(sock, 1)
            samples.append((time.perf_counter() - started) * 1000)
            if pause:
                time.sleep(pause)
    return samples
