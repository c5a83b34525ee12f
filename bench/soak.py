"""
Soak: the connector under mixed traffic for a long time while the link to
its relay keeps failing in the ways the field shows.

    python bench/soak.py [--minutes 10] [--short-workers 4] [--idle-timeout 10] [--cycle 60]

One sshd relay, reached only through a fault proxy
(``tests/integration/faultproxy.py``); the connector dials the proxy.
Traffic, all through the relay's SOCKS port (read again from ``/readyz``
after every reconnect):

  - short streams: ``--short-workers`` threads, each in a loop: a stream
    echoing 1-16 KiB of random bytes, checked byte-exact;
  - bulk: two threads alternating 8 MiB downloads and uploads, one every
    ``--bulk-pause`` seconds;
  - idle streams: every 17 s one stream moves a byte and then sits silent
    until the connector closes it (``--stream-idle-timeout``); it must be
    closed within [timeout, timeout + 5 s].

Faults, in every cycle of ``--cycle`` seconds (scaled to it): 100 ms latency
each way for 1/6 of it, a 256 KiB/s rate cap for 1/6, a 3 s black hole, and
at 11/12 a reset of every connection through the proxy (the connector
reconnects and gets a new port).

A stream that fails while a reset or the reconnect after it is under way
(from the reset until a new port is seen, plus 1 s) is expected to; any
other failure is not.  Reported at the end: RSS slope by least squares
(KB/min: over the whole run, after the first cycle, over the second half),
descriptors (start, end, max), streams by outcome, expected and unexpected failures,
reconnects (the connector's ``connection_attempts`` and its log), and the
connector's ``streams_total`` and ``bytes_total`` against what the clients
counted.  ``--json`` writes the figures to a file.  ``--trace-objects FILE``
makes the connector run a full garbage collection every ``--trace-every``
seconds and write to FILE what it found unreachable and what is still
reachable, by type (``gc.get_objects``), with ``sys.getallocatedblocks()``;
the report names the reachable types that grew most after the first cycle:
where to look if RSS keeps growing.  Run by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import KiB, MiB, descriptorCount, readyz, removeWorkdir, rss, serve, startConnector, today

from tests.integration.faultproxy import FaultProxy
from tests.integration.harness import Connector, Target, recvExactly, socks5Connect, tempdir, waitFor
from tests.integration.relays import SshdRelay

#: Run in the connector's process with --trace-objects: a thread that, every
#: interval, counts what the cycle collector tracks, runs a full collection,
#: and writes one JSON line: before and after (allocated blocks, objects), and
#: what is still reachable by type.  The collection changes what RSS does:
#: a traced run shows what is held, an untraced one what the process costs.
OBJECT_TRACE = """
import collections, gc, json, sys, threading, time

def _name(kind):
    module = kind.__dict__.get("__module__")
    if not isinstance(module, str):
        module = getattr(kind, "__module__", "?")
    return (module if isinstance(module, str) else "?") + "." + kind.__qualname__

def _traceObjects(path, every):
    while True:
        time.sleep(every)
        objects, blocks = len(gc.get_objects()), sys.getallocatedblocks()
        unreachable = gc.collect()
        counts = collections.Counter(_name(type(o)) for o in gc.get_objects())
        line = {"t": time.monotonic(), "blocks": sys.getallocatedblocks(), "objects": sum(counts.values()),
                "before_collect": {"blocks": blocks, "objects": objects, "unreachable": unreachable},
                "types": dict(counts.most_common(400))}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\\n")

threading.Thread(target=_traceObjects, args=(PATH, EVERY), daemon=True).start()
"""

#: Seconds a reconnect may take before failures stop counting as expected, after the new port is seen.
RECONNECT_GRACE = 1.0
#: Idle streams: how late the close may come.
IDLE_SLACK = 5.0
#: Not a divisor of the fault cycle, so idle streams meet every phase of it.
IDLE_EVERY = 17.0
BULK_SIZE = 8 * MiB
BLACK_HOLE = 3.0


@dataclass
class StreamOutcome:
    kind: str  # "short", "bulk", "idle"
    started: float
    ended: float
    ok: bool
    #: the connector saw the stream (the SOCKS handshake got a reply)
    reached: bool
    up: int = 0
    down: int = 0
    error: str = ""


@dataclass
class Soak:
    """
    The run's shared state.

    @ivar port: the SOCKS port the relay allocated last (0 while unknown).
    @ivar ports: C{(time, port)} every time it changed.
    @ivar resets: when every connection was reset.
    @ivar faults: C{(kind, start, end)} of every fault.
    """

    connector: Connector
    proxy: FaultProxy
    destination: int
    args: argparse.Namespace
    port: int = 0
    ports: list[tuple[float, int]] = field(default_factory=list)
    resets: list[float] = field(default_factory=list)
    faults: list[tuple[str, float, float]] = field(default_factory=list)
    outcomes: list[StreamOutcome] = field(default_factory=list)
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, outcome: StreamOutcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


def connect(soak: Soak, timeout: float) -> socket.socket:
    port = soak.port
    if not port:
        raise ConnectionError("no tunnel")
    sock, code = socks5Connect(port, "127.0.0.1", soak.destination, timeout=timeout)
    if code != 0:
        sock.close()
        raise ConnectionError(f"SOCKS reply {code}")
    return sock


def shortWorker(soak: Soak, seed: int) -> None:
    rng = random.Random(seed)
    while not soak.stop.is_set():
        payload = rng.randbytes(rng.randint(1, 16) * KiB)
        started = time.monotonic()
        outcome = StreamOutcome("short", started, started, False, False)
        try:
            with connect(soak, 30) as sock:
                outcome.reached = True
                sock.sendall(b"E\n" + payload)
                outcome.up = 2 + len(payload)
                echoed = recvExactly(sock, len(payload))
                outcome.down = len(echoed)
                if hashlib.sha256(echoed).digest() != hashlib.sha256(payload).digest():
                    outcome.error = "corrupt"
                else:
                    outcome.ok = True
        except (OSError, AssertionError) as e:
            outcome.error = type(e).__name__ + (f": {e}" if str(e) else "")
        outcome.ended = time.monotonic()
        soak.record(outcome)
        time.sleep(soak.args.short_pause if outcome.ok else 0.2)


def bulkWorker(soak: Soak, first: str) -> None:
    direction = first
    while not soak.stop.is_set():
        started = time.monotonic()
        outcome = StreamOutcome("bulk", started, started, False, False)
        try:
            with connect(soak, 60) as sock:
                outcome.reached = True
                sock.settimeout(120)
                request = (b"D%d\n" if direction == "down" else b"U%d\n") % BULK_SIZE
                sock.sendall(request)
                outcome.up = len(request)
                if direction == "down":
                    buffer = bytearray(256 * KiB)
                    while outcome.down < BULK_SIZE:
                        n = sock.recv_into(buffer)
                        if not n:
                            raise ConnectionError(f"download ended {BULK_SIZE - outcome.down} bytes short")
                        outcome.down += n
                else:
                    block = b"\0" * (256 * KiB)
                    for _ in range(BULK_SIZE // len(block)):
                        sock.sendall(block)
                        outcome.up += len(block)
                    if recvExactly(sock, 2) != b"OK":
                        raise ConnectionError("no OK after the upload")
                    outcome.down = 2
                outcome.ok = True
        except (OSError, AssertionError) as e:
            outcome.error = type(e).__name__ + (f": {e}" if str(e) else "")
        outcome.ended = time.monotonic()
        soak.record(outcome)
        direction = "up" if direction == "down" else "down"
        soak.stop.wait(soak.args.bulk_pause)


def idleStream(soak: Soak) -> None:
    """
    One byte each way, then silence until the connector closes the stream.

    The connector's silence starts when it relayed the echo, which on a
    congested link may be well before the echo arrives here: the close may
    come early by up to the time the exchange took.
    """
    timeout = soak.args.idle_timeout
    started = time.monotonic()
    outcome = StreamOutcome("idle", started, started, False, False)
    try:
        with connect(soak, 30) as sock:
            outcome.reached = True
            asked = time.monotonic()
            sock.sendall(b"E\nx")
            outcome.up = 3
            recvExactly(sock, 1)
            outcome.down = 1
            quiet = time.monotonic()
            early = quiet - asked
            sock.settimeout(timeout + IDLE_SLACK + 10)
            try:
                data = sock.recv(1)
            except ConnectionResetError:
                data = b""
            waited = time.monotonic() - quiet
            if data:
                outcome.error = "data on an idle stream"
            elif timeout - early - 0.5 <= waited <= timeout + IDLE_SLACK:
                outcome.ok = True
            else:
                outcome.error = f"closed after {waited:.1f} s of silence (the echo took {early:.1f} s)"
    except (OSError, AssertionError) as e:
        outcome.error = type(e).__name__ + (f": {e}" if str(e) else "")
    outcome.ended = time.monotonic()
    soak.record(outcome)


def idleLauncher(soak: Soak) -> None:
    threads = []
    while not soak.stop.wait(IDLE_EVERY):
        thread = threading.Thread(target=idleStream, args=(soak,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(soak.args.idle_timeout + IDLE_SLACK + 45)


def monitor(soak: Soak, pid: int) -> None:
    """
    Follow the allocated port; sample RSS and descriptors every 2 s.
    """
    nextSample = 0.0
    while not soak.stop.wait(0.1):
        try:
            port = readyz(soak.connector)["connections"][0]["allocated_port"] or 0
        except (OSError, ValueError, KeyError, IndexError):
            port = 0
        if port and port != soak.port:
            soak.port = port
            soak.ports.append((time.monotonic(), port))
        now = time.monotonic()
        if now >= nextSample:
            soak.samples.append((now, rss(pid), descriptorCount(pid)))
            nextSample = now + 2.0


def faults(soak: Soak, started: float, until: float) -> None:
    """
    The fault schedule, cycle after cycle, until C{until}.
    """
    cycle = soak.args.cycle
    plan = [
        (cycle * 1 / 6, "latency", cycle / 6),
        (cycle * 3 / 6, "rate", cycle / 6),
        (cycle * 5 / 6 - BLACK_HOLE, "black hole", BLACK_HOLE),
        (cycle * 11 / 12, "reset", 0.0),
    ]
    start = started
    while start + cycle <= until + 0.01:
        for offset, kind, length in plan:
            if soak.stop.wait(max(0.0, start + offset - time.monotonic())):
                return
            begun = time.monotonic()
            if kind == "latency":
                soak.proxy.setLatency(0.1)
            elif kind == "rate":
                soak.proxy.setRate(256 * KiB)
            elif kind == "black hole":
                soak.proxy.setBlackHole(True)
            else:
                soak.proxy.resetAll()
                soak.resets.append(begun)
            if length:
                soak.stop.wait(length)
                soak.proxy.passThrough()
            soak.faults.append((kind, begun, time.monotonic()))
        start += cycle


def slope(points: list[tuple[float, float]]) -> float:
    """
    Least-squares slope of C{(x, y)} points (y per x), or NaN.
    """
    if len(points) < 3:
        return float("nan")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")


def metric(text: str, name: str, **labels: str) -> float:
    """
    The sum of a Prometheus sample C{name} over series whose labels include C{labels}.
    """
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if not match:
            continue
        seriesLabels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(seriesLabels.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def expectedWindows(soak: Soak) -> list[tuple[float, float]]:
    """
    From each reset until the first new port seen after it, plus the grace.
    """
    windows = []
    for reset in soak.resets:
        back = next((at for at, _ in soak.ports if at > reset), reset + 60)
        windows.append((reset, back + RECONNECT_GRACE))
    return windows


def objectGrowth(path: Path, after: float) -> dict[str, Any]:
    """
    From the connector's object trace: allocated blocks and objects in the
    first dump after C{after} and in the last, and the types that grew most.
    """
    dumps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    dumps = [d for d in dumps if d["t"] >= after] or dumps[-1:]
    if not dumps:
        return {"dumps": 0}
    first, last = dumps[0], dumps[-1]
    growth = {name: n - first["types"].get(name, 0) for name, n in last["types"].items()}
    top = sorted(((n, name) for name, n in growth.items() if n > 0), reverse=True)[:12]
    return {
        "dumps": len(dumps),
        "minutes_between": round((last["t"] - first["t"]) / 60, 1),
        "allocated_blocks_after_collection": [first["blocks"], last["blocks"]],
        "objects_after_collection": [first["objects"], last["objects"]],
        "unreachable_found_per_collection": [d["before_collect"]["unreachable"] for d in dumps],
        "grew_most": {name: n for n, name in top},
    }


def report(soak: Soak, started: float, ended: float, metrics: str, log: str) -> dict[str, Any]:
    windows = expectedWindows(soak)

    def expected(outcome: StreamOutcome) -> bool:
        return any(outcome.started <= end and outcome.ended >= start for start, end in windows)

    def cut(outcome: StreamOutcome) -> bool:
        # An idle stream a reset ended may look like one the idle timeout
        # ended; it is counted with the expected failures, whatever it saw.
        return outcome.kind == "idle" and expected(outcome)

    failed = [o for o in soak.outcomes if not o.ok or cut(o)]
    failedIds = {id(o) for o in failed}
    unexpected = [o for o in failed if not expected(o)]
    byKind: dict[str, Counter[str]] = {}
    for outcome in soak.outcomes:
        counter = byKind.setdefault(outcome.kind, Counter())
        counter["total"] += 1
        if id(outcome) in failedIds:
            counter["failed, expected" if expected(outcome) else "failed, unexpected"] += 1
        else:
            counter["ok"] += 1
    samples = soak.samples
    minutes = [(t - started) / 60 for t, _, _ in samples]
    kb = [r * 1024 for _, r, _ in samples]
    points = list(zip(minutes, kb, strict=True))
    warm = [(m, k) for m, k in points if m >= soak.args.cycle / 60]
    secondHalf = [(m, k) for m, k in points if m >= minutes[-1] / 2]
    # What the connector's metrics should say, from the clients' counts.
    # Where a reset makes the two views differ, the bounds say by how much.
    reached = [o for o in soak.outcomes if o.reached]
    clientOk = sum(1 for o in soak.outcomes if o.ok and o.kind in ("short", "bulk"))
    # A stream the client finished just before a reset may have ended after
    # it at the connector: relay_lost there.
    okCut = sum(
        1 for o in soak.outcomes if o.ok and o.kind != "idle" and any(0 <= r - o.ended <= 1.0 for r in soak.resets)
    )
    clientIdle = sum(1 for o in soak.outcomes if o.ok and o.kind == "idle" and not cut(o))
    idleOther = sum(1 for o in reached if o.kind == "idle") - clientIdle
    failedReached = sum(1 for o in reached if id(o) in failedIds)
    upOk = sum(o.up for o in reached if id(o) not in failedIds)
    upAll = sum(o.up for o in reached)
    down = sum(o.down for o in reached)
    okMetric = metric(metrics, "incident_connector_streams_total", result="ok")
    idleMetric = metric(metrics, "incident_connector_streams_total", result="idle")
    allMetric = metric(metrics, "incident_connector_streams_total")
    upMetric = metric(metrics, "incident_connector_bytes_total", direction="up")
    downMetric = metric(metrics, "incident_connector_bytes_total", direction="down")
    checks = {
        "ok: clients' ok less those that ended < 1 s before a reset <= metric <= clients' ok": (
            clientOk - okCut <= okMetric <= clientOk
        ),
        "idle: clients' <= metric <= clients' + idle streams cut or failed": (
            clientIdle <= idleMetric <= clientIdle + idleOther
        ),
        "all results: answered <= metric <= answered + failed ones": (
            len(reached) <= allMetric <= len(reached) + failedReached
        ),
        "bytes up: sent on streams that succeeded <= metric <= sent on all": upOk <= upMetric <= upAll,
        "bytes down: metric >= received": downMetric >= down,
    }
    figures: dict[str, Any] = {
        "date": today(),
        "connector_env": soak.args.connector_env,
        "minutes": round((ended - started) / 60, 1),
        "rss_mib": {"start": samples[0][1], "end": samples[-1][1], "max": max(kb) / 1024},
        "rss_slope_kb_per_min": round(slope(points), 1),
        "rss_slope_after_first_cycle_kb_per_min": round(slope(warm), 1),
        "rss_slope_second_half_kb_per_min": round(slope(secondHalf), 1),
        "descriptors": {
            "start": samples[0][2],
            "end": samples[-1][2],
            "max": max(s[2] for s in samples),
        },
        "streams": {kind: dict(counter) for kind, counter in byKind.items()},
        "unexpected_failures": [
            f"{o.kind} at {o.started - started:.1f}-{o.ended - started:.1f} s: {o.error}" for o in unexpected[:20]
        ],
        "faults": dict(Counter(kind for kind, _, _ in soak.faults)),
        "reconnects": {
            "resets_injected": len(soak.resets),
            "connection_attempts_after_first": metric(metrics, "incident_connector_connection_attempts_total") - 1,
            "forwards_granted_in_log": log.count("Allocated port") - 1,
            "keepalive_timeouts_in_log": log.count("did not answer"),
        },
        "metrics_vs_clients": {
            "ok: metric": okMetric,
            "ok: clients (short + bulk)": clientOk,
            "ok: clients' that ended < 1 s before a reset": okCut,
            "idle: metric": idleMetric,
            "idle: clients (closed after the timeout, no reset meanwhile)": clientIdle,
            "idle: clients' cut by a reset or failed": idleOther,
            "relay_lost: metric": metric(metrics, "incident_connector_streams_total", result="relay_lost"),
            "all results: metric": allMetric,
            "all results: streams the connector answered (clients)": len(reached),
            "all results: answered ones that failed (clients)": failedReached,
            "bytes up: metric": upMetric,
            "bytes up: clients sent on streams that succeeded": upOk,
            "bytes up: clients sent on all streams answered": upAll,
            "bytes down: metric": downMetric,
            "bytes down: clients received": down,
        },
        "checks": checks,
        "consistent": all(checks.values()),
    }
    if soak.args.trace_objects:
        figures["object_trace"] = objectGrowth(Path(soak.args.trace_objects), started + soak.args.cycle)
    return figures


def stopped(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    # A long run may be stopped with kill or ^C (even started in the
    # background, where SIGINT comes ignored): the relay, proxy and connector
    # are still cleaned up.
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--cycle", type=float, default=60, help="seconds per fault cycle")
    parser.add_argument("--short-workers", type=int, default=4)
    parser.add_argument("--short-pause", type=float, default=0.05, help="seconds between a worker's short streams")
    parser.add_argument("--bulk-pause", type=float, default=2.0, help="seconds between a bulk worker's transfers")
    parser.add_argument("--idle-timeout", type=float, default=10, help="the connector's --stream-idle-timeout")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--trace-objects", help="the connector writes its objects by type to this file")
    parser.add_argument("--trace-every", type=float, default=60, help="seconds between object traces")
    parser.add_argument(
        "--connector-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the connector (e.g. MALLOC_ARENA_MAX=2); repeatable",
    )
    args = parser.parse_args()

    work = tempdir("soak-")
    target = Target(serve)
    allow = f"127.0.0.1:{target.port}"
    relay = SshdRelay(work / "relay").start()
    proxy = FaultProxy(("127.0.0.1", relay.port)).start()
    connector = startConnector(
        work / "connector",
        relay,
        allow,
        [
            "--stream-idle-timeout", str(args.idle_timeout),
            "--keepalive-interval", "5",
            "--keepalive-count", "3",
            "--reconnect-initial-delay", "0.5",
            "--reconnect-max-delay", "5",
        ],
        port=proxy.port,
        env=dict(item.split("=", 1) for item in args.connector_env),
        prelude=(
            OBJECT_TRACE.replace("PATH", repr(str(Path(args.trace_objects).resolve()))).replace(
                "EVERY", repr(args.trace_every)
            )
            if args.trace_objects
            else ""
        ),
    )  # fmt: skip
    threads: list[threading.Thread] = []
    try:
        assert connector.process is not None
        pid = connector.process.pid
        soak = Soak(connector, proxy, target.port, args)
        connector.allocatedPort()
        monitorThread = threading.Thread(target=monitor, args=(soak, pid), daemon=True)
        monitorThread.start()
        waitFor(lambda: soak.port and soak.samples, 15, "the tunnel and a first sample")
        started = time.monotonic()
        until = started + args.minutes * 60
        threads += [
            threading.Thread(target=shortWorker, args=(soak, n), daemon=True) for n in range(args.short_workers)
        ]
        threads += [threading.Thread(target=bulkWorker, args=(soak, d), daemon=True) for d in ("down", "up")]
        threads.append(threading.Thread(target=idleLauncher, args=(soak,), daemon=True))
        threads.append(threading.Thread(target=faults, args=(soak, started, until), daemon=True))
        for thread in threads:
            thread.start()
        while time.monotonic() < until:
            time.sleep(min(30, max(0.1, until - time.monotonic())))
            done = len(soak.outcomes)
            print(
                f"{(time.monotonic() - started) / 60:5.1f} min: {done} streams, "
                f"{sum(1 for o in soak.outcomes if not o.ok)} failed, RSS {soak.samples[-1][1]:.1f} MiB, "
                f"{soak.samples[-1][2]} descriptors, {len(soak.resets)} resets",
                flush=True,
            )
        soak.stop.set()
        for thread in threads:
            thread.join(args.idle_timeout + IDLE_SLACK + 60)
        proxy.passThrough()
        # Let the last streams end on the connector's side, then a final sample.
        waitFor(
            lambda: metric(connector.get("/metrics")[1], "incident_connector_streams_active") == 0,
            30,
            "no stream open",
        )
        soak.stop.clear()
        soak.samples.append((time.monotonic(), rss(pid), descriptorCount(pid)))
        ended = time.monotonic()
        figures = report(soak, started, ended, connector.get("/metrics")[1], connector.text())
    finally:
        connector.stop()
        proxy.stop()
        relay.stop()
        target.close()
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    removeWorkdir(work)


if __name__ == "__main__":
    main()
