"""
A burst of streams that each send as soon as their SOCKS handshake is done:
the connector against OpenSSH's ``ssh -N -R 0``, each on its own sshd, in one run.

    python bench/burst.py [--streams 1000] [--rounds 5] [--ciphers aes128-gcm@openssh.com]
                          [--connector-prelude FILE]

``bench/bench.py`` holds its 1,000 streams at a barrier until every handshake
is done, then sends; here nothing waits, so handshakes, dials and 64 KiB
echoes overlap, as when a dashboard fires its queries at once.  Per burst,
for each client in turn (the order reversed every other round): the wall
time, the SOCKS handshake's and the whole stream's p50 and p99 (from
``connect()`` to the last echoed byte), the client's and its sshd's CPU
seconds; medians over rounds.  Then each client's RSS before the first burst
and its peak (``VmHWM``) over all of them.  ``--connector-prelude FILE``
adds a third client, the connector running FILE first, on its own sshd in
the same rounds: a change to the burst path is measured against the
connector as it is and against ssh before it is made (bursts vary by tens
of percent from run to run, so only the same run compares).  Run by hand.
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
    parser.add_argument("--connector-prelude", type=Path, help="Python a third connector runs first")
    args = parser.parse_args()

    work = tempdir("burst-")
    target = Target(serve)
    allow = f"127.0.0.1:{target.port}"
    ciphers = [c for c in args.ciphers.split(",") if c]
    started = time.monotonic()
    clients: dict[str, tuple[SshdRelay, OpenSSH | Connector, int]] = {}
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        kinds = ["openssh", "connector"] + (["prelude"] if args.connector_prelude else [])
        for kind in kinds:
            relay = SshdRelay(Path(work / kind / "relay"), ciphers=ciphers).start()
            client: OpenSSH | Connector
            if kind == "openssh":
                client = OpenSSH(relay, allow, work / kind / "ssh")
            else:
                prelude = args.connector_prelude.read_text() if kind == "prelude" else ""
                client = startConnector(work / kind / "connector", relay, allow, prelude=prelude)
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
        print(f"{'':24}" + "".join(f"{kind:>11}" for kind in kinds))
        for key in keys:
            print(f"{key:24}" + "".join(f"{median(samples[(kind, key)]):11.2f}" for kind in kinds))
        peaks = {kind: rss(pidOf(client), "VmHWM") for kind, (_, client, _) in clients.items()}
        print(f"{'RSS idle MiB':24}" + "".join(f"{idle[kind]:11.2f}" for kind in kinds))
        print(f"{'RSS peak MiB (all)':24}" + "".join(f"{peaks[kind]:11.2f}" for kind in kinds))
        print()
        for kind in kinds:
            print(f"per burst ({kind}):".ljust(24), ", ".join(f"{v:.2f}" for v in samples[(kind, "wall s")]))
    finally:
        for relay, client, _ in clients.values():
            client.stop()
            relay.stop()
        target.close()
    print(
        f"\n({args.streams} streams x {args.rounds} rounds, alternating; Ciphers {args.ciphers or 'default'}; "
        f"{'prelude ' + str(args.connector_prelude) + '; ' if args.connector_prelude else ''}"
        f"medians; {time.monotonic() - started:.0f} s; {today()})"
    )
    removeWorkdir(work)


if __name__ == "__main__":
    main()
