"""
The slow link: the connector and OpenSSH's ``ssh -N -R 0``, each behind its
own rate-capped link to its own sshd, under bulk transfers.

    python bench/slowlink.py [--rate-kib 1024] [--queue-kib 32] [--seconds 20] [--repeat 2]

Between each client and its sshd sits a fault proxy
(``tests/integration/faultproxy.py``) capping each direction at
``--rate-kib`` KiB/s, holding at most ``--queue-kib`` KiB per direction in
32 KiB socket buffers, like a router's queue: what waits beyond that waits
in the clients' own queues, which is what this measures.  Scenarios:

  - idle link: no bulk transfer (the floor);
  - K bulk downloads (destination to SOCKS client, so the client under test
    is the one sending into the slow link), K = 4 and 16;
  - 4 bulk uploads (sshd sends into the slow link).

The bulk transfers together carry ``--seconds`` worth of the link's rate.
While they run: an echo probe (a 1-byte round trip every 100 ms on a stream
opened beforehand: p50 and p99), and every 2 s a new stream (time from
connecting to a completed SOCKS handshake and the first byte echoed back;
``--stream-timeout`` counts as a failure).  Fairness is the slowest bulk
transfer's throughput over the fastest's (1.0: all alike).  The clients take
turns, scenario by scenario, the order alternating.  Run by hand.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import KiB, OpenSSH, alternate, median, percentile, removeWorkdir, serve, startConnector, today

from tests.integration.faultproxy import FaultProxy
from tests.integration.harness import Connector, Target, recvExactly, socks5Connect, tempdir
from tests.integration.relays import SshdRelay

PROBE_INTERVAL = 0.1
NEW_STREAM_INTERVAL = 2.0


@dataclass
class Subject:
    """
    One client behind its own slow link.
    """

    name: str
    relay: SshdRelay
    proxy: FaultProxy
    client: OpenSSH | Connector
    port: int = 0


@dataclass
class Outcome:
    """
    What one scenario measured for one client.

    @ivar rtts: echo round trips, ms.
    @ivar setups: new streams' time to the first byte, ms (successes).
    @ivar failures: new streams that failed or timed out.
    @ivar rates: each bulk transfer's bytes per second.
    @ivar seconds: from the first bulk transfer's start to the last one's end.
    @ivar errors: what went wrong, briefly.
    """

    rtts: list[float] = field(default_factory=list)
    setups: list[float] = field(default_factory=list)
    failures: int = 0
    rates: list[float] = field(default_factory=list)
    seconds: float = 0.0
    bulkBytes: int = 0
    errors: list[str] = field(default_factory=list)


def bulk(port: int, destination: int, direction: str, size: int, timeout: float) -> float:
    """
    One bulk transfer; returns when it finished (monotonic clock).
    """
    sock, code = socks5Connect(port, "127.0.0.1", destination, timeout=timeout)
    assert code == 0, f"SOCKS reply {code}"
    with sock:
        if direction == "down":
            sock.sendall(b"D%d\n" % size)
            left = size
            buffer = bytearray(256 * KiB)
            while left:
                n = sock.recv_into(buffer)
                if not n:
                    raise ConnectionError(f"download ended {left} bytes short")
                left -= n
        else:
            sock.sendall(b"U%d\n" % size)
            block = memoryview(b"\0" * (64 * KiB))
            for offset in range(0, size, len(block)):
                sock.sendall(block[: min(len(block), size - offset)])
            assert recvExactly(sock, 2) == b"OK"
        return time.monotonic()


def newStream(port: int, destination: int, timeout: float) -> float:
    """
    Connect, complete the SOCKS handshake, and get one byte echoed; ms.
    """
    started = time.monotonic()
    sock, code = socks5Connect(port, "127.0.0.1", destination, timeout=timeout)
    with sock:
        assert code == 0, f"SOCKS reply {code}"
        sock.settimeout(max(0.1, timeout - (time.monotonic() - started)))
        sock.sendall(b"E\nx")
        recvExactly(sock, 1)
    return (time.monotonic() - started) * 1000


def scenario(subject: Subject, destination: int, direction: str, count: int, args: argparse.Namespace) -> Outcome:
    outcome = Outcome()
    lock = threading.Lock()
    rate = args.rate_kib * KiB
    size = int(rate * args.seconds / count) if count else 0
    timeout = args.stream_timeout
    probe, code = socks5Connect(subject.port, "127.0.0.1", destination, timeout=timeout)
    assert code == 0
    probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    probe.settimeout(max(timeout, args.seconds * 10))
    probe.sendall(b"E\n")
    done = threading.Event()

    def runProbe() -> None:
        try:
            while not done.is_set():
                started = time.monotonic()
                probe.sendall(b"x")
                recvExactly(probe, 1)
                with lock:
                    outcome.rtts.append((time.monotonic() - started) * 1000)
                time.sleep(PROBE_INTERVAL)
        except OSError as e:
            outcome.errors.append(f"probe: {e}")

    def runNewStream() -> None:
        try:
            setup = newStream(subject.port, destination, timeout)
            with lock:
                outcome.setups.append(setup)
        except (OSError, AssertionError) as e:
            with lock:
                outcome.failures += 1
                outcome.errors.append(f"new stream: {e or type(e).__name__}")

    finished: list[float] = []

    def runBulk() -> None:
        try:
            finished.append(bulk(subject.port, destination, direction, size, timeout))
        except (OSError, AssertionError) as e:
            outcome.errors.append(f"bulk: {e}")

    starters = []
    prober = threading.Thread(target=runProbe)
    prober.start()
    started = time.monotonic()
    bulks = [threading.Thread(target=runBulk) for _ in range(count)]
    for thread in bulks:
        thread.start()
    deadline = started + max(args.seconds * 10, 60)
    nextStream = started
    while time.monotonic() < deadline:
        if time.monotonic() >= nextStream:
            starter = threading.Thread(target=runNewStream)
            starter.start()
            starters.append(starter)
            nextStream += NEW_STREAM_INTERVAL
        if count and not any(thread.is_alive() for thread in bulks):
            break
        if not count and time.monotonic() > started + args.idle_seconds:
            break
        time.sleep(0.05)
    done.set()
    for thread in [*bulks, prober, *starters]:
        thread.join(timeout + 5)
    probe.close()
    if count:
        outcome.rates = [size / (end - started) for end in finished]
        outcome.seconds = max(finished, default=started) - started
        outcome.bulkBytes = size * len(finished)
        if len(finished) < count:
            outcome.errors.append(f"{count - len(finished)} bulk transfers did not finish")
    return outcome


#: (label, direction of the bulk transfers, how many).
SCENARIOS = [("idle link", "down", 0), ("4 downloads", "down", 4), ("16 downloads", "down", 16), ("4 uploads", "up", 4)]
CLIENTS = ["openssh", "connector"]


def setUp(name: str, work: Path, allow: str, args: argparse.Namespace) -> Subject:
    where = work / name
    relay = SshdRelay(where / "relay").start()
    proxy = FaultProxy(
        ("127.0.0.1", relay.port), queueSize=args.queue_kib * KiB, socketBuffer=args.queue_kib * KiB
    ).start()
    client: OpenSSH | Connector
    if name == "openssh":
        client = OpenSSH(relay, allow, where / "ssh", port=proxy.port)
    else:
        prelude = args.connector_prelude.read_text() if args.connector_prelude else ""
        client = startConnector(where / "connector", relay, allow, port=proxy.port, prelude=prelude)
    return Subject(name, relay, proxy, client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-kib", type=int, default=1024, help="the link's rate each way, KiB/s")
    parser.add_argument("--queue-kib", type=int, default=32, help="the link's queue (and socket buffers), KiB")
    parser.add_argument("--seconds", type=float, default=20, help="bulk data per scenario, in seconds of the rate")
    parser.add_argument("--idle-seconds", type=float, default=6, help="length of the idle-link scenario")
    parser.add_argument("--stream-timeout", type=float, default=30, help="a new stream slower than this failed")
    parser.add_argument("--repeat", type=int, default=2, help="runs of every scenario per client")
    parser.add_argument("--scenario", action="append", choices=[label for label, _, _ in SCENARIOS], help="only these")
    parser.add_argument("--client", action="append", choices=CLIENTS, help="only these clients")
    parser.add_argument("--connector-prelude", type=Path, help="a file of Python the connector runs first")
    args = parser.parse_args()

    work = tempdir("slowlink-")
    target = Target(serve)
    allow = f"127.0.0.1:{target.port}"
    subjects: list[Subject] = []
    scenarios = [scenario for scenario in SCENARIOS if scenario[0] in (args.scenario or [scenario[0]])]
    clients = args.client or CLIENTS
    results: dict[tuple[str, str], list[Outcome]] = {}
    started = time.monotonic()
    try:
        for name in clients:
            subjects.append(setUp(name, work, allow, args))
        for subject in subjects:
            subject.port = subject.client.allocatedPort()
            subject.proxy.setRate(args.rate_kib * KiB)
        turn = 0
        for _ in range(args.repeat):
            for label, direction, count in scenarios:
                order = alternate(subjects, turn)
                turn += 1
                for subject in order:
                    outcome = scenario(subject, target.port, direction, count, args)
                    results.setdefault((label, subject.name), []).append(outcome)
                    for error in outcome.errors[:3]:
                        print(f"  {label}, {subject.name}: {error}")
                    if outcome.rates:
                        spread = " ".join(f"{rate / max(outcome.rates):.2f}" for rate in sorted(outcome.rates))
                        print(f"  {label}, {subject.name}: rates / the fastest's: {spread}")
    finally:
        for subject in subjects:
            subject.client.stop()
            subject.proxy.stop()
            subject.relay.stop()
        target.close()

    print(
        f"\n{'scenario':14} {'client':10} {'echo p50':>9} {'echo p99':>9} {'new stream':>11} {'new max':>8} "
        f"{'failed':>7} {'fairness':>8} {'goodput':>8}"
    )
    print(f"{'':14} {'':10} {'ms':>9} {'ms':>9} {'median ms':>11} {'ms':>8} {'':>7} {'min/max':>8} {'KiB/s':>8}")
    for label, _direction, count in scenarios:
        for name in clients:
            outcomes = results.get((label, name), [])
            rtts = [x for o in outcomes for x in o.rtts]
            setups = [x for o in outcomes for x in o.setups]
            attempts = len(setups) + sum(o.failures for o in outcomes)
            failed = f"{sum(o.failures for o in outcomes)}/{attempts}"
            if count:
                fairness = f"{min(min(o.rates) / max(o.rates) for o in outcomes if o.rates):8.2f}"
                goodput = f"{median(o.bulkBytes / o.seconds / KiB for o in outcomes if o.seconds):8.0f}"
            else:
                fairness = goodput = f"{'-':>8}"
            print(
                f"{label:14} {name:10} {percentile(rtts, 0.5):9.0f} {percentile(rtts, 0.99):9.0f} "
                f"{median(setups):11.0f} {max(setups, default=float('nan')):8.0f} {failed:>7} {fairness} {goodput}"
            )
    print(
        f"\n(link {args.rate_kib} KiB/s each way, queue {args.queue_kib} KiB; bulk data {args.seconds:.0f} s of "
        f"the rate per scenario; {args.repeat} runs per client, alternating; percentiles over all runs, fairness "
        f"the worst run, goodput the median; ssh and connector as deployed (each its own cipher choice); "
        f"{time.monotonic() - started:.0f} s; {today()})"
    )
    removeWorkdir(work)


if __name__ == "__main__":
    main()
