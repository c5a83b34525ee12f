"""
Benchmark: this connector against OpenSSH's ``ssh -N -R 0`` (as the hosted
connector runs it), each on its own identical loopback sshd, in one run.

    python bench/bench.py [--size-mib 512] [--repeat 7] [--pings 2000]
                          [--streams 1000] [--stream-repeat 5]
                          [--ciphers deployed --ciphers aes128-gcm@openssh.com]

For each cipher setting (default: "deployed", each client with its own
preference, ssh chacha20-poly1305 and the connector AES-GCM; and
``aes128-gcm@openssh.com`` forced by sshd's ``Ciphers`` line) it starts two
sshds, ssh on one and the connector on the other, so every CPU second of an
sshd is attributable to one client.  Then, with every run interleaved (all
clients in turn, the order reversed every other round, so a busy neighbour
slows all alike):

  - download (destination to client) and upload of ``--size-mib`` MiB,
    ``--repeat`` times each: MB/s, and CPU seconds per GiB of the client and
    of its sshd's session processes (``/proc/PID/stat`` utime + stime; the
    client's stime shown too: system calls, and loopback TCP, whose
    receiving side runs in the sender's system call);
  - 1-byte echo round trips, p50/p99 (``--pings``, in interleaved chunks);
  - ``--streams`` concurrent streams of 64 KiB echoed and checked byte-exact,
    ``--stream-repeat`` times: the median wall time, the fewest streams that
    succeeded, and the client's CPU seconds per run;
  - RSS of each client when idle after connecting, and its peak (VmHWM).

Figures are medians over runs; a ratio is the median of the per-round ratios
connector / openssh (each from back-to-back runs), which cancels the
machine's drift.  MB/s are noisy on a shared machine; compare CPU s/GiB.
Run by hand; no test asserts on speed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field

from benchkit import (
    MiB,
    OpenSSH,
    alternate,
    cpuSeconds,
    download,
    inThreads,
    measureTransfer,
    median,
    percentile,
    removeWorkdir,
    roundTrips,
    rss,
    serve,
    startConnector,
    today,
    upload,
)

from tests.integration.harness import Connector, Target, recvExactly, socks5Connect, tempdir
from tests.integration.relays import SshdRelay

DEPLOYED = "deployed"


@dataclass
class Peer:
    """
    One client on its own sshd, and what was measured of it.

    @ivar setting: the cipher setting (L{DEPLOYED} or a cipher name).
    @ivar kind: C{"openssh"} or C{"connector"}.
    @ivar port: the SOCKS port the relay allocated for it.
    @ivar samples: per-run values by key.
    """

    setting: str
    kind: str
    relay: SshdRelay
    client: OpenSSH | Connector
    port: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)
    rssIdle: float = 0.0

    @property
    def pid(self) -> int:
        process = self.client.process
        assert process is not None
        return process.pid

    @property
    def relayPid(self) -> int:
        assert self.relay.process is not None
        return self.relay.process.pid

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def cipher(self) -> str:
        negotiated = self.relay.negotiated()
        return negotiated[0][0] if negotiated else "?"


def concurrent(port: int, destination: int, streams: int) -> tuple[int, float]:
    """
    C{streams} streams at once, each echoing 64 KiB, checked byte-exact;
    returns how many succeeded and the seconds all took.
    """
    payload = os.urandom(64 * 1024)
    digest = hashlib.sha256(payload).digest()
    good: list[bool] = []
    barrier = threading.Barrier(streams, timeout=120)

    def client() -> None:
        ok = False
        try:
            sock, code = socks5Connect(port, "127.0.0.1", destination, timeout=120)
            with sock:
                barrier.wait()
                sock.sendall(b"E\n" + payload)
                ok = code == 0 and hashlib.sha256(recvExactly(sock, len(payload))).digest() == digest
        except Exception:
            barrier.abort()
        good.append(ok)

    seconds = inThreads(client, streams)
    return good.count(True), seconds


def measure(peers: list[Peer], destination: int, args: argparse.Namespace) -> None:
    size = args.size_mib * MiB
    for peer in peers:
        peer.rssIdle = rss(peer.pid)
    for turn in range(args.repeat):
        for direction, transfer in (("down", download), ("up", upload)):
            for peer in alternate(peers, turn):
                cost = measureTransfer(transfer, peer.port, destination, size, peer.pid, peer.relayPid)
                peer.add(direction, cost.mbps)
                peer.add(direction + "_cpu", cost.cpu)
                peer.add(direction + "_kernel", cost.kernel)
                peer.add(direction + "_sshd", cost.relay)
    chunks = 4
    for turn in range(chunks):
        for peer in alternate(peers, turn):
            for sample in roundTrips(peer.port, destination, args.pings // chunks):
                peer.add("rtt", sample)
    for turn in range(args.stream_repeat):
        for peer in alternate(peers, turn):
            client = cpuSeconds(peer.pid)
            ok, seconds = concurrent(peer.port, destination, args.streams)
            peer.add("streams_ok", ok)
            peer.add("streams_s", seconds)
            peer.add("streams_cpu", cpuSeconds(peer.pid) - client)


def table(openssh: Peer, connector: Peer, args: argparse.Namespace) -> list[str]:
    def paired(key: str) -> float:
        return median(c / o for c, o in zip(connector.samples[key], openssh.samples[key], strict=True) if o)

    def total(peer: Peer, direction: str) -> list[float]:
        return [a + b for a, b in zip(peer.samples[direction + "_cpu"], peer.samples[direction + "_sshd"], strict=True)]

    for peer in (openssh, connector):
        for direction in ("down", "up"):
            peer.samples[direction + "_total"] = total(peer, direction)
    rows: list[tuple[str, float, float, float]] = []
    for direction, name in (("down", "download"), ("up", "upload")):
        for suffix, label in (
            ("", "MB/s"),
            ("_cpu", "CPU s/GiB, client"),
            ("_kernel", "CPU s/GiB, client in kernel"),
            ("_sshd", "CPU s/GiB, its sshd"),
            ("_total", "CPU s/GiB, both"),
        ):
            key = direction + suffix
            rows.append((f"{name} {label}", median(openssh.samples[key]), median(connector.samples[key]), paired(key)))
    for label, fraction in (("1-byte RTT p50 ms", 0.5), ("1-byte RTT p99 ms", 0.99)):
        a, b = percentile(openssh.samples["rtt"], fraction), percentile(connector.samples["rtt"], fraction)
        rows.append((label, a, b, b / a))
    n = args.streams
    for key, label, pick in (
        ("streams_s", f"{n} streams x 64 KiB, s (median)", median),
        ("streams_ok", f"{n} streams x 64 KiB, fewest ok", min),
        ("streams_cpu", f"{n} streams x 64 KiB, client CPU s", median),
    ):
        a, b = pick(openssh.samples[key]), pick(connector.samples[key])
        rows.append((label, a, b, paired(key) if key != "streams_ok" else b / a))
    a, b = openssh.rssIdle, connector.rssIdle
    rows.append(("RSS idle MiB", a, b, b / a))
    a, b = rss(openssh.pid, "VmHWM"), rss(connector.pid, "VmHWM")
    rows.append(("RSS peak MiB", a, b, b / a))
    lines = [f"{'':36} {'openssh':>9} {'connector':>9} {'ratio':>6}"]
    lines += [f"{label:36} {a:9.2f} {b:9.2f} {ratio:6.2f}" for label, a, b, ratio in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512, help="MiB per transfer")
    parser.add_argument("--repeat", type=int, default=7, help="transfers per client and direction, interleaved")
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stream-repeat", type=int, default=5, help="concurrent-stream runs per client")
    parser.add_argument("--connector-arg", action="append", default=[], help="extra connector option")
    parser.add_argument(
        "--ciphers",
        action="append",
        help=f"a cipher setting: {DEPLOYED!r} (each client's own preference) or sshd's Ciphers line; "
        f"repeatable (default: {DEPLOYED} and aes128-gcm@openssh.com)",
    )
    args = parser.parse_args()
    settings = args.ciphers or [DEPLOYED, "aes128-gcm@openssh.com"]

    work = tempdir("bench-")
    target = Target(serve)
    target.server.request_queue_size = 4096
    allow = f"127.0.0.1:{target.port}"
    peers: list[Peer] = []
    started = time.monotonic()
    load = os.getloadavg()[0]
    try:
        for setting in settings:
            ciphers = [] if setting == DEPLOYED else setting.split(",")
            for kind in ("openssh", "connector"):
                where = work / f"{setting.split('@')[0]}-{kind}"
                relay = SshdRelay(where / "relay", ciphers=ciphers).start()
                client: OpenSSH | Connector
                if kind == "openssh":
                    client = OpenSSH(relay, allow, where / "ssh")
                else:
                    client = startConnector(where / "connector", relay, allow, args.connector_arg)
                peers.append(Peer(setting, kind, relay, client))
        for peer in peers:
            peer.port = peer.client.allocatedPort()
        measure(peers, target.port, args)
        for setting in settings:
            openssh, connector = (p for p in peers if p.setting == setting)
            title = "as deployed" if setting == DEPLOYED else f"Ciphers {setting}"
            print(f"\n{title} (negotiated: ssh {openssh.cipher()}, connector {connector.cipher()})")
            print("\n".join(table(openssh, connector, args)))
    finally:
        for peer in peers:
            peer.client.stop()
            peer.relay.stop()
        target.close()
    print(
        f"\n({args.size_mib} MiB x {args.repeat} per client and direction, {args.pings} pings, "
        f"{args.streams} streams x {args.stream_repeat}; all interleaved; medians; ratios are medians of "
        f"per-round ratios; {time.monotonic() - started:.0f} s; {today()}; load average at the start {load:.1f})"
    )
    removeWorkdir(work)


if __name__ == "__main__":
    main()
