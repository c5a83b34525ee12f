# -*- test-case-name: tests.integration.test_e2e -*-
"""
The twistd entry point: C{Options} and C{makeService}, as L{ServiceMaker} wants them.
"""

from __future__ import annotations

from twisted.application.service import IService

from .options import Options
from .service import buildService

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    return buildService(options, reactor, installSignals=True)
