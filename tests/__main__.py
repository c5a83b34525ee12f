"""
Run the suite with trial and print one summary line from trial's own result:
C{python -m tests [--reactor=NAME] [TESTS...]} (default: the unit layer, then
the integration layer).  A skipped test counts as a failure: CI must not pass
with a server missing.
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.trial import reporter, runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests")
    parser.add_argument("--reactor", help="install this reactor first (select, poll, asyncio, epoll)")
    parser.add_argument("--allow-skips", action="store_true", help="do not count skipped tests as failures")
    parser.add_argument("names", nargs="*", default=["tests.unit", "tests.integration"])
    args = parser.parse_args(argv)
    if args.reactor:
        from twisted.application.reactors import installReactor

        installReactor(args.reactor)
        # The connectors the harness starts use it too (harness.reactorArguments).
        os.environ["INCIDENT_TEST_REACTOR"] = args.reactor
    loader = runner.TestLoader()
    suite = loader.loadByNames(args.names, recurse=True)
    trial = runner.TrialRunner(reporter.VerboseTextReporter, workingDirectory="_trial_temp")
    result = trial.run(suite)
    skipped = len(result.skips)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.successes
    print(f"trial: {passed} passed, {failed} failed, {skipped} skipped ({result.testsRun} run)")
    if result.testsRun == 0:
        print("no test ran", file=sys.stderr)
        return 1
    if failed or (skipped and not args.allow_skips):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
