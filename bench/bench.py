"""
Benchmark: this connector against OpenSSH's ``ssh -N -R 0`` on the same
loopback sshd, in the same run.

    python bench/bench.py [--size-mib 256] [--pings 2000] [--streams 1000]

Both clients are connected at once and their transfers alternate (which goes
first alternates too), so load from elsewhere hits both alike.  Prints MB/s
download (destination to client) and upload (medians of ``--repeat`` runs;
the ratio is the median of each back-to-back pair's ratio, which cancels the
machine's drift), 1-byte round-trip p50/p99, concurrent streams of 64 KiB (all
checked byte-exact), and RSS idle and peak, with each figure as a ratio to
OpenSSH.  Run by hand; no test
asserts on speed.  ``--ciphers aes128-gcm@openssh.com`` makes both use one
cipher (ssh prefers chacha20-poly1305, the connector AES-GCM).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import (
    Connector,
    Relay,
    Target,
    echo,
    recvExactly,
    socks5Connect,
    tempdir,
    waitFor,
)

MiB = 1024 * 1024


def status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class OpenSSH:
    """
    ``ssh -N -R 0`` with PermitRemoteOpen, as the hosted connector runs it.
    """

    def __init__(self, relay: Relay, allow: str, workdir: Path) -> None:
        self.log = workdir / "ssh.log"
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
        command = [
            "ssh", "-N", "-R", "0", "-o", f"PermitRemoteOpen={allow}", "-o", "ExitOnForwardFailure=yes",
            "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={relay.knownHosts()}", "-o", "StrictHostKeyChecking=yes",
            "-i", str(relay.userKey), "-p", str(relay.port), f"{user}@127.0.0.1",
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)

    def allocatedPort(self) -> int:
        match = waitFor(
            lambda: re.search(r"Allocated port (\d+) for remote forward", self.log.read_text()), 15, "ssh forward"
        )
        return int(match.group(1))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def download(port: int, target: Target, size: int) -> float:
    sock, code = socks5Connect(port, "127.0.0.1", target.port, timeout=120)
    assert code == 0
    sock.sendall(b"D%d\n" % size)

    def receive() -> None:
        left = size
        buffer = bytearray(1 << 20)
        while left:
            n = sock.recv_into(buffer)
            assert n, "short download"
            left -= n

    seconds = timed(receive)
    sock.close()
    return size / MiB / seconds


def upload(port: int, target: Target, size: int) -> float:
    sock, code = socks5Connect(port, "127.0.0.1", target.port, timeout=120)
    assert code == 0
    sock.sendall(b"U%d\n" % size)
    block = b"\0" * MiB

    def send() -> None:
        for _ in range(size // MiB):
            sock.sendall(block)
        assert recvExactly(sock, 2) == b"OK"

    seconds = timed(send)
    sock.close()
    return size / MiB / seconds


def roundTrips(port: int, target: Target, count: int) -> tuple[float, float]:
    sock, code = socks5Connect(port, "127.0.0.1", target.port)
    assert code == 0
    sock.sendall(b"E\n")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        sock.sendall(b"x")
        recvExactly(sock, 1)
        samples.append((time.perf_counter() - started) * 1000)
    sock.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def concurrent(port: int, target: Target, streams: int) -> tuple[int, float]:
    payload = os.urandom(64 * 1024)
    digest = hashlib.sha256(payload).digest()
    good: list[bool] = []
    barrier = threading.Barrier(streams, timeout=120)

    def client() -> None:
        ok = False
        try:
            sock, code = socks5Connect(port, "127.0.0.1", target.port, timeout=120)
            barrier.wait()
            sock.sendall(b"E\n" + payload)
            ok = code == 0 and hashlib.sha256(recvExactly(sock, len(payload))).digest() == digest
            sock.close()
        except Exception:
            pass
        good.append(ok)

    threads = [threading.Thread(target=client) for _ in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return good.count(True), time.perf_counter() - started


def serve(sock: socket.socket) -> None:
    """
    One destination for every measurement: ``D<n>`` sends n bytes, ``U<n>``
    reads n bytes and answers OK, ``E`` echoes.
    """
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return
        line += chunk
    kind, size = line[:1], int(line[1:].strip() or 0)
    if kind == b"D":
        block = b"\0" * MiB
        for _ in range(size // MiB):
            sock.sendall(block)
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


def measureBoth(
    peers: dict[str, tuple[int, int]], target: Target, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """
    Measure every peer (name -> (pid, SOCKS port)) with the runs interleaved,
    so a busy neighbour slows both alike; medians of C{--repeat} runs.
    """
    size = args.size_mib * MiB
    results: dict[str, dict[str, float]] = {
        name: {"rss_idle": status(pid, "VmRSS") / MiB} for name, (pid, _) in peers.items()
    }
    samples: dict[tuple[str, str], list[float]] = {}
    for run in range(args.repeat):
        order = list(peers.items()) if run % 2 == 0 else list(reversed(peers.items()))
        for key, transfer in (("down", download), ("up", upload)):
            for name, (_pid, port) in order:
                samples.setdefault((name, key), []).append(transfer(port, target, size))
    for (name, key), values in samples.items():
        results[name][key] = statistics.median(values)
    for key in ("down", "up"):
        pairs = zip(samples[("connector", key)], samples[("openssh", key)], strict=True)
        results["connector"][key + "_ratio"] = statistics.median(c / o for c, o in pairs)
    for name, (_pid, port) in peers.items():
        results[name]["rtt_p50"], results[name]["rtt_p99"] = roundTrips(port, target, args.pings)
    for name, (pid, port) in peers.items():
        ok, seconds = concurrent(port, target, args.streams)
        results[name]["streams_ok"] = ok
        results[name]["streams_s"] = seconds
        results[name]["rss_peak"] = status(pid, "VmHWM") / MiB
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5, help="transfers per peer, interleaved; medians reported")
    parser.add_argument("--connector-arg", action="append", default=[], help="extra connector option")
    parser.add_argument(
        "--ciphers", help="sshd's Ciphers line, so both clients use the same cipher (default: each its own choice)"
    )
    args = parser.parse_args()

    work = tempdir("bench-")
    relay = Relay(work / "relay", extraConfig=f"Ciphers {args.ciphers}" if args.ciphers else "").start()
    target = Target(serve)
    target.server.request_queue_size = 4096
    allow = f"127.0.0.1:{target.port}"
    try:
        ssh = OpenSSH(relay, allow, work)
        connector = Connector(
            work / "connector",
            [
                "--relay-address", f"127.0.0.1:{relay.port}",
                "--relay-user", "root" if os.geteuid() == 0 else os.environ.get("USER", "root"),
                "--identity-file", str(relay.userKey), "--known-hosts", str(relay.knownHosts()),
                "--forward-dest-allowlist", allow, "--max-streams", "4096",
                *args.connector_arg,
            ],
        ).start()  # fmt: skip
        try:
            assert connector.process is not None
            peers = {
                "openssh": (ssh.process.pid, ssh.allocatedPort()),
                "connector": (connector.process.pid, connector.allocatedPort()),
            }
            results = measureBoth(peers, target, args)
        finally:
            ssh.stop()
            connector.stop()
    finally:
        relay.stop()
        target.close()

    rows = [
        ("download MB/s", "down", True),
        ("upload MB/s", "up", True),
        ("1-byte RTT p50 ms", "rtt_p50", False),
        ("1-byte RTT p99 ms", "rtt_p99", False),
        (f"{args.streams} streams x 64 KiB ok", "streams_ok", True),
        (f"{args.streams} streams seconds", "streams_s", False),
        ("RSS idle MiB", "rss_idle", False),
        ("RSS peak MiB", "rss_peak", False),
    ]
    print(f"\n{'':32} {'openssh':>10} {'connector':>10} {'ratio':>7}")
    for label, key, _higherIsBetter in rows:
        a, b = results["openssh"][key], results["connector"][key]
        ratio = results["connector"].get(key + "_ratio", b / a if a else float("nan"))
        print(f"{label:32} {a:10.2f} {b:10.2f} {ratio:7.2f}")
    ciphers = args.ciphers or "each client's preference: ssh chacha20-poly1305, connector aes128-gcm"
    print(f"\n(size {args.size_mib} MiB x {args.repeat} interleaved, medians, paired ratios; ", end="")
    print(f"{args.pings} pings; ", end="")
    print(f"{args.streams} streams; ciphers: {ciphers}; ", end="")
    print(time.strftime("%Y-%m-%d") + ")")


if __name__ == "__main__":
    main()
