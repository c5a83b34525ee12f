"""
Secrets in URLs: a malformed proxy URL never echoes its password, no error
quotes a URL with its user name or password, an API URL may not carry one,
and a loopback API is never reached through a proxy.
"""

from __future__ import annotations

import subprocess

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.options import envName
from incident_connector.proxy import Proxy

from ..integration.harness import REPO, twistdCommand
from .test_options import OptionsTestCase

SECRET = "Pr0xyP"

# Passwords that urllib cannot split out unless percent-encoded, and other malformed proxy URLs.
BAD_PROXIES = [
    f"http://u:{SECRET}#rest@proxy.internal:3128",
    f"http://u:{SECRET}/rest@proxy.internal:3128",
    f"http://u:{SECRET}?rest@proxy.internal:3128",
    f"http://u:{SECRET}@proxy.internal:port",
    f"http://u:{SECRET}@proxy.internal:99999",
    f"http://u:{SECRET}@proxy.internal:3128/path",
    f"https://u:{SECRET}@proxy.internal:3128",
    f"socks5://u:{SECRET}@proxy.internal:1080",
    f"http://u:{SECRET}@:3128",
]


class ProxyURLTests(OptionsTestCase):
    def test_malformedNeverEchoed(self) -> None:
        """
        Each malformed proxy URL, as --proxy or from the environment, stops
        the connector with one line that holds neither the password nor any
        other part of the URL.
        """
        for url in BAD_PROXIES:
            for args, env in [
                (["--proxy", url], {}),
                ([], {"HTTPS_PROXY": url}),
                ([], {"ALL_PROXY": url}),
                ([], {envName("proxy"): url}),
            ]:
                line = self.parseError([*self.base, *args], env)
                self.assertTrue(line.startswith("incident-connector: error: --proxy (or HTTPS_PROXY/ALL_PROXY): "))
                self.assertNotIn(SECRET, line)
                self.assertNotIn("rest", line)
                self.assertNotIn("proxy.internal", line)

    def test_hintForUnencodedPassword(self) -> None:
        line = self.parseError([*self.base, "--proxy", BAD_PROXIES[0]])
        self.assertIn("the port is not a number from 1 to 65535; percent-encode any '#', '/' or '?'", line)

    def test_encodedPasswordWorks(self) -> None:
        proxy = Proxy.fromURL(f"http://u%40corp:{SECRET}%23rest%2F%3F@proxy.internal:3128/")
        self.assertEqual(proxy, Proxy("proxy.internal", 3128, ("u@corp", f"{SECRET}#rest/?")))
        self.assertEqual(str(proxy), "http://proxy.internal:3128")


class APIURLTests(OptionsTestCase):
    def tokenArgs(self, url: str) -> list[str]:
        return ["--connector-id", "c1", "--api-token", "t0ken", "--api-url", url]

    def test_userInfoRefused(self) -> None:
        """
        A user name or password in --api-url is refused in one line that
        does not quote it, in token mode and with key files alike.
        """
        for url in ["http://x@127.0.0.1", f"https://user:{SECRET}@api.example.com", f"http://u:{SECRET}#x@127.0.0.1"]:
            for args in [self.tokenArgs(url), [*self.base, "--api-url", url]]:
                line = self.parseError(args)
                self.assertEqual(
                    line,
                    "incident-connector: error: --api-url: remove the user name or password (the part up to @): "
                    "the API token is the only credential, and the URL is logged",
                )

    def test_badPortNotBlamedOnProxy(self) -> None:
        line = self.parseError(self.tokenArgs("https://api.example.com:https"))
        self.assertEqual(
            line, "incident-connector: error: --api-url 'https://api.example.com:https': the port is not a number"
        )

    def test_loopbackNeverProxied(self) -> None:
        """
        HTTPS_PROXY applies to the relay and to a remote API, never to a
        loopback one: the proxy would see the token (http://) and would reach
        its own loopback, not ours.
        """
        env = {"HTTPS_PROXY": "http://proxy.internal:3128"}
        for url in ["http://127.0.0.1:8080", "http://localhost:8080", "https://[::1]:8443", "http://127.0.0.2"]:
            options = self.parse(self.tokenArgs(url), env)
            self.assertIsNone(options.apiProxy, url)
            self.assertEqual(options.relayProxy, Proxy("proxy.internal", 3128))
        options = self.parse(self.tokenArgs("https://api.example.com"), env)
        self.assertEqual(options.apiProxy, Proxy("proxy.internal", 3128))
        options = self.parse([*self.tokenArgs("http://127.0.0.1:8080"), "--proxy", "http://p:1"])
        self.assertIsNone(options.apiProxy)


class CommandLineTests(SynchronousTestCase):
    def test_twistdLineHoldsNoPassword(self) -> None:
        """
        The line an operator sees from twistd for the reported case.
        """
        result = subprocess.run(
            [*twistdCommand(), "-n", "--pidfile=", "incident-connector", "--connector-id", "c1"],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PYTHONPATH": str(REPO),
                "PATH": "/usr/bin:/bin",
                envName("api-token"): "t0ken",
                "HTTPS_PROXY": f"http://u:{SECRET}#rest@host:3128",
            },
        )
        self.assertEqual(result.returncode, 2)
        self.assertEqual(
            result.stderr.strip().splitlines(),
            [
                "incident-connector: error: --proxy (or HTTPS_PROXY/ALL_PROXY): the port is not a number from 1 to "
                "65535; percent-encode any '#', '/' or '?' in the user name or password (%23, %2F, %3F)"
            ],
        )
        self.assertNotIn(SECRET, result.stdout + result.stderr)
