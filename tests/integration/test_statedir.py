"""
The state directory, key files and token file of a real connector process:
what others could change is refused with one line that says how to fix it,
a token file others can read gets one warning, and a state directory the
connector creates itself is private and works.
"""

from __future__ import annotations

import stat

from .harness import Connector, ReferenceRelay, TunnelTestCase


class StateDirectoryTests(TunnelTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.reference = ReferenceRelay(self.dir / "reference").start()
        self.addCleanup(self.reference.stop)
        self.connectorId, self.token = self.reference.add("state")
        self.state = self.dir / "state"

    def startTokenConnector(self, *extra: str, env: dict[str, str] | None = None) -> Connector:
        connector = Connector(
            self.dir / "token",
            ["--connector-id", self.connectorId, "--api-url", self.reference.apiURL,
             "--relay-address", f"127.0.0.1:{self.reference.sshPort}", "--state-dir", str(self.state), *extra],
            env=env if env is not None else {"INCIDENT_CONNECTOR_API_TOKEN": self.token},
        ).start()  # fmt: skip
        self.addCleanup(connector.stop)
        return connector

    def assertRefused(self, connector: Connector, line: str) -> None:
        self.assertEqual(connector.wait(30), 2)
        self.assertEqual([text for text in connector.text().splitlines() if text.strip()], [line])

    def test_createdPrivate(self) -> None:
        connector = self.startTokenConnector()
        connector.allocatedPort()
        self.assertEqual(stat.S_IMODE(self.state.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE((self.state / "id_ed25519").stat().st_mode), 0o600)

    def test_worldWritableRefused(self) -> None:
        self.state.mkdir()
        self.state.chmod(0o777)
        connector = self.startTokenConnector()
        self.assertRefused(
            connector,
            f"incident-connector: error: --state-dir '{self.state}': {self.state} is writable by group or others "
            f"(mode 0777): fix with: chmod 700 {self.state}",
        )
        self.assertFalse((self.state / "id_ed25519").exists())

    def test_readableKeyRefused(self) -> None:
        self.startTokenConnector().allocatedPort()
        key = self.state / "id_ed25519"
        key.chmod(0o644)
        connector = self.startTokenConnector()
        self.assertRefused(
            connector,
            f"incident-connector: error: --state-dir '{self.state}': {key} holds a private key and is readable "
            f"by group or others (mode 0644): fix with: chmod 600 {key}",
        )

    def test_sharedTokenFileWarnedOnce(self) -> None:
        tokenFile = self.dir / "token-file"
        tokenFile.write_text(self.token + "\n")
        tokenFile.chmod(0o644)
        connector = self.startTokenConnector("--api-token-file", str(tokenFile), env={})
        connector.allocatedPort()
        warning = (
            f"--api-token-file {tokenFile} is readable by other users (mode 0644): whoever reads it can act as "
            f"this connector; fix with: chmod 600 {tokenFile}"
        )
        self.assertEqual(connector.text().count(warning), 1)
        self.assertNotIn(self.token, connector.text())

    def test_privateTokenFileQuiet(self) -> None:
        tokenFile = self.dir / "token-file"
        tokenFile.write_text(self.token + "\n")
        tokenFile.chmod(0o600)
        connector = self.startTokenConnector("--api-token-file", str(tokenFile), env={})
        connector.allocatedPort()
        self.assertNotIn("readable by other users", connector.text())


class IdentityFileTests(TunnelTestCase):
    def test_readableIdentityRefused(self) -> None:
        self.relay.userKey.chmod(0o644)
        connector = self.startConnector()
        self.assertEqual(connector.wait(30), 2)
        self.assertEqual(
            connector.text().strip(),
            f"incident-connector: error: --identity-file: {self.relay.userKey} holds a private key and is readable "
            f"by group or others (mode 0644): fix with: chmod 600 {self.relay.userKey}",
        )

    def test_writableIdentityRefused(self) -> None:
        self.relay.userKey.chmod(0o622)
        connector = self.startConnector()
        self.assertEqual(connector.wait(30), 2)
        self.assertIn("is writable by group or others (mode 0622): fix with: chmod 600", connector.text())
