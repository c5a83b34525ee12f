"""
A/B: two versions of the connector, interleaved, on identical sshds.

    python bench/ab.py --tree old=/path/to/checkout --tree new=. [--ciphers aes128-gcm@openssh.com]
                       [--prelude new=bench/experiments/quickack.py] [--size-mib 512] [--repeat 9]

Each C{--tree NAME=PATH} is a checkout whose C{incident_connector} the
connector imports (its C{PYTHONPATH}); C{--prelude NAME=FILE} runs FILE in
that variant's process first (the same tree twice, with and without a
prelude, measures a change before making it).  Every variant gets its own
sshd, so every CPU second of an sshd is attributable to one connector.
Downloads and uploads alternate between the variants, the order reversed
every other round.  Reported per variant: MB/s, connector and sshd CPU
seconds per GiB (medians), and each variant's paired ratio to the first
one (the median of per-round ratios, which cancels the machine's drift).
This is how a change to the packet path is judged: by CPU s/GiB, not MB/s.
Run by hand.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import (
    MiB,
    alternate,
    download,
    measureTransfer,
    median,
    removeWorkdir,
    serve,
    startConnector,
    today,
    upload,
)

from tests.integration.harness import Connector, Target, tempdir
from tests.integration.relays import SshdRelay


@dataclass
class Variant:
    """
    One version of the connector on its own sshd.

    @ivar name: as given to C{--tree}.
    @ivar samples: per-run values by key (C{up}, C{up_cpu}, C{up_sshd}, ...).
    """

    name: str
    relay: SshdRelay
    connector: Connector
    port: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)


def pairs(values: list[str], what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"ab.py: {what} must be NAME=VALUE, got {value!r}")
        found[name] = rest
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a checkout")
    parser.add_argument("--prelude", action="append", default=[], help="NAME=FILE run in that variant first")
    parser.add_argument("--ciphers", default="aes128-gcm@openssh.com", help="sshd's Ciphers line ('' for default)")
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    trees = pairs(args.tree, "--tree")
    preludes = {name: Path(file).read_text() for name, file in pairs(args.prelude, "--prelude").items()}

    work = tempdir("ab-")
    target = Target(serve)
    allow = f"127.0.0.1:{target.port}"
    variants: list[Variant] = []
    started = time.monotonic()
    try:
        for name, tree in trees.items():
            relay = SshdRelay(work / name / "relay", ciphers=args.ciphers.split(",") if args.ciphers else []).start()
            connector = startConnector(
                work / name / "connector",
                relay,
                allow,
                prelude=preludes.get(name, ""),
                env={"PYTHONPATH": str(Path(tree).resolve())},
            )
            variants.append(Variant(name, relay, connector))
        for variant in variants:
            variant.port = variant.connector.allocatedPort()
        size = args.size_mib * MiB
        for turn in range(args.repeat):
            for direction, transfer in (("down", download), ("up", upload)):
                for v in alternate(variants, turn):
                    assert v.connector.process is not None and v.relay.process is not None
                    cost = measureTransfer(
                        transfer, v.port, target.port, size, v.connector.process.pid, v.relay.process.pid
                    )
                    v.samples.setdefault(direction, []).append(cost.mbps)
                    v.samples.setdefault(direction + "_cpu", []).append(cost.cpu)
                    v.samples.setdefault(direction + "_sshd", []).append(cost.relay)
        base = variants[0]
        print(
            f"{'':28}"
            + "".join(f"  {v.name:>10}" for v in variants)
            + "".join(f"  {v.name + '/' + base.name:>12}" for v in variants[1:])
        )
        for direction in ("down", "up"):
            for suffix, label in (("", "MB/s"), ("_cpu", "connector CPU s/GiB"), ("_sshd", "sshd CPU s/GiB")):
                key = direction + suffix
                row = f"{direction + ' ' + label:28}" + "".join(f"{median(v.samples[key]):12.2f}" for v in variants)
                for v in variants[1:]:
                    ratio = median(b / a for a, b in zip(base.samples[key], v.samples[key], strict=True) if a)
                    row += f"{ratio:14.2f}"
                print(row)
    finally:
        for v in variants:
            v.connector.stop()
            v.relay.stop()
        target.close()
    print(
        f"\n({args.size_mib} MiB x {args.repeat} per variant and direction, interleaved; Ciphers "
        f"{args.ciphers or 'default'}; {time.monotonic() - started:.0f} s; {today()})"
    )
    removeWorkdir(work)


if __name__ == "__main__":
    main()
