# -*- test-case-name: tests.unit.test_destinations,tests.integration.test_operate -*-
"""
C{incident-connector suggest-allowlist [--url URL]}: an allowlist covering
exactly the destinations a running connector allowed and connected to, from
its C{GET /destinations}.

One entry per line in the syntax of C{--forward-dest-allowlist}, each with a
C{#} comment giving its counts and when it was last seen, so the output can
be saved as C{--forward-dest-allowlist-file} as it is.  Destinations denied,
or allowed but never connected to, are left out (the header counts them).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any, TextIO

from twisted.python import usage

from .options import fail

__all__ = ["SuggestOptions", "suggest", "suggestFrom"]


class SuggestOptions(usage.Options):
    synopsis = "Usage: incident-connector suggest-allowlist [--url URL]"
    optParameters = [
        ["url", None, "http://127.0.0.1:9090", "Base URL of the connector's metrics listener (--metrics-listen)."],
    ]


def suggestFrom(document: dict[str, Any], source: str) -> str:
    """
    The allowlist file text for a C{/destinations} document.
    """
    used = [d for d in document["destinations"] if d["verdicts"].get("allow", 0) and d["connected"]]
    left = len(document["destinations"]) - len(used)
    lines = [
        f"# incident-connector suggest-allowlist from {source}, seen since {document['since']}",
        f"# {len(used)} destinations allowed and connected to; {left} denied or never connected to, left out"
        + (f"; {document['dropped']} older ones dropped from the connector's table" if document["dropped"] else ""),
    ]
    width = max((len(d["entry"]) for d in used), default=0)
    for d in sorted(used, key=lambda d: d["entry"]):
        lines.append(
            f"{d['entry']:<{width}}  # {d['verdicts']['allow']} allowed, {d['connected']} connected, "
            f"{d['bytes_up']} bytes up, {d['bytes_down']} bytes down, last seen {d['last_seen']}"
        )
    if not used:
        lines.append("none  # nothing was allowed and connected to")
    return "\n".join(lines) + "\n"


def suggest(argv: list[str], out: TextIO) -> None:
    """
    The C{suggest-allowlist} command: fetch, print; one line and exit 1 if
    the connector cannot be asked, 2 for bad usage.
    """
    options = SuggestOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        fail(str(e))
    url = options["url"].rstrip("/") + "/destinations"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.load(response)
    except (OSError, ValueError, http.client.HTTPException) as e:
        # HTTPException: a port that is not a number, a space in the URL, a
        # server that does not speak HTTP (BadStatusLine).
        reason = getattr(e, "reason", None) or e
        # One line: the reason may quote what the server sent.
        raise SystemExit(f"incident-connector: cannot read {url}: {repr(str(reason).strip())[1:-1]}") from None
    try:
        text = suggestFrom(document, url)
    except (KeyError, TypeError, AttributeError, ValueError):
        raise SystemExit(
            f"incident-connector: {url} is not a connector's /destinations document (is --url its --metrics-listen?)"
        ) from None
    out.write(text)
