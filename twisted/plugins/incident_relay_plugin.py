"""
twistd plugin: C{twistd -n incident-relay [options]}, the reference relay.
"""

from twisted.application.service import ServiceMaker

incidentRelay = ServiceMaker(
    "incident-relay",
    "incident_connector.relay.tap",
    "Reference relay: certificate API, connector registry and SSH server for incident-connector.",
    "incident-relay",
)
