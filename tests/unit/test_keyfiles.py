"""
Permission checks on the state directory, key files and the token file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.credentials import loadOrCreateKey
from incident_connector.keyfiles import (
    UnsafePermissions,
    checkPrivateDirectory,
    ensurePrivateDirectory,
    permissionProblem,
    sharedSecretWarning,
)
from incident_connector.options import Options, envName

#: The checkout: the subprocess imports the connector from here.
REPO = Path(__file__).resolve().parents[2]


def fakeStat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, uid, 0, 0, 0, 0))


class StateDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir(mode=0o755)
        self.addCleanup(os.umask, os.umask(0o022))

    def test_createdPrivate(self) -> None:
        """
        A missing state directory is created 0700 (parents too), and the key 0600.
        """
        state = self.base / "a" / "b"
        loadOrCreateKey(state)
        self.assertEqual(state.stat().st_mode & 0o777, 0o700)
        self.assertEqual((state / "id_ed25519").stat().st_mode & 0o777, 0o600)
        loadOrCreateKey(state)  # and again, as on every start

    def test_writableRefused(self) -> None:
        for mode in (0o777, 0o770, 0o1777, 0o720, 0o702):
            self.base.chmod(mode)
            error = self.assertRaises(UnsafePermissions, ensurePrivateDirectory, self.base)
            self.assertEqual(
                str(error),
                f"{self.base} is writable by group or others (mode {mode:04o}): fix with: chmod 700 {self.base}",
            )
            self.assertRaises(UnsafePermissions, loadOrCreateKey, self.base)
        self.assertFalse((self.base / "id_ed25519").exists())

    def test_readableByOthersAllowed(self) -> None:
        self.base.chmod(0o755)
        checkPrivateDirectory(self.base)

    def test_messageIsOneShellSafeLine(self) -> None:
        odd = self.base / "a dir; rm -rf x"
        odd.mkdir(mode=0o777)
        odd.chmod(0o777)
        error = self.assertRaises(UnsafePermissions, checkPrivateDirectory, odd)
        self.assertTrue(str(error).endswith(f"chmod 700 '{odd}'"))
        self.assertNotIn("\n", str(error))


class KeyFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = Path(self.mktemp()).resolve()
        loadOrCreateKey(self.state)
        self.key = self.state / "id_ed25519"

    def test_writableKeyRefused(self) -> None:
        self.key.chmod(0o620)
        error = self.assertRaises(UnsafePermissions, loadOrCreateKey, self.state)
        self.assertEqual(
            str(error), f"{self.key} is writable by group or others (mode 0620): fix with: chmod 600 {self.key}"
        )

    def test_readableKeyRefused(self) -> None:
        self.key.chmod(0o644)
        error = self.assertRaises(UnsafePermissions, loadOrCreateKey, self.state)
        self.assertEqual(
            str(error),
            f"{self.key} holds a private key and is readable by group or others (mode 0644): "
            f"fix with: chmod 600 {self.key}",
        )


class RuleTests(SynchronousTestCase):
    """
    L{permissionProblem} on any owner and mode, as user 4000000.
    """

    def test_rules(self) -> None:
        path = Path("/state")
        for mode, owner, key, problem in [
            (0o40700, 4000000, False, None),
            (0o40755, 4000000, False, None),
            (0o40755, 0, False, None),
            (0o40775, 4000000, False, "writable by group or others (mode 0775): fix with: chmod 700 /state"),
            (0o41777, 0, False, "writable by group or others (mode 1777): fix with: chmod 700 /state"),
            (
                0o40700,
                4000001,
                False,
                "is owned by 4000001, not by this user (4000000): fix with: chown 4000000 /state",
            ),
            (0o100600, 4000000, True, None),
            (0o100400, 4000000, True, None),
            (0o100440, 0, True, None),
            (0o100644, 0, True, None),
            (0o100640, 4000000, True, "holds a private key and is readable by group or others (mode 0640)"),
            (0o100604, 4000000, True, "holds a private key and is readable by group or others (mode 0604)"),
            (0o100660, 4000000, True, "writable by group or others (mode 0660): fix with: chmod 600 /state"),
            (0o100600, 4000001, True, "is owned by 4000001, not by this user (4000000)"),
        ]:
            found = permissionProblem(path, fakeStat(mode, owner), 4000000, key)
            if problem is None:
                self.assertIsNone(found, (oct(mode), owner))
            else:
                assert found is not None, (oct(mode), owner)
                self.assertIn(problem, found)
                self.assertTrue(found.startswith("/state "), found)

    def test_namedUsers(self) -> None:
        found = permissionProblem(Path("/state"), fakeStat(0o40700, 65534), 0, False)
        self.assertEqual(found, "/state is owned by nobody, not by this user (root): fix with: chown root /state")


class TokenFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.token = Path(self.mktemp()).resolve()
        self.token.write_text("t0ken\n")

    def test_rules(self) -> None:
        mine = os.getegid()
        for mode, gid, warned in [
            (0o600, mine, False),
            (0o400, mine, False),
            (0o640, mine, False),
            (0o440, mine, False),
            (0o640, mine + 1, True),
            (0o644, mine, True),
            (0o604, mine, True),
        ]:
            self.token.chmod(mode)
            warning = sharedSecretWarning(self.token, "--api-token-file", gid=gid)
            self.assertEqual(warning is not None, warned, (oct(mode), gid))
        self.token.chmod(0o644)
        self.assertEqual(
            sharedSecretWarning(self.token, "--api-token-file"),
            f"--api-token-file {self.token} is readable by other users (mode 0644): whoever reads it can act "
            f"as this connector; fix with: chmod 600 {self.token}",
        )

    def test_warnedOnce(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.token.chmod(0o644)
        options = Options(environ={envName("api-token-file"): str(self.token)})
        options.parseOptions(["--connector-id", "c1", "--api-url", "http://127.0.0.1:1"])
        self.assertEqual(options.apiToken, "t0ken")
        warnings = [e for e in events if "readable by other users" in e.get("problem", "")]
        self.assertEqual(len(warnings), 1)
        self.assertNotIn("t0ken", str(warnings))


class WithoutPosixTests(SynchronousTestCase):
    """
    Where there are no POSIX owners, modes or descriptor limits (Windows: no
    C{pwd}, C{resource}, C{os.geteuid}), the connector's checks step aside
    instead of failing its start.
    """

    def test_checksStepAside(self) -> None:
        script = textwrap.dedent(
            """
            import os, sys, tempfile
            from pathlib import Path
            sys.modules["pwd"] = None
            sys.modules["resource"] = None
            for name in ("geteuid", "getegid"):
                delattr(os, name)
            from incident_connector import keyfiles, limits
            folder = Path(tempfile.mkdtemp())
            folder.chmod(0o777)
            keyfiles.checkPrivateDirectory(folder)
            secret = folder / "token"
            secret.write_text("x")
            secret.chmod(0o644)
            keyfiles.checkPrivateFile(secret)
            assert keyfiles.sharedSecretWarning(secret, "token") is None
            assert keyfiles._userName(1234) == "1234"
            assert limits.raiseDescriptorLimit() is None
            assert limits.fitMaxStreams(5000, 2) == 5000
            print("ok")
            """
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "ok\n", ""))
