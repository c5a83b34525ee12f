# -*- test-case-name: tests.unit.test_keyfiles,tests.integration.test_statedir -*-
"""
Files that hold secrets.

Private keys: ed25519, OpenSSH format, created once with mode 0600 (shared by
the connector's key and the reference relay's host and CA keys).

Permission checks, as OpenSSH makes them: a state directory or key file that
another user could replace (writable by group or others, or owned by someone
else than this user or root) is refused, and so is a key file of ours that
others can read; a token file that others can read gets a warning.  Each
message is one line that names the file and the command that fixes it.

On Windows, where files have ACLs rather than POSIX owners and modes (no
C{pwd}, no C{os.geteuid}), these checks are skipped: keep the state
directory under the service account's own profile.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

try:
    import pwd
except ImportError:  # Windows
    pwd = None  # type: ignore[assignment]

__all__ = [
    "UnsafePermissions",
    "checkPrivateDirectory",
    "checkPrivateFile",
    "createKeyFile",
    "ensurePrivateDirectory",
    "permissionProblem",
    "sharedSecretWarning",
]


class UnsafePermissions(PermissionError):
    """
    A file or directory others could change; C{strerror} (and C{str()}) is
    the one line to show.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)

    def __str__(self) -> str:
        return str(self.strerror)


def createKeyFile(path: Path) -> bool:
    """
    Write a new ed25519 private key at C{path} (0600, never world-readable
    even for an instant) unless one is there.  Returns whether it created one.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(pem)
    return True


#: POSIX owners and modes to check (not on Windows).
_POSIX = hasattr(os, "geteuid")


def _userName(uid: int) -> str:
    if pwd is None:
        return str(uid)
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a DynamicUser, or a container's uid with no passwd entry
        return str(uid)


def permissionProblem(path: Path, info: os.stat_result, uid: int, key: bool) -> str | None:
    """
    What is unsafe about C{path} (a directory, or a private key file if
    C{key}), whose C{stat} is C{info}, for user C{uid}: the one-line
    message with its fix, or L{None}.

      - owned by neither C{uid} nor root: someone else controls it;
      - writable by group or others: they could replace what it holds;
      - a key of C{uid}'s readable by group or others (OpenSSH's
        "UNPROTECTED PRIVATE KEY FILE"; a root-owned key, such as a mounted
        secret, may be readable by a group, as OpenSSH allows).
    """
    quoted = shlex.quote(str(path))
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (uid, 0):
        return (
            f"{path} is owned by {_userName(info.st_uid)}, not by this user ({_userName(uid)}): "
            f"fix with: chown {_userName(uid)} {quoted}"
        )
    if mode & 0o022:
        return (
            f"{path} is writable by group or others (mode {mode:04o}): fix with: chmod {600 if key else 700} {quoted}"
        )
    if key and info.st_uid == uid and mode & 0o044:
        return (
            f"{path} holds a private key and is readable by group or others (mode {mode:04o}): "
            f"fix with: chmod 600 {quoted}"
        )
    return None


def checkPrivateDirectory(path: Path) -> None:
    """
    Refuse a directory that holds keys if anyone but its owner (this user,
    or root) could add, remove or replace files in it.

    @raise UnsafePermissions: with the message and the fix.
    """
    if not _POSIX:
        return
    problem = permissionProblem(path, path.stat(), os.geteuid(), key=False)
    if problem is not None:
        raise UnsafePermissions(problem)


def ensurePrivateDirectory(path: Path) -> None:
    """
    Create C{path} (mode 0700) if it is missing, then check it.

    @raise UnsafePermissions: an existing directory others could change.
    """
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
    checkPrivateDirectory(path)


def checkPrivateFile(path: Path) -> None:
    """
    Refuse a private key file that someone else could replace or, if it is
    ours, read.

    @raise UnsafePermissions: with the message and the fix.
    """
    if not _POSIX:
        return
    problem = permissionProblem(path, path.stat(), os.geteuid(), key=True)
    if problem is not None:
        raise UnsafePermissions(problem)


def sharedSecretWarning(path: Path, what: str, gid: int | None = None) -> str | None:
    """
    A warning if users other than this one may read the secret at C{path}:
    others can, or a group other than this process's own (C{gid}, the
    effective gid if L{None}) can.  A Kubernetes secret mounted with
    C{fsGroup} equal to the pod's group is fine.
    """
    if not _POSIX:
        return None
    info = path.stat()
    mine = os.getegid() if gid is None else gid
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o004 or (mode & 0o040 and info.st_gid != mine):
        return (
            f"{what} {path} is readable by other users (mode {mode:04o}): whoever reads it can act as this "
            f"connector; fix with: chmod 600 {shlex.quote(str(path))}"
        )
    return None
