# -*- test-case-name: tests.integration.test_dropin -*-
"""
C{connector-proxy}: the connector in the foreground, as the hosted product's
documentation runs it::

    connector-proxy --connector-id=<connector-id> --api-token=<token> \\
        --forward-dest-allowlist="grafana.internal:3000 prometheus.internal:9090"

The same options (flags and environment) and the same service as
C{twistd -n --pidfile= incident-connector}, without twistd: no plugin
discovery (nothing scans C{twisted/plugins} or writes C{dropin.cache}, so it
runs from a read-only install and from a frozen binary), no pid file, logs on
standard output.

Exit status: 0 after a clean drain (SIGTERM or SIGINT, or Ctrl-Break on
Windows, start it; a second one exits at once with 1), 1 when the service
cannot start, 2 for bad usage.

Running it is L{twisted.application.runner._runner.Runner}'s job, the runner under
Twisted's own C{twist} command: it starts the global log beginner (so events
logged before it are kept, and stray writes to stdout or stderr become log
events), runs the reactor, and takes a pid file only when given one.
C{twistd}'s C{ApplicationRunner} would bring plugins, daemonising and pid files;
L{twisted.internet.task.react} suits a main function whose Deferred decides the
exit status, not a service stopped by a signal.  L{Runner} lives in a private
module (the package exports nothing); C{twist} imports it from there too, and
the tests of this command fail if it moves.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping
from typing import Any, cast

from twisted.application.runner._runner import Runner
from twisted.internet.defer import maybeDeferred
from twisted.logger import FileLogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.reflect import qual

from . import __version__
from .options import Options
from .service import ConnectorService, buildService

__all__ = ["ProxyOptions", "main", "run"]

_log = Logger()


class ProxyOptions(Options):
    """
    L{Options} under the name C{connector-proxy}; nothing else differs.
    """

    synopsis = "Usage: connector-proxy [options]"


class _Outcome:
    """
    How the run ended, decided while the reactor runs.

    @ivar status: the exit status: 0 unless the service failed to start or to
        stop.
    """

    status = 0


def run(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """
    The C{connector-proxy} console script: parse, build, run until stopped.

    @param argv: the arguments after the program name (default: C{sys.argv}).
    @param environ: the environment (default: C{os.environ}).
    @return: the exit status.  Bad usage, C{--help} and C{--version} raise
        L{SystemExit} instead (2, 0 and 0).
    """
    options = ProxyOptions(environ)
    options.parseOptions(sys.argv[1:] if argv is None else argv)
    # Installs the platform's default reactor; nothing imported it before.
    from twisted.internet import reactor

    return main(reactor, options)


def main(reactor: Any, options: Options) -> int:
    """
    Run the connector described by C{options} on C{reactor} (not yet running)
    until a signal stops it and the drain is over.  It logs to standard
    output through the observer L{buildService} made, as under twistd.

    @return: the exit status.
    """
    # SIGTERM/SIGINT stop the reactor (the reactor's own handlers); the
    # service's "before shutdown" trigger then lets a second one exit at once.
    connector = buildService(options, reactor, installSignals=True)
    outcome = _Outcome()
    runner = Runner(
        reactor=reactor,
        # The connector's own observer filters; this level only must not hide more.
        defaultLogLevel=LogLevel.levelWithName(options["log-level"]),
        logFile=sys.stdout,
        fileLogObserverFactory=lambda _logFile: cast(FileLogObserver, connector.observer),
        whenRunning=_start,
        whenRunningArguments={"reactor": reactor, "connector": connector, "outcome": outcome},
    )
    runner.run()
    return outcome.status


def _start(reactor: Any, connector: ConnectorService, outcome: _Outcome) -> None:
    """
    Start C{connector} once the reactor runs, and stop it (the drain) before
    the reactor shuts down.  A start that raises (the metrics port is taken,
    say) is one log line and exit status 1.
    """
    _log.info(
        "connector-proxy {version} on {reactor} (Python {python})",
        version=__version__,
        reactor=qual(type(reactor)),
        python=platform.python_version(),
    )
    try:
        connector.privilegedStartService()
        connector.startService()
    except Exception as e:
        _log.critical("cannot start: {error}", error=Failure(e).getErrorMessage())
        outcome.status = 1
        reactor.stop()
        return

    def stopped(result: object) -> object:
        if isinstance(result, Failure):
            _log.failure("stopping failed", result)
            outcome.status = 1
        return None

    reactor.addSystemEventTrigger("before", "shutdown", lambda: maybeDeferred(connector.stopService).addBoth(stopped))
