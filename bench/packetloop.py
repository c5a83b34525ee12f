"""
The upload packet loop in one process: microseconds per 32 KiB AES-GCM
channel-data packet through C{RelayTransport.dataReceived}, from the read
to the stream, with no sockets and no other process.

    python bench/packetloop.py [--rounds 150] [--runs 5] [--tree PATH]

Our transport logs in to a Conch server in memory (C{tests/unit/sshpeer.py}),
then its inbound direction is switched to AES-GCM with a known key, and
packets sealed with the same key are fed in 256 KiB reads, as the kernel
hands them over.  The data is sealed just before each round is fed, so it is
in the cache as a fresh read would be.  Reported: the median of C{--runs},
and the cost of AES-GCM decryption alone for the same packet, so what is left
is the interpreter's share.  Deterministic enough to judge a change to the
packet path by a few percent, which the end-to-end runs (C{ab.py}) cannot.
C{--tree} measures another checkout (its C{incident_connector} and test
helpers).  Run by hand.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from pathlib import Path

from benchkit import median
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PACKETS_PER_ROUND = 40
PAYLOAD = 32000
READ = 256 * 1024


def loop(rounds: int) -> float:
    """
    Microseconds per packet through the relay transport, over C{rounds} rounds.
    """
    from incident_connector.tunnel.packets import GCMPacketizer
    from tests.unit.sshpeer import Pair, openForwarded

    pair = Pair(serverCiphers=[b"aes128-ctr"], serverMACs=[b"hmac-sha2-256"])
    pair.flush()
    openForwarded(pair.peer)
    pair.flush()
    stream = pair.streams[0]
    client = pair.client
    channel = stream.channel
    key, iv = os.urandom(16), os.urandom(12)
    client._inbound = GCMPacketizer(key, iv)  # type: ignore[attr-defined]
    sealer = GCMPacketizer(key, iv)
    client.sendPacket = lambda *args, **kwargs: None  # type: ignore[method-assign]  # window adjusts
    payload = os.urandom(PAYLOAD)
    head = bytes([94]) + struct.pack("!LL", channel.localId, len(payload))
    spent = 0.0
    for _ in range(rounds):
        wire = b"".join(b"".join(sealer.sealParts(head, payload, 0)) for _ in range(PACKETS_PER_ROUND))
        channel.localWindowLeft = 1 << 30
        reads = [wire[i : i + READ] for i in range(0, len(wire), READ)]
        started = time.process_time()
        for read in reads:
            client.dataReceived(read)
        spent += time.process_time() - started
        stream.received.clear()
    return spent / (rounds * PACKETS_PER_ROUND) * 1e6


def decryptOnly(count: int = 3000) -> float:
    aead = AESGCM(os.urandom(16))
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, os.urandom(PAYLOAD + 16), b"head")
    started = time.process_time()
    for _ in range(count):
        aead.decrypt(nonce, sealed, b"head")
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]), help="checkout to measure")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.tree).resolve()))
    perPacket = median(loop(args.rounds) for _ in range(args.runs))
    decrypt = median(decryptOnly() for _ in range(args.runs))
    print(f"packet loop: {perPacket:.2f} us per {PAYLOAD}-byte packet (AES-GCM decryption alone {decrypt:.2f} us)")


if __name__ == "__main__":
    main()
