"""
A relay on AsyncSSH, for testing the connector against an SSH stack that is
neither OpenSSH nor Conch.  Run by L{relays.AsyncSSHRelay}:

    python asyncssh_relay.py --port P --host-key KEY --authorized-keys FILE --log FILE
        [--rekey-bytes N] [--rekey-seconds S]
        [--kex-algs A,B] [--encryption-algs A,B] [--mac-algs A,B]

It lets in the keys in FILE (any user name), grants C{tcpip-forward} on a
127.0.0.1 port whatever host the client names (port 0: a free one, logged as
C{Allocated port N ...}), and opens a C{forwarded-tcpip} channel for every
connection to that port, as sshd does: the port is a SOCKS proxy into the
connector.  Everything AsyncSSH logs (key exchanges, disconnects it sends
and receives, with their reasons) goes to the log file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

import asyncssh

log = logging.getLogger("relay")


class RelayServer(asyncssh.SSHServer):
    """
    One client connection: key login and remote forwards, nothing else.
    """

    def __init__(self) -> None:
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        log.info("connection from %s", conn.get_extra_info("peername"))

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            log.info("connection closed")
        else:
            log.info("connection lost: %s: %s", type(exc).__name__, exc)

    def begin_auth(self, username: str) -> bool:
        # Authentication is required; authorized_client_keys decides.
        return True

    def auth_completed(self) -> None:
        assert self._conn is not None
        info = self._conn.get_extra_info
        log.info(
            "algorithms: client->server %s %s, server->client %s %s",
            info("recv_cipher"),
            info("recv_mac"),
            info("send_cipher"),
            info("send_mac"),
        )

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        return self._listen(listen_host, listen_port)

    async def _listen(self, listenHost: str, listenPort: int) -> asyncssh.SSHListener:
        """
        Listen on 127.0.0.1 (never every interface, whatever was asked), and
        tunnel each connection there to the client.
        """
        assert self._conn is not None
        listener = await self._conn.forward_local_port("127.0.0.1", listenPort, listenHost, listenPort)
        log.info("Allocated port %d for remote forward (asked for %s:%d)", listener.get_port(), listenHost, listenPort)
        return listener


def parseArguments(argv: list[str]) -> argparse.Namespace:
    def names(value: str) -> list[str]:
        return [name for name in value.split(",") if name]

    parser = argparse.ArgumentParser(prog="asyncssh_relay.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--rekey-bytes", type=int, default=0, help="re-key after sending this many bytes")
    parser.add_argument("--rekey-seconds", type=float, default=0, help="re-key after this many seconds")
    parser.add_argument("--kex-algs", type=names, default=[])
    parser.add_argument("--encryption-algs", type=names, default=[])
    parser.add_argument("--mac-algs", type=names, default=[])
    return parser.parse_args(argv)


async def serve(arguments: argparse.Namespace) -> None:
    options: dict[str, Any] = {
        "server_host_keys": [arguments.host_key],
        "authorized_client_keys": arguments.authorized_keys,
        # A relay offers no shell; the connector never asks for one.
        "allow_scp": False,
    }
    if arguments.rekey_bytes:
        options["rekey_bytes"] = arguments.rekey_bytes
    if arguments.rekey_seconds:
        options["rekey_seconds"] = arguments.rekey_seconds
    for option in ("kex_algs", "encryption_algs", "mac_algs"):
        if getattr(arguments, option):
            options[option] = getattr(arguments, option)
    server = await asyncssh.create_server(RelayServer, "127.0.0.1", arguments.port, **options)
    log.info("listening on 127.0.0.1:%d with %s", arguments.port, {k: v for k, v in options.items() if "key" not in k})
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str]) -> None:
    arguments = parseArguments(argv)
    logging.basicConfig(
        filename=arguments.log, level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    asyncssh.set_log_level(logging.DEBUG)
    # Level 1: key exchanges begun and completed, disconnect reasons; not every packet.
    asyncssh.set_debug_level(1)
    asyncio.run(serve(arguments))


if __name__ == "__main__":
    main(sys.argv[1:])
