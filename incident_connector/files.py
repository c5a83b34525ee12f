# -*- test-case-name: tests.unit.test_files -*-
"""
Reading a file that others write (the allowlist file, known_hosts): one
open, never blocking the reactor, a regular file only, up to a bound.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["readBounded"]


def readBounded(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """
    The bytes at C{path} and what C{fstat} said of the file they came from
    (one open, so a swap between the two cannot mix versions).

    @raise OSError: it cannot be read, is not a regular file, or holds more
        than C{limit} bytes (C{strerror} says which).
    """
    # O_NONBLOCK: a FIFO (or a device) at the path must not block the reactor in open() or read().
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            content = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(content) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return content, info
