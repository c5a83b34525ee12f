"""
Where the CPU goes: the connector and ``ssh -N -R 0`` under one bulk
transfer direction, each on its own sshd with the same cipher, profiled in
turn.

    python bench/profile.py [--direction up|down|streams] [--seconds 10] [--cipher aes128-gcm@openssh.com]

  - ``perf record`` (Linux ``perf``, if installed and permitted) on each
    client: CPU samples by shared object (kernel, libpython, libc, the
    crypto library, ssh itself) and the top symbols;
  - ``py-spy record --native`` (``pip install py-spy``) on the connector:
    the busy samples (not waiting in epoll or an idle thread) by the nearest
    Python function, native callees included, and inclusive.

"up" is the upload path, relay to destination (the connector receives,
decrypts and writes to the destination); "down" the other way; "streams"
is stream setup at scale: bursts of ``--streams`` concurrent streams, each
opened, 64 KiB echoed and closed (``bench.py``'s measure), reported as CPU
milliseconds per stream.  Each client
moves data for ``--seconds`` + 2 while sampled for ``--seconds``.  Run by hand.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from benchkit import GiB, MiB, OpenSSH, cpuSeconds, download, removeWorkdir, serve, startConnector, today, upload

from bench import concurrent
from tests.integration.harness import Connector, Target, tempdir
from tests.integration.relays import SshdRelay


def load(port: int, destination: int, direction: str, stop: threading.Event, moved: list[int], streams: int) -> None:
    """
    Bulk transfers in C{direction} (bytes into C{moved}), or for "streams"
    bursts of C{streams} concurrent 64 KiB echo streams (streams into C{moved}).
    """
    if direction == "streams":
        while not stop.is_set():
            ok, _ = concurrent(port, destination, streams)
            moved.append(ok)
        return
    transfer = upload if direction == "up" else download
    while not stop.is_set():
        transfer(port, destination, 128 * MiB)
        moved.append(128 * MiB)


def perfProfile(pid: int, seconds: float, out: Path) -> list[str]:
    if shutil.which("perf") is None:
        return ["(perf not installed)"]
    record = subprocess.run(
        ["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", str(out), "--", "sleep", str(seconds)],
        capture_output=True,
        text=True,
    )
    if record.returncode != 0:
        return [f"(perf record failed: {record.stderr.strip().splitlines()[-1:]})"]
    lines = ["by shared object:"]
    for sort, limit in (("dso", 6), ("sym", 14)):
        report = subprocess.run(
            ["perf", "report", "-i", str(out), "--no-children", "--sort", sort, "-g", "none", "--stdio"],
            capture_output=True,
            text=True,
        ).stdout
        rows = [line.strip() for line in report.splitlines() if line.strip() and not line.startswith("#")]
        lines += [f"  {row}" for row in rows[:limit]]
        if sort == "dso":
            lines.append("top symbols:")
    return lines


def pySpyProfile(pid: int, seconds: float, out: Path) -> list[str]:
    if shutil.which("py-spy") is None:
        return ["(py-spy not installed: pip install py-spy)"]
    record = subprocess.run(
        [
            "py-spy",
            "record",
            "--native",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    if record.returncode != 0 or not out.exists():
        return [f"(py-spy failed: {record.stderr.strip()[-300:]})"]
    nearest: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)", ")", frame) for frame in stack.split(";")]
        if "epoll_wait" in frames[-1] or any("Condition.wait" in frame for frame in frames):
            idle += int(count)
            continue
        busy += int(count)
        python = [frame for frame in frames if ".py)" in frame]
        leaf = "" if ".py)" in frames[-1] else " > " + frames[-1].split(" (")[0]
        nearest[(python[-1] if python else "?") + leaf] += int(count)
        for frame in set(python):
            inclusive[frame] += int(count)
    lines = [f"py-spy: {busy} busy samples ({idle} idle left out); self, by nearest Python function > native leaf:"]
    lines += [f"  {100 * n / busy:5.1f}%  {name}" for name, n in nearest.most_common(16)]
    lines.append("inclusive (connector and Twisted code only):")
    mine = [(name, n) for name, n in inclusive.most_common() if "incident_connector" in name or "twisted/" in name]
    lines += [f"  {100 * n / busy:5.1f}%  {name}" for name, n in mine if n < busy * 0.97][:14]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--direction", choices=["up", "down", "streams"], default="up")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams per burst (streams)")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com", help="sshd's Ciphers line for both")
    args = parser.parse_args()

    work = tempdir("profile-")
    target = Target(serve)
    target.server.request_queue_size = 4096
    allow = f"127.0.0.1:{target.port}"
    started: list[tuple[str, SshdRelay, OpenSSH | Connector]] = []
    try:
        for name in ("openssh", "connector"):
            relay = SshdRelay(work / name / "relay", ciphers=[args.cipher]).start()
            client: OpenSSH | Connector
            if name == "openssh":
                client = OpenSSH(relay, allow, work / name)
            else:
                client = startConnector(work / name, relay, allow)
            started.append((name, relay, client))
        for name, _relay, client in started:
            port = client.allocatedPort()
            assert client.process is not None
            pid = client.process.pid
            stop, moved = threading.Event(), list[int]()
            thread = threading.Thread(target=load, args=(port, target.port, args.direction, stop, moved, args.streams))
            thread.start()
            time.sleep(2)
            before, movedBefore = cpuSeconds(pid), sum(moved)
            lines = perfProfile(pid, args.seconds, work / f"{name}.perf")
            spent, done = cpuSeconds(pid) - before, max(1, sum(moved) - movedBefore)
            if args.direction == "streams":
                figure = f"{1000 * spent / done:.2f} CPU ms per stream ({done} streams)"
            else:
                figure = f"{spent / done * GiB:.2f} CPU s/GiB"
            if name == "connector":
                lines += pySpyProfile(pid, args.seconds, work / f"{name}.raw")
            stop.set()
            thread.join()
            print(f"\n== {name}, {args.direction}load, {args.cipher}: {figure} while perf sampled")
            print("\n".join(lines))
    finally:
        for _name, relay, client in started:
            client.stop()
            relay.stop()
        target.close()
    print(f"\n({args.seconds:.0f} s sampled per client; {today()})")
    removeWorkdir(work)


if __name__ == "__main__":
    main()
