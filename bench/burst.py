"""
A burst of streams that each send as soon as their SOCKS handshake is done:
the connector against OpenSSH's ``ssh -N -R 0``, each on its own sshd, in one run.

    python bench/burst.py [--streams 1000] [--rounds 5] [--ciphers aes128-gcm@openssh.com]

``bench/bench.py`` holds its 1,000 streams at a barrier until every handshake
is done, then sends; here nothing waits, so handshakes, dials and 64 KiB
echoes overlap, as when a dashboard fires its queries at once.  Per burst,
for each client in turn (the order reversed every other round): the wall
time, the SOCKS handshake's and the whole stream's p50 and p99 (from
``connect()`` to the last echoed byte), the client's and its sshd's CPU
seconds; medians over rounds.  Then each client's RSS before the first burst
and its peak (``VmHWM``) over all of them.  Run by hand.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchkit import (
    OpenSSH,
    alternate,
    cpuSeconds,
    inThreads,
    median,
    percentile,
    removeWorkdir,
    rss,
    serve,
    startConnector,
    today,
    treeCpuSeconds,
)

from tests.integration.harness import Connector, Target, recvExactly, socks5Connect, tempdir
from tests.integration.relays import SshdRelay

PAYLOAD = 64 * 1024


def burst(port: int, destination: int, streams: int) -> tuple[int, list[float], list[float], float]:
    """
    C{streams} streams at once, each echoing 64 KiB as soon as it can;
    returns how many succeeded, the handshake and whole-stream seconds of
    those, and the wall time.
    """
    payload = os.urandom(PAYLOAD)
    handshakes: list[float] = []
    totals: list[float] = []

    def client() -> None:
        started = time.perf_counter()
        try:
            sock, code = socks5Connect(port, "127.0.0.1", destination, timeout=120)
            handshake = time.perf_counter() - started
            with sock:
                sock.sendall(b"E\n" + payload)
                if code == 0 and recvExactly(sock, PAYLOAD) == payload:
                    handshakes.append(handshake)
                    totals.append(time.perf_counter() - started)
        except OSError:
            pass

    wall = inThreads(client, streams)
    return len(totals), handshakes, totals, wall


def pidOf(client: OpenSSH | Connector) -> int:
    assert client.process is not None
    return client.process.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ciphers", default="aes128-gcm@openssh.com", help="sshd's Ciphers line ('' for defaults)")
    args = parser.parse_args()

    work = tempdir("burst-")
    target = Target(serve)
    allow = f"127.0.0.1:{target.port}"
    ciphers = [c for c in args.ciphers.split(",") if c]
    started = time.monotonic()
    clients: dict[str, tuple[SshdRelay, OpenSSH | Connector, int]] = {}
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for kind in ("openssh", "connector"):
            relay = SshdRelay(Path(work / kind / "relay"), ciphers=ciphers).start()
            client: OpenSSH | Connector
            if kind == "openssh":
                client = OpenSSH(relay, allow, work / kind / "ssh")
            else:
                client = startConnector(work / kind / "connector", relay, allow)
            clients[kind] = (relay, client, client.allocatedPort())
        idle = {kind: rss(pidOf(client)) for kind, (_, client, _) in clients.items()}
        for turn in range(args.rounds):
            for kind in alternate(list(clients), turn):
                relay, client, port = clients[kind]
                assert relay.process is not None
                pid, relayPid = pidOf(client), relay.process.pid
                cpu, sshd = cpuSeconds(pid), treeCpuSeconds(relayPid)
                ok, handshakes, totals, wall = burst(port, target.port, args.streams)
                for key, value in [
                    ("wall s", wall),
                    ("handshake p50 s", percentile(handshakes, 0.5)),
                    ("handshake p99 s", percentile(handshakes, 0.99)),
                    ("stream p50 s", percentile(totals, 0.5)),
                    ("stream p99 s", percentile(totals, 0.99)),
                    ("succeeded", ok),
                    ("client CPU s", cpuSeconds(pid) - cpu),
                    ("its sshd CPU s", treeCpuSeconds(relayPid) - sshd),
                ]:
                    samples.setdefault((kind, key), []).append(value)
        keys = list(dict.fromkeys(key for _, key in samples))
        print(f"{'':24}{'openssh':>10}{'connector':>11}")
        for key in keys:
            a, b = median(samples[("openssh", key)]), median(samples[("connector", key)])
            print(f"{key:24}{a:10.2f}{b:11.2f}")
        peaks = {kind: rss(pidOf(client), "VmHWM") for kind, (_, client, _) in clients.items()}
        print(f"{'RSS idle MiB':24}{idle['openssh']:10.2f}{idle['connector']:11.2f}")
        print(f"{'RSS peak MiB (all)':24}{peaks['openssh']:10.2f}{peaks['connector']:11.2f}")
        print("\nper burst (connector):", ", ".join(f"{v:.2f}" for v in samples[("connector", "wall s")]))
        print("per burst (openssh):  ", ", ".join(f"{v:.2f}" for v in samples[("openssh", "wall s")]))
    finally:
        for relay, client, _ in clients.values():
            client.stop()
            relay.stop()
        target.close()
    print(
        f"\n({args.streams} streams x {args.rounds} rounds, alternating; Ciphers {args.ciphers or 'default'}; "
        f"medians; {time.monotonic() - started:.0f} s; {today()})"
    )
    removeWorkdir(work)


if __name__ == "__main__":
    main()
