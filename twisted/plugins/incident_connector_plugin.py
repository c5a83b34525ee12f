"""
twistd plugin: C{twistd -n incident-connector [options]}.
"""

from twisted.application.service import ServiceMaker

incidentConnector = ServiceMaker(
    "incident-connector",
    "incident_connector.tap",
    "Outbound SSH tunnel serving SOCKS to allowlisted destinations in a private network.",
    "incident-connector",
)
