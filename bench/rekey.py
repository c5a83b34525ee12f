"""
Re-keying under load: a 1 GiB transfer each way through the connector and
each relay implementation (OpenSSH sshd, Dropbear, AsyncSSH), re-keying
every 16 MiB, next to the same relay without re-keying.

    python bench/rekey.py [--size-mib 1024] [--rekey 16M] [--repeat 2] [--relays sshd,dropbear,asyncssh]

Who starts the re-keys:
  - sshd: the relay, with ``RekeyLimit 16M`` (it counts both directions);
  - AsyncSSH: the relay with ``rekey_bytes`` for uploads; it counts only
    what it sends, which in a download is little more than window
    adjustments, so for downloads the connector does (``--rekey-limit``);
  - Dropbear: the connector (``--rekey-limit``); Dropbear's own limit is a
    compile-time 1 GiB.

For each relay, two relay processes and two connectors run side by side
(re-keying and not: "default" rows keep each side's own limit, which is
1 GiB for chacha20-poly1305 and for what AsyncSSH sends, so one re-key per
1 GiB transfer can show there); their transfers alternate (the order
reversed every run).  ``--with-openssh`` adds ``ssh -N -R 0`` on two more
sshds, re-keying and not, for comparison.  Reported: MB/s (median), client
and relay CPU seconds per GiB (median; /proc/PID/stat), and the re-keys per
transfer (the connector's ``/readyz`` ``connections[0].rekeys``; for ssh,
sshd's log).  ``--connector-prelude FILE`` runs FILE in every connector's
process first: a change to measure before making it
(``bench/experiments/``).  Run by hand.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import (
    GiB,
    MiB,
    OpenSSH,
    alternate,
    download,
    measureTransfer,
    median,
    readyz,
    removeWorkdir,
    serve,
    startConnector,
    today,
    upload,
)

from tests.integration.harness import Connector, Target, tempdir
from tests.integration.relays import AsyncSSHRelay, DropbearRelay, SshdRelay

RELAYS = ("sshd", "dropbear", "asyncssh")


def parseSize(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": GiB}
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


@dataclass
class Pair:
    """
    One relay process and the client logged in to it (the connector, or
    ``ssh`` next to sshd with C{--with-openssh}), used for some directions.

    @ivar by: who re-keys (C{"-"}: nobody).
    @ivar directions: the directions it is measured in.
    """

    kind: str
    by: str
    directions: list[str]
    relay: Any
    client: Connector | OpenSSH
    port: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rekeying(self) -> bool:
        return self.by != "-"

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    @property
    def clientName(self) -> str:
        return "connector" if isinstance(self.client, Connector) else "openssh"

    def rekeys(self) -> int:
        """
        Key exchanges after the first: as the connector counts them, or for
        ssh as sshd logs them.
        """
        if isinstance(self.client, Connector):
            return int(readyz(self.client)["connections"][0]["rekeys"] or 0)
        return self.relay.keyExchanges() - 1

    def cipher(self) -> str:
        negotiated = self.relay.negotiated()
        # Dropbear logs none; it offers no AES-GCM, so the connector's next choice wins.
        return negotiated[0][0] if negotiated else "chacha20-poly1305@openssh.com"


def setups(
    kind: str, directions: list[str], openssh: bool
) -> list[tuple[str, list[str], dict[str, Any], list[str] | None]]:
    """
    For one relay kind: C{(who re-keys, directions, relay arguments,
    connector options or None for ssh)} for each relay process and client to
    start; the limit is filled in later.
    """
    rekeyOption = ["--rekey-limit", "LIMIT"]
    if kind == "sshd":
        both: list[tuple[str, list[str], dict[str, Any], list[str] | None]] = [
            ("-", directions, {}, []),
            ("sshd", directions, {"rekeyLimit": "LIMIT"}, []),
        ]
        if openssh:
            both += [("-", directions, {}, None), ("sshd", directions, {"rekeyLimit": "LIMIT"}, None)]
        return both
    if kind == "asyncssh":
        return [
            ("-", directions, {}, []),
            ("AsyncSSH", [d for d in directions if d == "up"], {"rekeyBytes": "LIMIT"}, []),
            ("connector", [d for d in directions if d == "down"], {}, rekeyOption),
        ]
    return [("-", directions, {}, []), ("connector", directions, {}, rekeyOption)]


def startPair(
    kind: str, by: str, directions: list[str], relayArgs: dict[str, Any], options: list[str] | None, work: Path,
    allow: str, limit: int, prelude: str = "",
) -> Pair:  # fmt: skip
    where = work / f"{kind}-{by.lower().replace('-', 'plain')}-{'ssh' if options is None else 'connector'}"
    relayArgs = {k: (limit if k == "rekeyBytes" else str(limit)) for k in relayArgs}
    relay: Any
    if kind == "sshd":
        relay = SshdRelay(where / "relay", **relayArgs)
    elif kind == "asyncssh":
        relay = AsyncSSHRelay(where / "relay", **relayArgs)
    else:
        relay = DropbearRelay(where / "relay", **relayArgs)
    relay.start()
    client: Connector | OpenSSH
    if options is None:
        client = OpenSSH(relay, allow, where / "ssh")
    else:
        options = [str(limit) if option == "LIMIT" else option for option in options]
        client = startConnector(where / "connector", relay, allow, options, prelude=prelude)
    return Pair(kind, by, directions, relay, client)


def measure(pair: Pair, direction: str, destination: int, size: int) -> None:
    assert pair.client.process is not None and pair.relay.process is not None
    rekeysBefore = pair.rekeys()
    transfer = download if direction == "down" else upload
    cost = measureTransfer(transfer, pair.port, destination, size, pair.client.process.pid, pair.relay.process.pid)
    pair.add(direction, cost.mbps)
    pair.add(direction + "_cpu", cost.cpu)
    pair.add(direction + "_relay", cost.relay)
    pair.add(direction + "_rekeys", pair.rekeys() - rekeysBefore)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="MiB per transfer")
    parser.add_argument("--rekey", default="16M", help="re-key after this many bytes (K, M, G suffixes)")
    parser.add_argument("--repeat", type=int, default=2, help="transfers per pair and direction, interleaved")
    parser.add_argument("--relays", default=",".join(RELAYS), help="which relays, comma-separated")
    parser.add_argument("--directions", default="down,up", help="down (destination to client), up, or both")
    parser.add_argument("--with-openssh", action="store_true", help="ssh -R next to sshd, re-keying and not")
    parser.add_argument(
        "--connector-prelude",
        help="a Python file run in every connector's process first (to measure a change, e.g. bench/experiments/)",
    )
    args = parser.parse_args()
    limit = parseSize(args.rekey)
    size = args.size_mib * MiB
    kinds = [kind for kind in args.relays.split(",") if kind]
    directions = [d for d in args.directions.split(",") if d]
    for kind in kinds:
        if kind not in RELAYS:
            parser.error(f"unknown relay {kind!r}: choose from {', '.join(RELAYS)}")

    prelude = Path(args.connector_prelude).read_text() if args.connector_prelude else ""
    work = tempdir("rekey-")
    target = Target(serve)
    allow = f"127.0.0.1:{target.port}"
    rows: list[tuple[Pair, str]] = []
    started = time.monotonic()
    try:
        for kind in kinds:
            pairs: list[Pair] = []
            try:
                for by, covered, relayArgs, options in setups(kind, directions, args.with_openssh):
                    if covered:
                        pairs.append(startPair(kind, by, covered, relayArgs, options, work, allow, limit, prelude))
                for pair in pairs:
                    pair.port = pair.client.allocatedPort()
                for run in range(args.repeat):
                    for direction in directions:
                        turn = [pair for pair in pairs if direction in pair.directions]
                        for pair in alternate(turn, run):
                            measure(pair, direction, target.port, size)
                for direction in directions:
                    rows += [(pair, direction) for pair in pairs if direction in pair.directions]
            finally:
                for pair in pairs:
                    pair.client.stop()
                    pair.relay.stop()
    finally:
        target.close()

    layout = "{:9} {:10} {:18} {:5} {:7} {:10} {:>7} {:>10} {:>7} {:>9} {:>6} {:>6}"
    print()
    for header in (
        ("relay", "client", "cipher", "dir", "re-key", "by", "MB/s", "client", "relay", "re-keys", "MB/s", "CPU"),
        ("", "", "", "", "", "", "", "CPU s/GiB", "s/GiB", "/transfer", "ratio", "ratio"),
    ):
        print(layout.format(*header))
    for pair, direction in rows:
        plain = next(
            p
            for p, d in rows
            if p.kind == pair.kind and p.clientName == pair.clientName and d == direction and not p.rekeying
        )
        rate, cpu = median(pair.samples[direction]), median(pair.samples[direction + "_cpu"])
        print(
            layout.format(
                pair.kind,
                pair.clientName,
                pair.cipher().split("@")[0],
                direction,
                args.rekey if pair.rekeying else "default",
                pair.by,
                f"{rate:.0f}",
                f"{cpu:.2f}",
                f"{median(pair.samples[direction + '_relay']):.2f}",
                f"{median(pair.samples[direction + '_rekeys']):.0f}",
                f"{rate / median(plain.samples[direction]):.2f}",
                f"{cpu / median(plain.samples[direction + '_cpu']):.2f}",
            )
        )
    print(
        f"\n({args.size_mib} MiB per transfer, {args.repeat} per pair and direction, interleaved; medians; ratios "
        f'against the same relay without re-keying every {args.rekey}; "default": each side\'s own limit, '
        f"1 GiB for chacha20-poly1305 (the connector, OpenSSH) and for what AsyncSSH sends; "
        f"ciphers each side's choice; "
        f"{'connector prelude ' + args.connector_prelude + '; ' if args.connector_prelude else ''}"
        f"{time.monotonic() - started:.0f} s; {today()})"
    )
    removeWorkdir(work)


if __name__ == "__main__":
    main()
