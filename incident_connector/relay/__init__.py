"""
The reference relay (C{twistd incident-relay}): the other end of the relay
protocol, so the whole system runs on one machine.  The connector side never
imports this package.
"""
