# -*- test-case-name: tests.unit.test_policy -*-
"""
The allowlist in force, and changing it without a restart.

L{AllowlistPolicy} holds the list every new stream is judged by.  An
L{AllowlistFile} service loads it from C{--forward-dest-allowlist-file} again
on SIGHUP (L{AllowlistFile.reload}) and when the file changes (a poll every
L{POLL_INTERVAL} seconds).  Kubernetes updates a mounted ConfigMap by pointing
a C{..data} symlink at a new directory, so the poll opens the path afresh each
time and compares what it finds, rather than watching one inode.

A file is used once it is complete:

  - a different file at the path (another inode: a rename or a symlink swap,
    which is how careful writers and Kubernetes publish a file) is loaded at once;
  - the same file edited in place is loaded once two polls in a row read the
    same bytes, so a half-written file (C{db:5432} caught as C{db:54}) is never
    put in force.

A reload is one assignment: streams that start afterwards see the new list,
open streams keep going, unless C{--close-disallowed-streams} is on; then
L{OpenStreams.revoke} closes those the new list does not allow.  A file that
cannot be read or parsed leaves the list in force, and says so in one line
(once per bad version of the file).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from .allowlist import Allowlist, AllowlistError, InvalidDestination, Verdict, normalize
from .files import readBounded
from .metrics import ConnectorMetrics
from .results import StreamRecord, timestamp


class Revocable(Protocol):
    """
    An open stream, as a reload sees it.

    @ivar record: what it asked for, to judge against the new list.
    """

    record: StreamRecord

    def revoke(self) -> bool:
        """
        Close it because the allowlist no longer allows it; whether it was
        still open to close.
        """


__all__ = [
    "MAX_FILE_SIZE",
    "POLL_INTERVAL",
    "AllowlistFile",
    "AllowlistPolicy",
    "FileLoadError",
    "LoadedFile",
    "OpenStreams",
    "readAllowlistFile",
    "stillAllowed",
]

#: Seconds between two looks at the allowlist file.
POLL_INTERVAL = 2.0

#: Largest allowlist file read, in bytes.
MAX_FILE_SIZE = 1024 * 1024

_log = Logger(namespace="incident_connector.policy")


class FileLoadError(Exception):
    """
    The allowlist file cannot be used; the message is the line to print,
    starting with the option and the path.

    @ivar result: the C{result} label: C{unreadable} or C{invalid}.
    """

    def __init__(self, message: str, result: str) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class LoadedFile:
    """
    One version of the allowlist file.

    @ivar allowlist: what it says.
    @ivar content: its bytes.
    @ivar identity: C{(device, inode)} of the file read.
    """

    allowlist: Allowlist
    content: bytes
    identity: tuple[int, int]


def _read(path: str) -> tuple[bytes, tuple[int, int]]:
    """
    The bytes at C{path} and the identity of the file they came from.
    """
    content, info = readBounded(path, MAX_FILE_SIZE)
    return content, (info.st_dev, info.st_ino)


def _parse(path: str, content: bytes) -> Allowlist:
    try:
        return Allowlist.parseLines(content.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FileLoadError(f"--forward-dest-allowlist-file {path!r}: not UTF-8 (byte {e.start})", "invalid") from None
    except AllowlistError as e:
        raise FileLoadError(f"--forward-dest-allowlist-file {path!r}: {e}", "invalid") from None


def readAllowlistFile(path: str) -> LoadedFile:
    """
    Read and parse the allowlist file, as at start and on every reload.

    @raise FileLoadError: it cannot be read, or an entry is bad (the message
        quotes it and gives its line number).
    """
    try:
        content, identity = _read(path)
    except OSError as e:
        raise FileLoadError(f"--forward-dest-allowlist-file {path!r}: {e.strerror}", "unreadable") from None
    return LoadedFile(_parse(path, content), content, identity)


class AllowlistPolicy:
    """
    The allowlist in force.  Calling it returns the list (it is
    C{OpeningSettings.allowlist}).

    @ivar allowlist: the list new streams are judged by.
    @ivar source: where it came from, for C{/readyz}: the option's name, or
        C{file PATH}.
    @ivar loadedAt: when it was put in force (Unix time).
    """

    def __init__(self, allowlist: Allowlist, source: str, clock: Any, metrics: ConnectorMetrics) -> None:
        self.source = source
        self.clock = clock
        self.metrics = metrics
        self.allowlist = allowlist
        self.loadedAt = clock.seconds()
        metrics.allowlistRules.set(len(allowlist.rules))

    def __call__(self) -> Allowlist:
        return self.allowlist

    def replace(self, allowlist: Allowlist) -> None:
        """
        Put C{allowlist} in force for every stream that starts from now on.
        """
        self.allowlist = allowlist
        self.loadedAt = self.clock.seconds()
        self.metrics.allowlistRules.set(len(allowlist.rules))

    def status(self) -> dict[str, Any]:
        """
        The list in force, for C{/readyz}.
        """
        return {
            "source": self.source,
            "digest": self.allowlist.digest(),
            "rules": len(self.allowlist.rules),
            "loaded_at": timestamp(self.loadedAt),
        }


def stillAllowed(allowlist: Allowlist, record: StreamRecord) -> bool:
    """
    Whether C{allowlist} allows the stream C{record} describes.  A stream not
    yet judged counts as allowed (its judgment will use the new list); a name
    the addresses decide is allowed if every address it resolved to is, and
    not allowed while they are still unknown.
    """
    if record.verdict not in ("allow", "unresolved") or record.normalized is None or record.port is None:
        return True
    try:
        destination = normalize(record.normalized)
    except InvalidDestination:  # it was valid once: cannot happen
        return False
    verdict = allowlist.check(destination, record.port)
    if verdict is Verdict.CHECK_ADDRESSES:
        return allowlist.allowsAddresses(record.addresses, record.port)
    return verdict is Verdict.ALLOW


class OpenStreams:
    """
    The streams open now: each registers when its channel opens and leaves
    when it is reported.
    """

    def __init__(self) -> None:
        self._streams: set[Revocable] = set()

    def add(self, stream: Revocable) -> None:
        self._streams.add(stream)

    def discard(self, stream: Revocable) -> None:
        self._streams.discard(stream)

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[Revocable]:
        return iter(list(self._streams))

    def revoke(self, allowlist: Allowlist) -> int:
        """
        Close every stream C{allowlist} does not allow: a spliced one ends
        (result C{revoked}), one still dialling is answered 0x02.

        @return: how many were closed.
        """
        closed = 0
        for stream in self:
            if not stillAllowed(allowlist, stream.record) and stream.revoke():
                closed += 1
        return closed


class AllowlistFile(service.Service):
    """
    Keeps L{AllowlistPolicy} in step with the allowlist file.

    @ivar path: the file, as given.
    @ivar policy: where a new list is put in force.
    @ivar clock: schedules the polls.
    @ivar openStreams: the open streams, for C{closeDisallowed}.
    @ivar closeDisallowed: close open streams a new list does not allow.
    @ivar interval: seconds between polls.
    """

    def __init__(
        self,
        path: str,
        loaded: LoadedFile,
        policy: AllowlistPolicy,
        clock: Any,
        metrics: ConnectorMetrics,
        openStreams: OpenStreams | None = None,
        closeDisallowed: bool = False,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.path = path
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self.openStreams = openStreams
        self.closeDisallowed = closeDisallowed
        self.interval = interval
        self._current = loaded
        # What the last poll read of an in-place edit, to load once it holds still.
        self._edited: bytes | None = None
        # The last failure logged, so a bad file is reported once, not every poll.
        self._failure: str | None = None
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def poll(self) -> None:
        """
        Called every C{interval} seconds: load the file if a complete new
        version is there.
        """
        try:
            content, identity = _read(self.path)
        except OSError as e:
            self._failed(FileLoadError(f"--forward-dest-allowlist-file {self.path!r}: {e.strerror}", "unreadable"))
            return
        if content == self._current.content:
            if identity != self._current.identity:
                # The same list in another file: edits in place are now made to this one.
                self._current = LoadedFile(self._current.allowlist, content, identity)
            self._edited = None
            self._failure = None
            return
        if identity == self._current.identity and content != self._edited:
            # Edited in place: perhaps half-written.  Load it if the next poll reads the same.
            self._edited = content
            return
        self._load(content, identity)

    def reload(self) -> None:
        """
        Called on SIGHUP: load the file now, changed or not (the operator
        says it is complete).
        """
        self._failure = None
        try:
            content, identity = _read(self.path)
        except OSError as e:
            self._failed(FileLoadError(f"--forward-dest-allowlist-file {self.path!r}: {e.strerror}", "unreadable"))
            return
        self._load(content, identity)

    def _load(self, content: bytes, identity: tuple[int, int]) -> None:
        self._edited = None
        try:
            allowlist = _parse(self.path, content)
        except FileLoadError as e:
            self._failed(e)
            return
        self._failure = None
        self._current = LoadedFile(allowlist, content, identity)
        self.policy.replace(allowlist)
        self.metrics.allowlistReloads.labels(result="ok").inc()
        closed = 0
        if self.closeDisallowed and self.openStreams is not None:
            closed = self.openStreams.revoke(allowlist)
        _log.info(
            "allowlist reloaded from {path}: {digest}, destinations: {allowlist}{closed}",
            path=self.path,
            digest=allowlist.digest(),
            allowlist=allowlist.describe(),
            closed=f"; closed {closed} open streams it does not allow" if closed else "",
        )

    def _failed(self, error: FileLoadError) -> None:
        message = str(error)
        if message == self._failure:
            return
        self._failure = message
        self.metrics.allowlistReloads.labels(result=error.result).inc()
        policy = self.policy
        _log.error(
            "{error}; keeping the allowlist loaded at {loaded} ({digest})",
            error=message,
            loaded=timestamp(policy.loadedAt),
            digest=policy.allowlist.digest(),
        )
