"""
Options: flags beat environment, which beats defaults; every error is one line.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from incident_connector import options as options_module
from incident_connector.options import Options, envName, envNames, parseHostPort

from ..integration.harness import REPO, twistdCommand, writeKeyPair

PIN = "SHA256:" + "A" * 43


class OptionsTestCase(SynchronousTestCase):
    """
    Parses options as the service does; C{parseError} returns the one line a
    bad one gives.
    """

    def setUp(self) -> None:
        self.key = Path(self.mktemp()).resolve()
        writeKeyPair(self.key)
        self.base = ["--identity-file", str(self.key), "--relay-user", "u", "--relay-host-key", PIN]

    def parse(self, args: list[str], env: dict[str, str] | None = None) -> Options:
        options = Options(environ=env or {})
        options.parseOptions(args)
        return options

    def parseError(self, args: list[str], env: dict[str, str] | None = None) -> str:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        exc = self.assertRaises(SystemExit, self.parse, args, env)
        self.assertEqual(exc.code, 2)
        lines = stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        return lines[0]


class OptionsTests(OptionsTestCase):
    def test_defaults(self) -> None:
        options = self.parse(self.base)
        self.assertEqual((options.relayHost, options.relayPort), ("relay.incident.io", 443))
        self.assertEqual(options["metrics-listen"], "tcp:9090")
        self.assertEqual(options["keepalive-interval"], 15.0)
        self.assertEqual(options["max-streams"], 1024)
        self.assertTrue(options.allowlist.permitAll)

    def test_envAndFlagPrecedence(self) -> None:
        env = {envName("max-streams"): "7", envName("relay-address"): "[::1]:2222"}
        options = self.parse(self.base, env)
        self.assertEqual(options["max-streams"], 7)
        self.assertEqual((options.relayHost, options.relayPort), ("::1", 2222))
        options = self.parse([*self.base, "--max-streams", "9"], env)
        self.assertEqual(options["max-streams"], 9)

    def test_relayUserDefaultsToConnectorId(self) -> None:
        args = ["--identity-file", str(self.key), "--relay-host-key", PIN, "--connector-id", "conn-1"]
        self.assertEqual(self.parse(args)["relay-user"], "conn-1")

    def test_badValues(self) -> None:
        for args, message in [
            (["--max-streams", "x"], "--max-streams 'x': expected a whole number"),
            (["--max-streams", "0"], "must be at least 1"),
            (["--keepalive-interval", "-1"], "must not be negative"),
            (["--relay-address", "a:b:c"], "--relay-address"),
            (["--relay-address", "host:99999"], "port must be 1-65535"),
            (["--forward-dest-allowlist", "db"], "allowlist entry 'db'"),
            (["--relay-host-key", "md5:xx"], "expected SHA256:"),
            (["--log-format", "xml"], "must be one of text, json"),
            (["--bogus"], "option --bogus not recognized"),
        ]:
            line = self.parseError([*self.base, *args])
            self.assertIn(message, line)
            self.assertTrue(line.startswith("incident-connector: error: "), line)

    def test_allowlistFile(self) -> None:
        """
        The allowlist from a file (flag or environment); a bad line or giving
        both the list and the file is one line.
        """
        path = Path(self.mktemp())
        path.write_text("# databases\ndb:5432 [::1]:80\n")
        for args, env in [
            (["--forward-dest-allowlist-file", str(path)], {}),
            ([], {envName("forward-dest-allowlist-file"): str(path)}),
        ]:
            options = self.parse([*self.base, *args], env)
            self.assertEqual(options.allowlist.entries, ("db:5432", "[::1]:80"))
            assert options.allowlistFile is not None
            self.assertEqual(options.allowlistFile.content, path.read_bytes())
        self.assertIsNone(self.parse(self.base).allowlistFile)
        self.assertEqual(
            self.parseError(
                [*self.base, "--forward-dest-allowlist-file", str(path), "--forward-dest-allowlist", "a:1"]
            ),
            "incident-connector: error: give --forward-dest-allowlist or --forward-dest-allowlist-file, not both",
        )
        path.write_text("db:5432\n\ndb:http\n")
        self.assertEqual(
            self.parseError([*self.base, "--forward-dest-allowlist-file", str(path)]),
            f"incident-connector: error: --forward-dest-allowlist-file {str(path)!r}: line 3: allowlist entry "
            "'db:http': port 'http' is not 1-65535, a range LOW-HIGH or '*'",
        )
        self.assertEqual(
            self.parseError([*self.base, "--forward-dest-allowlist-file", "/nonexistent"]),
            "incident-connector: error: --forward-dest-allowlist-file '/nonexistent': No such file or directory",
        )

    def test_closeDisallowedStreams(self) -> None:
        self.assertFalse(self.parse(self.base)["close-disallowed-streams"])
        for text, value in [("yes", True), ("no", False), ("TRUE", True), ("0", False)]:
            self.assertEqual(
                self.parse([*self.base, "--close-disallowed-streams", text])["close-disallowed-streams"], value
            )
        self.assertIn("expected yes or no", self.parseError([*self.base, "--close-disallowed-streams", "maybe"]))

    def test_hostKeyRequired(self) -> None:
        line = self.parseError(["--identity-file", str(self.key), "--relay-user", "u"])
        self.assertIn("--known-hosts or --relay-host-key", line)

    def test_missingIdentity(self) -> None:
        line = self.parseError(["--identity-file", "/nonexistent", "--relay-user", "u", "--relay-host-key", PIN])
        self.assertIn("no such file", line)

    def test_tokenHidden(self) -> None:
        """
        The token never shows in --help, in errors or in the options' repr.
        """
        env = {envName("api-token"): "s3cret-token"}
        options = self.parse(self.base, env)
        self.assertNotIn("s3cret-token", repr(options))
        self.assertNotIn("s3cret-token", str(options))
        line = self.parseError(["--connector-id", "c", "--api-url", "http://api.example.com"], env)
        self.assertIn("http:// is only allowed for loopback", line)
        self.assertNotIn("s3cret-token", line)

    def test_tokenMode(self) -> None:
        """
        A connector ID and a token (flag, environment or file) select token
        authentication; no key file or host key pin is needed.
        """
        tokenFile = Path(self.mktemp())
        tokenFile.write_text("tok-from-file\n")
        env = {"XDG_STATE_HOME": "/var/lib/x"}
        options = self.parse(["--connector-id", "c1", "--api-token-file", str(tokenFile)], env)
        self.assertTrue(options.usesToken)
        self.assertEqual(options.apiToken, "tok-from-file")
        self.assertEqual(options["state-dir"], "/var/lib/x/incident-connector")
        self.assertEqual(options["api-url"], "https://api.incident.io")
        options = self.parse(
            ["--connector-id", "c1", "--api-url", "http://127.0.0.1:8080"], {envName("api-token"): "t"}
        )
        self.assertEqual(options.apiToken, "t")
        self.assertIn("--connector-id is required", self.parseError(["--api-token", "t"]))

    def test_connectorIdVariables(self) -> None:
        """
        The documented INCIDENT_CONNECTOR_ID sets the connector ID, the long
        form too; both set to one value is fine, to two values is an error
        naming both (even when the flag is given); the flag beats them.
        """
        base = ["--api-url", "http://127.0.0.1:8080", "--api-token", "t"]
        for env in [
            {"INCIDENT_CONNECTOR_ID": "conn_1"},
            {"INCIDENT_CONNECTOR_CONNECTOR_ID": "conn_1"},
            {"INCIDENT_CONNECTOR_ID": "conn_1", "INCIDENT_CONNECTOR_CONNECTOR_ID": "conn_1"},
            {"INCIDENT_CONNECTOR_ID": "conn_1", "INCIDENT_CONNECTOR_CONNECTOR_ID": ""},
        ]:
            self.assertEqual(self.parse(base, env)["connector-id"], "conn_1", env)
        env = {"INCIDENT_CONNECTOR_ID": "conn_1"}
        self.assertEqual(self.parse([*base, "--connector-id=conn_2"], env)["connector-id"], "conn_2")
        both = {"INCIDENT_CONNECTOR_ID": "conn_1", "INCIDENT_CONNECTOR_CONNECTOR_ID": "conn_2"}
        for args in (base, [*base, "--connector-id", "conn_3"]):
            self.assertEqual(
                self.parseError(args, both),
                "incident-connector: error: INCIDENT_CONNECTOR_ID 'conn_1' and "
                "INCIDENT_CONNECTOR_CONNECTOR_ID 'conn_2' differ; set one of them",
            )
        self.assertEqual(envName("connector-id"), "INCIDENT_CONNECTOR_ID")
        self.assertEqual(envNames("connector-id"), ("INCIDENT_CONNECTOR_ID", "INCIDENT_CONNECTOR_CONNECTOR_ID"))
        self.assertEqual(envNames("max-streams"), ("INCIDENT_CONNECTOR_MAX_STREAMS",))

    def test_secretVariablesInConflictHidden(self) -> None:
        """
        A secret's variables that differ are named, their values never shown.
        """
        self.patch(options_module, "ENV_NAMES", {"api-token": ("TOKEN_A", "TOKEN_B")})
        line = self.parseError(self.base, {"TOKEN_A": "s3cret-a", "TOKEN_B": "s3cret-b"})
        self.assertEqual(line, "incident-connector: error: TOKEN_A and TOKEN_B differ; set one of them")

    def test_noCredentials(self) -> None:
        line = self.parseError(["--relay-host-key", PIN])
        self.assertIn("no credentials: give --connector-id with --api-token", line)

    def test_parseHostPort(self) -> None:
        self.assertEqual(parseHostPort("[::1]:22"), ("::1", 22))
        self.assertEqual(parseHostPort("h", 22), ("h", 22))
        self.assertRaises(ValueError, parseHostPort, "h")


class CommandLineTests(SynchronousTestCase):
    """
    The real twistd command line, as operators type it.
    """

    def twistd(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*twistdCommand(), "-n", "--pidfile=", "incident-connector", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})},
        )

    def test_badFlagOneLine(self) -> None:
        result = self.twistd(["--max-streams", "lots"])
        self.assertEqual(result.returncode, 2)
        self.assertEqual(
            result.stderr.strip().splitlines(),
            ["incident-connector: error: --max-streams 'lots': expected a whole number"],
        )
        self.assertEqual(result.stdout, "")

    def test_helpHidesToken(self) -> None:
        result = self.twistd(["--help"], {envName("api-token"): "s3cret-token"})
        self.assertEqual(result.returncode, 0)
        self.assertIn("--forward-dest-allowlist", result.stdout)
        self.assertIn("INCIDENT_CONNECTOR_API_TOKEN", result.stdout)
        self.assertNotIn("s3cret-token", result.stdout + result.stderr)


class DocumentationTests(SynchronousTestCase):
    def test_readmeNamesEverySeries(self) -> None:
        """
        Every metric the connector exports, with its labels, is in the
        README's metrics table.
        """
        from incident_connector.metrics import ConnectorMetrics

        metrics = ConnectorMetrics()
        metrics.trackDestinationBuffers(lambda: 0.0)
        metrics.trackCertificate(lambda: 0.0)
        readme = (REPO / "README.md").read_text()
        suffix = {"counter": "_total", "info": "_info"}
        families = [f for f in metrics.registry.collect() if f.name.startswith("incident_connector_")]
        self.assertGreater(len(families), 15)
        for family in families:
            series = family.name + suffix.get(family.type, "")
            row = re.search(rf"^\| `{series}` \|([^|]*)\|", readme, re.M)
            self.assertIsNotNone(row, f"{series} is not in the README's metrics table")
            assert row is not None
            labels = {name for sample in family.samples for name in sample.labels if name != "le"}
            for label in labels:
                self.assertIn(f"`{label}`", row.group(1), f"{series}: label {label} not in the README")
        self.assertIn("`process_*`", readme)

    def test_readmeNamesEveryOption(self) -> None:
        """
        Every option and its environment variable is in the README's table.
        """
        from incident_connector.options import OPTIONS, envNames

        readme = (REPO / "README.md").read_text()
        rows = {name: re.search(rf"^\| `--{name}` \| `{envName(name)}`[^|]*\|", readme, re.M) for name, *_ in OPTIONS}
        missing = [name for name, row in rows.items() if row is None]
        self.assertEqual(missing, [])
        for name, row in rows.items():
            assert row is not None
            for variable in envNames(name):
                self.assertIn(f"`{variable}`", row.group(0))


class OddValueTests(OptionsTestCase):
    """
    Values that raised (a traceback) or were taken and failed later; each is one line now.
    """

    def tokenArgs(self) -> list[str]:
        return ["--connector-id", "c", "--state-dir", self.mktemp(), "--api-url", "http://127.0.0.1:1"]

    def test_tokenFileNotText(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(b"\xff\xfeSECRET")
        path.chmod(0o600)
        line = self.parseError([*self.tokenArgs(), "--api-token-file", str(path)])
        self.assertIn("--api-token-file", line)
        self.assertNotIn("SECRET", line)

    def test_tokenFileUnreadable(self) -> None:
        line = self.parseError([*self.tokenArgs(), "--api-token-file", "/proc/self/mem"])
        self.assertIn("--api-token-file '/proc/self/mem': ", line)

    def test_tokenNotUTF8(self) -> None:
        """
        An environment variable that is not UTF-8 decodes to lone
        surrogates: refused at once, the token unquoted (before, the
        connector retried for ever with no error line).
        """
        line = self.parseError(self.tokenArgs(), {envName("api-token"): "SECRET\udcffX"})
        self.assertIn("API token", line)
        self.assertNotIn("SECRET", line)

    def test_connectorIdNotUTF8(self) -> None:
        line = self.parseError(["--api-token", "t", *self.tokenArgs()[2:]], {"INCIDENT_CONNECTOR_ID": "c\udcff"})
        self.assertIn("--connector-id", line)

    def test_apiURLUnclosedBracket(self) -> None:
        line = self.parseError([*self.tokenArgs(), "--api-token", "t", "--api-url", "https://[::1"])
        self.assertIn("--api-url 'https://[::1': ", line)

    def test_metricsListen(self) -> None:
        for value in ["bogus", "tcp:abc", "tcp:99999", "tcp:-1", "tcp:9090:backlog=x"]:
            line = self.parseError([*self.base, "--metrics-listen", value])
            self.assertTrue(line.startswith(f"incident-connector: error: --metrics-listen {value!r}: "), line)
        self.assertEqual(self.parse([*self.base, "--metrics-listen", "tcp:0"])["metrics-listen"], "tcp:0")


class CredentialFileTests(OptionsTestCase):
    """
    Files read when the service is built: a bad one is one line and exit 2, not a traceback.
    """

    def buildError(self, args: list[str]) -> str:
        from twisted.internet.testing import MemoryReactorClock

        from incident_connector.service import makeCredentials

        options = self.parse(args)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        exc = self.assertRaises(SystemExit, makeCredentials, options, MemoryReactorClock())
        self.assertEqual(exc.code, 2)
        [line] = stderr.getvalue().splitlines()
        return line

    def binaryFile(self) -> str:
        path = Path(self.mktemp())
        path.write_bytes(b"\xff\xfe\x00bad")
        return str(path)

    def test_caFileNotPEM(self) -> None:
        args = ["--connector-id", "c", "--api-token", "t", "--state-dir", self.mktemp()]
        line = self.buildError([*args, "--api-ca-file", self.binaryFile()])
        self.assertIn("--api-ca-file", line)
        self.assertIn("not a PEM certificate", line)

    def test_certificateFileNotText(self) -> None:
        line = self.buildError([*self.base, "--certificate-file", self.binaryFile()])
        self.assertIn("--certificate-file", line)

    def test_knownHostsUnreadable(self) -> None:
        line = self.buildError(
            ["--identity-file", str(self.key), "--relay-user", "u", "--known-hosts", "/proc/self/mem"]
        )
        self.assertIn("--known-hosts '/proc/self/mem': ", line)
